"""Faults met inside the C++ side, through the real commands: a record over
protobuf's 2 GB refused from the image header (any PNG, BMP or JPEG) by
convert_imageset_r and jcdl convert alike, or after decoding (TIFF); the
folders made for a DB removed when convert_imageset_r fails; real
SIGINT/SIGTERM/SIGHUP stopping convert_imageset_r with nothing left; a disk
filled by another process in the moment between jcdl train releasing its
reserve and Caffe writing the snapshot (patch 0013, a real tmpfs and a real
second process), in binaryproto and HDF5 (0020); an LMDB truncated in place while Caffe, or one of
jcdl's own python-lmdb readers, reads it (patch 0015). Every case: one line
naming the file, a non-zero exit, no partial output, what was there before
intact."""
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from conftest import (BIN, assert_clean_error, default_signals, jcdl,
                      png_claiming, run, write_image)
from test_faults import FULL, Disk
from test_hostile_inputs import write_deploy, write_weights
from test_train import (make_k7_data, make_lmdb, make_mean, set_solver,
                        small_solver)

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="mounting a tmpfs needs root")


@pytest.fixture
def disk(tmp_path):
    d = Disk(tmp_path / "disk", size="4m")
    yield d
    d.umount()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The K = 7 LMDBs and mean the small net trains on."""
    return make_k7_data(tmp_path_factory.mktemp("native"))


# ------------------------------------- 1. a record over 2 GB, from its header

def bmp_claiming(width, height, bits=24):
    """A BMP file (24-bit, or bits) whose header claims width x height, with
    no pixels."""
    header = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0,
                       2835, 2835, 0, 0)
    return header + info


def jpeg_claiming(width, height, components=None, exif=False):
    """A real small JPEG whose start of frame is rewritten to claim
    width x height (and components); with exif, a 64 KB APP1 (Exif)
    segment and a 1 KB APP2 before it, as camera files have: the frame
    header lies past the first 64 KB."""
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    if components:
        data[sof + 9] = components
    if exif:
        data[2:2] = (b"\xff\xe1" + struct.pack(">H", 65535) + b"Exif\0\0" +
                     bytes(65527) + b"\xff\xe2" + struct.pack(">H", 1026) +
                     bytes(1024))
        assert data.index(b"\xff\xc0") > 1 << 16
    return bytes(data)


def last_line(proc, tool):
    return proc.stderr.strip().splitlines()[-1].removeprefix(tool + ": ")


@pytest.mark.parametrize("kind", ["png", "bmp", "jpg"])
def test_convert_imageset_r_refuses_a_record_over_2_gb(tmp_path, kind):
    """40000 x 20000 x 3 is 2.4 GB of pixels: refused from the header,
    before decoding, with jcdl convert's message, list file and line."""
    claim = {"png": png_claiming, "bmp": bmp_claiming,
             "jpg": jpeg_claiming}[kind]
    write_image(tmp_path / "img/a.png")
    (tmp_path / f"img/huge.{kind}").write_bytes(claim(40000, 20000))
    (tmp_path / "l.txt").write_text(f"a.png 1 2\nhuge.{kind} 1 1\n")
    proc = run("convert_imageset_r", f"{tmp_path / 'img'}/",
               tmp_path / "l.txt", tmp_path / "db", check=False)
    assert_clean_error(proc, "l.txt:2: image", f"huge.{kind}: 40000x20000x3 "
                       "(WxHxC) is 2400000000 bytes of pixels, more than a "
                       "Caffe record can hold (2 GB): convert with "
                       "--resize_height and --resize_width")
    assert proc.returncode == 1
    (tmp_path / f"img/huge.{kind}").write_bytes(claim(50000, 50000))
    proc = run("convert_imageset_r", "--gray", f"{tmp_path / 'img'}/",
               tmp_path / "l.txt", tmp_path / "db", check=False)
    assert_clean_error(proc, "l.txt:2: image", f"huge.{kind}: 50000x50000x1 "
                       "(WxHxC) is 2500000000 bytes of pixels")
    proc = run("convert_imageset_r", "--resize_height=30000",
               "--resize_width=30000", f"{tmp_path / 'img'}/",
               tmp_path / "l.txt", tmp_path / "db", check=False)
    assert_clean_error(proc, "--resize_height/--resize_width: 30000x30000x3 "
                       "(WxHxC) is 2700000000 bytes of pixels",
                       "choose a smaller size")
    assert sorted(os.listdir(tmp_path)) == ["img", "l.txt"]


CLAIMS = {
    "png-gray-alpha": ("png", lambda w, h: png_claiming(w, h, 8, 4)),
    "png-16-bit": ("png", lambda w, h: png_claiming(w, h, 16, 2)),
    "png-16-bit-rgba": ("png", lambda w, h: png_claiming(w, h, 16, 6)),
    "bmp-32-bit": ("bmp", lambda w, h: bmp_claiming(w, h, 32)),
    "bmp-8-bit": ("bmp", lambda w, h: bmp_claiming(w, h, 8)),
    "jpg-cmyk": ("jpg", lambda w, h: jpeg_claiming(w, h, components=4)),
    "jpg-exif-65k": ("jpg", lambda w, h: jpeg_claiming(w, h, exif=True)),
}


@pytest.mark.parametrize("case", sorted(CLAIMS))
def test_both_tools_refuse_a_record_over_2_gb_whatever_the_file_type(
        tmp_path, case):
    """The size Caffe decodes (3 channels, or 1 with --gray) whatever the
    file's own depth, channels or type, and a JPEG's frame header found
    past an EXIF segment of 64 KB: refused from the header by jcdl convert
    and convert_imageset_r with the same one line, exit 1, nothing
    written (no folder made for the DB either)."""
    ext, claim = CLAIMS[case]
    write_image(tmp_path / "img/a.png")
    (tmp_path / "l.txt").write_text(f"a.png 1 2\nhuge.{ext} 1 1\n")
    for w, h, gray, c in ((40000, 20000, [], 3),
                          (50000, 50000, ["--gray"], 1)):
        (tmp_path / f"img/huge.{ext}").write_bytes(claim(w, h))
        cpp = run("convert_imageset_r", *gray, f"{tmp_path / 'img'}/",
                  tmp_path / "l.txt", tmp_path / "new/db", check=False,
                  timeout=30)
        py = jcdl("convert", *gray, f"{tmp_path / 'img'}/", tmp_path / "l.txt",
                  tmp_path / "new/db", check=False, timeout=30)
        line = (f"{tmp_path / 'l.txt'}:2: image {tmp_path / 'img'}/"
                f"huge.{ext}: {w}x{h}x{c} (WxHxC) is {w * h * c} bytes of pixels, more "
                "than a Caffe record can hold (2 GB): convert with "
                "--resize_height and --resize_width")
        for proc, tool in ((cpp, "convert_imageset_r"), (py, "jcdl convert")):
            assert_clean_error(proc, line)
            assert proc.returncode == 1
            assert last_line(proc, tool) == line
        assert sorted(os.listdir(tmp_path)) == ["img", "l.txt"]


def tiff_of_zeros(width, height, rows=64):
    """A real RGB TIFF of width x height black pixels, deflate-compressed,
    every strip pointing at the same compressed bytes: a few KB on disk
    (a format whose header neither tool reads)."""
    import zlib
    n = -(-height // rows)
    strip = zlib.compress(bytes(rows * width * 3), 9)
    last = zlib.compress(bytes((height - (n - 1) * rows) * width * 3), 9)
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, 0),
            (259, 3, 1, 8), (262, 3, 1, 2), (273, 4, n, 0), (277, 3, 1, 3),
            (278, 4, 1, rows), (279, 4, n, 0), (284, 3, 1, 1),
            (317, 3, 1, 1)]
    at = 8 + 2 + 12 * len(tags) + 4       # bits, offsets, counts, strips
    values = {258: at, 273: at + 6, 279: at + 6 + 4 * n}
    first = at + 6 + 8 * n
    out = b"II*\0" + struct.pack("<IH", 8, len(tags))
    for tag, kind, count, value in tags:
        value = values.get(tag, value)
        out += struct.pack("<HHI", tag, kind, count) + (
            struct.pack("<HH", value, 0) if kind == 3 and count == 1
            else struct.pack("<I", value))
    return (out + struct.pack("<I3H", 0, 8, 8, 8) +
            struct.pack(f"<{n}I", *[first] * (n - 1), first + len(strip)) +
            struct.pack(f"<{n}I", *[len(strip)] * (n - 1), len(last)) +
            strip + last)


def test_a_record_over_2_gb_no_header_told_is_one_line(tmp_path):
    """A real TIFF of 26750 x 26750 (2146687500 bytes of BGR, just over the
    limit): no header check knows TIFF, so both tools decode it (about 2 GB
    each, seconds) and then refuse it before serialising, with the same
    one line, exit 1, nothing written: not a protobuf traceback."""
    write_image(tmp_path / "img/a.png")
    (tmp_path / "img/big.tif").write_bytes(tiff_of_zeros(26750, 26750))
    (tmp_path / "l.txt").write_text("a.png 1 2\nbig.tif 1 1\n")
    line = (f"{tmp_path / 'l.txt'}:2: image {tmp_path / 'img'}/big.tif: "
            "26750x26750x3 (WxHxC) is 2146687500 bytes of pixels, more "
            "than a Caffe record can hold (2 GB): convert with "
            "--resize_height and --resize_width")
    for tool, args in (("convert_imageset_r", []), ("jcdl", ["convert"])):
        proc = run(tool, *args, f"{tmp_path / 'img'}/", tmp_path / "l.txt",
                   tmp_path / "new/db", check=False, timeout=120)
        assert_clean_error(proc, line)
        assert proc.returncode == 1
        assert last_line(proc, tool if args == [] else "jcdl convert") == line
        assert sorted(os.listdir(tmp_path)) == ["img", "l.txt"]


def test_a_small_jpeg_with_a_64_kb_exif_segment_converts(tmp_path):
    """The walk to a frame header past 64 KB finds a real one: the image
    converts in both tools, the same records."""
    write_image(tmp_path / "img/a.png")
    (tmp_path / "img/e.jpg").write_bytes(jpeg_claiming(8, 8, exif=True))
    (tmp_path / "l.txt").write_text("a.png 1 2\ne.jpg 1 1\n")
    run("convert_imageset_r", f"{tmp_path / 'img'}/", tmp_path / "l.txt",
        tmp_path / "c")
    jcdl("convert", f"{tmp_path / 'img'}/", tmp_path / "l.txt",
         tmp_path / "p")
    from jcdl.lmdbread import records
    assert list(records(tmp_path / "c")) == list(records(tmp_path / "p"))
    assert len(list(records(tmp_path / "c"))) == 2


def test_convert_imageset_r_removes_the_folders_it_made_on_failure(
        tmp_path):
    """An undecodable image: the new folders made for the DB are gone again
    (as jcdl convert's), those that were there stay, with what they hold."""
    write_image(tmp_path / "img/a.png")
    (tmp_path / "img/bad.png").write_bytes(b"not an image")
    (tmp_path / "bad.txt").write_text("a.png 1 2\nbad.png 1 1\n")
    (tmp_path / "nf").mkdir()
    (tmp_path / "nf/earlier.txt").write_text("kept")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for tool, args in (("convert_imageset_r", [f"{tmp_path / 'img'}/"]),
                       ("convert_imageset_r", ["--backend=leveldb",
                                               f"{tmp_path / 'img'}/"]),
                       ("jcdl", ["convert", tmp_path / "img"])):
        proc = run(tool, *args, tmp_path / "bad.txt",
                   tmp_path / "nf/badd/sub/db", check=False)
        assert_clean_error(proc, "bad.txt:2: cannot decode image")
        assert proc.returncode == 1
        assert sorted(p.relative_to(tmp_path)
                      for p in tmp_path.rglob("*")) == before, tool
    proc = run("convert_imageset_r", f"{tmp_path / 'img'}/",
               tmp_path / "bad.txt", "rel/db", check=False, cwd=tmp_path)
    assert_clean_error(proc, "bad.txt:2: cannot decode image")
    assert not (tmp_path / "rel").exists()


# ----------------------------------------------- 2. signals to the converter

@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """1200 images of 800 x 800 (20 files under many names), resized to
    16 x 16: a conversion takes seconds, its DB a few MB."""
    root = tmp_path_factory.mktemp("many")
    lines = []
    for i in range(1200):
        if i < 20:
            write_image(root / f"img/{i}.png", 800, 800, seed=i)
        else:   # the same few files under many names
            os.link(root / f"img/{i % 20}.png", root / f"img/{i}.png")
        lines.append(f"{i}.png 1 2 3")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM,
                                 signal.SIGHUP])
def test_a_signal_stops_convert_imageset_r_cleanly(many, tmp_path, sig):
    """A real signal mid-conversion: one line naming the DB and the signal,
    exit 130 (as jcdl convert), no DB, no partial one, no lock, and not the
    new folders it made for the DB; what was in the folder stays."""
    (tmp_path / "earlier.txt").write_text("kept")
    db = tmp_path / "new/deeper/db"
    proc = subprocess.Popen(
        [str(BIN / "convert_imageset_r"), "--resize_height=16",
         "--resize_width=16", f"{many / 'img'}/", str(many / "list.txt"),
         str(db)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)
    deadline = time.time() + 60
    while not list(db.parent.glob(".db.partial-*/data.mdb")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.2)   # into the images
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        f"convert_imageset_r: {db}: interrupted ({sig.name}), "
        "nothing written")
    assert sorted(os.listdir(tmp_path)) == ["earlier.txt"]


def test_an_ignored_sighup_stays_ignored(many, tmp_path):
    """Under nohup (SIGHUP ignored) a hang-up does not stop it."""
    proc = subprocess.Popen(
        ["nohup", str(BIN / "convert_imageset_r"), "--resize_height=16",
         "--resize_width=16", f"{many / 'img'}/",
         str(many / "list.txt"), str(tmp_path / "db")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".db.partial-*/data.mdb")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert (tmp_path / "db/data.mdb").is_file()


# ------------------------------------ 3. snapshot writes on a full disk (0013)

PYCAFFE_SNAPSHOT = """
import os, sys
os.environ["GLOG_minloglevel"] = "2"
import caffe
caffe.set_mode_cpu()
solver = caffe.get_solver(sys.argv[1])
solver.step(1)
solver.snapshot()                       # room for it: written
solver.step(1)
open(sys.argv[2], "w").close()          # the test fills the disk
sys.stdin.readline()
try:
    solver.snapshot()
except RuntimeError as e:
    print("RuntimeError:", e)
solver.step(1)                          # the process goes on
print("iteration", solver.iter)
"""


# the snapshot formats: solver_param's value, the files' suffixes
FORMATS = {"binaryproto": (1, ".caffemodel", ".solverstate"),
           "hdf5": (0, ".caffemodel.h5", ".solverstate.h5")}


@needs_root
@pytest.mark.parametrize("fmt", FORMATS)
def test_pycaffe_snapshot_on_a_full_disk_raises(work, disk, fmt):
    """Caffe's own write, with no reserve in front of it: RuntimeError
    naming the file and the error, no abort, no partial file, the earlier
    snapshot as it was; in either format (HDF5: patch 0020)."""
    code, model, state = FORMATS[fmt]
    solver = small_solver(work, f"pycaffe_{fmt}", 7, max_iter=10,
                          snapshot=0, test_interval=100000)
    set_solver(solver, snapshot_prefix=str(disk.path / "snap"),
               snapshot_format=code)
    ready = disk.path.parent / "ready"
    proc = subprocess.Popen(
        [str(BIN / "python"), "-c", PYCAFFE_SNAPSHOT, str(solver),
         str(ready)], cwd=work, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    before = disk.listing()
    assert sorted(before) == [f"snap_iter_1{model}", f"snap_iter_1{state}"]
    disk.fill(4096)
    out, err = proc.communicate("go\n", timeout=120)
    assert proc.returncode == 0, err
    assert out.splitlines() == [
        f"RuntimeError: {disk.path}/snap_iter_2{model}: cannot write "
        f"({FULL})", "iteration 3"], err[-2000:]
    assert disk.listing() == before
    assert "HDF5-DIAG" not in err   # HDF5's own error stack: not printed


HDF5_ROUND_TRIP = """
import os, sys
os.environ["GLOG_minloglevel"] = "2"
import caffe, numpy as np
caffe.set_mode_cpu()
solver = caffe.get_solver(sys.argv[1])
solver.step(2)
solver.snapshot()
again = caffe.get_solver(sys.argv[1])
again.restore(sys.argv[2] + "_iter_2.solverstate.h5")
net = caffe.Net(sys.argv[3], sys.argv[2] + "_iter_2.caffemodel.h5",
                caffe.TEST)
for name, params in solver.net.params.items():
    for i, p in enumerate(params):
        assert np.array_equal(p.data, again.net.params[name][i].data), name
        assert np.array_equal(p.data, net.params[name][i].data), name
print("iter", again.iter)
try:
    solver.net.save_hdf5(sys.argv[2] + "/no/such/dir/w.h5")
except RuntimeError as e:
    print("RuntimeError:", e)
"""


def test_hdf5_snapshots_are_whole_and_restore(work, tmp_path):
    """Patch 0020 keeps what HDF5 snapshots were: the weights and the
    solver state written, restored as they were; only the files, no
    temporaries; an unwritable path is one RuntimeError naming it."""
    solver = small_solver(work, "hdf5_round_trip", 7, max_iter=10,
                          snapshot=0, test_interval=100000)
    prefix = tmp_path / "snap"
    set_solver(solver, snapshot_prefix=str(prefix), snapshot_format=0)
    deploy = solver.parent / "deploy.prototxt"
    p = subprocess.run([str(BIN / "python"), "-c", HDF5_ROUND_TRIP,
                        str(solver), str(prefix), str(deploy)], cwd=work,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.splitlines() == [
        "iter 2", f"RuntimeError: {prefix}/no/such/dir/w.h5: cannot write "
        "(No such file or directory)"]
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "snap_iter_2.caffemodel.h5",
        "snap_iter_2.solverstate.h5"]
    assert "HDF5-DIAG" not in p.stderr


HDF5_RETRY = """
import os, sys
os.environ["GLOG_minloglevel"] = "2"
import caffe
from caffe import layers as L
caffe.set_mode_cpu()
def net(fc):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3]))
    setattr(n, fc, L.InnerProduct(n.data, num_output=2))
    path = os.path.join(sys.argv[1], fc.replace("/", "_") + ".prototxt")
    with open(path, "w") as f:
        f.write(str(n.to_proto()))
    return caffe.Net(path, caffe.TEST)
out = os.path.join(sys.argv[1], "w.h5")
for n in (net("fc/1"), net("fc")):   # a name HDF5 takes for a path, then one
    for _ in range(2):
        try:
            n.save_hdf5(out)
            print("written")
        except RuntimeError as e:
            print("RuntimeError:", e)
net("fc").save_hdf5(os.path.join(sys.argv[1], "b" * 250))
net("fc").save(os.path.join(sys.argv[1], "c" * 250))   # binaryproto (0013)
print(sorted(os.listdir(sys.argv[1])) == sorted(
    ["fc_1.prototxt", "fc.prototxt", "w.h5", "b" * 250, "c" * 250]))
"""


def test_an_hdf5_write_that_failed_leaves_nothing_open(tmp_path):
    """A failed HDF5 write (a layer name HDF5 cannot take) is one error
    naming the group; the same name is written fine next, by a good net,
    and names of 250 bytes too, HDF5 and binaryproto (their temporaries'
    names are cut to fit)."""
    p = subprocess.run([str(BIN / "python"), "-c", HDF5_RETRY,
                        str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    bad = (f"RuntimeError: {tmp_path}/w.h5: cannot write (HDF5: cannot make "
           "the group fc/1)")
    assert p.stdout.splitlines() == [bad, bad, "written", "written", "True"]
    assert "HDF5-DIAG" not in p.stderr


@needs_root
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_caffe_tool_on_a_full_disk_says_one_line(work, disk, fmt):
    """The stock caffe tool's snapshot on a full disk: its one error line
    naming the file, exit 1, not an abort."""
    code, model, _ = FORMATS[fmt]
    solver = small_solver(work, f"tool_{fmt}", 7, max_iter=2, snapshot=2,
                          test_interval=100000)
    set_solver(solver, snapshot_prefix=str(disk.path / "snap"),
               snapshot_format=code)
    disk.fill(4096)
    proc = run("caffe", "train", "--solver", solver, cwd=work, check=False,
               timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Check failed" not in proc.stderr
    assert "HDF5-DIAG" not in proc.stderr
    assert_clean_error(proc, f"{disk.path}/snap_iter_2{model}: cannot "
                       f"write ({FULL})")
    assert disk.listing() == {}


# A real second process that fills the disk at the moment Caffe opens its
# temporary for the N-th snapshot file of a kind: a fanotify permission
# event holds that open() until the disk is full, so jcdl train has checked
# the room (its reserve released) and Caffe finds none.
FILLER = r"""
import ctypes, os, re, struct, sys
mount, pattern, nth = sys.argv[1], re.compile(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64,
                               ctypes.c_int, ctypes.c_char_p]
filler = os.open(os.path.join(mount, ".filler"), os.O_WRONLY | os.O_CREAT)
fan = libc.fanotify_init(0x04 | 0x01, os.O_RDONLY)   # CLASS_CONTENT, CLOEXEC
assert fan >= 0, os.strerror(ctypes.get_errno())
assert libc.fanotify_mark(fan, 0x01 | 0x10, 0x10000, -100,   # ADD, MOUNT,
                          mount.encode()) == 0               # OPEN_PERM
print("ready", flush=True)
seen = 0
while True:
    events = os.read(fan, 4096)
    while events:
        length, _, _, _, _, fd, _ = struct.unpack("IBBHQii", events[:24])
        path = os.readlink(f"/proc/self/fd/{fd}")
        if pattern.search(os.path.basename(path)):
            seen += 1
            if seen == nth:
                st = os.statvfs(mount)
                os.posix_fallocate(filler, os.fstat(filler).st_size,
                                   st.f_bavail * st.f_frsize)
                print("filled", path, flush=True)
        os.write(fan, struct.pack("iI", fd, 0x01))           # ALLOW
        os.close(fd)
        events = events[length:]
"""


@pytest.fixture
def filler(disk):
    procs = []

    def start(pattern, nth):
        proc = subprocess.Popen([sys.executable, "-c", FILLER,
                                 str(disk.path), pattern, str(nth)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n"
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@needs_root
@pytest.mark.parametrize("kind", ["caffemodel", "solverstate"])
def test_train_when_another_process_fills_the_disk_as_caffe_writes(
        work, disk, filler, kind):
    """The reserve is released, the room checked, and another process
    takes it as Caffe opens the snapshot's caffemodel (or its solverstate,
    the caffemodel written): Caffe's write fails; jcdl train stops with one
    line naming the snapshot folder, the last good snapshot and the resume
    command, exit 1, nothing of the failed snapshot left."""
    name = os.path.relpath(disk.path / "run", work)
    solver = small_solver(work, name, 7, max_iter=6, snapshot=2,
                          test_interval=100000)
    rel = os.path.relpath(solver, work)
    fill = filler(rf"^\..*_iter_\d+\.{kind}\.partial-\d+$", 2)
    proc = jcdl("train", "--solver", rel, cwd=work, check=False, timeout=120)
    fill.kill()
    assert fill.stdout.readline().startswith("filled ")
    snapshots = f"{name}/snapshots"
    state = f"{snapshots}/small_jcdl_iter_2.solverstate"
    assert_clean_error(proc, f"jcdl train: {snapshots}: cannot write "
                       f"({FULL}): training stopped at iteration 2, its "
                       "snapshot kept; make room, then resume with: "
                       f"jcdl train --solver {rel} --resume {state}")
    assert proc.returncode == 1
    assert "Check failed" not in proc.stderr
    assert sorted(p for p in disk.listing() if "snapshots" in p) == [
        "run/snapshots", "run/snapshots/small_jcdl_iter_2.caffemodel",
        "run/snapshots/small_jcdl_iter_2.solverstate"]   # no temporary
    disk.empty()   # room made: the command resumes
    command = re.search(r"resume with: (.*)$", proc.stderr.strip())[1]
    proc = jcdl(*command.split()[1:], cwd=work, timeout=120)
    assert proc.stdout.strip() == f"{snapshots}/small_jcdl_iter_6.caffemodel"


# ------------------------------------ 4. an LMDB truncated while read (0015)

@pytest.mark.parametrize("tool", ["jcdl", "caffe"])
def test_an_lmdb_truncated_while_training_is_named(work, tmp_path, tool):
    """data.mdb cut to its two meta pages while Caffe reads it: the next
    read of a page past the end is a bus error, said in one line naming
    the LMDB (the prototxt's source), exit 1, instead of rc 135 and
    nothing."""
    shutil.copytree(work / "data", tmp_path / "data")
    solver = small_solver(tmp_path, "net", 7, max_iter=100000, snapshot=0,
                          test_interval=100000, display=5)
    log = tmp_path / "log"   # jcdl's --log, or the caffe tool's stderr
    args = ["train", "--solver", solver.relative_to(tmp_path)]
    if tool == "jcdl":
        args += ["--log", log]
    env = dict(os.environ)
    env.pop("GLOG_minloglevel", None)   # set by import_caffe in-process
    with open(log, "w") as stderr:
        proc = subprocess.Popen([str(BIN / tool), *map(str, args)],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=stderr if tool == "caffe" else
                                subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while "Iteration 10 " not in log.read_text():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no 'Iteration 10'"
            time.sleep(0.05)
        os.truncate(tmp_path / "data/train7/data.mdb", 8192)
        out, err = proc.communicate(timeout=120)
    err = err or log.read_text()
    assert proc.returncode == 1, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "data/train7: damaged LMDB: its data.mdb is shorter than its pages "
        "(cut short while it was read?): make the LMDB again")


# jcdl's own readers (python-lmdb) say the same line, through pycaffe's
# watch_lmdb: the LMDB is cut to its meta pages once the reader has 1 MB of
# its pages mapped in (its Rss in /proc/PID/smaps), i.e. well past the
# open-time check of its size, with most of the 40 MB still to read.
DAMAGED = ("damaged LMDB: its data.mdb is shorter than its pages (cut short "
           "while it was read?): make the LMDB again")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 40 MB LMDB (K = 7, 3x36x36), a deploy net over it and weights."""
    root = tmp_path_factory.mktemp("big")
    make_lmdb(root / "db", 10000, 7, seed=3)
    write_deploy(root / "deploy.prototxt", k=7, size=36)
    write_weights(root / "deploy.prototxt", root / "w.caffemodel")
    return root


def mapped_kb(pid, data):
    """The most kB of ``data`` one map of process pid has in (its Rss)."""
    try:
        with open(f"/proc/{pid}/smaps") as f:
            text = f.read()
    except OSError:
        return 0
    most, inside = 0, False
    for line in text.splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(" " + data)
        elif inside and line.startswith("Rss:"):
            most = max(most, int(line.split()[1]))
    return most


def truncate_while_read(data, *args, cwd):
    """Runs jcdl ARGS and cuts ``data`` to 8192 bytes once the command has
    1 MB of it mapped in; (returncode, stderr)."""
    data = os.path.realpath(data)
    env = dict(os.environ)
    env.pop("GLOG_minloglevel", None)
    proc = subprocess.Popen([str(BIN / "jcdl"), *map(str, args)], cwd=cwd,
                            env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while mapped_kb(proc.pid, data) < 1024:
        assert proc.poll() is None, ("ended before it was cut",
                                     proc.communicate())
        assert time.time() < deadline, "never read 1 MB"
        time.sleep(0.002)
    os.truncate(data, 8192)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("command", ["mean", "evaluate", "train"])
def test_an_lmdb_truncated_while_jcdl_reads_it_is_named(big, tmp_path,
                                                         command):
    """jcdl mean, evaluate --db (predict's db samples) and train's
    pre-flight scan of every record: one line naming the LMDB and exit 1
    instead of rc 135 and nothing; no output left."""
    shutil.copytree(big / "db", tmp_path / "db")
    if command == "mean":
        args = ["mean", "db", "out/mean.binaryproto"]
    elif command == "evaluate":
        args = ["evaluate", "--model", big / "deploy.prototxt", "--weights",
                big / "w.caffemodel", "--db", "db", "--out", "out"]
    else:
        shutil.copytree(tmp_path / "db", tmp_path / "data/train7")
        shutil.move(tmp_path / "db", tmp_path / "data/test7")
        make_mean(tmp_path / "data/mean.binaryproto")
        solver = small_solver(tmp_path, "net", 7, max_iter=1, snapshot=0,
                              test_interval=100000)
        args = ["train", "--solver", solver.relative_to(tmp_path)]
    db = "data/train7" if command == "train" else "db"
    rc, err = truncate_while_read(tmp_path / db / "data.mdb", *args,
                                  cwd=tmp_path)
    assert rc == 1, err[-2000:]
    assert err.strip().splitlines()[-1] == f"jcdl {command}: {db}: {DAMAGED}"
    assert not (tmp_path / "out").exists() or \
        not any((tmp_path / "out").iterdir())


# A process whose LMDB is watched (jcdl's reader mid-iteration) meets a bus
# error elsewhere: in a file of its own cut short, at the very address the
# LMDB had once it is closed (its range forgotten), or sent by kill: it
# dies of SIGBUS as before, nothing said about an LMDB.
ELSEWHERE = r"""
import ctypes, mmap, os, signal, sys
from jcdl import lmdbread
db, other, case = sys.argv[1:]
records = lmdbread.records(db)
next(records)                        # open, watched, a record read
data = os.path.realpath(os.path.join(db, "data.mdb"))
begin, end = next([int(a, 16) for a in line.split()[0].split("-")]
                  for line in open("/proc/self/maps")
                  if line.rstrip().endswith(" " + data))
if case == "closed":
    records.close()                  # the env closed: its range forgotten
    assert not any(line.rstrip().endswith(" " + data)
                   for line in open("/proc/self/maps"))
print("ready", flush=True)
if case == "kill":
    os.kill(os.getpid(), signal.SIGBUS)
    sys.exit(3)
with open(other, "r+b") as f:
    f.truncate(end - begin)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                          ctypes.c_int, ctypes.c_int, ctypes.c_long]
    where = begin if case == "closed" else None   # MAP_FIXED_NOREPLACE
    flags = mmap.MAP_SHARED | (0x100000 if where else 0)
    p = libc.mmap(where, end - begin, mmap.PROT_READ, flags, f.fileno(), 0)
    assert p not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    assert where is None or p == begin
    f.truncate(0)
print(ctypes.string_at(p + 4096, 1))   # past the end: a bus error
sys.exit(4)
"""


@pytest.mark.parametrize("case", ["other", "closed", "kill"])
def test_a_bus_error_elsewhere_still_kills(big, tmp_path, case):
    other = tmp_path / "other"
    other.write_bytes(b"x" * 8192)
    proc = subprocess.run([sys.executable, "-c", ELSEWHERE, big / "db", other,
                           case], capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith("ready\n"), proc.stderr
    assert proc.returncode == -signal.SIGBUS, proc.stderr
    assert "LMDB" not in proc.stderr
