"""Turns the raw outputs of bench/gpu/run_h200.sh into its two result files.

    summarize_h200.py throughput --work DIR --out h200-train-throughput.json
    summarize_h200.py loss       --work DIR --out h200-loss-layers.json

DIR holds what run_h200.sh left there:
  BUILD_INFO                  the pack's (tools/pack_gpu.sh)
  device.txt                  nvidia-smi's name of GPU 0
  train-<variant>.log         `caffe train` of the benchmark solver
  train-<variant>.env         the variant's engine and environment
  time-<variant>.log          `caffe time` of the benchmark net
  torch.json                  bench/gpu/torch_twin.py's output
  loss_layers.json            loss_layers_bench's output
Standard library only: it runs under whatever python3 the GPU machine has.
"""
import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

BATCH = 32
WARMUP_ITERS = 20           # iterations before the timed display intervals
FLOP_PER_IMAGE = 3 * 15.5e9  # one training step of VGG-16 at 224 x 224
PEAK_TF32 = 495e12           # H200 dense TF32 tensor-core peak, FLOP/s
LOSS_TYPES = ("SoftmaxWithKLLoss", "SoftmaxWithDominantLoss",
              "SoftmaxWithMyKLLoss")

# glog line of Solver::Step: "Iteration 30 (29.12 iter/s, 0.3434s/10 iters),
# loss = 1.9459"
TRAIN_RE = re.compile(r"Iteration (\d+) \(([-+.\deE]+|inf|nan) iter/s, "
                      r"([-+.\deE]+)s/(\d+) iters?\)")
# glog lines of `caffe time`: "   conv1_1\tforward: 1.234 ms."
LAYER_RE = re.compile(r"\]\s+(\S+)\s+(forward|backward): ([-+.\deE]+) ms\.")
AVG_RE = re.compile(r"Average (Forward pass|Backward pass|Forward-Backward): "
                    r"([-+.\deE]+) ms\.")


def parse_train_log(text, batch=BATCH, warmup=WARMUP_ITERS):
    """Training speed from Solver::Step's display lines: the intervals that
    start at or after the warm-up iterations."""
    intervals = []
    for m in TRAIN_RE.finditer(text):
        end, seconds, n = int(m.group(1)), float(m.group(3)), int(m.group(4))
        if end - n >= warmup and n > 0:
            intervals.append((end, seconds, n))
    if not intervals:
        return None
    iters = sum(n for _, _, n in intervals)
    seconds = sum(s for _, s, _ in intervals)
    per_iter = [1000.0 * s / n for _, s, n in intervals]
    return {"ms_per_iter": round(1000.0 * seconds / iters, 4),
            "img_per_s": round(batch * iters / seconds, 2),
            "iterations_timed": iters,
            "first_timed_iteration": intervals[0][0] - intervals[0][2],
            "interval_ms_per_iter": [round(x, 3) for x in per_iter]}


def parse_time_log(text):
    """Per-layer and total times of `caffe time` (ms per iteration)."""
    layers = {}
    for m in LAYER_RE.finditer(text):
        layers.setdefault(m.group(1), {})[m.group(2)] = float(m.group(3))
    totals = {m.group(1): float(m.group(2)) for m in AVG_RE.finditer(text)}
    if not layers and not totals:
        return None
    return {"layers": layers,
            "forward_ms": totals.get("Forward pass"),
            "backward_ms": totals.get("Backward pass"),
            "forward_backward_ms": totals.get("Forward-Backward")}


def top_layers(profile, n=10):
    """The n layers that take the most forward + backward time."""
    rows = [(name, t.get("forward", 0.0) + t.get("backward", 0.0),
             t.get("forward", 0.0), t.get("backward", 0.0))
            for name, t in profile["layers"].items()]
    rows.sort(key=lambda r: -r[1])
    return [{"layer": name, "ms": round(total, 3), "forward_ms": f,
             "backward_ms": b} for name, total, f, b in rows[:n]]


def read_kv(path):
    out = {}
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip()
    return out


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def device_name(work):
    p = Path(work) / "device.txt"
    if p.is_file() and p.read_text().strip():
        return p.read_text().strip().splitlines()[0]
    torch = read_json(Path(work) / "torch.json") or {}
    return torch.get("device", "unknown")


def now():
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def physical_share(img_per_s):
    if not img_per_s:
        return None
    return round(img_per_s * FLOP_PER_IMAGE / PEAK_TF32, 5)


def caffe_variants(work):
    """{variant: speed and settings} of every train-<variant>.log."""
    out = {}
    for log in sorted(Path(work).glob("train-*.log")):
        name = log.stem[len("train-"):]
        speed = parse_train_log(log.read_text(errors="replace"))
        entry = {"settings": read_kv(log.with_suffix(".env"))}
        if speed is None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            entry["error"] = "no timed iterations in the log: " + \
                " | ".join(tail)
        else:
            entry.update(speed)
            entry["share_of_physical_limit"] = physical_share(
                speed["img_per_s"])
        out[name] = entry
    return out


def choices(variants):
    """What the Caffe variants of one run say about the build's defaults,
    each as a ratio of two speeds measured in that run (> 1: the first is
    faster)."""
    speed = {k: v["img_per_s"] for k, v in variants.items()
             if v.get("img_per_s")}

    def ratio(a, b):
        return round(speed[a] / speed[b], 4) if a in speed and b in speed \
            else None

    workspaces = [k for k in ("default", "cudnn_ws64", "cudnn_ws256",
                              "cudnn_ws1024") if k in speed]
    best_ws = max(workspaces, key=speed.get) if workspaces else None
    return {
        "cudnn_over_caffe_engine": ratio("default", "caffe_engine"),
        "best_workspace_variant": best_ws,
        "best_workspace_over_8mib": ratio(best_ws, "default")
        if best_ws else None,
        "measured_over_heuristics_8mib": ratio("cudnn_find", "default"),
        "measured_over_heuristics_1024mib": ratio("cudnn_find_ws1024",
                                                  "cudnn_ws1024"),
        "tf32_over_strict_fp32": ratio("default", "cudnn_no_tf32"),
        "lmdb_over_constant_data": ratio("lmdb", "default"),
    }


def throughput(work):
    work = Path(work)
    build = read_kv(work / "BUILD_INFO")
    variants = caffe_variants(work)
    primary = "default" if "default" in variants else next(iter(variants), None)
    caffe = variants.get(primary, {})
    torch = read_json(work / "torch.json") or {}
    tvars = torch.get("variants", {})
    tprim = tvars.get("fp32", {})
    profiles = {}
    for log in sorted(work.glob("time-*.log")):
        prof = parse_time_log(log.read_text(errors="replace"))
        if prof:
            profiles[log.stem[len("time-"):]] = {
                "forward_ms": prof["forward_ms"],
                "backward_ms": prof["backward_ms"],
                "forward_backward_ms": prof["forward_backward_ms"],
                "top_layers": top_layers(prof)}
    c, t = caffe.get("img_per_s"), tprim.get("img_per_s")
    ok = {k: v for k, v in variants.items() if "img_per_s" in v}
    best = max(ok, key=lambda k: ok[k]["img_per_s"]) if ok else None
    return {
        "device": device_name(work),
        "date": now(),
        "batch": BATCH,
        "input": [3, 224, 224],
        "classes": torch.get("classes", 7),
        "caffe_img_per_s": c,
        "torch_img_per_s": t,
        "caffe_over_torch": round(c / t, 4) if c and t else None,
        "goal_caffe_over_torch": 1.0,
        "caffe_variant": primary,
        "torch_variant": "fp32",
        "caffe_best_variant": best,
        "caffe_best_over_torch": round(ok[best]["img_per_s"] / t, 4)
        if best and t else None,
        "physical_limit": {
            "flop_per_image_per_step": FLOP_PER_IMAGE,
            "peak_flop_per_s": PEAK_TF32,
            "peak": "H200 dense TF32 tensor cores",
            "caffe_share": physical_share(c),
            "torch_share": physical_share(t)},
        "caffe_settings": {
            "tool": "caffe train --solver bench/gpu/solver_b32*.prototxt "
                    "-gpu 0 (full SGD steps: forward, backward, update)",
            "net": "bench/gpu/vgg16_jcdl_b32.prototxt (jcdl netgen's VGG-16 "
                   "JCDL over constant DummyData, K = 7)",
            "solver": "SGD lr 1e-4 momentum 0.9 weight_decay 0.005, "
                      "lr_mult 1/2, my_fc8 10/20",
            "timing": f"Solver display intervals after {WARMUP_ITERS} "
                      "warm-up iterations",
            "precision": "fp32 blobs; cuDNN convolutions may use TF32 "
                         "(CUDNN_DEFAULT_MATH) unless NVIDIA_TF32_OVERRIDE=0; "
                         "cuBLAS (fc layers, im2col GEMMs) fp32",
            "variant": caffe.get("settings", {}),
            "build": build},
        "torch_settings": {k: v for k, v in torch.items() if k != "variants"}
        | {"variant": tprim.get("settings"),
           "ms_per_iter": tprim.get("ms_per_iter")},
        "caffe_choices": choices(variants),
        "caffe_variants": variants,
        "torch_variants": tvars,
        "caffe_profile": profiles,
    }


def loss_layers(work):
    work = Path(work)
    bench = read_json(work / "loss_layers.json")
    variants = caffe_variants(work)
    primary = "default" if "default" in variants else next(iter(variants), None)
    step_ms = variants.get(primary, {}).get("ms_per_iter")
    prof = parse_time_log(
        (work / f"time-{primary}.log").read_text(errors="replace")) \
        if (work / f"time-{primary}.log").is_file() else None
    profiled = {}
    if prof:
        for name, t in prof["layers"].items():
            if name.startswith("loss"):
                profiled[name] = t
    out = {"device": device_name(work), "date": now(), "batch": BATCH,
           "net": "bench/gpu/vgg16_jcdl_b32.prototxt",
           "method": "bench/gpu/loss_layers_bench.cpp: the net's layers run "
                     "one by one in GPU mode; the 'cpu' way runs the two "
                     "JCDL loss layers in CPU mode inside it (the original's "
                     "way: Forward_cpu/Backward_cpu with the logits and "
                     "labels copied to the host and the gradient back)",
           "goals": {"share_of_iteration_at_most": 0.005,
                     "cpu_over_gpu_at_least": 20}}
    if not bench:
        out["error"] = "loss_layers_bench gave no result (see h200-run.log)"
        return out
    gpu_ms = bench["loss_layers_ms"]["gpu"]
    cpu_ms = bench["loss_layers_ms"]["cpu"]
    out.update({
        "loss_layers_ms_gpu": gpu_ms,
        "loss_layers_ms_cpu_original_way": cpu_ms,
        "iteration_ms_gpu": bench["iteration_ms"]["gpu"]["median"],
        "iteration_ms_cpu_original_way": bench["iteration_ms"]["cpu"]["median"],
        "share_of_iteration": bench["share_of_iteration"]["gpu"],
        "share_of_iteration_original_way": bench["share_of_iteration"]["cpu"],
        "share_of_train_step": round(gpu_ms / step_ms, 6) if step_ms else None,
        "train_step_ms": step_ms,
        "cpu_over_gpu_in_net": bench["cpu_over_gpu"]["in_net"],
        "isolated_us_gpu": bench["isolated_us"]["gpu"],
        "isolated_us_cpu_original_way": bench["isolated_us"]["cpu"],
        "cpu_over_gpu_isolated": bench["cpu_over_gpu"]["isolated"],
        # the per-sample losses summed on the host (Forward_gpu before it
        # summed on the device) against on the device
        "isolated_us_gpu_host_sum": bench["isolated_us"].get("gpu_host_sum"),
        "host_sum_over_device_sum": bench.get("host_sum_over_device_sum"),
        "iteration_saved_ms": round(bench["iteration_ms"]["cpu"]["median"]
                                    - bench["iteration_ms"]["gpu"]["median"],
                                    4),
        "caffe_time_profile_ms": profiled,
        "layers_ms": bench["layers_ms"],
        "raw": bench,
    })
    out["goals"]["share_met"] = out["share_of_iteration"] <= 0.005
    out["goals"]["speedup_met"] = out["cpu_over_gpu_isolated"] >= 20
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("throughput", "loss"))
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    result = throughput(args.work) if args.what == "throughput" \
        else loss_layers(args.work)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"summarize_h200: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
