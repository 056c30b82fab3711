"""sgemm GFLOP/s of one OpenBLAS, in this process (run it once per library
and OPENBLAS_CORETYPE: the kernel is chosen when the library loads).

    python sgemm.py [--lib libopenblas.so.0] [--prefix scipy_] [--threads N]

Prints one JSON object: the library, openblas_get_corename(), its config,
and the best-of-N GFLOP/s for a square 2048^3 product and for the GEMMs of
VGG-16's convolutions as Caffe calls them (one image: M = output channels,
N = output pixels, K = input channels x 9).
"""
import argparse
import ctypes
import json
import time

import numpy as np

# (name, M, N, K): square, then Caffe's forward GEMMs of VGG-16 at 224 x 224
SHAPES = [("square_2048", 2048, 2048, 2048),
          ("conv1_2", 64, 224 * 224, 64 * 9),
          ("conv2_2", 128, 112 * 112, 128 * 9),
          ("conv3_3", 256, 56 * 56, 256 * 9),
          ("conv4_3", 512, 28 * 28, 512 * 9),
          ("conv5_3", 512, 14 * 14, 512 * 9)]


def measure(lib, prefix, M, N, K, seconds=0.6):
    rng = np.random.default_rng(0)
    a = rng.random((M, K), dtype=np.float32)
    b = rng.random((K, N), dtype=np.float32)
    c = np.zeros((M, N), np.float32)
    f = getattr(lib, prefix + "cblas_sgemm")
    vp = ctypes.c_void_p
    args = (101, 111, 111, M, N, K, ctypes.c_float(1.0),
            vp(a.ctypes.data), K, vp(b.ctypes.data), N, ctypes.c_float(0.0),
            vp(c.ctypes.data), N)
    f(*args)  # warm-up: threads, buffers, pages
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        t = time.perf_counter()
        f(*args)
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    if not np.allclose(c[:2, :2], a[:2] @ b[:, :2], rtol=1e-3):
        raise SystemExit("sgemm.py: wrong product")
    return 2.0 * M * N * K / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="libopenblas.so.0")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--threads", type=int, default=0,
                    help="openblas_set_num_threads (0: the library's default)")
    ap.add_argument("--seconds", type=float, default=0.6)
    args = ap.parse_args()
    lib = ctypes.CDLL(args.lib)
    for name in ("openblas_get_corename", "openblas_get_config"):
        getattr(lib, args.prefix + name).restype = ctypes.c_char_p
    if args.threads:
        getattr(lib, args.prefix + "openblas_set_num_threads")(args.threads)
    out = {"lib": args.lib,
           "corename": getattr(lib, args.prefix + "openblas_get_corename")().decode(),
           "config": getattr(lib, args.prefix + "openblas_get_config")().decode(),
           "threads": getattr(lib, args.prefix + "openblas_get_num_threads")(),
           "gflops": {}}
    for name, m, n, k in SHAPES:
        out["gflops"][name] = round(measure(lib, args.prefix, m, n, k, args.seconds), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
