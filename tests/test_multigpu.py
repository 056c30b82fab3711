"""jcdl train --gpu 0,1 / --gpu all: Caffe's own multi-GPU engine through
the stock caffe tool, after jcdl train's checks. No machine here has
several GPUs (or one): what runs here is the command line it builds, the
argument rules, the clear refusal of a build that cannot do it, and how
the caffe child gets the terminal's signals (with the CPU caffe tool)."""
import argparse
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import BIN, assert_clean_error, default_signals, jcdl
from jcdl.multigpu import caffe_command, gpus_arg
from test_train import make_lmdb, small_solver


def test_gpu_argument_forms():
    assert gpus_arg("0") == 0 and gpus_arg("3") == 3
    assert gpus_arg("0,1") == [0, 1] and gpus_arg("all") == "all"
    for bad in ("", "a", "0,", "0,0", "-1", "1,x"):
        with pytest.raises(argparse.ArgumentTypeError):
            gpus_arg(bad)


def test_the_caffe_command_line():
    cmd = caffe_command("s.prototxt", [0, 1], weights="a.caffemodel")
    assert cmd == [str(BIN / "caffe"), "train", "--solver=s.prototxt",
                   "--gpu=0,1", "--weights=a.caffemodel"]
    assert caffe_command("s.prototxt", "all", resume="x.solverstate")[3:] \
        == ["--gpu=all", "--snapshot=x.solverstate"]


def test_several_gpus_on_this_build_are_refused_after_the_checks(tmp_path):
    work = tmp_path
    (work / "data").mkdir()
    make_lmdb(work / "data" / "train8", 16, 8)
    make_lmdb(work / "data" / "test8", 10, 8, seed=1)
    solver = small_solver(work, "run", 8)
    # the checks come first: a missing weights file is named
    proc = jcdl("train", "--solver", solver, "--gpu", "0,1", "--weights",
                work / "nope.caffemodel", cwd=work, check=False)
    assert_clean_error(proc, "nope.caffemodel", "no such")
    for gpus in ("0,1", "all"):
        proc = jcdl("train", "--solver", solver, "--gpu", gpus, cwd=work,
                    check=False)
        assert_clean_error(proc, f"--gpu {gpus}", "CPU-only build")
        assert not (work / "run" / "snapshots").exists() or \
            not list((work / "run" / "snapshots").iterdir())
    proc = jcdl("train", "--solver", solver, "--gpu", "0,0", cwd=work,
                check=False)
    assert proc.returncode == 2 and "give a GPU id" in proc.stderr


# run_caffe's child, started as a terminal's foreground job would be: the
# leader of its own process group, to which the test sends the "terminal's"
# signals; with "nohup" it ignores SIGHUP, as under nohup
RUN_CAFFE = """
import signal, sys
from jcdl.multigpu import run_caffe
if sys.argv[1] == "nohup":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
try:
    sys.exit(run_caffe([sys.argv[2], "train", "--solver=" + sys.argv[3]],
                       log=sys.argv[4]))
except KeyboardInterrupt:
    sys.exit(130)
"""


def cpu_caffe_job(work, name, mode):
    solver = small_solver(work, name, 8, max_iter=400, display=10,
                          test_interval=100000, snapshot=0)
    log = work / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_CAFFE, mode, str(BIN / "caffe"),
         str(solver.relative_to(work)), str(log)], cwd=work,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: (default_signals(), os.setpgid(0, 0)))
    deadline = time.time() + 120
    while not (log.exists() and "Iteration 20 " in log.read_text()):
        assert proc.poll() is None and time.time() < deadline, \
            proc.communicate()
        time.sleep(0.05)
    return proc, log, work / name / "snapshots"


@pytest.fixture(scope="module")
def cpu_work(tmp_path_factory):
    work = tmp_path_factory.mktemp("multigpu")
    (work / "data").mkdir()
    make_lmdb(work / "data" / "train8", 16, 8)
    make_lmdb(work / "data" / "test8", 10, 8, seed=1)
    return work


def test_a_hangup_under_nohup_reaches_neither_jcdl_nor_caffe(cpu_work):
    """caffe (the CPU tool here, as the GPU one would) runs in a session of
    its own: a hang-up to the terminal's process group under nohup does not
    make it snapshot (its -sighup_effect) or stop; it trains to the end."""
    proc, log, snaps = cpu_caffe_job(cpu_work, "hup", "nohup")
    os.killpg(proc.pid, signal.SIGHUP)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Optimization Done" in log.read_text()
    assert sorted(p.name for p in snaps.iterdir()) == [
        "small_jcdl_iter_400.caffemodel", "small_jcdl_iter_400.solverstate"]


def test_ctrl_c_reaches_caffe_through_jcdl(cpu_work):
    """A Ctrl-C to the terminal's process group stops jcdl, which sends
    caffe SIGINT: caffe snapshots once and stops early."""
    proc, log, snaps = cpu_caffe_job(cpu_work, "int", "default")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    text = log.read_text()
    assert "Optimization stopped early" in text
    names = sorted(p.name for p in snaps.iterdir())
    assert len(names) == 2 and "iter_400" not in names[0], names
