"""CPU benchmark: Caffe (this build, through pycaffe) against a PyTorch twin
of the same nets, in one run with the sides alternating, plus the BLAS
kernel Caffe runs on and its sgemm against the machine's fp32 peak.

    .venv/bin/python bench/cpu/run.py [--reps 3] [--out bench/cpu]

Cases (the same layers, shapes, losses and SGD on both sides; weights are
random, data constant, so nothing but compute is timed):
- ``vgg16_infer_b1``, ``vgg16_infer_b8``: VGG-16 (K = 7 outputs) forward,
  Caffe ``net.forward()`` in TEST phase, PyTorch eval mode under no_grad;
- ``vgg16_train_b2``: one SGD step of the JCDL VGG-16 at batch 2 (Caffe
  ``solver.step(1)`` on netgen's train net over DummyData, as bench/gpu's: 0.8 KL + 0.2 dominant softmax,
  dropout, the original recipe's SGD; PyTorch: bench/gpu/torch_twin.py's
  model, loss and optimizer);
- ``small_train_b32``: one SGD step of the demo's small net (``jcdl netgen
  --arch small``: batch 32, crop 32, K = 8, as ``jcdl demo`` trains it).

Every case runs at 1 and 2 threads on both sides (OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS); the headline ratio takes each side at its best thread
count in that repetition, and the ratios at equal thread counts are kept
too.

Each side runs in a process of its own (Caffe in .venv's Python, PyTorch
in bench/cpu/.venv, which this script makes and fills with torch and
torchvision from PyPI the first time; make never installs them). For each
case and thread count both processes are started and warmed up, then take
turns one iteration at a time (who goes first alternating, PAUSE apart), so
load from other users of the machine hits both sides alike; the ratios are
taken within those runs and the load average is recorded around each.
Then, where the time goes: Caffe's by layer type (``caffe time``), and
VGG-16 inference at batch 1 (LAYERS_BATCH) layer by layer on both sides (each layer's best
of a few passes, the sides' workers in turn). Writes results.json and
results.md.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CAFFE_PY = ROOT / ".venv" / "bin" / "python"
TORCH_VENV = HERE / ".venv"
TORCH_PY = TORCH_VENV / "bin" / "python"
K_VGG, K_SMALL = 7, 8
THREADS = (1, 2)  # OPENBLAS_NUM_THREADS / OMP_NUM_THREADS on both sides
PAUSE = 0.25      # seconds between two iterations
CASES = {  # name: (batch, warm-up iterations, timed iterations per side)
    "vgg16_infer_b1": (1, 2, 12),
    "vgg16_infer_b8": (8, 1, 6),
    "vgg16_train_b2": (2, 1, 6),
    "small_train_b32": (32, 20, 60),
}


# --- workers (each in its own process) --------------------------------------

def serve(step, info, warmup):
    """A worker's loop: warm up, say ready, then one timed iteration per
    'step' line on stdin (its seconds on stdout) until stdin closes."""
    for _ in range(warmup):
        step()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t = time.perf_counter()
        step()
        print(time.perf_counter() - t, flush=True)


def caffe_nets(tmp):
    """Writes the VGG-16 nets of the profile (the same as caffe_worker's)
    into tmp: infer_b1.prototxt and train_b2.prototxt."""
    for case, name in (("vgg16_infer_b1", "infer_b1"),
                       ("vgg16_train_b2", "train_b2")):
        d = Path(tmp) / name
        d.mkdir()
        caffe_worker(case, d, build=False)


def caffe_infer_net(batch, tmp, build=True):
    """VGG-16 (K = 7) for inference with random weights and images of 1.0;
    writes tmp/net.prototxt, and returns the net unless build is False."""
    import caffe
    from caffe import layers as L
    from jcdl import netgen
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[batch, 3, 224, 224]))
    netgen._body(n, "vgg16", K_VGG, deploy=False)  # with fillers
    (Path(tmp) / "net.prototxt").write_text(str(n.to_proto()))
    if not build:
        return None
    net = caffe.Net(str(Path(tmp) / "net.prototxt"), caffe.TEST)
    net.blobs["data"].data[...] = 1.0
    return net


def caffe_cpu():
    """pycaffe on the CPU, quiet, seeded: a Caffe worker's start."""
    sys.path.insert(0, str(ROOT / "python"))
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    caffe.set_mode_cpu()
    caffe.set_random_seed(1)
    return caffe


def caffe_worker(case, tmp, build=True):
    import ctypes

    caffe = caffe_cpu()
    from jcdl import netgen
    pb = caffe.proto.caffe_pb2
    batch = CASES[case][0]
    tmp = Path(tmp)
    if case.startswith("vgg16_infer"):
        net = caffe_infer_net(batch, tmp, build)
        if not build:
            return None
        step = net.forward
    else:
        # netgen's train net (as bench/gpu's) over constant DummyData:
        # images of 1.0, labels the uniform distribution
        arch, k, crop = (("vgg16", K_VGG, 224) if case == "vgg16_train_b2"
                         else ("small", K_SMALL, 32))
        full = netgen.train_val_net(arch, "jcdl", 0.8, k, "x", "y", None,
                                    batch, batch, crop, True)
        sys.path.insert(0, str(ROOT / "bench" / "gpu"))
        from make_prototxts import dummy_data_layer
        net = pb.NetParameter(name=f"{arch}_bench")
        net.layer.append(dummy_data_layer(pb, batch, crop, k))
        net.layer.extend(
            l for l in full.layer if l.type not in ("Data", "Accuracy"))
        (tmp / "net.prototxt").write_text(str(net))
        if not build:
            return None
        s = pb.SolverParameter(
            net=str(tmp / "net.prototxt"), base_lr=1e-4, lr_policy="fixed",
            momentum=0.9, weight_decay=0.005, max_iter=10 ** 6, display=0,
            snapshot=0, snapshot_after_train=False, random_seed=1,
            solver_mode=pb.SolverParameter.CPU)
        if case == "small_train_b32":
            s.base_lr, s.weight_decay = 0.01, 0.0005  # jcdl demo's
        (tmp / "solver.prototxt").write_text(str(s))
        solver = caffe.SGDSolver(str(tmp / "solver.prototxt"))
        step = lambda: solver.step(1)  # noqa: E731
    lib = ctypes.CDLL("libopenblas.so.0")
    lib.openblas_get_corename.restype = ctypes.c_char_p
    return step, {"blas_core": lib.openblas_get_corename().decode(),
                  "blas_threads": lib.openblas_get_num_threads()}


def torch_worker(case):
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    import torch
    from torch import nn
    import torch_twin as tt
    torch.manual_seed(1)
    batch = CASES[case][0]
    if case.startswith("vgg16"):
        model = tt.build_model(K_VGG, "cpu")
        classes, size = K_VGG, 224
    else:  # jcdl netgen --arch small; Caffe pools with ceil
        class Small(nn.Module):
            def __init__(self):
                super().__init__()
                # named classifier: tt.sgd treats classifier[-1] as my_fc8
                self.classifier = nn.Sequential(
                    nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(),
                    nn.MaxPool2d(2, 2, ceil_mode=True),
                    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                    nn.MaxPool2d(2, 2, ceil_mode=True), nn.Flatten(),
                    nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
                    nn.Linear(64, K_SMALL))

            def forward(self, x):
                return self.classifier(x)
        model = Small()
        classes, size = K_SMALL, 32
    x = torch.ones(batch, 3, size, size)
    if case.startswith("vgg16_infer"):
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
    else:
        model.train()
        if case == "small_train_b32":
            opt = tt.sgd(model, base_lr=0.01, weight_decay=0.0005)
            x = x / 128  # the small net's Power layer
        else:
            opt = tt.sgd(model)
        p = torch.full((batch, classes), 1.0 / classes)

        def step():
            opt.zero_grad(set_to_none=True)
            tt.jcdl_loss(model(x), p).backward()
            opt.step()
    return step, {"torch_threads": torch.get_num_threads(),
                  "mkldnn": torch.backends.mkldnn.is_available()}


# --- the orchestration ------------------------------------------------------

# --- per layer: where the two sides differ --------------------------------

LAYERS_BATCH = 1   # VGG-16 inference, the case furthest from the goal
LAYERS_PASSES = 5  # passes per worker; each layer's best is kept
LAYERS_RUNS = 2    # workers per side, the sides in turn


def caffe_layer_times(tmp):
    """ms per layer (Caffe's layer names), the best of LAYERS_PASSES
    passes of net._forward(i, i), after one whole forward."""
    caffe_cpu()
    net = caffe_infer_net(LAYERS_BATCH, tmp)
    names = list(net._layer_names)
    net.forward()
    best = [float("inf")] * len(names)
    for _ in range(LAYERS_PASSES):
        for i in range(len(names)):
            t = time.perf_counter()
            net._forward(i, i)
            best[i] = min(best[i], time.perf_counter() - t)
    return {n: 1000 * b for n, b in zip(names, best)}


def torch_layer_names(model):
    """torchvision's VGG-16 modules in order, named as Caffe's layers
    (the pooling to 7 x 7 and the flattening have no Caffe layer)."""
    from torch import nn
    out, block, i = [], 1, 1
    for m in model.features:
        if isinstance(m, nn.MaxPool2d):
            out.append((f"pool{block}", m))
            block, i = block + 1, 1
        elif isinstance(m, nn.Conv2d):
            out.append((f"conv{block}_{i}", m))
        else:
            out.append((f"relu{block}_{i}", m))
            i += 1
    out += [("avgpool", model.avgpool), ("flatten", nn.Flatten())]
    out += list(zip(("fc6", "relu6", "drop6", "fc7", "relu7", "drop7",
                     "my_fc8"), model.classifier))
    return out


def torch_layer_times():
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    import torch
    import torch_twin as tt
    model = tt.build_model(K_VGG, "cpu").eval()
    layers = torch_layer_names(model)
    x = torch.ones(LAYERS_BATCH, 3, 224, 224)
    best = [float("inf")] * len(layers)
    with torch.no_grad():
        model(x)
        for _ in range(LAYERS_PASSES):
            y = x
            for i, (_, m) in enumerate(layers):
                t = time.perf_counter()
                y = m(y)
                best[i] = min(best[i], time.perf_counter() - t)
    return {n: 1000 * b for (n, _), b in zip(layers, best)}


def layer_compare(threads=2):
    """Per layer, VGG-16 inference at LAYERS_BATCH and this thread count:
    each side's best over LAYERS_RUNS workers in turn (one at a time)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads))
    best = {"caffe": {}, "torch": {}}
    for run in range(LAYERS_RUNS):
        for side in (("caffe", "torch") if run % 2 == 0 else
                     ("torch", "caffe")):
            py = CAFFE_PY if side == "caffe" else TORCH_PY
            p = subprocess.run([str(py), __file__, "--layer-times", side],
                               env=env, capture_output=True, text=True,
                               timeout=900, check=True)
            for name, ms in json.loads(p.stdout.splitlines()[-1]).items():
                best[side][name] = round(min(ms, best[side].get(name, ms)), 2)
    return {"batch": LAYERS_BATCH, "threads": threads, **best}


def loadavg():
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


class Worker:
    """One side of one case, alive for the whole comparison."""

    def __init__(self, side, case, threads):
        env = dict(os.environ)
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
        py = CAFFE_PY if side == "caffe" else TORCH_PY
        self.p = subprocess.Popen(
            [str(py), __file__, "--worker", side, "--case", case], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self._line(f"{side} {case}"))
        self.what = f"{side} {case}"

    def _line(self, what):
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"run.py: the {what} worker died "
                             f"(exit {self.p.wait()})")
        return line

    def step(self):
        self.p.stdin.write("step\n")
        self.p.stdin.flush()
        return float(self._line(self.what))

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=120)


def compare(case, threads):
    """Both sides of a case at a thread count, their iterations alternating
    one by one (who goes first alternating too), PAUSE apart so that one
    side's idle threads have gone to sleep before the other runs."""
    iters = CASES[case][2]
    before = loadavg()
    caffe = Worker("caffe", case, threads)
    torch = Worker("torch", case, threads)
    times = {"caffe": [], "torch": []}
    try:
        for i in range(iters):
            for side in (("caffe", "torch") if i % 2 == 0 else
                         ("torch", "caffe")):
                time.sleep(PAUSE)
                times[side].append((caffe if side == "caffe" else torch).step())
    finally:
        caffe.close()
        torch.close()
    out = {"load_before": before, "load_after": loadavg()}
    for side in times:
        out[side] = {"ms_median": round(1000 * statistics.median(times[side]), 3),
                     "ms_min": round(1000 * min(times[side]), 3),
                     "ms_all": [round(1000 * t, 2) for t in times[side]]}
    out["caffe"].update(caffe.info)
    out["torch"].update(torch.info)
    out["ratio_pairs_median"] = round(statistics.median(
        t / c for c, t in zip(times["caffe"], times["torch"])), 3)
    return out


def profile(threads=2):
    """Where Caffe's time goes: ``caffe time`` (this build's tool, through
    .venv/bin/caffe) over the VGG-16 nets, per layer, summed by layer type
    and direction, in ms per iteration and as shares."""
    import re
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(CAFFE_PY), __file__, "--write-nets", tmp],
                       check=True)
        for name, phase in (("infer_b1", "TEST"), ("train_b2", "TRAIN")):
            net = Path(tmp) / name / "net.prototxt"
            env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads),
                       GLOG_logtostderr="1", GLOG_minloglevel="0")
            p = subprocess.run(
                [str(ROOT / ".venv" / "bin" / "caffe"), "time", "-model",
                 str(net), "-phase", phase, "-iterations", "2"], env=env,
                capture_output=True, text=True, timeout=900)
            types = {}
            layer_type = {}
            from google.protobuf import text_format  # noqa: PLC0415
            sys.path.insert(0, str(ROOT / "build" / "cpu" / "src" / "python"))
            from caffe.proto import caffe_pb2  # noqa: PLC0415
            msg = text_format.Merge(net.read_text(), caffe_pb2.NetParameter())
            for layer in msg.layer:
                layer_type[layer.name] = layer.type
            for m in re.finditer(r"\] +(\S+)\s+(forward|backward): "
                                 r"([0-9.]+) ms", p.stderr):
                if phase == "TEST" and m[2] == "backward":
                    continue  # inference: caffe time runs both anyway
                # layers Caffe inserts (splits of a blob used twice)
                key = f"{layer_type.get(m[1], 'Split')} {m[2]}"
                types[key] = types.get(key, 0.0) + float(m[3])
            total = sum(types.values()) or 1.0
            top = sorted(types.items(), key=lambda kv: -kv[1])
            out[name] = {"threads": threads, "ms": {k: round(v, 1)
                                                     for k, v in top},
                         "share": {k: round(v / total, 3) for k, v in top}}
    return out


def ensure_torch():
    if TORCH_PY.exists() and subprocess.run(
            [str(TORCH_PY), "-c", "import torch, torchvision"],
            capture_output=True).returncode == 0:
        return
    print("run.py: installing torch and torchvision into bench/cpu/.venv "
          "(once; several GB)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(TORCH_VENV)],
                   check=True)
    subprocess.run([str(TORCH_PY), "-m", "pip", "install", "-q", "torch",
                    "torchvision"], check=True)


def peak_gflops():
    """The fp32 FMA peak, measured by fma_peak.c: one core's times the
    cores (what the hardware does; a busy machine lowers the all-cores run,
    which is kept beside it)."""
    exe = Path(tempfile.mkdtemp()) / "fma_peak"
    subprocess.run(["cc", "-O3", "-march=native", "-pthread",
                    str(HERE / "fma_peak.c"), "-o", str(exe)], check=True)
    n = os.cpu_count()

    def run(threads):
        return json.loads(subprocess.run(
            [str(exe), str(threads)], capture_output=True, text=True,
            check=True).stdout)
    one, every = run(1), run(n)
    return {"isa": one["isa"], "cores": n,
            "gflops": round(max(one["gflops"] * n, every["gflops"]), 1),
            "one_core_gflops": one["gflops"],
            "all_cores_gflops_measured": every["gflops"]}


def sgemm():
    p = subprocess.run([str(CAFFE_PY), str(HERE / "sgemm.py")],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def machine():
    info = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        k, _, v = line.partition(":")
        if k.strip() in ("model name", "cpu family", "model") and \
                k.strip() not in info:
            info[k.strip()] = v.strip()
    info["cores"] = os.cpu_count()
    info["kernel"] = platform.release()
    return info


def versions():
    t = subprocess.run([str(TORCH_PY), "-c", "import torch, torchvision; "
                        "print(torch.__version__, torchvision.__version__)"],
                       capture_output=True, text=True, check=True)
    torch_v, tv_v = t.stdout.split()
    return {"torch": torch_v, "torchvision": tv_v,
            "python": platform.python_version()}


def blas_choice():
    p = subprocess.run([str(CAFFE_PY), str(ROOT / "tools" / "jcdl_blas.py")],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3,
                    help="repetitions of every case (default 3)")
    ap.add_argument("--out", default=str(HERE),
                    help="where results.json and results.md go (default "
                         "bench/cpu: the committed ones are replaced)")
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated, of " + ", ".join(CASES))
    ap.add_argument("--worker", choices=("caffe", "torch"),
                    help=argparse.SUPPRESS)  # the run's own processes
    ap.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    ap.add_argument("--write-nets", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--layer-times", choices=("caffe", "torch"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--profile-only", action="store_true",
                    help="redo the summary, the profile and the per-layer "
                         "comparison of OUT/results.json and rewrite "
                         "results.md")
    args = ap.parse_args(argv)
    if args.write_nets:
        caffe_nets(args.write_nets)
        return 0
    if args.layer_times:
        with tempfile.TemporaryDirectory() as tmp:
            times = (caffe_layer_times(tmp) if args.layer_times == "caffe"
                     else torch_layer_times())
        print(json.dumps(times))
        return 0
    if args.profile_only:
        out = Path(args.out)
        res = json.loads((out / "results.json").read_text())
        ensure_torch()
        cases = list(res["summary"])[:-2]
        res["summary"] = summarize(res, cases)
        res["profile"] = profile()
        res["layers"] = layer_compare()
        res["profiled"] = time.strftime("%Y-%m-%d %H:%M:%S")
        (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
        (out / "results.md").write_text(markdown(res, cases))
        print(markdown(res, cases))
        return 0
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            step, info = (caffe_worker(args.case, tmp)
                          if args.worker == "caffe" else
                          torch_worker(args.case))
            serve(step, info, CASES[args.case][1])
        return 0

    ensure_torch()
    cases = [c for c in args.cases.split(",") if c]
    res = {"machine": machine(), "versions": versions(),
           "blas_choice": blas_choice(), "started": time.strftime(
               "%Y-%m-%d %H:%M:%S"), "load_start": loadavg(),
           "reps": []}
    # peak and sgemm in turns, the best of each: load from others only
    # ever lowers them
    tries = [(peak_gflops(), sgemm()) for _ in range(3)]
    res["peak"] = max((t[0] for t in tries), key=lambda p: p["gflops"])
    res["sgemm"] = max((t[1] for t in tries),
                       key=lambda g: g["gflops"]["square_2048"])
    res["peak_tries"] = [t[0]["gflops"] for t in tries]
    res["sgemm_tries"] = [t[1]["gflops"]["square_2048"] for t in tries]
    print(f"peak {res['peak']['gflops']} GFLOP/s, sgemm "
          f"{res['sgemm']['gflops']['square_2048']} ({res['sgemm']['corename']})",
          file=sys.stderr)
    for rep in range(args.reps):
        row = {}
        for case in cases:
            row[case] = {}
            for t in THREADS:
                r = row[case][f"t{t}"] = compare(case, t)
                print(f"rep {rep} {case} t{t}: caffe {r['caffe']['ms_median']}"
                      f" ms, torch {r['torch']['ms_median']} ms, load "
                      f"{r['load_before'][0]}", file=sys.stderr)
        res["reps"].append(row)
    res["load_end"] = loadavg()
    res["sgemm_end"] = sgemm()
    res["summary"] = summarize(res, cases)
    res["profile"] = profile()
    res["layers"] = layer_compare()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "results.md").write_text(markdown(res, cases))
    print(markdown(res, cases))
    return 0


def _best(row, side):
    t = min(row, key=lambda t: row[t][side]["ms_median"])
    return row[t][side]["ms_median"], f"{side}_{t}"


def summarize(res, cases):
    s = {}
    for case in cases:
        ratios, cm, tm, ck, tk = [], [], [], [], []
        for row in res["reps"]:
            c, ckey = _best(row[case], "caffe")
            t, tkey = _best(row[case], "torch")
            ratios.append(t / c)  # > 1: Caffe faster
            cm.append(c)
            tm.append(t)
            ck.append(ckey)
            tk.append(tkey)
        same = {t: round(statistics.median(
            row[case][t]["ratio_pairs_median"] for row in res["reps"]), 3)
            for t in res["reps"][0][case]}
        # what the second thread gives each side: t1's time over t2's
        gain = {side: round(statistics.median(
            row[case]["t1"][side]["ms_median"] /
            row[case]["t2"][side]["ms_median"] for row in res["reps"]), 2)
            for side in ("caffe", "torch")}
        s[case] = {"caffe_ms": round(statistics.median(cm), 2),
                   "torch_ms": round(statistics.median(tm), 2),
                   "caffe_speed_over_torch": round(statistics.median(ratios), 3),
                   "ratio_per_rep": [round(r, 3) for r in ratios],
                   "ratio_at_equal_threads": same,
                   "second_thread_speedup": gain,
                   "caffe_best": ck, "torch_best": tk}
    peak = res["peak"]["gflops"]
    s["sgemm_square_2048_gflops"] = res["sgemm"]["gflops"]["square_2048"]
    s["sgemm_of_peak"] = round(s["sgemm_square_2048_gflops"] / peak, 3)
    return s


def markdown(res, cases):
    s, m = res["summary"], res["machine"]
    loads = [r[c][t][k][0] for r in res["reps"] for c in r for t in r[c]
             for k in ("load_before", "load_after")]
    lines = [
        "# CPU benchmark: Caffe (this build) vs a PyTorch twin",
        "",
        f"Machine: {m.get('model name')} (family {m.get('cpu family')}, "
        f"model {m.get('model')}), {m['cores']} cores; "
        f"torch {res['versions']['torch']}. Run {res['started']}, "
        f"{len(res['reps'])} repetitions; in each, both sides of a case run "
        "at once in two processes and take turns iteration by iteration. "
        "The machine was "
        f"shared: load average (1 min) {res['load_start'][0]} at the start, "
        f"{min(loads)}–{max(loads)} around the measurements, "
        f"{res['load_end'][0]} at the end; compare the ratios (both sides "
        "measured back to back), not the times, with other runs.",
        "",
        f"BLAS: OpenBLAS kernel `{res['sgemm']['corename']}` in Caffe's "
        f"processes (`{res['reps'][0][cases[0]]['t1']['caffe']['blas_core']}`)"
        " "
        f"({res['sgemm']['config'].split(' NO_')[0]}); jcdl_blas: OpenBLAS's "
        f"own choice `{res['blas_choice']['own_choice']}`, override "
        f"`{res['blas_choice']['override']}`"
        f"{user_coretype(res['blas_choice'], res['sgemm']['corename'])}. "
        "sgemm 2048³: best of "
        f"{res['sgemm_tries']} GFLOP/s at the start (and "
        f"{res['sgemm_end']['gflops']['square_2048']} at the end), against a "
        f"measured fp32 peak of {res['peak']['gflops']} GFLOP/s "
        f"({res['peak']['isa']} FMA: one core's "
        f"{res['peak']['one_core_gflops']} x {res['peak']['cores']}, best of "
        f"{res['peak_tries']}): "
        f"{100 * s['sgemm_of_peak']:.0f} % of peak.",
        "",
        "| case | Caffe ms | PyTorch ms | Caffe speed / PyTorch | per repetition | at 1 / 2 threads each |",
        "|---|---|---|---|---|---|",
    ]
    for c in cases:
        r = s[c]
        lines.append(
            f"| {c} | {r['caffe_ms']} | {r['torch_ms']} | "
            f"**{r['caffe_speed_over_torch']}×** | "
            f"{', '.join(map(str, r['ratio_per_rep']))} | "
            f"{' / '.join(str(v) for v in r['ratio_at_equal_threads'].values())} |")
    lines += [""] + goals_markdown(s, cases)
    lines += ["Times: medians over the repetitions of each side's "
              "median iteration. Ratio: PyTorch's time over Caffe's (above 1: "
              "Caffe is faster), each side at its best thread count in that "
              "repetition; the last column compares equal thread counts "
              "(the median over alternating pairs of iterations). Best "
              "thread counts:"] + [
              f"{c}: Caffe {', '.join(s[c]['caffe_best'])}; PyTorch "
              f"{', '.join(s[c]['torch_best'])}." for c in cases] + [""]
    lines += ["What the second thread gives each side (the median of 1 "
              "thread's time over 2 threads'): " + "; ".join(
                  f"{c} Caffe {s[c]['second_thread_speedup']['caffe']}×, "
                  f"PyTorch {s[c]['second_thread_speedup']['torch']}×"
                  for c in cases if "second_thread_speedup" in s[c]) + ".",
              ""]
    if res.get("profiled"):
        lines += [f"The profile and the per-layer table below were made "
                  f"later, at {res['profiled']} (`--profile-only`).", ""]
    lines += layers_markdown(res.get("layers"))
    for name, prof in res.get("profile", {}).items():
        lines += [f"Where Caffe's time goes, VGG-16 {name} (`caffe time`, "
                  f"{prof['threads']} threads, ms per iteration by layer "
                  "type): " + ", ".join(
                      f"{k} {v} ({100 * prof['share'][k]:.0f} %)"
                      for k, v in list(prof["ms"].items())[:6]) + ".", ""]
    return "\n".join(lines)


def user_coretype(choice, ran):
    """The words on an OPENBLAS_CORETYPE the run inherited (jcdl keeps one
    the CPU can run) and the kernel Caffe's processes reported."""
    if choice.get("user_setting") is None:
        return " (no OPENBLAS_CORETYPE was set before the run)"
    return (f"; OPENBLAS_CORETYPE={choice['user_setting']} was set before "
            f"the run (kept by jcdl: a setting of the user's), and Caffe's "
            f"processes ran `{ran}`")


GOALS = {"sgemm_of_peak": 0.70, "caffe_speed_over_torch": 1.0}  # issue 13


def goals_markdown(s, cases):
    """Each goal, what the run measured and by how much it is met or
    missed."""
    rows = [("sgemm 2048³, share of the fp32 peak", GOALS["sgemm_of_peak"],
             s["sgemm_of_peak"])] + [
        (f"{c}: Caffe speed / PyTorch", GOALS["caffe_speed_over_torch"],
         s[c]["caffe_speed_over_torch"]) for c in cases]
    lines = ["| goal | at least | measured | |", "|---|---|---|---|"]
    for name, goal, got in rows:
        verdict = "met" if got >= goal else f"**missed: {got - goal:+.3f}**"
        lines.append(f"| {name} | {goal} | {got} | {verdict} |")
    return lines + [""]


def layers_markdown(lay):
    """The per-layer table: each convolution, pool and fully connected
    layer, ReLU and the rest summed; PyTorch's time over Caffe's."""
    if not lay:
        return []
    c, t = lay["caffe"], lay["torch"]
    rows, relu, other = [], [0.0, 0.0], [0.0, 0.0]
    for name in c:
        if name.startswith(("conv", "pool", "fc", "my_fc")):
            rows.append((name, c[name], t.get(name, 0.0)))
        elif name.startswith("relu"):
            relu = [relu[0] + c[name], relu[1] + t.get(name, 0.0)]
        else:
            other = [other[0] + c[name], other[1] + t.get(name, 0.0)]
    other[1] += sum(v for k, v in t.items() if k not in c)
    rows += [("ReLU (all)", *relu), ("the rest", *other)]
    rows.append(("total", sum(c.values()), sum(t.values())))
    out = [f"Per layer, VGG-16 inference at batch {lay['batch']} and "
           f"{lay['threads']} threads (each layer's best of "
           f"{LAYERS_PASSES} passes, over {LAYERS_RUNS} workers a side, one "
           "at a time; the rest: the input, dropout, and PyTorch's pooling "
           "to 7 × 7 and flattening):", "",
           "| layer | Caffe ms | PyTorch ms | PyTorch / Caffe |",
           "|---|---|---|---|"]
    for name, a, b in rows:
        ratio = f"{b / a:.2f}" if a >= 0.1 else "–"  # not below 0.1 ms
        out.append(f"| {name} | {a:.1f} | {b:.1f} | {ratio} |")
    return out + [""]


if __name__ == "__main__":
    sys.exit(main())
