"""CPU benchmark: Caffe (this build, through pycaffe) against a PyTorch twin
of the same nets, in one run with the sides alternating, plus the BLAS
kernel Caffe runs on and its sgemm against the machine's fp32 peak.

    .venv/bin/python bench/cpu/run.py [--reps 3] [--out bench/cpu]

Cases (the same layers, shapes, losses and SGD on both sides; weights are
random, data constant, so nothing but compute is timed):
- ``vgg16_infer_b1``, ``vgg16_infer_b8``: VGG-16 (K = 7 outputs) forward,
  Caffe ``net.forward()`` in TEST phase, PyTorch eval mode under no_grad;
- ``vgg16_train_b2``: one SGD step of the JCDL VGG-16 at batch 2 (Caffe
  ``solver.step(1)`` on bench/gpu's net: 0.8 KL + 0.2 dominant softmax,
  dropout, the original recipe's SGD; PyTorch: bench/gpu/torch_twin.py's
  model, loss and optimizer);
- ``small_train_b32``: one SGD step of the demo's small net (``jcdl netgen
  --arch small``: batch 32, crop 32, K = 8, as ``jcdl demo`` trains it),
  at 1 and 2 threads on both sides (OPENBLAS_NUM_THREADS / torch threads);
  the ratio is taken at each side's best.

Every measurement is its own process (Caffe in .venv's Python, PyTorch in
bench/cpu/.venv, which this script makes and fills with torch and
torchvision from PyPI the first time; make never installs them). Each
repetition runs every case on both sides, the side that goes first
alternating, and the ratios are taken within a repetition, so load from
other users of the machine hits both sides alike; the load average is
recorded around every measurement. Writes results.json and results.md.
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
CASES = {  # name: (batch, warm-up iterations, timed iterations)
    "vgg16_infer_b1": (1, 2, 6),
    "vgg16_infer_b8": (8, 1, 3),
    "vgg16_train_b2": (2, 1, 3),
    "small_train_b32": (32, 20, 100),
}


# --- workers (each in its own process) --------------------------------------

def _timed(step, warmup, iters):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"ms_median": round(1000 * statistics.median(times), 3),
            "ms_min": round(1000 * min(times), 3), "iters": iters}


def caffe_worker(case, tmp):
    sys.path.insert(0, str(ROOT / "python"))
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    os.environ.setdefault("GLOG_minloglevel", "2")
    import ctypes

    import caffe
    from caffe import layers as L
    from jcdl import netgen
    import make_prototxts as mp
    pb = caffe.proto.caffe_pb2
    caffe.set_mode_cpu()
    caffe.set_random_seed(1)
    batch, warmup, iters = CASES[case]
    tmp = Path(tmp)
    if case.startswith("vgg16_infer"):
        n = caffe.NetSpec()
        n.data = L.Input(shape=dict(dim=[batch, 3, 224, 224]))
        netgen._body(n, "vgg16", K_VGG, deploy=False)  # with fillers
        (tmp / "net.prototxt").write_text(str(n.to_proto()))
        net = caffe.Net(str(tmp / "net.prototxt"), caffe.TEST)
        net.blobs["data"].data[...] = 1.0
        step = net.forward
    else:
        if case == "vgg16_train_b2":
            net = mp.bench_net("default", batch=batch)
        else:  # the demo's small net over constant DummyData
            full = netgen.train_val_net("small", "jcdl", 0.8, K_SMALL, "x",
                                        "y", None, batch, batch, 32, True)
            net = pb.NetParameter(name="small_bench")
            d = net.layer.add(name="data", type="DummyData",
                              top=["data", "label"])
            p = d.dummy_data_param
            p.shape.add().dim.extend([batch, 3, 32, 32])
            p.shape.add().dim.extend([batch, K_SMALL])
            p.data_filler.add(type="constant", value=1.0)
            p.data_filler.add(type="constant", value=1.0 / K_SMALL)
            net.layer.extend(
                l for l in full.layer if l.type not in ("Data", "Accuracy"))
        (tmp / "net.prototxt").write_text(str(net))
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
    out = _timed(step, warmup, iters)
    lib = ctypes.CDLL("libopenblas.so.0")
    lib.openblas_get_corename.restype = ctypes.c_char_p
    out["blas_core"] = lib.openblas_get_corename().decode()
    out["blas_threads"] = lib.openblas_get_num_threads()
    return out


def torch_worker(case):
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    import torch
    from torch import nn
    import torch_twin as tt
    torch.manual_seed(1)
    batch, warmup, iters = CASES[case]
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
    out = _timed(step, warmup, iters)
    out["torch_threads"] = torch.get_num_threads()
    out["mkldnn"] = torch.backends.mkldnn.is_available()
    return out


# --- the orchestration ------------------------------------------------------

def loadavg():
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def measure(side, case, threads=None):
    env = dict(os.environ)
    if threads:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    py = CAFFE_PY if side == "caffe" else TORCH_PY
    before = loadavg()
    p = subprocess.run([str(py), __file__, "--worker", side, "--case", case],
                       env=env, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise SystemExit(f"run.py: {side} {case} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["load_before"], out["load_after"] = before, loadavg()
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
    """The fp32 FMA peak of all cores, measured by fma_peak.c."""
    exe = Path(tempfile.mkdtemp()) / "fma_peak"
    subprocess.run(["cc", "-O3", "-march=native", "-pthread",
                    str(HERE / "fma_peak.c"), "-o", str(exe)], check=True)
    n = os.cpu_count()
    return json.loads(subprocess.run([str(exe), str(n)], capture_output=True,
                                     text=True, check=True).stdout)


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
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--worker", choices=("caffe", "torch"))
    ap.add_argument("--case", choices=list(CASES))
    args = ap.parse_args(argv)
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            r = (caffe_worker(args.case, tmp) if args.worker == "caffe"
                 else torch_worker(args.case))
        print(json.dumps(r))
        return 0

    ensure_torch()
    cases = [c for c in args.cases.split(",") if c]
    res = {"machine": machine(), "versions": versions(),
           "blas_choice": blas_choice(), "started": time.strftime(
               "%Y-%m-%d %H:%M:%S"), "load_start": loadavg(),
           "peak": peak_gflops(), "sgemm": sgemm(), "reps": []}
    print(f"peak {res['peak']['gflops']} GFLOP/s, sgemm "
          f"{res['sgemm']['gflops']['square_2048']} ({res['sgemm']['corename']})",
          file=sys.stderr)
    for rep in range(args.reps):
        row = {}
        for i, case in enumerate(cases):
            sides = ("caffe", "torch") if (rep + i) % 2 == 0 else \
                ("torch", "caffe")
            threads = (1, 2) if case == "small_train_b32" else (None,)
            row[case] = {}
            for t in threads:
                for side in sides:
                    key = side if t is None else f"{side}_t{t}"
                    row[case][key] = measure(side, case, t)
                    print(f"rep {rep} {case} {key}: "
                          f"{row[case][key]['ms_median']} ms", file=sys.stderr)
        res["reps"].append(row)
    res["load_end"] = loadavg()
    res["sgemm_end"] = sgemm()
    res["summary"] = summarize(res, cases)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "results.md").write_text(markdown(res, cases))
    print(markdown(res, cases))
    return 0


def _best(row, side):
    keys = [k for k in row if k == side or k.startswith(side + "_t")]
    k = min(keys, key=lambda k: row[k]["ms_median"])
    return row[k]["ms_median"], k


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
        s[case] = {"caffe_ms": round(statistics.median(cm), 2),
                   "torch_ms": round(statistics.median(tm), 2),
                   "caffe_speed_over_torch": round(statistics.median(ratios), 3),
                   "ratio_per_rep": [round(r, 3) for r in ratios],
                   "caffe_best": ck, "torch_best": tk}
    peak = res["peak"]["gflops"]
    s["sgemm_square_2048_gflops"] = res["sgemm"]["gflops"]["square_2048"]
    s["sgemm_of_peak"] = round(s["sgemm_square_2048_gflops"] / peak, 3)
    return s


def markdown(res, cases):
    s, m = res["summary"], res["machine"]
    loads = [r[c][k]["load_before"][0] for r in res["reps"] for c in r
             for k in r[c]]
    lines = [
        "# CPU benchmark: Caffe (this build) vs a PyTorch twin",
        "",
        f"Machine: {m.get('model name')} (family {m.get('cpu family')}, "
        f"model {m.get('model')}), {m['cores']} cores; "
        f"torch {res['versions']['torch']}. Run {res['started']}, "
        f"{len(res['reps'])} repetitions, sides alternating. The machine was "
        f"shared: load average (1 min) {res['load_start'][0]} at the start, "
        f"{min(loads)}–{max(loads)} before the measurements, "
        f"{res['load_end'][0]} at the end; compare the ratios (both sides "
        "measured back to back), not the times, with other runs.",
        "",
        f"BLAS: OpenBLAS kernel `{res['sgemm']['corename']}` "
        f"({res['sgemm']['config'].split(' NO_')[0]}); jcdl_blas: OpenBLAS's "
        f"own choice `{res['blas_choice']['own_choice']}`, override "
        f"`{res['blas_choice']['override']}`. sgemm 2048³: "
        f"{res['sgemm']['gflops']['square_2048']} GFLOP/s at the start, "
        f"{res['sgemm_end']['gflops']['square_2048']} at the end, against a "
        f"measured fp32 peak of {res['peak']['gflops']} GFLOP/s "
        f"({res['peak']['isa']} FMA, all cores): "
        f"{100 * s['sgemm_of_peak']:.0f} % of peak.",
        "",
        "| case | Caffe ms | PyTorch ms | Caffe speed / PyTorch | per repetition |",
        "|---|---|---|---|---|",
    ]
    for c in cases:
        r = s[c]
        lines.append(
            f"| {c} | {r['caffe_ms']} | {r['torch_ms']} | "
            f"**{r['caffe_speed_over_torch']}×** | "
            f"{', '.join(map(str, r['ratio_per_rep']))} |")
    lines += ["", "Medians over the repetitions of each side's median "
              "iteration; the ratio is PyTorch's time over Caffe's within a "
              "repetition (above 1: Caffe is faster). small_train_b32 takes "
              "each side at its best thread count "
              f"(Caffe: {', '.join(s['small_train_b32']['caffe_best'])}; "
              f"PyTorch: {', '.join(s['small_train_b32']['torch_best'])})."
              if "small_train_b32" in s else "", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
