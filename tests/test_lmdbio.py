"""jcdl convert / jcdl mean against the C++ tools on real images and LMDBs."""
import os
import subprocess

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BIN, assert_clean_error, jcdl, run, write_image
from jcdl import lmdbio, lmdbread
from jcdl.caffenet import caffe_pb2
from jcdl.errors import JcdlError

QUIET = {"GLOG_minloglevel": "2"}


def records(db):
    return list(lmdbread.records(db))


@pytest.fixture
def images(tmp_path):
    """ROOT/ with PNG and JPEG images of different sizes and a list of
    unnormalised rows (K = 3)."""
    root = tmp_path / "root"
    lines, pixels = [], {}
    for i in range(6):
        name = f"img/a{i}.png" if i % 2 == 0 else f"img/sub/b{i}.jpg"
        pixels[name] = write_image(root / name, 20 + 3 * i, 14 + i, seed=i)
        lines.append(f"{name} {i} 1 0.5\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    return root, tmp_path / "list.txt", pixels


FLAGS = {
    "raw": [],
    "resized": ["--resize_height=17", "--resize_width=23"],
    "encoded": ["--encoded"],
    "reencoded": ["--encode_type=png", "--resize_height=9",
                  "--resize_width=11"],
    "gray": ["--gray", "--check_size", "--resize_height=8",
             "--resize_width=8"],
}


@pytest.mark.parametrize("flags", FLAGS.values(), ids=FLAGS.keys())
def test_same_records_as_the_cpp_tool(images, tmp_path, flags):
    root, lst, _ = images
    run("convert_imageset_r", *flags, f"{root}/", lst, tmp_path / "c",
        env=QUIET)
    proc = jcdl("convert", *flags, root, lst, tmp_path / "p")
    assert "convert" in proc.stderr and "6/6" in proc.stderr   # progress bar
    cpp, py = records(tmp_path / "c"), records(tmp_path / "p")
    assert len(cpp) == 6
    assert [k for k, _ in py] == [k for k, _ in cpp]
    for (key, a), (_, b) in zip(cpp, py):
        assert a == b, key


def test_records_hold_the_image_and_the_distribution(images, tmp_path):
    root, lst, pixels = images
    db = tmp_path / "new" / "db"                  # its folder is made too
    assert lmdbio.convert(root, lst, db, progress=False) == 6
    lmdbio.convert(root, lst, tmp_path / "enc", encoded=True, progress=False)
    raw = list(lmdbread.iter_datums(db))
    enc = list(lmdbread.iter_datums(tmp_path / "enc"))
    names = list(pixels)
    for i, ((key, d), (_, e)) in enumerate(zip(raw, enc)):
        assert key == f"{i:08d}_{names[i]}"
        h, w, _ = pixels[names[i]].shape
        assert (d.channels, d.height, d.width, d.label) == (3, h, w, 0)
        img = cv2.imread(str(root / names[i]))
        assert np.array_equal(lmdbread.datum_image(d), img)
        assert np.array_equal(lmdbread.datum_image(e), img)
        assert e.encoded and not d.encoded
        row = np.array([i, 1, 0.5]) / (i + 1.5)
        assert np.array_equal(np.array(d.float_data, np.float32),
                              row.astype(np.float32))
    assert e.data == (root / names[-1]).read_bytes()   # the file's own bytes
    info = lmdbread.db_info(db)
    assert info == {"n": 6, "k": 3, "channels": 3, "height": 14,
                    "width": 20, "encoded": False}
    assert lmdbread.db_info(tmp_path / "enc")["encoded"] is True


def test_shuffle_is_reproducible_by_seed(images, tmp_path):
    root, lst, _ = images
    jcdl("convert", "--shuffle", "--seed", 1, root, lst, tmp_path / "a")
    for name, seed in (("b", 1), ("c", 2)):
        lmdbio.convert(root, lst, tmp_path / name, shuffle=True, seed=seed,
                       progress=False)
    lmdbio.convert(root, lst, tmp_path / "plain", progress=False)
    a, b, c, plain = (records(tmp_path / n) for n in ("a", "b", "c", "plain"))
    assert a == b and a != c
    paths = [k[9:] for k, _ in plain]
    assert [k[9:] for k, _ in a] != paths
    assert sorted(k[9:] for k, _ in a) == sorted(paths)
    assert sorted(v for _, v in a) == sorted(v for _, v in plain)


def test_map_grows_past_its_first_size(tmp_path):
    values = [os.urandom(1 << 16) for _ in range(60)]
    lmdbio._write_db(tmp_path / "db", ((b"%03d" % i, v)
                                       for i, v in enumerate(values)), 1 << 20)
    assert [v for _, v in records(tmp_path / "db")] == values


# ------------------------------------------------------------------ errors

def bad_inputs(tmp, root):
    """name -> (list text or None for a missing list, fragments of the
    message after 'TOOL: ')."""
    write_image(root / "good.png", seed=1)
    write_image(root / "good2.png", seed=2)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = "good.png 1 2 3\n"
    return {
        "missing list": (None, "list.txt: cannot open the list file"),
        "empty list": ("\n  \n", "list.txt: the list file is empty"),
        "missing image": (good + "gone.png 1 1 1\n",
                          "list.txt:2: image not found: "),
        "undecodable image": (good + "good2.png 1 1 1\n"
                              "broken.png 1 1 1\n",
                              "list.txt:3: cannot decode image "),
        "abc": (good + "good.png 1 abc 1\n",
                "list.txt:2: 'abc' is not a finite number"),
        "nan": (good + "good.png nan 1 1\n",
                "list.txt:2: 'nan' is not a finite number"),
        "inf": ("good.png 1 1 inf\n", "list.txt:1: 'inf' is not a finite "
                "number"),
        "count": (good + "good.png 1 1\n",
                  "list.txt:2: 2 values, but the first line has 3"),
        "negative": (good + "good.png 1 -1 1\n",
                     "list.txt:2: negative value -1"),
        "all zero": (good + "\ngood.png 0 0 0.0\n",
                     "list.txt:3: all values are zero"),
        "no values": ("good.png\n", "list.txt:1: no distribution after the "
                      "path"),
        "overflowing sum": (good + "good.png 1e308 1e308 1\n",
                            "list.txt:2: values too large"),
        "a name twice": (good + "\ngood.png 3 2 1\n",
                         "list.txt:3: 'good.png' is listed twice (lines 1 "
                         "and 3): each image once (the name matches "
                         "predictions to ground truth)"),
    }


CASES = [
    "missing list", "empty list", "missing image", "undecodable image",
    "abc", "nan", "inf", "count", "negative", "all zero", "no values",
    "overflowing sum", "a name twice"]


@pytest.mark.parametrize("case", CASES)
def test_bad_lists_one_line_and_nothing_written(tmp_path, case):
    root = tmp_path / "root"
    text, message = bad_inputs(tmp_path, root)[case]
    lst = tmp_path / "list.txt"
    if text is not None:
        lst.write_text(text)
    before = sorted(os.listdir(tmp_path))
    cpp = run("convert_imageset_r", f"{root}/", lst, tmp_path / "c",
              check=False)
    assert cpp.returncode == 1
    last = cpp.stderr.strip().splitlines()[-1]
    assert last.startswith(f"convert_imageset_r: {lst.parent}/" + message), \
        cpp.stderr
    assert len(cpp.stderr.strip().splitlines()) == 1, cpp.stderr
    py = jcdl("convert", f"{root}/", lst, tmp_path / "p", check=False)
    assert_clean_error(py, message)
    for line in py.stderr.strip().split("\n")[:-1]:   # only the bar before
        assert line.startswith("convert:"), py.stderr
    assert py.stderr.strip().splitlines()[-1] == \
        last.replace("convert_imageset_r:", "jcdl convert:", 1)
    assert sorted(os.listdir(tmp_path)) == before     # no DB, no partial


TOKENS = ["1e400", "1e-400", "4e-320", "0X1P3", "0x1p-1080", "1_0", "+.5",
          "5.", ".", "-0", "1e", "0x", "1,5", "Infinity", "\u0661"]


def test_number_syntax_as_the_cpp_tool(tmp_path):
    """strtod's syntax, not Python's: each token accepted or refused with the
    same message by both."""
    root = tmp_path / "root"
    write_image(root / "x.png")
    for i, tok in enumerate(TOKENS):
        lst = tmp_path / f"l{i}.txt"
        lst.write_text(f"x.png {tok} 1\n")
        cpp = run("convert_imageset_r", f"{root}/", lst, tmp_path / f"c{i}",
                  check=False)
        try:
            lmdbio.read_list(lst, f"{root}/")
            assert cpp.returncode == 0, (tok, cpp.stderr)
        except JcdlError as e:
            assert cpp.returncode == 1, tok
            assert cpp.stderr.strip() == f"convert_imageset_r: {e}", tok


def test_existing_db_is_refused_and_kept(images, tmp_path):
    root, lst, _ = images
    lmdbio.convert(root, lst, tmp_path / "db", progress=False)
    kept = records(tmp_path / "db")
    for tool, args in (("jcdl", ["convert"]), ("convert_imageset_r", [])):
        proc = run(tool, *args, f"{root}/", lst, tmp_path / "db", check=False)
        assert_clean_error(proc, "db: already exists")
    assert records(tmp_path / "db") == kept


def test_leveldb_and_unknown_backends(images, tmp_path):
    root, lst, _ = images
    proc = jcdl("convert", "--backend", "leveldb", root, lst,
                tmp_path / "db", check=False)
    assert_clean_error(proc, "db:", "lmdb only", "convert_imageset_r")
    proc = jcdl("convert", "--backend", "hdf5", root, lst, tmp_path / "db",
                check=False)
    assert_clean_error(proc, "unknown --backend hdf5")
    assert not (tmp_path / "db").exists()


def both_tools(root, lst, db_of, *flags):
    """(C++ tool, jcdl convert) runs on the same inputs; db_of(tool) names
    each one's DB."""
    return (run("convert_imageset_r", *flags, f"{root}/", lst,
                db_of("c"), check=False, env=QUIET),
            jcdl("convert", *flags, f"{root}/", lst, db_of("p"),
                 check=False))


def test_the_db_folder_is_made_or_its_problem_named(images, tmp_path):
    """A DB in a folder that does not exist yet: both tools make it. A
    folder in the way of a file: one line, no glog abort, nothing left."""
    root, lst, _ = images
    cpp, py = both_tools(root, lst, lambda t: tmp_path / f"new/{t}/db")
    assert cpp.returncode == 0 and py.returncode == 0, cpp.stderr + py.stderr
    assert records(tmp_path / "new/c/db") == records(tmp_path / "new/p/db")
    (tmp_path / "afile").write_text("x")
    cpp, py = both_tools(root, lst, lambda t: tmp_path / f"afile/{t}db")
    for proc in (cpp, py):
        assert_clean_error(proc, "db", "cannot make its folder")
        assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr
    assert (tmp_path / "afile").read_text() == "x"


def test_a_db_name_ending_in_a_slash(images, tmp_path):
    root, lst, _ = images
    cpp, py = both_tools(root, lst, lambda t: f"{tmp_path / t}/")
    assert cpp.returncode == 0 and py.returncode == 0, cpp.stderr + py.stderr
    assert records(tmp_path / "c") == records(tmp_path / "p")
    proc = jcdl("convert", root, lst, tmp_path / "s", "--shuffle", "--seed",
                -1, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'-1' is not an integer from 0" in proc.stderr


def test_one_resize_side_alone_is_refused(images, tmp_path):
    root, lst, _ = images
    cpp, py = both_tools(root, lst, lambda t: tmp_path / t,
                         "--resize_height=32")
    assert cpp.stderr.strip() == "convert_imageset_r: --resize_height/" \
        "--resize_width: give both (or neither)"
    assert_clean_error(py, "--resize_height/--resize_width: give both")
    assert not (tmp_path / "c").exists() and not (tmp_path / "p").exists()


def test_a_list_from_a_pipe(images, tmp_path):
    """convert_imageset_r ROOT/ /dev/stdin DB (or <(...)): a list need not
    be a regular file; a folder is not a list."""
    root, lst, _ = images
    for tool, args in (("convert_imageset_r", []), ("jcdl", ["convert"])):
        proc = subprocess.run([str(BIN / tool), *args, f"{root}/",
                               "/dev/stdin", str(tmp_path / tool)],
                              input=lst.read_text(), capture_output=True,
                              text=True, env=dict(os.environ, **QUIET))
        assert proc.returncode == 0, proc.stderr
    assert records(tmp_path / "convert_imageset_r") == records(tmp_path /
                                                               "jcdl")
    cpp, py = both_tools(root, tmp_path, lambda t: tmp_path / f"d{t}")
    for proc in (cpp, py):
        assert_clean_error(proc, f"{tmp_path}: cannot open the list file")


def test_unknown_encode_type(images, tmp_path):
    root, lst, _ = images
    before = sorted(os.listdir(tmp_path))
    cpp, py = both_tools(root, lst, lambda t: tmp_path / t, "--encode_type",
                         "xyz")
    assert cpp.stderr.strip() == "convert_imageset_r: xyz: unknown " \
        "--encode_type (OpenCV cannot write it; use jpg or png)"
    assert_clean_error(py, "xyz: unknown --encode_type")
    assert sorted(os.listdir(tmp_path)) == before


def test_byte_order_mark_and_utf16_lists(images, tmp_path):
    """Notepad's UTF-8 BOM is dropped; a UTF-16 list is named as such by
    both tools, not read as garbled numbers."""
    root, lst, _ = images
    text = lst.read_text()
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    cpp, py = both_tools(root, bom, lambda t: tmp_path / f"bom_{t}")
    assert cpp.returncode == 0 and py.returncode == 0, cpp.stderr + py.stderr
    assert records(tmp_path / "bom_c") == records(tmp_path / "bom_p")
    assert [k for k, _ in records(tmp_path / "bom_p")][0] == b"00000000_img/a0.png"
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes(text.encode("utf-16"))
    cpp, py = both_tools(root, utf16, lambda t: tmp_path / f"u_{t}")
    message = "utf16.txt: not UTF-8 text (UTF-16 or binary): save the list " \
        "file as UTF-8"
    assert cpp.stderr.strip().endswith(message), cpp.stderr
    assert_clean_error(py, message)
    assert not (tmp_path / "u_c").exists() and not (tmp_path / "u_p").exists()


def test_encoded_grey_among_colour_is_reencoded(tmp_path):
    """--encoded keeps a file's own bytes only when Caffe's native decode of
    them gives the net's 3 channels: a grey or 16-bit PNG among colour ones
    is re-encoded from its colour reading, by both tools alike."""
    root = tmp_path / "root"
    write_image(root / "colour.png", 16, 12, seed=1)
    grey = np.random.default_rng(2).integers(0, 256, (12, 16), np.uint8)
    cv2.imwrite(str(root / "grey.png"), grey)
    cv2.imwrite(str(root / "deep.png"), grey.astype(np.uint16) * 257)
    lst = tmp_path / "l.txt"
    lst.write_text("colour.png 1 0\ngrey.png 0 1\ndeep.png 1 1\n")
    cpp, py = both_tools(root, lst, lambda t: tmp_path / t, "--encoded")
    assert cpp.returncode == 0 and py.returncode == 0, cpp.stderr + py.stderr
    assert records(tmp_path / "c") == records(tmp_path / "p")
    datums = [d for _, d in lmdbread.iter_datums(tmp_path / "p")]
    assert datums[0].data == (root / "colour.png").read_bytes()
    for d in datums:
        native = cv2.imdecode(np.frombuffer(d.data, np.uint8),
                              cv2.IMREAD_UNCHANGED)
        assert native.shape == (12, 16, 3) and native.dtype == np.uint8


def test_check_size(images, tmp_path):
    root, lst, _ = images
    proc = jcdl("convert", "--check_size", root, lst, tmp_path / "db",
                check=False)
    assert_clean_error(proc, "list.txt:2: image img/sub/b1.jpg differs in size")
    assert not (tmp_path / "db").exists()


# ------------------------------------------------------------------ mean

def read_blob(path):
    blob = caffe_pb2().BlobProto()
    blob.ParseFromString(path.read_bytes())
    return blob


def test_mean_equals_compute_image_mean(tmp_path):
    root = tmp_path / "root"
    lines = []
    for i in range(5):
        write_image(root / f"{i}.png", 12, 10, seed=i, color=(0, 40 * i, 250))
        lines.append(f"{i}.png 1 {i}\n")
    (tmp_path / "l.txt").write_text("".join(lines))
    lmdbio.convert(root, tmp_path / "l.txt", tmp_path / "db", progress=False)
    lmdbio.convert(root, tmp_path / "l.txt", tmp_path / "enc", encoded=True,
                   progress=False)
    run("compute_image_mean", tmp_path / "db", tmp_path / "ref.binaryproto",
        env=QUIET)
    jcdl("mean", tmp_path / "db", tmp_path / "mean.binaryproto")
    lmdbio.compute_mean(tmp_path / "enc", tmp_path / "enc.npy",
                        progress=False)
    ref, ours = read_blob(tmp_path / "ref.binaryproto"), \
        read_blob(tmp_path / "mean.binaryproto")
    assert (ours.num, ours.channels, ours.height, ours.width) == \
        (ref.num, ref.channels, ref.height, ref.width) == (1, 3, 10, 12)
    assert np.allclose(ours.data, ref.data, atol=1e-4)
    direct = np.mean([cv2.imread(str(root / f"{i}.png")) for i in range(5)],
                     axis=0).transpose(2, 0, 1)
    for npy in ("mean.npy", "enc.npy"):
        m = np.load(tmp_path / npy)
        assert m.dtype == np.float32 and m.shape == (3, 10, 12)
        assert np.allclose(m, direct, atol=1e-4)
    assert np.allclose(read_blob(tmp_path / "enc.binaryproto").data, ref.data,
                       atol=1e-4)


def test_not_an_lmdb(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"x" * 5000)
    for bad in ("dir", "file", "nothing"):
        with pytest.raises(JcdlError) as e:
            lmdbread.db_info(tmp_path / bad)
        assert e.value.path == str(tmp_path / bad)
    proc = jcdl("mean", tmp_path / "file", tmp_path / "m.binaryproto",
                check=False)
    assert_clean_error(proc, "file: not an LMDB")
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"]


def test_mean_of_mixed_sizes_is_refused(images, tmp_path):
    root, lst, _ = images
    lmdbio.convert(root, lst, tmp_path / "db", progress=False)
    proc = jcdl("mean", tmp_path / "db", tmp_path / "m.binaryproto",
                check=False)
    assert_clean_error(proc, "db: record 00000001_img/sub/b1.jpg is",
                       "a mean needs one size")
    assert not (tmp_path / "m.binaryproto").exists()


# ------------------------------------------------------------------ parser

TOKEN = st.sampled_from(["0", "1", "2.5", "-1", "nan", "inf", "abc", "1e3",
                         "0.0", "1e-400", "1e400", "x.png", "\t", "", " "])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(TOKEN, max_size=5), max_size=5),
       st.binary(max_size=12))
def test_read_list_parses_or_says_why(tmp_path, rows, noise):
    lst = tmp_path / "l.txt"
    lst.write_bytes(b"\n".join(" ".join(r).encode() for r in rows) + noise)
    try:
        entries = lmdbio.read_list(lst)
    except JcdlError as e:
        assert e.path == str(lst)
        return
    K = len(entries[0].dist)
    for e in entries:
        assert len(e.dist) == K and e.line >= 1
        assert np.all(np.isfinite(e.dist)) and np.all(e.dist >= 0)
        assert abs(e.dist.sum() - 1) < 1e-9
