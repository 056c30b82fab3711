"""jcdl plot and the plot helpers, on a real log of 'caffe train'."""
import csv
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest

from conftest import assert_clean_error, jcdl, run
from jcdl.caffenet import import_caffe
from jcdl.plot import (confusion_figure, curves_figure, distributions_figure,
                       histogram_figure, parse_log, plot_log, save_figure)


def plot_confusion(m, classes, path):
    return save_figure(confusion_figure(m, classes), path)


def plot_distributions(names, P, Q, classes, path, **kw):
    return save_figure(distributions_figure(names, P, Q, classes, **kw), path)

caffe = import_caffe()
from caffe import layers as L, params as P  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402

K = 3


def write_lmdb(path, n=12, seed=0):
    rng = np.random.default_rng(seed)
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(n):
            d = caffe_pb2.Datum(channels=3, height=6, width=6)
            d.data = rng.integers(0, 256, (3, 6, 6), np.uint8).tobytes()
            d.float_data.extend(rng.dirichlet(np.ones(K)).astype(np.float32))
            txn.put(f"{i:08d}_img{i}.png".encode(), d.SerializeToString())
    env.close()


def write_net(path, db):
    n = caffe.NetSpec()
    n.data, n.label = L.Data(source=str(db), backend=P.Data.LMDB,
                             batch_size=4, ntop=2,
                             transform_param=dict(scale=1 / 255.))
    n.fc = L.InnerProduct(n.data, num_output=K,
                          weight_filler=dict(type="gaussian", std=0.1))
    n.loss_kl = L.SoftmaxWithKLLoss(n.fc, n.label, loss_weight=0.8)
    n.loss_cls = L.SoftmaxWithMyKLLoss(n.fc, n.label, loss_weight=0.2)
    n.accuracy = L.Accuracy(n.fc, n.label, include=dict(phase=caffe.TEST))
    Path(path).write_text(str(n.to_proto()))


@pytest.fixture(scope="module")
def solver(tmp_path_factory):
    """display 2, a test every 4 iterations, lr stepping down at 4."""
    d = tmp_path_factory.mktemp("plot")
    write_lmdb(d / "db")
    write_net(d / "net.prototxt", d / "db")
    (d / "solver.prototxt").write_text(
        f'net: "{d}/net.prototxt"\ntest_iter: 2\ntest_interval: 4\n'
        'base_lr: 0.01\nlr_policy: "step"\ngamma: 0.1\nstepsize: 4\n'
        'momentum: 0.9\ndisplay: 2\nmax_iter: 8\nsolver_mode: CPU\n'
        f'snapshot_after_train: false\nsnapshot_prefix: "{d}/snap"\n')
    return d / "solver.prototxt"


@pytest.fixture(scope="module")
def log(solver):
    """The glog output of a real 'caffe train' run."""
    proc = run("caffe", "train", f"--solver={solver}",
               env={"GLOG_minloglevel": "0"})
    path = solver.with_name("train.log")
    path.write_text(proc.stderr)
    return path


def numbers_after(line, marker):
    """The number that follows marker in a log line (plain string ops, as
    an independent reading of the log)."""
    return float(line.split(marker, 1)[1].split()[0].rstrip(","))


def test_parse_real_caffe_log(log):
    text = log.read_text().splitlines()
    series = parse_log(log)
    loss_lines = [l for l in text if ", loss = " in l and "Iteration" in l]
    its, vals = series["loss"]
    assert list(its) == [0, 2, 4, 6, 8]
    assert len(loss_lines) == 5
    np.testing.assert_array_equal(
        vals, [numbers_after(l, "loss = ") for l in loss_lines])
    assert list(series["lr"][0]) == [0, 2, 4, 6]
    np.testing.assert_allclose(series["lr"][1], [0.01, 0.01, 0.001, 0.001])
    kl_lines = [l for l in text if "Train net output" in l and "loss_kl" in l]
    np.testing.assert_array_equal(
        series["train/loss_kl"][1],
        [numbers_after(l, "loss_kl = ") for l in kl_lines])
    assert list(series["train/loss_cls"][0]) == [0, 2, 4, 6]  # not at the end
    acc_lines = [l for l in text if "Test net output" in l and "accuracy" in l]
    assert list(series["test/accuracy"][0]) == [0, 4, 8]
    np.testing.assert_array_equal(
        series["test/accuracy"][1],
        [numbers_after(l, "accuracy = ") for l in acc_lines])
    assert all(0 <= a <= 1 for a in series["test/accuracy"][1])
    assert len(series["test/loss_kl"][0]) == 3


def test_parse_jcdl_train_log(solver):
    """jcdl train's log: the same formats, plus the six measures."""
    log = solver.with_name("jcdl_train.log")
    jcdl("train", "--solver", solver, "--log", log)
    text = log.read_text().splitlines()
    series = parse_log(log)
    assert list(series["loss"][0]) == [0, 2, 4, 6, 8]
    assert list(series["lr"][0]) == [0, 2, 4, 6]
    for name in ("kl", "cosine", "chebyshev", "intersection", "accuracy"):
        lines = [l for l in text if "Test net output" in l
                 and f": {name} = " in l]
        assert list(series[f"test/{name}"][0]) == [0, 4, 8], name
        np.testing.assert_array_equal(
            series[f"test/{name}"][1],
            [numbers_after(l, f"{name} = ") for l in lines])
    assert 0 <= series["test/cosine"][1].min() <= 1


def test_parse_older_format_and_second_test_net(tmp_path):
    log = tmp_path / "old.log"
    log.write_text(
        "I1129 22:10:01.123456  1234 solver.cpp:239] Iteration 0, loss = 2.5\n"
        "I1129 22:10:01.123456  1234 solver.cpp:258]     Train net output #0:"
        " loss_kl = 1.5 (* 0.8 = 1.2 loss)\n"
        "I1129 22:10:01.123456  1234 sgd_solver.cpp:112] Iteration 0, "
        "lr = 0.0001\n"
        "I1129 22:10:02.000000  1234 solver.cpp:347] Iteration 20, Testing "
        "net (#0)\n"
        "I1129 22:10:02.000000  1234 solver.cpp:414]     Test net output #0:"
        " accuracy = 0.25\n"
        "I1129 22:10:02.000000  1234 solver.cpp:414]     Test net output #1:"
        " kl = 0.75\n"
        "I1129 22:10:02.000000  1234 solver.cpp:414]     Test net output #2:"
        " cosine = 0.5\n"
        "I1129 22:10:02.000000  1234 solver.cpp:347] Iteration 20, Testing "
        "net (#1)\n"
        "I1129 22:10:02.000000  1234 solver.cpp:414]     Test net output #0:"
        " accuracy = 0.125\n"
        "I1129 22:10:03.000000  1234 solver.cpp:239] Iteration 20 (2.1 "
        "iter/s, 9.5s/20 iters), loss = 1.25\n"
        "I1129 22:10:03.000000  1234 solver.cpp:239] Iteration 40, loss = "
        "nan\n")
    s = parse_log(log)
    assert list(s["loss"][0]) == [0, 20, 40]
    assert s["loss"][1][:2].tolist() == [2.5, 1.25]
    assert np.isnan(s["loss"][1][2])
    assert s["train/loss_kl"][1].tolist() == [1.5]
    assert s["lr"][1].tolist() == [0.0001]
    assert s["test/accuracy"] == ([20], [0.25])
    assert s["test/kl"][1].tolist() == [0.75]
    assert s["test/cosine"][1].tolist() == [0.5]
    assert s["test1/accuracy"][1].tolist() == [0.125]


def assert_png(path, min_h=150, min_w=150):
    img = cv2.imread(str(path))
    assert img is not None, path
    assert img.shape[0] >= min_h and img.shape[1] >= min_w, img.shape
    assert img.std() > 0
    return img


def test_plot_cli(log, tmp_path):
    out = tmp_path / "plots"
    proc = jcdl("plot", log, "--out", out)
    names = {"loss.png", "test.png", "lr.png", "series.csv"}
    assert {Path(l).name for l in proc.stdout.split()} == names
    assert {p.name for p in out.iterdir()} == names
    for png in ("loss.png", "test.png", "lr.png"):
        assert_png(out / png)
    with open(out / "series.csv") as f:
        rows = list(csv.DictReader(f))
    series = parse_log(log)
    loss = [(int(r["iteration"]), float(r["value"])) for r in rows
            if r["series"] == "loss"]
    assert loss == list(zip(series["loss"][0].tolist(),
                            series["loss"][1].tolist()))
    assert {r["series"] for r in rows} == set(series)
    # '.' is the current folder: the plots go there, beside what is there
    here = tmp_path / "here"
    here.mkdir()
    (here / "mine.txt").write_text("kept")
    jcdl("plot", log, "--out", ".", cwd=here)
    assert {p.name for p in here.iterdir()} == names | {"mine.txt"}


def test_plot_log_api(log, tmp_path):
    pngs = plot_log(log, tmp_path / "x")
    assert [p.name for p in pngs] == ["loss.png", "test.png", "lr.png"]
    for p in pngs:
        assert_png(p)


def test_plot_bad_logs(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_text("I1129 22:10:01.1  1 net.cpp:100] Creating layer data\n")
    out = tmp_path / "out"
    proc = jcdl("plot", empty, "--out", out, check=False)
    assert_clean_error(proc, "jcdl plot: ", "empty.log",
                       "no training iterations")
    assert not out.exists()
    proc = jcdl("plot", tmp_path / "nope.log", "--out", out, check=False)
    assert_clean_error(proc, "nope.log", "no such log file")
    assert not out.exists()


def test_training_curves_overlay(log, tmp_path):
    other = tmp_path / "other.log"
    other.write_text(log.read_text().replace("loss = ", "loss = 1"))
    path = save_figure(curves_figure({"jcdl": log, "kl_only": other,
                                      "softmax_only": log}),
                       tmp_path / "c.png")
    img = assert_png(path)
    # loss + accuracy + loss_kl + loss_cls test panels: a grid of 2 rows
    assert img.shape[0] > img.shape[1] / 3


def test_confusion_and_distribution_plots(tmp_path):
    rng = np.random.default_rng(3)
    Pm = rng.dirichlet(np.ones(4), 8)
    Qm = rng.dirichlet(np.ones(4), 8)
    classes = ["amusement", "awe", "anger", "fear"]
    m = np.array([[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    assert_png(plot_confusion(m, classes, tmp_path / "conf.png"))
    plain = assert_png(plot_distributions(
        [f"i{k}" for k in range(8)], Pm, Qm, classes, tmp_path / "d.png",
        n=3))
    images = [rng.integers(0, 256, (20, 30, 3), np.uint8) for _ in range(8)]
    with_images = assert_png(plot_distributions(
        [f"i{k}" for k in range(8)], Pm, Qm, classes, tmp_path / "di.png",
        n=3, images=images))
    assert with_images.shape[1] > plain.shape[1]
    assert not list(tmp_path.glob(".*partial*"))
    # names are text: a '$' does not start a formula matplotlib cannot parse
    odd = ["$x^{$", "a_b", "100%", "joy"]
    assert_png(plot_confusion(m, odd, tmp_path / "odd.png"))
    assert_png(plot_distributions(["$img_{1.jpg"] * 8, Pm, Qm, odd,
                                  tmp_path / "oddd.png", n=2))
