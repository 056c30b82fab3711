"""Shared helpers: the real ``jcdl`` command and real images on disk."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def run(cmd, *args, cwd=None, check=True, timeout=600, env=None):
    """Runs a tool of .venv/bin (``jcdl``, ``caffe``, ``convert_imageset_r``
    ...) and returns the CompletedProcess; with check, a non-zero exit fails
    the test showing stderr. Output naming files that are not UTF-8 is read
    as their bytes (surrogates), as arguments are passed."""
    full_env = dict(os.environ)
    full_env.pop("GLOG_minloglevel", None)  # set by import_caffe in-process
    full_env.update(env or {})
    proc = subprocess.run([str(BIN / cmd), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          errors="surrogateescape", env=full_env)
    if check and proc.returncode != 0:
        pytest.fail(f"{cmd} {' '.join(map(str, args))} exited "
                    f"{proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def jcdl(*args, **kw):
    return run("jcdl", *args, **kw)


def default_signals():
    """preexec_fn for a child that a test stops with a signal: SIGINT,
    SIGTERM and SIGHUP at their defaults whatever the test runner has (a
    run under nohup ignores SIGHUP, a script's background job SIGINT), so
    the child sees the signal as a user's process would."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def nohup_signals():
    """preexec_fn: default_signals, then SIGHUP ignored, as under nohup."""
    default_signals()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
         "file=sys.stderr); sys.exit(r.returncode)")


def peak_kib(cmd, *args, **kw):
    """Runs a tool as run() does, under a parent of its own, and returns its
    peak resident memory in KiB (this process's RUSAGE_CHILDREN holds the
    largest of every child a test ran before, not this one's)."""
    proc = run(sys.executable, "-c", _PEAK, BIN / cmd, *args, **kw)
    return int(proc.stderr.strip().splitlines()[-1])


def assert_clean_error(proc, *fragments):
    """A bad-input failure: non-zero exit, no traceback, and a last stderr
    line that contains every fragment."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    for f in fragments:
        assert f in lines[-1], (f, proc.stderr)


def strict_json(text):
    """json.loads, refusing what strict JSON decoders refuse and Python's
    takes: a lone surrogate ("\\udce9", a byte name's surrogate escaped)."""
    import json
    obj = json.loads(text)
    json.dumps(obj, ensure_ascii=False).encode("utf-8")   # raises on one
    return obj


def write_image(path, width=32, height=24, seed=0, color=None):
    """A real image file (format from the suffix) with random texture; a
    colour (B, G, R) tints it."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    if color is not None:
        img = (img // 4 + np.asarray(color, np.uint8) // 4 * 3).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img), path
    return img


def png_claiming(width, height, depth=8, kind=2):
    """A tiny PNG file whose header claims width x height pixels (colour,
    or the PNG colour type kind at depth bits), with almost no pixel data:
    what a decoder must refuse before it allocates."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", width, height, depth, kind, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
