"""A/B of one Caffe change on the CPU: the same case of run.py (or fc6
alone) in two processes that differ only in their pycaffe build or their
environment, taking turns step by step, so load from others hits both.

    .venv/bin/python bench/cpu/ab.py CASE THREADS REPS \\
        [--a-path PYTHONPATH] [--b-path PYTHONPATH] [--b-env NAME=VALUE ...]

CASE is one of run.py's CASES or ``fc6_b1`` (VGG-16's fc6, 25088 -> 4096,
at batch 1). A and B use this checkout's pycaffe (.venv's) unless given
another build's ``src/python`` (a build of the code before the change, e.g.
``BUILD_DIR=build/before caffe_KL/build.sh cpu`` at that commit). Prints
each side's median and best step in ms and A's median over B's (above 1:
B is faster). The README's figures for patches 0014, 0016 and 0017 came
from this (0017: ``--b-env GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` on the
build before it, which puts the same memory on huge pages)."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def fc6_step(tmp):
    import caffe
    from caffe import layers as L
    caffe.set_mode_cpu()
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 25088]))
    n.fc6 = L.InnerProduct(n.data, num_output=4096)
    path = Path(tmp) / "fc6.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    net.params["fc6"][0].data[...] = 0.001
    net.blobs["data"].data[...] = 1.0
    return net.forward


def worker(case):
    os.environ.setdefault("GLOG_minloglevel", "2")
    sys.path.insert(0, str(HERE))
    import run  # noqa: PLC0415  (run.py's nets)
    tmp = tempfile.mkdtemp()
    step = fc6_step(tmp) if case == "fc6_b1" else run.caffe_worker(case,
                                                                   tmp)[0]
    step()
    print("ready", flush=True)
    for _ in sys.stdin:
        t = time.perf_counter()
        step()
        print(json.dumps(time.perf_counter() - t), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case")
    ap.add_argument("threads")
    ap.add_argument("reps", type=int)
    ap.add_argument("--a-path")
    ap.add_argument("--b-path")
    ap.add_argument("--b-env", action="append", default=[])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.case)
    sides = {}
    for side, path, extra in (("A", args.a_path, []),
                              ("B", args.b_path, args.b_env)):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=args.threads)
        if path:
            env["PYTHONPATH"] = path
        env.update(e.split("=", 1) for e in extra)
        sides[side] = subprocess.Popen(
            [sys.executable, __file__, args.case, args.threads, "0",
             "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env)
    for p in sides.values():
        if p.stdout.readline().strip() != "ready":
            sys.exit("ab.py: a side failed to start")
    times = {side: [] for side in sides}
    for r in range(args.reps):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for side in order:
            sides[side].stdin.write("go\n")
            sides[side].stdin.flush()
            times[side].append(json.loads(sides[side].stdout.readline()))
    for p in sides.values():
        p.stdin.close()
        p.wait()
    med = {s: statistics.median(v) for s, v in times.items()}
    print(f"{args.case} at {args.threads} thread(s), {args.reps} steps "
          "each: " + ", ".join(f"{s} median {med[s] * 1e3:.1f} ms, best "
                               f"{min(v) * 1e3:.1f} ms"
                               for s, v in times.items())
          + f"; A/B {med['A'] / med['B']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
