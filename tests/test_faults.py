"""Faults of the machine, fed through the real commands: a full disk (a real
2 MB tmpfs), two writers of one output at once (two real processes), and
the outputs of a run that fails. Every case: one line naming the file, a
non-zero exit, no traceback, nothing half-written, and what was there
before untouched."""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (BIN, assert_clean_error, default_signals, jcdl, run,
                      write_image)
from test_train import make_k7_data, small_solver

from jcdl.caffenet import import_caffe

caffe_pb2 = import_caffe().proto.caffe_pb2
FULL = "No space left on device"

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="mounting a tmpfs needs root")


class Disk:
    """A real small filesystem: a tmpfs of ``size`` mounted at ``path``,
    unmounted at the end."""

    def __init__(self, path, size="2m", options=""):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        opts = f"size={size}" + (f",{options}" if options else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs",
                        str(self.path)], check=True)

    def fill(self, leave=0):
        """Fills the disk but for ``leave`` bytes."""
        st = os.statvfs(self.path)
        free = st.f_bavail * st.f_frsize - leave
        with open(self.path / ".filler", "ab") as f:
            if free > 0:
                os.posix_fallocate(f.fileno(), os.path.getsize(f.name), free)

    def empty(self):
        (self.path / ".filler").unlink(missing_ok=True)

    def listing(self):
        """Every path on the disk but the filler, with each file's bytes."""
        return {str(p.relative_to(self.path)):
                p.read_bytes() if p.is_file() else None
                for p in sorted(self.path.rglob("*")) if p.name != ".filler"}

    def umount(self):
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def disk(tmp_path):
    d = Disk(tmp_path / "disk")
    yield d
    d.umount()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Images with a list (K = 7), their LMDBs, a mean, netgen's nets and
    a net trained for a few iterations, with its log."""
    work = tmp_path_factory.mktemp("faults")
    lines = []
    for i in range(60):
        write_image(work / f"img/{i}.png", 36, 36, seed=i)
        lines.append(f"img/{i}.png " + " ".join(
            str((i + k) % 7 + 1) for k in range(7)))
    (work / "list.txt").write_text("\n".join(lines) + "\n")
    make_k7_data(work)
    solver = small_solver(work, "net", 7, max_iter=4, snapshot=0,
                          test_interval=4, display=1)
    jcdl("train", "--solver", solver.relative_to(work), "--log", "net/log",
         cwd=work)
    return work


def assert_fails_on_full_disk(proc, name):
    assert_clean_error(proc, name, FULL)


def assert_fails_naming_one_of(proc, folder, outputs):
    """A full disk's one line, naming one of the outputs in folder."""
    assert_clean_error(proc, FULL)
    named = proc.stderr.strip().splitlines()[-1]
    assert any(str(folder / o) in named for o in outputs), named


# ------------------------------------------------------------ full disk

@pytest.mark.parametrize("tool", ["jcdl", "convert_imageset_r",
                                  "convert_imageset_r-leveldb"])
@pytest.mark.parametrize("leave", [0, 100 << 10])
def test_convert_on_a_full_disk(inputs, disk, tool, leave):
    """No traceback, no CHECK abort: one line naming the DB, no DB and no
    partial one; what was on the disk is as it was."""
    (disk.path / "earlier.txt").write_text("kept")
    before = disk.listing()
    disk.fill(leave)
    db = disk.path / "db"
    backend = ["--backend=leveldb"] if tool.endswith("leveldb") else []
    if tool == "jcdl":
        proc = jcdl("convert", inputs, inputs / "list.txt", db, check=False)
    else:
        proc = run("convert_imageset_r", *backend, f"{inputs}/",
                   inputs / "list.txt", db, check=False)
    assert_fails_on_full_disk(proc, str(db))
    assert proc.returncode == 1 and "Check failed" not in proc.stderr
    assert disk.listing() == before
    disk.empty()      # with room, the same command writes it
    if tool == "jcdl":
        jcdl("convert", inputs, inputs / "list.txt", db)
    else:
        run("convert_imageset_r", *backend, f"{inputs}/",
            inputs / "list.txt", db)
    assert (db / ("data.mdb" if not backend else "CURRENT")).is_file()


def stage_commands(inputs, out):
    """(name, args, the outputs it writes) of each command that writes
    files, writing under out."""
    net = inputs / "net"
    model = ["--model", net / "deploy.prototxt", "--weights",
             net / "snapshots/small_jcdl_iter_4.caffemodel",
             "--mean", inputs / "data/mean.binaryproto"]
    (inputs / "gt.txt").write_text("a 1 2\nb 2 1\n")
    (inputs / "pred.txt").write_text("a 1 1\nb 2 1\n")
    votes = inputs / "votes"
    if not votes.exists():
        from jcdl import demo
        demo.make_dataset(votes, n=40, size=16)
    return [
        ("mean", ["mean", inputs / "data/train7", out / "mean.binaryproto"],
         ["mean.binaryproto", "mean.npy"]),
        ("netgen", ["netgen", "--arch", "small", "--out", out / "nets",
                    "--train-db", inputs / "data/train7", "--test-db",
                    inputs / "data/test7", "--crop", "32"],
         ["nets"]),
        ("score", ["score", inputs / "pred.txt", inputs / "gt.txt",
                   "--out", out / "score"], ["score"]),
        ("evaluate", ["evaluate", *model, "--db", inputs / "data/test7",
                      "--out", out / "eval", "--predictions",
                      out / "pred.txt"], ["eval", "pred.txt"]),
        ("plot", ["plot", net / "log", "--out", out / "plots"], ["plots"]),
        ("prepare", ["prepare", "flickr_ldl", votes, out / "lists"],
         ["lists"]),
    ]


def test_every_stage_on_a_full_disk(inputs, disk):
    """Each command's outputs written once with room; then again on the
    full disk: one line naming a file of it, and the earlier outputs are
    byte for byte as they were."""
    commands = stage_commands(inputs, disk.path)
    for name, args, outputs in commands:
        jcdl(*args)
        for o in outputs:
            assert (disk.path / o).exists(), (name, o)
    before = disk.listing()
    for leave in (0, 8 << 10):   # nothing, or a write begun
        disk.fill(leave)
        for name, args, outputs in commands:
            proc = jcdl(*args, check=False)
            assert_fails_naming_one_of(proc, disk.path, outputs)
            assert disk.listing() == before, name
        disk.empty()


def test_a_failed_run_leaves_no_new_folder(inputs, disk):
    """Outputs in folders not there yet, on a full disk: each command fails
    in one line and the folders it made for them (netgen's snapshot folder
    too) are gone again."""
    (disk.path / "earlier.txt").write_text("kept")
    before = disk.listing()
    disk.fill()
    out = disk.path / "new" / "deeper"
    commands = [("convert", ["convert", inputs, inputs / "list.txt",
                             out / "db"], ["db"]),
                *stage_commands(inputs, out)]
    for name, args, outputs in commands:
        proc = jcdl(*args, check=False)
        assert_fails_naming_one_of(proc, out, outputs)
        assert disk.listing() == before, name
    for backend in ("lmdb", "leveldb"):      # and the C++ tool's folders
        proc = run("convert_imageset_r", f"--backend={backend}",
                   f"{inputs}/", inputs / "list.txt", out / "db",
                   check=False)
        assert_fails_naming_one_of(proc, out, ["db"])
        assert proc.returncode == 1 and "Check failed" not in proc.stderr
        assert disk.listing() == before, backend


def test_train_stops_with_its_last_snapshot_on_a_full_disk(inputs, disk):
    """Snapshots at every iteration fill the disk: training stops by
    itself, keeping the last complete snapshot, and says how to resume;
    that command continues once there is room."""
    name = os.path.relpath(disk.path / "run", inputs)   # on the tmpfs
    solver = small_solver(inputs, name, 7, max_iter=100000,
                          snapshot=1, test_interval=100000, display=1)
    rel = os.path.relpath(solver, inputs)
    proc = jcdl("train", "--solver", rel, cwd=inputs, check=False,
                timeout=120)
    assert_clean_error(proc, f"{name}/snapshots", FULL, "resume with:")
    assert "Check failed" not in proc.stderr
    command = proc.stderr.strip().splitlines()[-1].split("resume with: ")[1]
    state = re.search(r"--resume (\S+)", command)[1]
    it = int(re.search(r"_iter_(\d+)\.solverstate", state)[1])
    assert it >= 2
    folder = disk.path / "run/snapshots"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"small_jcdl_iter_{i}.{ext}"
                           for i in range(1, it + 1)
                           for ext in ("caffemodel", "solverstate"))
    for i in range(1, it + 1):   # every one complete
        s = caffe_pb2.SolverState()
        s.ParseFromString((folder / f"small_jcdl_iter_{i}.solverstate")
                          .read_bytes())
        assert s.iter == i and len(s.history) == 8
        net = caffe_pb2.NetParameter()
        net.ParseFromString((folder / f"small_jcdl_iter_{i}.caffemodel")
                            .read_bytes())
        assert net.layer[-1].name or net.layer
    for i in range(1, it):       # room made: the command resumes
        for ext in ("caffemodel", "solverstate"):
            (folder / f"small_jcdl_iter_{i}.{ext}").unlink()
    from test_train import set_solver
    set_solver(solver, max_iter=it + 2, snapshot=0)
    proc = jcdl(*command.split()[1:], cwd=inputs)
    assert proc.stdout.strip().endswith(f"_iter_{it + 2}.caffemodel")


def test_a_run_whose_last_snapshot_just_fits_succeeds(inputs, disk,
                                                     tmp_path):
    """Room for the snapshots a run writes, and no more: it completes
    (no room is held for a snapshot that will not come), and resuming the
    finished run is not refused for want of room either."""
    probe = small_solver(inputs, os.path.relpath(tmp_path / "probe", inputs),
                         7, max_iter=1, snapshot=0, test_interval=100000)
    jcdl("train", "--solver", os.path.relpath(probe, inputs), cwd=inputs)
    one = sum(p.stat().st_size for p in (tmp_path / "probe/snapshots")
              .iterdir())
    name = os.path.relpath(disk.path / "two", inputs)
    solver = small_solver(inputs, name, 7, max_iter=2, snapshot=1,
                          test_interval=100000)
    disk.fill(2 * one + (100 << 10))
    proc = jcdl("train", "--solver", os.path.relpath(solver, inputs),
                cwd=inputs, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("_iter_2.caffemodel")
    state = disk.path / "two/snapshots/small_jcdl_iter_2.solverstate"
    proc = jcdl("train", "--solver", os.path.relpath(solver, inputs),
                "--resume", state, cwd=inputs, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_train_with_its_log_on_a_full_disk(inputs, disk):
    """The log's disk fills up: training stops, snapshotting where there is
    room, with one line naming the log and the command that resumes."""
    solver = small_solver(inputs, "logfull", 7, max_iter=100000,
                          snapshot=0, test_interval=100000, display=1)
    rel = solver.relative_to(inputs)
    disk.fill(8 << 10)
    proc = jcdl("train", "--solver", rel, "--log", disk.path / "log",
                cwd=inputs, check=False, timeout=120)
    assert_clean_error(proc, str(disk.path / "log"), FULL, "resume with:")
    state = re.search(r"--resume (\S+)", proc.stderr)[1]
    assert (inputs / state).is_file()
    assert f"--log {disk.path / 'log'}" in proc.stderr
    assert (disk.path / "log").read_text().count("Iteration") > 1


def test_train_with_no_room_for_a_snapshot_refuses_to_start(inputs, disk):
    name = os.path.relpath(disk.path / "none", inputs)
    solver = small_solver(inputs, name, 7, max_iter=10, snapshot=0,
                          test_interval=100000)
    disk.fill(16 << 10)   # room for the set-up, not for a snapshot
    proc = jcdl("train", "--solver", os.path.relpath(solver, inputs),
                cwd=inputs, check=False, timeout=120)
    assert_clean_error(proc, f"{name}/snapshots", "no room for a snapshot")
    assert "Iteration 1" not in proc.stderr
    assert sorted(p.name for p in (disk.path / "none/snapshots")
                  .iterdir()) == []


def test_demo_on_a_full_disk_keeps_the_earlier_demo(inputs, disk):
    out = disk.path / "demo"
    out.mkdir()
    (out / ".jcdl-demo").write_text("written by jcdl demo\n")
    (out / "report.md").write_text("the earlier report")
    before = disk.listing()
    proc = jcdl("demo", "--out", out, "--iterations", 1, "--images", 16,
                check=False)
    assert_clean_error(proc, str(out), FULL)
    assert disk.listing() == before


# ----------------------------------------------- two writers at once

def start(*args, tool="jcdl", cwd=None):
    return subprocess.Popen([str(BIN / tool), *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_signals)


def stopped_while_writing(proc, lock, timeout=60):
    """Stops proc (SIGSTOP) as soon as it holds its claim (the lock file
    has its PID)."""
    deadline = time.time() + timeout
    while not (lock.exists() and lock.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.0005)
    proc.send_signal(signal.SIGSTOP)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A list of 1500 images (20 files under 1500 names, each listed
    once): a convert takes a moment to write."""
    work = tmp_path_factory.mktemp("many")
    for i in range(20):
        write_image(work / f"img/{i}.png", 48, 48, seed=i)
    for i in range(20, 1500):
        (work / f"img/{i}.png").symlink_to(f"{i % 20}.png")
    (work / "list.txt").write_text("".join(
        f"img/{i}.png 1 {i % 3}\n" for i in range(1500)))
    return work


@pytest.mark.parametrize("first,second", [
    ("jcdl", "jcdl"), ("convert_imageset_r", "jcdl"),
    ("jcdl", "convert_imageset_r")])
def test_a_second_convert_onto_the_same_db_is_refused(many, tmp_path,
                                                      first, second):
    """While one convert writes the DB, another is refused naming its PID
    (jcdl and convert_imageset_r take the same claim); once it is written,
    another says it exists. The DB is the first one's, whole."""
    db = tmp_path / "db"
    lock = tmp_path / ".db.lock"

    def args(tool):
        return (["convert", many] if tool == "jcdl" else [f"{many}/"]) + \
            [many / "list.txt", db]

    def convert(tool):
        return run(tool, *args(tool), check=False)

    a = start(*args(first), tool=first)
    stopped_while_writing(a, lock)
    try:
        b = convert(second)
        assert_clean_error(b, str(db), f"another process (PID {a.pid}) is "
                           "writing it now")
    finally:
        a.send_signal(signal.SIGCONT)
    a.communicate(timeout=120)
    assert a.returncode == 0
    c = convert(second)
    assert_clean_error(c, str(db), "already exists")
    import lmdb
    env = lmdb.open(str(db), readonly=True, lock=False)
    assert env.stat()["entries"] == 1500
    env.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_a_killed_writers_claim_and_partial_are_taken_over(many, tmp_path):
    """A convert killed (SIGKILL) while it writes leaves its lock file and
    its .db.partial-PID; the next convert, of either tool, takes the claim
    over, removes the partial and writes the DB."""
    for tool in ("jcdl", "convert_imageset_r"):
        db = tmp_path / f"db_{tool}"
        lock = tmp_path / f".{db.name}.lock"
        args = (["convert", many] if tool == "jcdl" else [f"{many}/"]) + \
            [many / "list.txt", db]
        a = start(*args, tool=tool)
        partial = tmp_path / f".{db.name}.partial-{a.pid}"
        deadline = time.time() + 60
        while not (partial / "lock.mdb").exists():
            assert a.poll() is None, a.communicate()
            assert time.time() < deadline
            time.sleep(0.0005)
        a.kill()
        a.communicate(timeout=30)
        assert partial.is_dir()
        leftovers = sorted(p.name for p in tmp_path.iterdir()
                           if db.name in p.name)
        assert lock.name in leftovers
        proc = run(tool, *args)
        assert proc.returncode == 0
        assert sorted(p.name for p in tmp_path.iterdir()
                      if db.name in p.name) == [db.name]


def test_a_second_train_with_the_same_snapshots_is_refused(inputs):
    solver = small_solver(inputs, "twice", 7, max_iter=100000,
                          snapshot=0, test_interval=100000, display=5)
    rel = solver.relative_to(inputs)
    a = start("train", "--solver", rel, "--log", "twice/log", cwd=inputs)
    try:
        deadline = time.time() + 60
        log = inputs / "twice/log"
        while not (log.exists() and "Iteration 5 " in log.read_text()):
            assert a.poll() is None and time.time() < deadline
            time.sleep(0.05)
        b = jcdl("train", "--solver", rel, cwd=inputs, check=False)
        assert_clean_error(b, "twice/snapshots/small_jcdl",
                           f"another process (PID {a.pid}) is writing it")
    finally:
        a.send_signal(signal.SIGINT)
        a.communicate(timeout=60)
    assert a.returncode == 0


# ------------------------------------------------ outputs of a failed run

@pytest.mark.parametrize("how", ["full", "read-only"])
def test_evaluate_keeps_the_predictions_when_out_fails(inputs, tmp_path,
                                                       how):
    """evaluate --predictions P --out OUT, with OUT on a full disk or a
    read-only one: P is neither written nor replaced."""
    d = Disk(tmp_path / "out", options="ro" if how == "read-only" else "")
    try:
        if how == "full":
            d.fill(16 << 10)
        net = inputs / "net"
        args = ["evaluate", "--model", net / "deploy.prototxt", "--weights",
                net / "snapshots/small_jcdl_iter_4.caffemodel", "--mean",
                inputs / "data/mean.binaryproto", "--db",
                inputs / "data/test7", "--out", d.path / "eval"]
        new = tmp_path / "new.txt"
        kept = tmp_path / "kept.txt"
        kept.write_text("the earlier predictions\n")
        for pred in (new, kept):
            proc = jcdl(*args, "--predictions", pred, check=False)
            assert_clean_error(proc, str(d.path / "eval"))
        assert not new.exists()
        assert kept.read_text() == "the earlier predictions\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == \
            ["kept.txt", "out"]
    finally:
        d.umount()
