"""Real signals to real processes: SIGTERM and SIGHUP stop jcdl train with a
snapshot as Ctrl-C does; a demo stopped by SIGTERM, SIGINT or SIGKILL never
leaves the earlier demo hidden; killed converts leave nothing a later run
does not clean up."""
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import BIN, default_signals, jcdl, nohup_signals
from test_train import make_k7_data, small_solver


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return make_k7_data(tmp_path_factory.mktemp("signals"))


def start(*args, cwd=None):
    return subprocess.Popen([str(BIN / "jcdl"), *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_signals)


def wait_for(path, text, proc, timeout=120):
    deadline = time.time() + timeout
    while not (path.exists() and text in path.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"no {text!r} in {path}"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_snapshot_and_stop_train(work, sig):
    name = sig.name.lower()
    solver = small_solver(work, name, 7, max_iter=100000, snapshot=0,
                          test_interval=100000, display=5)
    rel = solver.relative_to(work)
    proc = start("train", "--solver", rel, "--log", f"{name}/log", cwd=work)
    wait_for(work / name / "log", "Iteration 10 (", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    it = int(re.search(r"interrupted at iteration (\d+)", err)[1])
    prefix = f"{name}/snapshots/small_jcdl_iter_{it}"
    assert out.strip() == f"{prefix}.caffemodel"
    assert err.strip().splitlines()[-1].strip() == (
        f"jcdl train --solver {rel} --resume {prefix}.solverstate "
        f"--log {name}/log")
    assert (work / f"{prefix}.solverstate").is_file()
    assert sorted(p.name for p in (work / name / "snapshots").iterdir()) \
        == [f"small_jcdl_iter_{it}.caffemodel",
            f"small_jcdl_iter_{it}.solverstate"]


def test_an_ignored_sighup_does_not_stop_train(work):
    """Under nohup (SIGHUP ignored when jcdl starts) a hang-up does not stop
    training; SIGTERM still does, with its snapshot."""
    solver = small_solver(work, "nohup", 7, max_iter=100000, snapshot=0,
                          test_interval=100000, display=5)
    rel = solver.relative_to(work)
    proc = subprocess.Popen(
        [str(BIN / "jcdl"), "train", "--solver", str(rel), "--log",
         "nohup/log"], cwd=work, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=nohup_signals)
    wait_for(work / "nohup" / "log", "Iteration 10 (", proc)
    proc.send_signal(signal.SIGHUP)
    start_log = (work / "nohup" / "log").read_text()
    at = max(int(m) for m in re.findall(r"Iteration (\d+) \(", start_log))
    wait_for(work / "nohup" / "log", f"Iteration {at + 20} (", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert int(re.search(r"interrupted at iteration (\d+)", err)[1]) \
        >= at + 20


def test_an_ignored_sighup_does_not_stop_a_demo(tmp_path):
    """The demo under nohup: a hang-up while it trains, and it still
    finishes with its report."""
    out = tmp_path / "demo"
    proc = subprocess.Popen(
        [str(BIN / "jcdl"), *map(str, demo_args(out, 30))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=nohup_signals)
    wait_for(out / "jcdl" / "train.log", "Iteration 0 ", proc)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert (out / "report.md").is_file()


def demo_args(out, iterations):
    return ["demo", "--out", out, "--iterations", iterations,
            "--images", 16]


@pytest.fixture
def earlier_demo(tmp_path):
    out = tmp_path / "demo"
    jcdl(*demo_args(out, 1))
    return out, (out / "report.md").read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_demo_puts_the_earlier_one_back(earlier_demo, tmp_path,
                                                  sig):
    """SIGTERM (and Ctrl-C) while a variant trains: the earlier demo is
    back, nothing hidden is left, and no resume command names files the
    demo removed. A second demo into the same folder meanwhile is
    refused."""
    out, report = earlier_demo
    proc = start(*demo_args(out, 100000))
    wait_for(out / "jcdl" / "train.log", "Iteration 20 ", proc)
    second = jcdl(*demo_args(out, 1), check=False)
    assert second.returncode == 1
    assert f"another process (PID {proc.pid}) is writing it now" in \
        second.stderr.strip().splitlines()[-1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "jcdl demo: interrupted"
    assert "resume" not in err and "Traceback" not in err
    assert (out / "report.md").read_text() == report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def training(proc, out):
    """Waits until the demo proc has set the earlier demo aside and trains
    its first variant."""
    aside = out.with_name(f".{out.name}.earlier-{proc.pid}")
    deadline = time.time() + 120
    while not aside.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    wait_for(out / "jcdl" / "train.log", "Iteration 0 ", proc)


def test_a_killed_demo_is_put_back_by_the_next_run(earlier_demo, tmp_path):
    """SIGKILL leaves the earlier demo aside and a half-made one in its
    place; the next run puts the earlier one back first (here that run is
    stopped too, so the earlier demo is what remains)."""
    out, report = earlier_demo
    proc = start(*demo_args(out, 100000))
    training(proc, out)
    proc.kill()
    proc.communicate(timeout=60)
    hidden = [p.name for p in tmp_path.iterdir() if p.name != "demo"]
    assert f".demo.earlier-{proc.pid}" in hidden
    assert not (out / "report.md").exists()
    proc = start(*demo_args(out, 100000))
    training(proc, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert "put back the earlier demo" in err
    assert (out / "report.md").read_text() == report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    # a killed run that had completed: its earlier demo is the stale one
    aside = tmp_path / ".demo.earlier-999999999"
    aside.mkdir()
    (aside / "report.md").write_text("older")
    jcdl(*demo_args(out, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_a_closed_terminal_still_gets_its_snapshot(work, sig):
    """The terminal went away (its reader closed stdout and stderr, as a
    closed terminal or a pipe's reader that quit does), then the signal:
    the snapshot and its solverstate are still written, exit 0."""
    name = f"gone_{sig.name.lower()}"
    solver = small_solver(work, name, 7, max_iter=100000, snapshot=0,
                          test_interval=100000, display=5)
    proc = start("train", "--solver", solver.relative_to(work), "--log",
                 f"{name}/log", cwd=work)
    wait_for(work / name / "log", "Iteration 10 (", proc)
    proc.stdout.close()
    proc.stderr.close()
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 0
    log = (work / name / "log").read_text()
    it = int(re.findall(r"_iter_(\d+)\.solverstate", log)[-1])
    assert sorted(p.name for p in (work / name / "snapshots").iterdir()) \
        == [f"small_jcdl_iter_{it}.caffemodel",
            f"small_jcdl_iter_{it}.solverstate"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_convert_cleanly(tmp_path, sig):
    """A scheduler's SIGTERM (or a hang-up) stops jcdl convert as Ctrl-C
    does: one line, exit 130, no partial LMDB left behind."""
    from conftest import write_image
    lines = []
    for i in range(400):
        write_image(tmp_path / f"root/{i}.png", 64, 64, seed=i)
        lines.append(f"{i}.png 1 2")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    proc = start("convert", tmp_path / "root", tmp_path / "list.txt",
                 tmp_path / "db",
                 "--resize_height", 300, "--resize_width", 300)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".db.partial-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "jcdl convert: interrupted"
    assert not (tmp_path / "db").exists()
    assert not list(tmp_path.glob(".db.partial-*"))


@pytest.mark.parametrize("after", [
    "jcdl.cli", "traceback", "numpy._core._multiarray_umath", "numpy",
    "cv2", "jcdl.caffenet", "jcdl.trainer", "jcdl.predict"])
def test_ctrl_c_while_the_command_starts(tmp_path, after):
    """Ctrl-C while jcdl imports its modules (most of a start's 0.3 s):
    one line, exit 130, no traceback, nothing written. The moments are
    found by Python's import-time lines on stderr: the signal comes right
    after the module named is imported (numpy's own ones included, where
    an interrupt can come out of the import as an ImportError)."""
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        proc = subprocess.Popen(
            [str(BIN / "jcdl"), *map(str, demo_args(tmp_path / "d", 1))],
            stdout=subprocess.DEVNULL, stderr=f,
            env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
            preexec_fn=default_signals)
    line = re.compile(rf"^import time: .*\| +{re.escape(after)}$", re.M)
    deadline = time.time() + 60
    while not line.search(err.read_text()):
        assert proc.poll() is None and time.time() < deadline, \
            err.read_text()[-2000:]
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, err.read_text()[-2000:]
    said = [s for s in err.read_text().splitlines()
            if not s.startswith("import time:")]
    assert said == ["jcdl demo: interrupted"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr"]
