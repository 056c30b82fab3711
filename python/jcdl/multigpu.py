"""``jcdl train --gpu 0,1`` / ``--gpu all``: Caffe's own multi-GPU training
(data parallel over NCCL, one solver per GPU, gradients summed each
iteration) through the stock ``caffe train -gpu ...``, after jcdl train's
checks, so bad input is still one line instead of a CHECK abort.

The batch size in the net is per GPU (Caffe's rule): with N GPUs each
iteration sees N times the batch. Logging and snapshots are the caffe
tool's own; Ctrl-C, SIGTERM or SIGHUP to jcdl is passed on to caffe as
SIGINT, on which it snapshots and stops. caffe runs in a session of its
own, so that a terminal's Ctrl-C or hang-up reaches jcdl only and caffe
follows jcdl's choice: under nohup (SIGHUP ignored) a hang-up reaches
neither. The log is glog's, which ``jcdl plot`` reads.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

from .errors import JcdlError
from .caffenet import gpu_count, import_caffe, loaded_libraries


def gpus_arg(text):
    """An argparse type for --gpu: N (one GPU), N,M,... or all (several:
    a list, or "all")."""
    import argparse  # noqa: PLC0415
    if text == "all":
        return "all"
    try:
        ids = [int(t) for t in text.split(",")]
    except ValueError:
        ids = None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a GPU id, ids separated by commas (0,1) or all")
    return ids[0] if len(ids) == 1 else ids


def caffe_command(solver, gpus, weights=None, resume=None):
    """The stock caffe tool's command line for this training."""
    tool = Path(sys.executable).with_name("caffe")
    cmd = [str(tool), "train", f"--solver={solver}",
           "--gpu=" + (gpus if gpus == "all" else ",".join(map(str, gpus)))]
    if weights:
        cmd.append(f"--weights={weights}")
    if resume:
        cmd.append(f"--snapshot={resume}")
    return cmd


def check_gpus(gpus):
    """Refuses, in one line, several GPUs this Caffe cannot train on."""
    caffe = import_caffe()
    where = Path(caffe.__file__).parent
    what = "--gpu " + (gpus if gpus == "all" else ",".join(map(str, gpus)))
    libraries = loaded_libraries()
    if not any("/libcudart" in p for p in libraries):
        raise JcdlError(where, f"{what}: this Caffe is a CPU-only build "
                        "('CUDA=1 make' puts the GPU build, with NCCL, in "
                        ".venv)")
    if not any("/libnccl" in p for p in libraries):
        raise JcdlError(where, f"{what}: this Caffe was built without NCCL, "
                        "which Caffe's multi-GPU training needs (rebuild "
                        "with USE_NCCL=1)")
    count = gpu_count(libraries)
    if count is not None and gpus != "all" and max(gpus) >= count:
        raise JcdlError(where, f"{what}: {count} GPU(s) visible")


def _tee(lines, out):
    for line in lines:
        sys.stderr.write(line)
        if out:
            out.write(line)
            out.flush()


def train_on_gpus(solver, gpus, weights=None, resume=None, log=None):
    """Checks as jcdl train does, then runs ``caffe train`` on ``gpus`` (a
    list of ids or "all"); its log goes to stderr and, with ``log``, to
    that file too. Returns caffe's exit status."""
    from .train import check_run  # noqa: PLC0415
    check_run(solver, weights, resume)
    check_gpus(gpus)
    return run_caffe(caffe_command(solver, gpus, weights, resume), log,
                     append=bool(resume))


def run_caffe(cmd, log=None, append=False):
    """Runs the caffe tool's command line cmd in a session of its own, its
    log to stderr and to ``log`` (appended to with ``append``); a Ctrl-C,
    SIGTERM or SIGHUP that stops jcdl is sent on to caffe as SIGINT.
    Returns caffe's exit status."""
    env = dict(os.environ, GLOG_logtostderr="1")
    env.pop("GLOG_minloglevel", None)   # the INFO lines are the log
    out = open(log, "a" if append else "w") if log else None
    try:
        with subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env,
                              text=True, errors="replace",
                              start_new_session=True) as proc:
            try:
                _tee(proc.stderr, out)
            except KeyboardInterrupt:   # Ctrl-C, SIGTERM, SIGHUP to jcdl:
                proc.send_signal(signal.SIGINT)  # caffe snapshots, stops
                _tee(proc.stderr, out)
                proc.wait()
                raise
        return proc.returncode
    finally:
        if out:
            out.close()
