"""Issue 11 (reliability, round 2), the hostile-input half, through the real
commands: file names that are not UTF-8, outputs inside inputs, damaged
LMDBs (cut short, bytes flipped), what Caffe would abort on mid-run (one
record of another size or K, a batch too large to count), scale (K = 1000,
records over 2 GB), duplicate class names, and messages that misled."""
import json
import os
import shutil
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest

from conftest import (assert_clean_error, jcdl, peak_kib, png_claiming, run,
                      strict_json, write_image)
from jcdl import netgen
from jcdl.caffenet import import_caffe

caffe = import_caffe()
from caffe import layers as L  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402

LATIN1 = b"caf\xe9.png"          # 'café.png' as Latin-1: not UTF-8
SIZE = 40


def fs(b):
    """A bytes name as the str Python uses for it (surrogates)."""
    return os.fsdecode(b)


def write_deploy(path, k=2, size=32):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, size, size]))
    n.fc = L.InnerProduct(n.data, num_output=k,
                          weight_filler=dict(type="gaussian", std=0.01))
    n.prob = L.Softmax(n.fc)
    Path(path).write_text(str(n.to_proto()))


def write_weights(deploy, path):
    caffe.Net(str(deploy), caffe.TEST).save(str(path))


def datum_bytes(c, h, w, k, seed=0):
    rng = np.random.default_rng(seed)
    d = caffe_pb2.Datum(channels=c, height=h, width=w,
                        data=rng.integers(0, 256, c * h * w,
                                          dtype=np.uint8).tobytes())
    d.float_data.extend((np.ones(k) / k).tolist())
    return d.SerializeToString()


def write_lmdb(path, values):
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, v in enumerate(values):
            txn.put(b"%08d_img%d.png" % (i, i), v)
    env.close()
    return path


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """img/ (ASCII names and one Latin-1 name), l.txt, its LMDB db, mean,
    a deploy net of 32x32 input and its weights, classes.txt."""
    w = tmp_path_factory.mktemp("hostile")
    for i, name in enumerate([b"a.png", LATIN1, b"b.png", b"c.png"]):
        write_image(w / "img/tmp.png", SIZE, SIZE, seed=i)  # OpenCV cannot
        os.rename(w / "img/tmp.png", bytes(w / "img") + b"/" + name)
    (w / "l.txt").write_bytes(b"a.png 1 2\n" + LATIN1 + b" 2 1\nb.png 1 1\n"
                              b"c.png 0 1\n")
    jcdl("convert", w / "img", w / "l.txt", w / "db")
    jcdl("mean", w / "db", w / "mean.binaryproto")
    write_deploy(w / "deploy.prototxt")
    write_weights(w / "deploy.prototxt", w / "w.caffemodel")
    (w / "classes.txt").write_text("joy\nfear\n")
    return w


def net_args(w, mean=True):
    return ["--model", w / "deploy.prototxt", "--weights", w / "w.caffemodel",
            *(["--mean", w / "mean.binaryproto"] if mean else [])]


def records(db):
    env = lmdb.open(os.fsencode(db), readonly=True, lock=False)
    with env.begin() as txn:
        out = list(txn.cursor())
    env.close()
    return out


def solver_over(w, name, db, mean=None, **kw):
    opts = dict(max_iter=1, test_iter=1, test_interval=1000, snapshot=0)
    opts.update(kw)
    return netgen.write_nets(w / name, "small", "jcdl", 0.8, None, db, db,
                             mean=mean, **opts)[2]


# ------------------------------------------------ 1. names that are not UTF-8

@pytest.mark.parametrize("flags", [[], ["--encoded"], ["--resize_height",
                                                       "36", "--resize_width",
                                                       "36"]])
def test_byte_names_convert_as_the_cpp_tool(w, tmp_path, flags):
    """A Latin-1 image name, image root and DB name: jcdl convert writes
    the records convert_imageset_r writes, keys byte for byte."""
    root = os.path.join(bytes(tmp_path), b"r\xe9")
    shutil.copytree(bytes(w / "img"), root)
    cpp = os.path.join(bytes(tmp_path), b"c\xe9")
    py = os.path.join(bytes(tmp_path), b"p\xe9")
    run("convert_imageset_r", *flags, fs(root) + "/", w / "l.txt", fs(cpp))
    proc = jcdl("convert", *flags, fs(root), w / "l.txt", fs(py))
    assert "records" in proc.stdout
    assert records(cpp) == records(py)
    assert records(py)[1][0] == b"00000001_" + LATIN1
    assert os.listdir(bytes(tmp_path)) == [] or \
        not any(n.startswith(b".") for n in os.listdir(bytes(tmp_path)))
    jcdl("mean", fs(py), fs(os.path.join(bytes(tmp_path), b"m\xe9.npy")))


def test_byte_names_predict_and_evaluate(w, tmp_path):
    """predict reads a Latin-1 file name; evaluate --list/--root and --db
    agree, --out included; predictions.txt keeps the name's bytes."""
    shutil.copy(bytes(w / "img") + b"/" + LATIN1, tmp_path / "same.png")
    byte_img = fs(bytes(w / "img") + b"/" + LATIN1)
    proc = jcdl("predict", *net_args(w), byte_img, tmp_path / "same.png")
    a, b = (json.loads(line) for line in proc.stdout.splitlines())
    assert a["distribution"] == b["distribution"]
    on_list = jcdl("evaluate", *net_args(w), "--list", w / "l.txt", "--root",
                   w / "img", "--out", tmp_path / "ev1")
    on_db = jcdl("evaluate", *net_args(w), "--db", w / "db", "--out",
                 tmp_path / "ev2")
    assert json.loads(on_list.stdout) == json.loads(on_db.stdout)
    for ev in ("ev1", "ev2"):
        assert LATIN1 + b" " in (tmp_path / ev / "predictions.txt") \
            .read_bytes()
        assert (tmp_path / ev / "distributions.png").stat().st_size > 0


def test_byte_names_are_valid_unicode_in_predicts_json(w):
    """predict's records, as strict JSON decoders take them: a name that is
    not UTF-8 is "image" in valid Unicode (U+FFFD for the bad byte) and
    "image_bytes", its bytes in hex; a UTF-8 name has no "image_bytes"."""
    byte_img = bytes(w / "img") + b"/" + LATIN1
    proc = jcdl("predict", *net_args(w), fs(byte_img), w / "img/a.png")
    a, b = (strict_json(line) for line in proc.stdout.splitlines())
    assert a["image"] == f"{w}/img/caf\ufffd.png"
    assert bytes.fromhex(a["image_bytes"]) == byte_img
    assert b["image"] == f"{w}/img/a.png" and "image_bytes" not in b
    assert list(a) == ["image", "image_bytes", "distribution", "dominant"]


# ------------------------------------------------ 2. an output inside an input

def test_outputs_inside_inputs_are_refused(w, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(w / "db", db)
    before = (db / "data.mdb").read_bytes()
    net = net_args(w)
    cases = [
        (("mean", db, db / "data.mdb"), "is inside"),
        (("mean", db, db / "mean.binaryproto"), "is inside"),
        (("evaluate", *net, "--db", db, "--predictions", db / "data.mdb"),
         "is inside"),
        (("evaluate", *net, "--db", db, "--out", db), f"{db}: is {db}"),
        (("evaluate", *net, "--db", db, "--out", db / "eval"), "is inside"),
        (("evaluate", *net, "--list", w / "l.txt", "--root", w / "img",
          "--predictions", w / "img/a.png"), "is inside"),
        (("evaluate", *net, "--list", w / "l.txt", "--root", w / "img",
          "--out", tmp_path), "is an input"),   # its l.txt? no: see below
        (("convert", w / "img", w / "l.txt", w / "img/new_db"), "is inside"),
        (("netgen", "--out", db, "--arch", "small", "--train-db", db,
          "--test-db", db), "a folder this run reads"),
    ]
    # an --out folder whose predictions.txt would replace the --list
    shutil.copy(w / "l.txt", tmp_path / "predictions.txt")
    cases[6] = (("evaluate", *net, "--list", tmp_path / "predictions.txt",
                 "--root", w / "img", "--out", tmp_path), "is an input")
    for args, fragment in cases:
        proc = jcdl(*args, check=False)
        assert_clean_error(proc, fragment, "write the output elsewhere")
    assert (db / "data.mdb").read_bytes() == before
    assert sorted(p.name for p in db.iterdir()) == ["data.mdb", "lock.mdb"]
    assert (tmp_path / "predictions.txt").read_bytes() == \
        (w / "l.txt").read_bytes()
    assert not (w / "img/new_db").exists()
    # score --out whose report would replace the ground truth
    shutil.copy(w / "l.txt", tmp_path / "metrics.csv")
    proc = jcdl("score", tmp_path / "metrics.csv", w / "l.txt", "--out",
                tmp_path, check=False)
    assert_clean_error(proc, "metrics.csv: is an input of this run")


# ------------------------------------------------------ 3. damaged LMDBs

def damaged(w, tmp_path, how):
    db = tmp_path / f"db_{how}"
    shutil.copytree(w / "db", db)
    solver = solver_over(tmp_path, "net", db)   # netgen reads it whole
    data = db / "data.mdb"
    raw = bytearray(data.read_bytes())
    if how == "cut":
        raw = raw[:len(raw) // 2]
    elif how == "record":     # a Datum's first field header
        i = raw.index(bytes([0x08, 3, 0x10, SIZE, 0x18, SIZE]))
        raw[i] = 0x0F         # wire type 7: no such thing
    elif how == "page":       # the leaf page's header (page 2 onward)
        psize = 4096
        for pg in range(2, len(raw) // psize):
            flags = int.from_bytes(raw[pg * psize + 10:pg * psize + 12],
                                   "little")
            if flags & 0x02:  # P_LEAF
                raw[pg * psize + 10:pg * psize + 12] = b"\x40\x00"
                break
    data.write_bytes(bytes(raw))
    return db, solver


@pytest.mark.parametrize("how", ["cut", "record", "page"])
def test_damaged_lmdbs_are_one_line_in_every_reader(w, tmp_path, how):
    db, solver = damaged(w, tmp_path, how)
    for args in (("mean", db, tmp_path / "m.binaryproto"),
                 ("evaluate", *net_args(w), "--db", db),
                 ("train", "--solver", solver)):
        proc = jcdl(*args, check=False)
        assert proc.returncode == 1, (args, proc.returncode, proc.stderr)
        assert_clean_error(proc, str(db))
        assert "damaged" in proc.stderr or "not a Caffe Datum" in \
            proc.stderr, proc.stderr
    assert not (tmp_path / "m.binaryproto").exists()
    if how == "cut":
        proc = jcdl("netgen", "--out", tmp_path / "n2", "--arch", "small",
                    "--train-db", db, "--test-db", db, check=False)
        assert_clean_error(proc, str(db), "damaged LMDB", "cut short")


# ------------------------------------ 4. what Caffe would abort on mid-run

def test_one_record_of_another_size_or_k_is_refused_before_caffe(w, tmp_path):
    ok = datum_bytes(3, SIZE, SIZE, 2)
    cases = {
        "size_mean": ([ok, ok, datum_bytes(3, 36, 36, 2), ok], True,
                      "record 00000002_img2.png is 3x36x36 (CxHxW), but the "
                      "mean"),
        "size_first": ([ok, ok, ok, datum_bytes(3, 36, 40, 2)], False,
                       "record 00000003_img3.png is 3x36x40 (CxHxW), but "
                       "the first record is 3x40x40"),
        "channels": ([ok, datum_bytes(1, SIZE, SIZE, 2), ok], False,
                     "record 00000001_img1.png is 1x40x40"),
        "k": ([ok, ok, datum_bytes(3, SIZE, SIZE, 3)], True,
              "record 00000002_img2.png has 3 label values, but the first "
              "record has 2"),
    }
    for name, (values, with_mean, message) in cases.items():
        db = write_lmdb(tmp_path / name, values)
        solver = solver_over(tmp_path, f"net_{name}", db,
                             w / "mean.binaryproto" if with_mean else None)
        if name == "size_first":   # no crop: every image at the first's size
            text = solver.with_name("train_val.prototxt").read_text()
            solver.with_name("train_val.prototxt").write_text(
                text.replace("crop_size: 32", ""))
        proc = jcdl("train", "--solver", solver, check=False)
        assert_clean_error(proc, message)
        assert "Check failed" not in proc.stderr
        assert not list((tmp_path / f"net_{name}").glob("**/*.caffemodel"))


def test_a_batch_too_large_to_count_is_refused(w, tmp_path):
    solver = solver_over(tmp_path, "net", w / "db", w / "mean.binaryproto",
                         batch=1_000_000)
    t = time.time()
    proc = jcdl("train", "--solver", solver, check=False)
    assert_clean_error(proc, "batch_size 1000000 of 3x32x32 images is "
                       "3072000000 values, more than Caffe's blobs can count")
    assert time.time() - t < 30


# ------------------------------------------------------------- 5. scale

def test_evaluate_out_with_1000_classes_is_bounded(w, tmp_path):
    """K = 1000 (ImageNet's count) through jcdl evaluate --out: seconds
    and well under 2 GB, every file written."""
    K, n = 1000, 60
    rng = np.random.default_rng(3)
    write_deploy(tmp_path / "deploy.prototxt", k=K)
    write_weights(tmp_path / "deploy.prototxt", tmp_path / "w.caffemodel")
    lines = []
    (tmp_path / "img").mkdir()
    for i in range(n):   # each name once: links to three images
        (tmp_path / f"img/{i}.png").symlink_to(
            w / "img" / ["a.png", "b.png", "c.png"][i % 3])
        p = rng.dirichlet(np.ones(K) * 0.1)
        lines.append(f"{i}.png " + " ".join(f"{v:.6g}" for v in p) + "\n")
    (tmp_path / "l.txt").write_text("".join(lines))
    t = time.time()
    peak = peak_kib("jcdl", "evaluate", "--model",
                    tmp_path / "deploy.prototxt",
                    "--weights", tmp_path / "w.caffemodel", "--mean",
                    w / "mean.binaryproto", "--list", tmp_path / "l.txt",
                    "--root", tmp_path / "img", "--out", tmp_path / "ev")
    took = time.time() - t
    assert took < 60, took
    assert 0 < peak < 2 * 1024 * 1024, peak   # KiB: under 2 GiB
    ev = tmp_path / "ev"
    assert len((ev / "confusion.csv").read_text().splitlines()) == K + 1
    assert len((ev / "per_class.csv").read_text().splitlines()) == K + 1
    for png in ("confusion.png", "distributions.png"):
        assert 0 < (ev / png).stat().st_size < 20 << 20


def test_a_record_over_2_gb_is_refused_before_decoding(w, tmp_path):
    png = png_claiming(40000, 20000)   # 2.4 GB of BGR pixels
    shutil.copytree(w / "img", tmp_path / "img")
    (tmp_path / "img/huge.png").write_bytes(png)
    (tmp_path / "l.txt").write_text("a.png 1 2\nhuge.png 1 1\n")
    proc = jcdl("convert", tmp_path / "img", tmp_path / "l.txt",
                tmp_path / "db", check=False)
    assert_clean_error(proc, "l.txt:2: image", "huge.png: 40000x20000x3 "
                       "(WxHxC) is 2400000000 bytes of pixels, more than a "
                       "Caffe record can hold (2 GB)")
    proc = jcdl("convert", "--resize_height", "30000", "--resize_width",
                "30000", tmp_path / "img", w / "l.txt", tmp_path / "db",
                check=False)
    assert_clean_error(proc, "30000x30000x3", "choose a smaller size")
    assert sorted(os.listdir(tmp_path)) == ["img", "l.txt"]


# ---------------------------------------------- 6. duplicate class names

def test_duplicate_class_names_are_refused_everywhere(w, tmp_path):
    dup = tmp_path / "dup.txt"
    dup.write_text("joy\njoy\n")
    (tmp_path / "labels.txt").write_text("a.png 0\nb.png 1\nc.png 0\n")
    for args in (("predict", *net_args(w), "--classes", dup, w / "img/a.png"),
                 ("evaluate", *net_args(w), "--db", w / "db", "--classes",
                  dup),
                 ("score", w / "l.txt", w / "l.txt", "--classes", dup),
                 ("prepare", "single", w / "img", tmp_path / "labels.txt",
                  tmp_path / "out", "--classes", dup, "--prior", "onehot")):
        proc = jcdl(*args, check=False)
        assert_clean_error(proc, "dup.txt", "class 'joy' is named twice")
        assert not proc.stdout.strip()
    assert not (tmp_path / "out").exists()


# ---------------------------------------------- 7. messages that misled

@pytest.mark.parametrize("text, line, message", [
    (b"a.png 1 2\nmy img.jpg 1 2\n", 2, "'img.jpg' is not a finite number "
     "(the first field, 'my', is the name: names cannot contain spaces)"),
    (b"a.png 1 2\n\xef\xbb\xbfb.png 1 1\n", 2, "a byte-order mark (U+FEFF) "
     "in the line, as where files saved with one were joined: remove it"),
    (b"a.png 1 2\nb.png \xef\xbb\xbf1 1\n", 2, "a byte-order mark"),
    (b"a.png abc\n", 1, "'abc' is not a finite number"),
])
def test_list_messages_say_what_is_wrong_in_both_tools(w, tmp_path, text,
                                                       line, message):
    (tmp_path / "l.txt").write_bytes(text)
    cpp = run("convert_imageset_r", f"{w}/img/", tmp_path / "l.txt",
              tmp_path / "c", check=False)
    py = jcdl("convert", f"{w}/img/", tmp_path / "l.txt", tmp_path / "p",
              check=False)
    assert_clean_error(cpp, f"l.txt:{line}: {message}")
    assert_clean_error(py, f"l.txt:{line}: {message}")
    strip = lambda p, tool: p.stderr.strip().splitlines()[-1] \
        .removeprefix(tool + ": ")   # noqa: E731
    assert strip(cpp, "convert_imageset_r") == strip(py, "jcdl convert")
    if message == "'abc' is not a finite number":
        assert strip(py, "jcdl convert").endswith(message)
    assert sorted(os.listdir(tmp_path)) == ["l.txt"]


def test_a_mean_smaller_than_the_net_input_is_named(w, tmp_path):
    blob = caffe.io.array_to_blobproto(np.zeros((1, 3, 10, 10), np.float32))
    (tmp_path / "m10.binaryproto").write_bytes(blob.SerializeToString())
    proc = jcdl("predict", "--model", w / "deploy.prototxt", "--weights",
                w / "w.caffemodel", "--mean", tmp_path / "m10.binaryproto",
                w / "img/a.png", check=False)
    assert_clean_error(proc, "m10.binaryproto: the mean is 10x10 (HxW), "
                       "smaller than the net input 32x32")
    proc = jcdl("predict", "--model", w / "deploy.prototxt", "--weights",
                w / "w.caffemodel", "--resize", "10", "10", w / "img/a.png",
                check=False)
    assert_clean_error(proc, "--resize 10 10 is smaller than the net input")


def test_a_header_claiming_60000_squared_pixels_is_one_line(w, tmp_path):
    """OpenCV throws (rather than returning nothing) for an image whose
    header claims more than 2^30 pixels: predict, convert --resize_* and
    convert_imageset_r each say they cannot decode it."""
    png = png_claiming(60000, 60000)
    (tmp_path / "img").mkdir()
    (tmp_path / "img/huge.png").write_bytes(png)
    (tmp_path / "l.txt").write_text("huge.png 1 1\n")
    proc = jcdl("predict", *net_args(w), tmp_path / "img/huge.png",
                check=False)
    assert_clean_error(proc, "huge.png", "cannot decode the image")
    proc = jcdl("convert", "--resize_height", "40", "--resize_width", "40",
                tmp_path / "img", tmp_path / "l.txt", tmp_path / "db",
                check=False)
    assert_clean_error(proc, "l.txt:1", "cannot decode image")
    proc = run("convert_imageset_r", "--resize_height=40",
               "--resize_width=40", f"{tmp_path / 'img'}/", tmp_path / "l.txt",
               tmp_path / "db2", check=False)
    assert_clean_error(proc, "l.txt:1", "cannot decode image")
    assert sorted(os.listdir(tmp_path)) == ["img", "l.txt"]


def test_weights_that_hold_nan_are_named(w, tmp_path):
    net = caffe.Net(str(w / "deploy.prototxt"), caffe.TEST)
    net.params["fc"][0].data[...] = np.nan
    net.save(str(tmp_path / "nan.caffemodel"))
    proc = jcdl("predict", "--model", w / "deploy.prototxt", "--weights",
                tmp_path / "nan.caffemodel", w / "img/a.png", check=False)
    assert_clean_error(proc, "nan.caffemodel", "weights hold NaN")


def test_a_name_too_long_for_its_temporary_is_one_line(w, tmp_path):
    """A legal name (under 255 bytes) whose temporary .NAME.partial-PID
    would not be: refused up front by jcdl and the C++ tool alike; one a
    little shorter works."""
    long = tmp_path / ("d" * 240)
    for proc in (jcdl("convert", w / "img", w / "l.txt", long, check=False),
                 run("convert_imageset_r", f"{w / 'img'}/", w / "l.txt",
                     long, check=False),
                 jcdl("evaluate", *net_args(w), "--db", w / "db", "--out",
                      long, check=False)):
        assert_clean_error(proc, "the name is 240 bytes long, at most 235")
    assert os.listdir(tmp_path) == []
    jcdl("convert", w / "img", w / "l.txt", tmp_path / ("d" * 235))
    assert os.listdir(tmp_path) == ["d" * 235]
