"""jcdl train --gpu 0,1 / --gpu all: Caffe's own multi-GPU engine through
the stock caffe tool, after jcdl train's checks. No machine here has
several GPUs (or one): what runs here is the command line it builds, the
argument rules, and the clear refusal of a build that cannot do it."""
import argparse

import pytest

from conftest import BIN, assert_clean_error, jcdl
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
