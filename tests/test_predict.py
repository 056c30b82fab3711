"""jcdl evaluate / predict on a tiny real net, real PNGs and real LMDBs made
by convert_imageset_r, checked against numpy and Caffe's own Data layer."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import assert_clean_error, jcdl, run, write_image
from jcdl import metrics
from jcdl.errors import JcdlError
from jcdl.lists import read_distributions
from jcdl.caffenet import import_caffe
from jcdl.evaluate import evaluate, write_evaluation
from jcdl.files import output_folder
from jcdl.predict import Preprocessor, db_samples, load_model


def evaluate_files(model, weights, db=None, list_path=None, root=None,
                   mean=None, classes=None, out=None, batch=32,
                   predictions=None):
    """What 'jcdl evaluate' does, through the library functions it calls."""
    from jcdl.lists import write_distributions
    ev = evaluate(load_model(model, weights, mean, classes=classes), db=db,
                  list_path=list_path, root=root, batch=batch)
    if predictions is not None:
        write_distributions(predictions, ev.names, ev.Q)
    if out is not None:
        with output_folder(out) as tmp:
            write_evaluation(ev, tmp)
    return ev.summary

caffe = import_caffe()
from caffe import layers as L  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402

K = 3
IMG_H, IMG_W = 10, 12          # stored images and the mean
IN_H, IN_W = 7, 8              # deploy input: crop offsets 1 (h) and 2 (w)
N = 10
CLASSES = ["joy", "fear", "awe"]


def write_deploy(path, in_h=IN_H, in_w=IN_W, k=K, name="fc"):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, in_h, in_w]))
    setattr(n, name, L.InnerProduct(n.data, num_output=k))
    n.prob = L.Softmax(getattr(n, name))
    Path(path).write_text(str(n.to_proto()))


def write_weights(deploy, path, seed=1):
    net = caffe.Net(str(deploy), caffe.TEST)
    rng = np.random.default_rng(seed)
    for blobs in net.params.values():
        blobs[0].data[...] = rng.normal(0, 0.003, blobs[0].data.shape)
        blobs[1].data[...] = rng.normal(0, 0.5, blobs[1].data.shape)
    net.save(str(path))
    return [b.data.astype(np.float64) for b in net.params["fc"]] \
        if "fc" in net.params else None


def write_mean(path, mean):
    blob = caffe.io.array_to_blobproto(mean[None].astype(np.float32))
    Path(path).write_bytes(blob.SerializeToString())


def hand_predict(images, mean, W, b, in_h=IN_H, in_w=IN_W):
    """The same preprocessing and net math in numpy."""
    out = []
    for img in images:
        x = img.transpose(2, 0, 1).astype(np.float32) - mean
        h0, w0 = (x.shape[1] - in_h) // 2, (x.shape[2] - in_w) // 2
        x = x[:, h0:h0 + in_h, w0:w0 + in_w].astype(np.float64).ravel()
        z = W @ x + b
        e = np.exp(z - z.max())
        out.append(e / e.sum())
    return np.asarray(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    root = d / "root"
    images, lines = [], []
    P = rng.dirichlet(np.ones(K), size=N)
    for i in range(N):
        rel = f"imgs/img_{i}.png"
        images.append(write_image(root / rel, IMG_W, IMG_H, seed=i,
                                  color=(40 * i % 256, 90, 200)))
        lines.append(rel + " " + " ".join(f"{p:.9g}" for p in P[i]))
    (d / "test.txt").write_text("\n".join(lines) + "\n")
    run("convert_imageset_r", f"{root}/", d / "test.txt", d / "test_lmdb")
    mean = rng.uniform(0, 255, (3, IMG_H, IMG_W)).astype(np.float32)
    write_mean(d / "mean.binaryproto", mean)
    write_deploy(d / "deploy.prototxt")
    W, b = write_weights(d / "deploy.prototxt", d / "model.caffemodel")
    (d / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    _, P_list, _ = read_distributions(d / "test.txt")
    return dict(dir=d, root=root, images=images, P=P_list, mean=mean, W=W,
                b=b, list=d / "test.txt", db=d / "test_lmdb",
                mean_file=d / "mean.binaryproto",
                model=d / "deploy.prototxt", weights=d / "model.caffemodel",
                classes=d / "classes.txt",
                names=[f"imgs/img_{i}.png" for i in range(N)])


def net_args(data, *extra):
    return ("--model", data["model"], "--weights", data["weights"], *extra)


def assert_png(path, min_size=100):
    img = cv2.imread(str(path))
    assert img is not None, path
    assert img.shape[0] >= min_size and img.shape[1] >= min_size, img.shape
    assert img.std() > 0, path  # not a blank canvas


def test_evaluate_db_equals_numpy(data, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_files(data["model"], data["weights"], db=data["db"],
                      mean=data["mean_file"], classes=data["classes"],
                      out=out, batch=4)
    expected = hand_predict(data["images"], data["mean"], data["W"],
                            data["b"])
    names, Q, _ = read_distributions(out / "predictions.txt")
    assert names == data["names"]
    np.testing.assert_allclose(Q, expected, rtol=1e-5, atol=1e-7)
    want = metrics.summary(data["P"], expected)
    assert result["n"] == N and result["k"] == K
    for key in metrics.MEASURES + ("accuracy",):
        assert result[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6)
    assert json.loads((out / "metrics.json").read_text()) == result
    per_class = (out / "per_class.csv").read_text()
    assert all(c in per_class for c in CLASSES)
    assert_png(out / "confusion.png")
    assert_png(out / "distributions.png")


def test_db_and_list_agree_through_cli(data, tmp_path):
    common = net_args(data, "--mean", data["mean_file"], "--batch", "3")
    p_db = jcdl("evaluate", *common, "--db", data["db"],
                "--predictions", tmp_path / "db.txt")
    p_list = jcdl("evaluate", *common, "--list", data["list"],
                  "--root", data["root"], "--predictions",
                  tmp_path / "list.txt")
    text = (tmp_path / "db.txt").read_text()
    assert text == (tmp_path / "list.txt").read_text()
    # the LMDB holds the ground truth as float32, the list as printed
    a, b = json.loads(p_db.stdout), json.loads(p_list.stdout)
    assert a.pop("ground_truth") == b.pop("ground_truth") == "distribution"
    assert set(a) >= {"chebyshev", "clark", "canberra", "kl", "cosine",
                      "intersection", "accuracy", "n"}
    assert a == pytest.approx(b, rel=1e-6)
    assert text.splitlines()[0].startswith("imgs/img_0.png ")


def test_preprocessing_equals_caffe_data_layer(data, tmp_path):
    """Caffe's own Data layer in TEST phase, mean_file + crop, on the same
    LMDB, gives exactly the arrays the Preprocessor makes."""
    n = caffe.NetSpec()
    n.data, n.label = L.Data(
        source=str(data["db"]), backend=caffe_pb2.DataParameter.LMDB,
        batch_size=N, ntop=2,
        transform_param=dict(mean_file=str(data["mean_file"]), crop_size=7))
    proto = tmp_path / "data.prototxt"
    proto.write_text(str(n.to_proto()))
    net = caffe.Net(str(proto), caffe.TEST)
    net.forward()
    prep = Preprocessor((3, 7, 7), data["mean"])
    samples = list(db_samples(data["db"]))
    mine = np.stack([prep(img, name) for name, img, _ in samples])
    assert mine.shape == net.blobs["data"].data.shape
    assert np.array_equal(mine, net.blobs["data"].data)
    np.testing.assert_allclose(net.blobs["label"].data,
                               np.stack([p for _, _, p in samples]),
                               rtol=1e-6)


def test_list_resize_matches_convert_imageset_r(data, tmp_path):
    """Images of another size: the list path resizes to the mean's size as
    convert_imageset_r --resize_* does for the LMDB."""
    root = tmp_path / "root"
    lines = []
    for i in range(4):
        write_image(root / f"big_{i}.png", 29, 23, seed=100 + i)
        lines.append(f"big_{i}.png 1 {i} 2")
    (tmp_path / "l.txt").write_text("\n".join(lines) + "\n")
    run("convert_imageset_r", "--resize_height", IMG_H, "--resize_width",
        IMG_W, f"{root}/", tmp_path / "l.txt", tmp_path / "db")
    kw = dict(mean=data["mean_file"], out=None)
    evaluate_files(data["model"], data["weights"], db=tmp_path / "db",
             predictions=tmp_path / "a.txt", **kw)
    evaluate_files(data["model"], data["weights"], list_path=tmp_path / "l.txt",
             root=root, predictions=tmp_path / "b.txt", **kw)
    _, Qa, _ = read_distributions(tmp_path / "a.txt")
    _, Qb, _ = read_distributions(tmp_path / "b.txt")
    np.testing.assert_allclose(Qa, Qb, rtol=1e-6, atol=1e-8)


def test_evaluate_without_mean_resizes_to_input(data, tmp_path):
    W, b = data["W"], data["b"]
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = evaluate_files(data["model"], data["weights"], list_path=data["list"],
                      root=data["root"], predictions=tmp_path / "p.txt",
                      out=out)
    assert (out / "keep.txt").read_text() == "mine"  # an --out folder kept
    assert (out / "predictions.txt").read_text() == \
        (tmp_path / "p.txt").read_text()
    resized = [cv2.resize(img, (IN_W, IN_H)) for img in data["images"]]
    expected = hand_predict(resized, np.zeros((3, IN_H, IN_W), np.float32),
                            W, b)
    _, Q, _ = read_distributions(tmp_path / "p.txt")
    np.testing.assert_allclose(Q, expected, rtol=1e-5, atol=1e-7)
    assert result["n"] == N


def test_resize_without_mean_crops_as_training_did(data, tmp_path):
    """A net trained without a mean on images stored at 10x12 and cropped
    to 7x8: --resize 10 12 gives files the crop Caffe's Data layer gave the
    LMDB, for evaluate --list and for predict alike."""
    common = net_args(data, "--batch", "4")
    jcdl("evaluate", *common, "--db", data["db"], "--predictions",
         tmp_path / "db.txt")
    jcdl("evaluate", *common, "--list", data["list"], "--root", data["root"],
         "--resize", IMG_H, IMG_W, "--predictions", tmp_path / "list.txt")
    _, Q_db, _ = read_distributions(tmp_path / "db.txt")
    _, Q_list, _ = read_distributions(tmp_path / "list.txt")
    np.testing.assert_allclose(Q_list, Q_db, atol=1e-7)
    cropped = [img[1:1 + IN_H, 2:2 + IN_W] for img in data["images"]]
    np.testing.assert_allclose(Q_db, hand_predict(
        cropped, np.zeros((3, IN_H, IN_W), np.float32), data["W"],
        data["b"]), rtol=1e-5, atol=1e-7)
    proc = jcdl("predict", *common, "--resize", IMG_H, IMG_W,
                data["root"] / data["names"][0])
    q = list(json.loads(proc.stdout)["distribution"].values())
    np.testing.assert_allclose(q, Q_db[0], atol=1e-6)
    proc = jcdl("predict", *net_args(data, "--mean", data["mean_file"]),
                "--resize", 20, 24, data["root"] / data["names"][0],
                check=False)
    assert_clean_error(proc, "mean.binaryproto", "the mean is 10x12",
                       "--resize says 20x24")


def test_predict_cli(data):
    paths = [data["root"] / n for n in data["names"][:3]]
    proc = jcdl("predict", *net_args(data, "--mean", data["mean_file"],
                                     "--classes", data["classes"]), *paths)
    lines = [json.loads(l) for l in proc.stdout.splitlines()]
    expected = hand_predict(data["images"][:3], data["mean"], data["W"],
                            data["b"])
    assert [l["image"] for l in lines] == [str(p) for p in paths]
    for line, q in zip(lines, expected):
        assert list(line["distribution"]) == CLASSES
        np.testing.assert_allclose(list(line["distribution"].values()), q,
                                   rtol=1e-5)
        assert line["dominant"] == CLASSES[int(np.argmax(q))]


def test_predict_api_arrays_paths_and_bytes(data):
    model = load_model(data["model"], data["weights"], data["mean_file"],
                       classes=data["classes"])
    assert model.classes == CLASSES and model.K == K
    paths = [data["root"] / n for n in data["names"]]
    by_path = model.predict(paths, batch=4)
    by_array = load_model(data["model"], data["weights"],
                          data["mean"]).predict(data["images"])
    by_bytes = model.predict([p.read_bytes() for p in paths], batch=4)
    assert by_path.shape == (N, K)
    assert np.array_equal(by_path, by_array)
    assert np.array_equal(by_path, by_bytes)
    records = model.records([str(p) for p in paths], by_path)
    assert records[0]["image"] == str(paths[0])
    assert list(records[0]["distribution"]) == CLASSES
    with pytest.raises(JcdlError, match="cannot decode the image"):
        model.predict([b"not an image"], names=["upload.jpg"])
    np.testing.assert_allclose(
        by_path, hand_predict(data["images"], data["mean"], data["W"],
                              data["b"]), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def bad(data, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    write_deploy(d / "k4.prototxt", k=4)
    write_weights(d / "k4.prototxt", d / "k4.caffemodel")
    write_deploy(d / "other.prototxt", name="other")
    write_weights(d / "other.prototxt", d / "other.caffemodel")
    (d / "garbage.caffemodel").write_bytes(b"\xff\x00not a model" * 50)
    n = caffe.NetSpec()
    n.data, n.label = L.Data(source=str(data["db"]), batch_size=2, ntop=2,
                             backend=caffe_pb2.DataParameter.LMDB)
    n.fc = L.InnerProduct(n.data, num_output=K)
    (d / "train_val.prototxt").write_text(str(n.to_proto()))
    root = d / "root"
    write_image(root / "ok.png", IMG_W, IMG_H)
    (root / "broken.png").write_text("this is not a PNG")
    (d / "missing.txt").write_text("ok.png 1 0 0\nnot_there.png 0 1 0\n")
    (d / "broken.txt").write_text("ok.png 1 0 0\nbroken.png 0 1 0\n")
    (d / "k4.txt").write_text("ok.png 1 0 0 2\n")
    (d / "two_classes.txt").write_text("joy\nfear\n")
    return d


CASES = {
    "missing model": (dict(model="nope.prototxt"),
                      ["nope.prototxt", "no such model"]),
    "missing weights": (dict(weights="nope.caffemodel"),
                        ["nope.caffemodel", "no such weights"]),
    "weights of another shape": (dict(weights="B/k4.caffemodel"),
                                 ["k4.caffemodel", "layer 'fc'", "(4, 168)",
                                  "(3, 168)"]),
    "weights of another net": (dict(weights="B/other.caffemodel"),
                               ["other.caffemodel", "no weights for layer "
                                "'fc'"]),
    "not a caffemodel": (dict(weights="B/garbage.caffemodel"),
                         ["garbage.caffemodel", "not a Caffe weights"]),
    "train_val as model": (dict(model="B/train_val.prototxt"),
                           ["train_val.prototxt", "no Input layer"]),
    "missing image": (dict(list="B/missing.txt"),
                      ["not_there.png", "no such image"]),
    "undecodable image": (dict(list="B/broken.txt"),
                          ["broken.png", "cannot decode"]),
    "no such db": (dict(db="B/nope_lmdb"), ["nope_lmdb", "no such LMDB"]),
    "K differs": (dict(list="B/k4.txt"),
                  ["k4.txt", "4 values", "outputs 3"]),
    "classes count": (dict(classes="B/two_classes.txt"),
                      ["two_classes.txt", "2 class names"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_evaluate_bad_input(case, data, bad, tmp_path):
    change, fragments = CASES[case]

    def path(v):
        return str(v).replace("B/", f"{bad}/") if "B/" in str(v) \
            else str(tmp_path / v)

    opts = {"model": data["model"], "weights": data["weights"]}
    opts.update({k: path(v) for k, v in change.items()})
    if "list" in opts:
        opts["root"] = bad / "root"
    elif "db" not in opts:
        opts["db"] = data["db"]
    args = [a for k, v in opts.items() for a in (f"--{k}", v)]
    out = tmp_path / "out"
    proc = jcdl("evaluate", *args, "--out", out, check=False)
    assert_clean_error(proc, "jcdl evaluate: ", *fragments)
    assert not out.exists()
    assert proc.stdout == ""


def test_predict_bad_image(data, bad):
    proc = jcdl("predict", *net_args(data), data["root"] / data["names"][0],
                bad / "root" / "broken.png", check=False)
    assert_clean_error(proc, "jcdl predict: ", "broken.png", "cannot decode")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""  # nothing printed for the good image either


def test_gpu_on_this_build(data):
    proc = jcdl("predict", *net_args(data, "--gpu", "0"),
                data["root"] / data["names"][0], check=False)
    if proc.returncode == 0:   # a CUDA build with a GPU
        assert json.loads(proc.stdout)["dominant"]
    else:
        assert_clean_error(proc, "jcdl predict: ", "GPU 0")


def test_evaluate_never_writes_over_its_inputs_or_a_folder(data, tmp_path):
    """--predictions naming the ground-truth list, or an existing folder, is
    refused before the net runs; both stay as they were."""
    gt = tmp_path / "test.txt"
    gt.write_text(data["list"].read_text())
    folder = tmp_path / "folder"
    (folder / "keep").mkdir(parents=True)
    for target, what in ((gt, "is an input of this run"),
                         (folder, "is a folder")):
        proc = jcdl("evaluate", *net_args(data, "--mean", data["mean_file"]),
                    "--list", gt, "--root", data["root"], "--predictions",
                    target, check=False)
        assert_clean_error(proc, str(target), what)
    assert gt.read_text() == data["list"].read_text()
    assert (folder / "keep").is_dir()


def test_a_failed_evaluate_leaves_an_existing_out_folder_as_it_was(
        data, tmp_path, monkeypatch):
    """--out an existing folder: the new files replace the old ones only
    when all were written; a failure part-way (here: the last plot) changes
    nothing there."""
    from jcdl import plot
    out = tmp_path / "eval"
    evaluate_files(data["model"], data["weights"], db=data["db"],
             mean=data["mean_file"], out=out)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kw):
        raise JcdlError(args[-1] if args else "plot", "the plot failed")

    monkeypatch.setattr(plot, "distributions_figure", broken)
    with pytest.raises(JcdlError, match="the plot failed"):
        evaluate_files(data["model"], data["weights"], db=data["db"], out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
