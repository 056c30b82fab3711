"""The wall time of a one-image `jcdl predict` with the demo's small net
(netgen --arch small: crop 32, K = 8, random weights, a 36 x 36 mean and
a 36 x 36 JPEG, as `jcdl demo` makes them), as a user types it: a new
process each time, `.venv/bin/jcdl` with its BLAS start-up hook, warm
(the files in the page cache). Beside it, as many bare Python starts and
`import caffe`s.

    .venv/bin/python bench/cpu/predict_time.py [--runs 9] [--out bench/cpu]

Writes OUT/predict.json: the median and best of each, in seconds, with the
machine, the BLAS kernel (tools/jcdl_blas.py's report) and the load
average. The three take turns, after one warm-up run each.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv" / "bin"


def make_model(tmp):
    """deploy.prototxt, random weights, a mean and one JPEG in tmp."""
    sys.path.insert(0, str(ROOT / "python"))
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    import numpy as np
    from PIL import Image
    from jcdl import netgen
    tmp = Path(tmp)
    deploy = tmp / "deploy.prototxt"
    deploy.write_text(str(netgen.deploy_net("small", "jcdl", 8, 32)))
    caffe.set_mode_cpu()
    caffe.set_random_seed(1)
    net = caffe.Net(str(deploy), caffe.TEST)
    rng = np.random.default_rng(0)
    for params in net.params.values():
        for p in params:
            p.data[...] = rng.normal(0, 0.05, p.data.shape)
    net.save(str(tmp / "w.caffemodel"))
    np.save(tmp / "mean.npy", np.full((3, 36, 36), 110, np.float32))
    Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(
        tmp / "img.jpg")
    return [str(VENV / "jcdl"), "predict", "--model", str(deploy),
            "--weights", str(tmp / "w.caffemodel"), "--mean",
            str(tmp / "mean.npy"), str(tmp / "img.jpg")]


def wall(cmd):
    """Seconds of one run of cmd."""
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - t, 3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent),
                    help="where predict.json goes (default bench/cpu: the "
                         "committed one is replaced)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        predict = make_model(tmp)
        py = str(VENV / "python")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from run import blas_choice, machine
        res = {"machine": machine(), "blas": blas_choice(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "load_start": round(os.getloadavg()[0], 2)}
        # in turns, so that load hits all three alike
        cmds = {"jcdl_predict_one_image": predict,
                "python_start": [py, "-c", "pass"],
                "import_caffe": [py, "-c", "import caffe"]}
        for cmd in cmds.values():
            wall(cmd)  # warm-up: the page cache, jcdl_blas's cache
        rows = {k: [] for k in cmds}
        for _ in range(args.runs):
            for k, cmd in cmds.items():
                rows[k].append(wall(cmd))
        for k, times in rows.items():
            res[k] = {"median_s": round(statistics.median(times), 3),
                      "best_s": round(min(times), 3), "runs": times}
        res["load_end"] = round(os.getloadavg()[0], 2)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out = Path(args.out) / "predict.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
