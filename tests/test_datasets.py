"""jcdl prepare on small dataset folders in the real formats: Emotion6's
ground_truth.txt, Flickr_LDL / Twitter_LDL votes files and .mat files (v7.3 and v5),
plain lists."""
import os

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_clean_error, jcdl, write_image
from jcdl import datasets, lmdbio, lmdbread
from jcdl.errors import JcdlError

HEADER = ("[image_filename]\t[valence]\t[arousal]\t[prob. anger]\t"
          "[prob. disgust]\t[prob. fear]\t[prob. joy]\t[prob. sadness]\t"
          "[prob. surprise]\t[prob. neutral]\n")
FOLDERS = ("anger", "disgust", "fear", "joy", "sadness", "surprise")


def emotion6(root, n=10, released=True):
    """An Emotion6-style folder: ground_truth.txt (header, tabs, valence,
    arousal, 7 probabilities with 6 significant digits) and JPEG images in
    images/<folder>/ (released) or <folder>/."""
    rng = np.random.default_rng(0)
    lines, names, P = [HEADER], [], []
    for i in range(n):
        name = f"{FOLDERS[i % 6]}/{i + 1}.jpg"
        p = rng.dirichlet(np.ones(7) * 0.5)
        p[rng.integers(7)] = 0
        p /= p.sum()
        lines.append(f"{name}\t{rng.uniform(1, 9):.1f}\t{rng.uniform(1, 9):.1f}"
                     "\t" + "\t".join(f"{v:.6g}" for v in p) + "\n")
        write_image(root / ("images" if released else "") / name, 16, 12,
                    seed=i)
        names.append(name)
        P.append([float(f"{v:.6g}") for v in p])
    (root / "ground_truth.txt").write_text("".join(lines))
    P = np.asarray(P)
    return names, P / P.sum(1, keepdims=True)


def read_out(path):
    lines = [line.split() for line in path.read_text().splitlines()]
    return [t[0] for t in lines], np.array([[float(v) for v in t[1:]]
                                            for t in lines])


def test_emotion6_released_layout(tmp_path):
    root = tmp_path / "Emotion6"
    names, P = emotion6(root, n=20)
    proc = jcdl("prepare", "emotion6", root, tmp_path / "out")
    assert "20 images, 7 emotions" in proc.stdout
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["classes.txt", "test.txt", "train.txt"]
    assert out.joinpath("classes.txt").read_text().split() == \
        ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]
    train, Ptrain = read_out(out / "train.txt")
    test, Ptest = read_out(out / "test.txt")
    assert (len(train), len(test)) == (16, 4)
    assert sorted(train + test) == sorted("images/" + n for n in names)
    truth = dict(zip(("images/" + n for n in names), P))
    for name, p in zip(train + test, np.vstack([Ptrain, Ptest])):
        assert np.allclose(p, truth[name], atol=1e-8)
        assert abs(p.sum() - 1) < 1e-7
    # train.txt is shuffled, test.txt keeps the file's order
    order = ["images/" + n for n in names]
    assert train != sorted(train, key=order.index)
    assert test == sorted(test, key=order.index)
    # the paths are relative to the ROOT that convert gets
    lmdbio.convert(root, out / "test.txt", tmp_path / "db", progress=False)
    assert lmdbread.db_info(tmp_path / "db")["k"] == 7


def test_emotion6_flat_layout_and_seeds(tmp_path):
    root = tmp_path / "e6"
    emotion6(root, n=12, released=False)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        jcdl("prepare", "emotion6", root, tmp_path / name, "--seed", seed,
             "--test-ratio", "0.25")
    a, b, c = ((tmp_path / n / "train.txt").read_text() for n in "abc")
    assert a == b and a != c
    assert read_out(tmp_path / "a" / "test.txt")[0][0].count("/") == 1
    assert len(read_out(tmp_path / "a" / "test.txt")[0]) == 3


def test_repeated_splits(tmp_path):
    root = tmp_path / "e6"
    emotion6(root, n=10)
    jcdl("prepare", "emotion6", root, tmp_path / "out", "--splits", 3)
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["classes.txt", "split1", "split2",
                                       "split3", "test.txt", "train.txt"]
    tests = [(out / f"split{s}" / "test.txt").read_text() for s in (1, 2, 3)]
    assert len(set(tests)) == 3
    assert (out / "split1" / "train.txt").read_text() == \
        (out / "train.txt").read_text()
    for s in (1, 2, 3):
        names = read_out(out / f"split{s}" / "train.txt")[0] + \
            read_out(out / f"split{s}" / "test.txt")[0]
        assert len(names) == len(set(names)) == 10
        assert (out / f"split{s}" / "classes.txt").is_file()


def test_flickr_votes_file(tmp_path):
    root = tmp_path / "Flickr_LDL"
    votes = np.random.default_rng(1).integers(0, 5, size=(10, 8))
    votes[:, 3] += 1
    lines = ["image amusement awe contentment excitement anger disgust fear "
             "sadness\n"]
    for i, v in enumerate(votes):
        write_image(root / "images" / f"{i}.jpg", 8, 8, seed=i)
        lines.append(f"{i}.jpg " + " ".join(map(str, v)) + "\n")
    (root / "votes.txt").write_text("".join(lines))
    jcdl("prepare", "flickr_ldl", root, tmp_path / "out")
    assert (tmp_path / "out" / "classes.txt").read_text().split() == \
        list(datasets.MIKELS_CLASSES)
    names, P = read_out(tmp_path / "out" / "train.txt")
    for name, p in zip(names, P):
        v = votes[int(name.split("/")[1].split(".")[0])]
        assert name.startswith("images/")
        assert np.allclose(p, v / v.sum(), atol=1e-9)


def write_mat(path, names, votes, train=None, test=None, transpose=False):
    """A MATLAB v7.3 file as MATLAB writes it: imgname a cell array (HDF5
    object references to uint16 char arrays under #refs#), vote 8 x N (h5py
    sees N x 8), indices 1-based doubles."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        cells = []
        for i, name in enumerate(names):
            ds = refs.create_dataset(f"r{i}", data=np.array(
                [[ord(c)] for c in name], np.uint16))
            ds.attrs["MATLAB_class"] = np.bytes_("char")
            cells.append(ds.ref)
        img = f.create_dataset("imgname", (len(names), 1),
                               dtype=h5py.ref_dtype)
        img[:, 0] = cells
        img.attrs["MATLAB_class"] = np.bytes_("cell")
        f.create_dataset("vote", data=(votes.T if transpose else votes)
                         .astype(np.float64))
        if train is not None:
            f.create_dataset("trainind", data=np.asarray(train, float)[None])
        if test is not None:
            f.create_dataset("testind", data=np.asarray(test, float)[None])


@pytest.mark.parametrize("transpose", [False, True])
def test_twitter_config_mat_with_its_split(tmp_path, transpose):
    root = tmp_path / "Twitter_LDL"
    names = [f"t{i}.jpg" for i in range(9)]
    votes = np.arange(72).reshape(9, 8) % 5
    votes[:, 0] += 1
    for i, n in enumerate(names):
        write_image(root / n, 8, 8, seed=i)
    write_mat(root / "twitter_ldl_config.mat", names, votes, train=[1, 3, 5,
              7, 9, 2], test=[4, 6, 8], transpose=transpose)
    proc = jcdl("prepare", "twitter_ldl", root, tmp_path / "out")
    assert "twitter_ldl_config.mat" in proc.stdout
    test, Ptest = read_out(tmp_path / "out" / "test.txt")
    train, _ = read_out(tmp_path / "out" / "train.txt")
    assert test == ["t3.jpg", "t5.jpg", "t7.jpg"]
    assert sorted(train) == sorted(f"t{i}.jpg" for i in (0, 2, 4, 6, 8, 1))
    assert np.allclose(Ptest, votes[[3, 5, 7]] / votes[[3, 5, 7]].sum(1,
                       keepdims=True))


@pytest.mark.parametrize("imgname", ["cell", "char matrix"])
def test_config_mat_in_matlab_v5_format(tmp_path, imgname):
    """The same file saved in MATLAB's older v5 format (scipy.io.savemat,
    which is what scipy.io.loadmat-based scripts read): the same lists as
    from v7.3."""
    names = [f"t{i}.jpg" for i in range(9)]
    votes = np.arange(72).reshape(9, 8) % 5
    votes[:, 0] += 1
    splits = dict(train=[1, 3, 5, 7, 9, 2], test=[4, 6, 8])
    outs = {}
    for kind in ("v5", "v73"):
        root = tmp_path / kind
        for i, n in enumerate(names):
            write_image(root / n, 8, 8, seed=i)
        mat = root / "twitter_ldl_config.mat"
        if kind == "v73":
            write_mat(mat, names, votes, **splits)
        else:
            cells = np.empty((len(names), 1), dtype=object)
            cells[:, 0] = names
            scipy.io.savemat(mat, {
                "imgname": cells if imgname == "cell" else np.array(names),
                "vote": votes.T.astype(np.float64),
                "trainind": np.asarray(splits["train"], float)[None],
                "testind": np.asarray(splits["test"], float)[None]})
            assert not h5py.is_hdf5(mat)
        jcdl("prepare", "twitter_ldl", root, tmp_path / f"out_{kind}")
        outs[kind] = [(tmp_path / f"out_{kind}" / f).read_text()
                      for f in ("train.txt", "test.txt", "classes.txt")]
    assert outs["v5"] == outs["v73"]
    assert read_out(tmp_path / "out_v5" / "test.txt")[0] == \
        ["t3.jpg", "t5.jpg", "t7.jpg"]


def test_config_mat_variables_that_are_not_indices(tmp_path):
    """Variables named like a split but holding no numbers (a note, a
    struct) are not splits; a sparse mask is one; an empty one, or a struct
    where the votes should be, is named."""
    root = tmp_path / "t"
    names = [f"{i}.png" for i in range(10)]
    for i, n in enumerate(names):
        write_image(root / n, 8, 8, seed=i)
    cells = np.empty((10, 1), dtype=object)
    cells[:, 0] = names
    base = {"imgname": cells, "vote": np.ones((8, 10))}
    mat = root / "x_config.mat"
    scipy.io.savemat(mat, dict(base, test_note="hello",
                               train_opts={"ratio": 0.8}))
    jcdl("prepare", "flickr_ldl", root, tmp_path / "random")
    assert len(read_out(tmp_path / "random" / "train.txt")[0]) == 8
    mask = np.zeros((1, 10))
    mask[0, [2, 5]] = 1
    scipy.io.savemat(mat, dict(base, testmask=scipy.sparse.csc_matrix(mask)))
    jcdl("prepare", "flickr_ldl", root, tmp_path / "masked")
    assert read_out(tmp_path / "masked" / "test.txt")[0] == ["2.png", "5.png"]
    scipy.io.savemat(mat, dict(base, trainset=np.zeros((0, 0))))
    proc = jcdl("prepare", "flickr_ldl", root, tmp_path / "o", check=False)
    assert_clean_error(proc, "x_config.mat: 'trainset' is empty")
    with h5py.File(mat, "w", userblock_size=512) as f:
        f.create_group("vote")
        f["imgname"] = np.zeros((3, 10), np.uint16)
    proc = jcdl("prepare", "flickr_ldl", root, tmp_path / "o", check=False)
    assert_clean_error(proc, "x_config.mat: 'vote' is a struct")
    assert not (tmp_path / "o").exists()


def test_config_mat_without_split_is_split_randomly(tmp_path):
    root = tmp_path / "t"
    names = [f"{i}.png" for i in range(10)]
    for i, n in enumerate(names):
        write_image(root / "images" / n, 8, 8, seed=i)
    write_mat(root / "x_config.mat", names, np.ones((10, 8), int))
    jcdl("prepare", "flickr_ldl", root, tmp_path / "out", "--seed", 3)
    train, P = read_out(tmp_path / "out" / "train.txt")
    assert len(train) == 8 and np.allclose(P, 1 / 8)


def test_list_dataset_and_classes(tmp_path):
    root = tmp_path / "imgs"
    rows = []
    for i in range(5):
        write_image(root / f"d/{i}.png", seed=i)
        rows.append(f"d/{i}.png {i} 1 1\n")
    (tmp_path / "my.txt").write_text("".join(rows))
    (tmp_path / "names.txt").write_text("calm\nhappy\nsad\n")
    jcdl("prepare", "list", root, tmp_path / "a", "--gt", tmp_path / "my.txt")
    assert (tmp_path / "a/classes.txt").read_text().split() == \
        ["class0", "class1", "class2"]
    jcdl("prepare", "list", root, tmp_path / "b", "--gt", tmp_path / "my.txt",
         "--classes", tmp_path / "names.txt")
    assert (tmp_path / "b/classes.txt").read_text() == "calm\nhappy\nsad\n"
    names, P = read_out(tmp_path / "b" / "test.txt")
    assert np.allclose(P.sum(1), 1)
    proc = jcdl("prepare", "list", root, tmp_path / "c", "--gt",
                tmp_path / "my.txt", "--classes", tmp_path / "my.txt",
                check=False)
    assert_clean_error(proc, "my.txt: 5 class names", "3 values (emotions)")


# ------------------------------------------------------------------ errors

def case_emotion6(root, kind):
    names, _ = emotion6(root, n=4)
    gt = root / "ground_truth.txt"
    lines = gt.read_text().splitlines(keepends=True)
    if kind == "no ground truth":
        gt.unlink()
    elif kind == "truncated":
        gt.write_text("".join(lines[:-1]) + lines[-1][:25])
    elif kind == "header":
        gt.write_text(HEADER.replace("[arousal]", "[dominance]")
                      + "".join(lines[1:]))
    elif kind == "no header":
        gt.write_text("".join(lines[1:]))
    elif kind == "columns":
        lines[2] = "\t".join(lines[2].split("\t")[:-1]) + "\n"
        gt.write_text("".join(lines))
    elif kind in ("nan", "negative", "zero", "valence", "arousal"):
        cols = lines[3].split("\t")
        if kind == "nan":
            cols[5] = "nan"
        elif kind == "negative":
            cols[5] = "-0.1"
        elif kind == "valence":
            cols[1] = "high"
        elif kind == "arousal":
            cols[2] = "1_0"  # Python's float() reads it; strtod does not
        else:
            cols[3:] = ["0"] * 6 + ["0.0\n"]
        lines[3] = "\t".join(cols)
        gt.write_text("".join(lines))
    elif kind == "missing image":
        os.remove(root / "images" / names[1])


EMOTION6_ERRORS = {
    "no ground truth": ("e6: no ground_truth.txt",),
    "truncated": ("ground_truth.txt:5: truncated line",),
    "header": ("ground_truth.txt:1: the header does not name Emotion6's "
               "columns", "[arousal]"),
    "no header": ("ground_truth.txt:1: the header does not name",),
    "columns": ("ground_truth.txt:3: 9 columns, expected 10",),
    "nan": ("ground_truth.txt:4: 'nan' is not a finite number",),
    "valence": ("ground_truth.txt:4: 'high' is not a finite number",),
    "arousal": ("ground_truth.txt:4: '1_0' is not a finite number",),
    "negative": ("ground_truth.txt:4: negative value -0.1",),
    "zero": ("ground_truth.txt:4: all values are zero",),
    "missing image": ("ground_truth.txt:3: image not found: "
                      "disgust/2.jpg",),
}


@pytest.mark.parametrize("kind", EMOTION6_ERRORS)
def test_emotion6_errors(tmp_path, kind):
    root = tmp_path / "e6"
    case_emotion6(root, kind)
    proc = jcdl("prepare", "emotion6", root, tmp_path / "out", check=False)
    assert_clean_error(proc, *EMOTION6_ERRORS[kind])
    assert sorted(os.listdir(tmp_path)) == ["e6"]      # nothing written


def votes_root(root, text):
    for i in range(3):
        write_image(root / f"{i}.jpg", 8, 8, seed=i)
    (root / "gt.txt").write_text(text)


VOTES_ERRORS = {
    "not integers": ("0.jpg 1 2 3 4 5 6 7 8\n1.jpg 1 2.5 3 4 5 6 7 8\n",
                     "gt.txt:2: '2.5' is not an integer"),
    "columns": ("0.jpg 1 2 3 4 5 6 7 8\n1.jpg 1 2 3 4 5 6 7\n"
                "2.jpg 1 2 3 4 5 6 7 8\n",
                "gt.txt:2: 8 columns, expected 9"),
    "truncated": ("0.jpg 1 2 3 4 5 6 7 8\n1.jpg 1 2 3",
                  "gt.txt:2: truncated line: 4 of 9 columns"),
    "header": ("name a b c d e f g h\n0.jpg 1 2 3 4 5 6 7 8\n",
               "gt.txt:1: the header does not name the columns"),
    "zero": ("0.jpg 0 0 0 0 0 0 0 0\n", "gt.txt:1: all values are zero"),
    "negative": ("0.jpg 1 1 1 1 1 1 1 -2\n", "gt.txt:1: negative value -2"),
    "missing image": ("0.jpg 1 1 1 1 1 1 1 1\n7.jpg 1 1 1 1 1 1 1 1\n",
                      "gt.txt:2: image not found: 7.jpg"),
}


@pytest.mark.parametrize("kind", VOTES_ERRORS)
def test_votes_file_errors(tmp_path, kind):
    text, message = VOTES_ERRORS[kind]
    votes_root(tmp_path / "f", text)
    proc = jcdl("prepare", "flickr_ldl", tmp_path / "f", tmp_path / "out",
                check=False)
    assert_clean_error(proc, message)
    assert not (tmp_path / "out").exists()


def test_ldl_ground_truth_not_found_or_ambiguous(tmp_path):
    root = tmp_path / "f"
    write_image(root / "0.jpg")
    proc = jcdl("prepare", "twitter_ldl", root, tmp_path / "o", check=False)
    assert_clean_error(proc, "f: no ground-truth file here")
    (root / "a.txt").write_text("")
    (root / "b.txt").write_text("")
    proc = jcdl("prepare", "twitter_ldl", root, tmp_path / "o", check=False)
    assert_clean_error(proc, "several candidate votes files (a.txt, b.txt)",
                       "--gt")
    assert not (tmp_path / "o").exists()


def test_config_mat_errors(tmp_path):
    root = tmp_path / "t"
    names = ["a.jpg", "b.jpg"]
    for n in names:
        write_image(root / n)
    mat = root / "t_config.mat"
    write_mat(mat, names, np.array([[1, 0, 0, 0, 0, 0, 0, 0.5]] * 2))
    with pytest.raises(JcdlError, match="image 1 .a.jpg.: votes are not "
                       "integers"):
        datasets.read_config_mat(mat)
    write_mat(mat, names, np.ones((2, 8)), train=[1, 2], test=[2])
    with pytest.raises(JcdlError, match="overlap"):
        datasets.read_config_mat(mat)
    write_mat(mat, names, np.ones((2, 8)), train=[1, 3])
    with pytest.raises(JcdlError, match="'trainind' holds values"):
        datasets.read_config_mat(mat)
    with h5py.File(mat, "w") as f:
        f["imgname"] = np.zeros((3, 2), np.uint16)
    proc = jcdl("prepare", "twitter_ldl", root, tmp_path / "o", check=False)
    assert_clean_error(proc, "t_config.mat: no 'vote' in the file")
    mat.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    proc = jcdl("prepare", "twitter_ldl", root, tmp_path / "o", check=False)
    assert_clean_error(proc, "t_config.mat: cannot read as a MATLAB file")
    assert not (tmp_path / "o").exists()


def test_output_folder_with_other_files_is_refused(tmp_path):
    root = tmp_path / "e6"
    emotion6(root, n=4)
    proc = jcdl("prepare", "emotion6", root, root, check=False)
    assert_clean_error(proc, "e6: holds", "ground_truth.txt, which this run "
                       "reads")
    assert (root / "ground_truth.txt").is_file()
    jcdl("prepare", "emotion6", root, tmp_path / "out")
    jcdl("prepare", "emotion6", root, tmp_path / "out", "--seed", 1)  # redo
    # a folder of only our files, one of them the ground truth read: kept
    gt = (tmp_path / "out" / "train.txt")
    text = gt.read_text()
    proc = jcdl("prepare", "list", root, tmp_path / "out", "--gt", gt,
                check=False)
    assert_clean_error(proc, "out: holds", "train.txt, which this run reads")
    assert gt.read_text() == text
    for out in (".", ""):
        proc = jcdl("prepare", "emotion6", root, out, cwd=tmp_path,
                    check=False)
        assert_clean_error(proc, "name the output")
    # a classes file in OUT is read before OUT is rewritten: a redo is fine
    (tmp_path / "out" / "classes.txt").write_text("\n".join(
        f"e{k}" for k in range(7)) + "\n")
    jcdl("prepare", "emotion6", root, tmp_path / "out", "--classes",
         tmp_path / "out" / "classes.txt")
    assert (tmp_path / "out" / "classes.txt").read_text().startswith("e0\n")
    os.symlink(tmp_path / "out", tmp_path / "link")   # written where it points
    jcdl("prepare", "emotion6", root, tmp_path / "link", "--seed", 2)
    assert (tmp_path / "link").is_symlink()
    assert (tmp_path / "out" / "test.txt").is_file()


# ------------------------------------------------------------------ parsers

FIELD = st.sampled_from(["0", "1", "0.5", "-1", "nan", "inf", "x", "3.8",
                         "2", "1e308", "disgust/1.jpg", ""])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(FIELD, max_size=11), max_size=4),
       st.booleans(), st.sampled_from(["\t", " ", "  "]))
def test_ground_truth_parsers_parse_or_say_why(tmp_path, rows, header, sep):
    path = tmp_path / "gt.txt"
    text = "".join(sep.join(r) + "\n" for r in rows)
    for reader, head in ((datasets.read_emotion6, HEADER),
                         (datasets.read_votes, ""), (datasets.read_list_file,
                                                     "")):
        path.write_text((head if header else "") + text)
        try:
            gt = reader(path)
        except JcdlError as e:
            assert e.path == str(path)
            continue
        assert len(gt.names) == gt.P.shape[0] > 0
        assert np.all(np.isfinite(gt.P)) and np.all(gt.P >= 0)
        assert np.allclose(gt.P.sum(1), 1)
        assert gt.P.shape[1] == len(gt.classes)
