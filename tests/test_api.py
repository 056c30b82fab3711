"""The Python API as a notebook user calls it, with what such a user gets
wrong: other dtypes and shapes, a per-channel mean, one image instead of a
list, arrays that are not distributions, odd plot inputs, folders that are
not runs. Each gives the documented result or one clear error."""
import os

import cv2
import numpy as np
import pytest

from jcdl import evaluate, metrics, plot, predict
from jcdl.errors import JcdlError
from test_predict import (CLASSES, IMG_H, IMG_W, K, data,  # noqa: F401
                          hand_predict)


@pytest.fixture(scope="module")
def model(data):  # noqa: F811
    return predict.load_model(data["model"], data["weights"],
                              data["mean_file"], classes=data["classes"])


def test_arrays_other_than_uint8_bgr_are_refused(model, data):  # noqa: F811
    img = data["images"][0]
    for bad in (img / 255.0, img.astype(np.uint16) * 257,
                img[:, :, ::-1].astype(np.float32)):
        with pytest.raises(JcdlError, match="give uint8 BGR images"):
            model.predict([bad])
    with pytest.raises(JcdlError, match="give H x W x C images"):
        model.predict([img[None, None]])


def test_one_image_is_not_a_sequence_of_them(model, data):  # noqa: F811
    path = data["root"] / data["names"][0]
    one = model.predict(str(path))
    assert one.shape == (1, K)
    assert np.array_equal(one, model.predict([path]))
    assert np.array_equal(model.predict(data["images"][0]), one)
    assert model.predict(np.stack(data["images"][:3])).shape == (3, K)
    with pytest.raises(ValueError, match="batch must be at least 1"):
        model.predict([path], batch=0)
    with pytest.raises(ValueError, match="2 names for 1 predictions"):
        model.records(["a", "b"], one)


def test_a_per_channel_mean(data):  # noqa: F811
    values = np.array([104.0, 117.0, 123.0], np.float32)
    m = predict.load_model(data["model"], data["weights"], values)
    got = m.predict(data["images"][:2])
    resized = [cv2.resize(img, (8, 7)) for img in data["images"][:2]]
    want = hand_predict(resized, values[:, None, None], data["W"], data["b"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    with pytest.raises(JcdlError, match="^mean: "):
        predict.load_model(data["model"], data["weights"],
                           np.zeros((3, 2, 2), np.float32))


def test_summary_takes_distributions_only():
    P = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert metrics.summary(P, P)["kl"] == 0
    for bad, what in ((np.array([[2.0, 2.0], [0.9, 0.1]]), "not 1"),
                      (np.array([[1.5, -0.5], [0.9, 0.1]]), "negative"),
                      (np.array([[np.nan, 1.0], [0.9, 0.1]]), "not finite"),
                      (np.zeros((0, 2)), "at least 1")):
        with pytest.raises(ValueError, match=what):
            metrics.summary(bad, P if len(bad) else bad)


def test_published_numbers_only_beside_the_same_dataset():
    result = {key: 0.5 for key, _ in metrics.FORMS}
    result["k"] = 8
    rows = metrics.published_rows(result, "flickr_ldl")
    assert {r["measure"]: r["published"] for r in rows}["KL ↓"] == 0.39
    with pytest.raises(ValueError, match="emotion6 has 7 emotions"):
        metrics.published_rows(result, "emotion6")
    with pytest.raises(ValueError, match="no published numbers for 'fi'"):
        metrics.published_rows(result, "fi")
    assert all(r["published"] == "—" for r in metrics.published_rows(result))


def test_plots_with_odd_inputs(tmp_path, data):  # noqa: F811
    fig = plot.histogram_figure(np.array([0.1, np.inf, 0.3]))
    title = fig.axes[0].get_title()
    assert "mean inf" in title and "1 not finite" in title
    plot.save_figure(fig, tmp_path / "h.pdf")
    assert (tmp_path / "h.pdf").read_bytes().startswith(b"%PDF")
    log = tmp_path / "run" / "train.log"
    log.parent.mkdir()
    log.write_text("I1201 10:00:00.000000  1 solver.cpp:239] Iteration 0, "
                   "loss = 1.5\nI1201 10:00:01.000000  1 solver.cpp:239] "
                   "Iteration 10, loss = 1.2\n")
    fig = plot.curves_figure([log])
    assert fig.axes[0].get_legend_handles_labels()[1] == ["run"]


def test_runs_images_and_outputs_that_do_not_fit(tmp_path, model,
                                                data):  # noqa: F811
    with pytest.raises(JcdlError, match="not a run folder"):
        evaluate.find_run(tmp_path)
    with pytest.raises(JcdlError, match="no record named 'nope'"):
        predict.sample_images([data["names"][0], "nope"], db=data["db"])
    ev = evaluate.evaluate(model, db=data["db"], progress=False)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(JcdlError, match="exists and is not a folder"):
        evaluate.write_evaluation(ev, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"


def test_find_run_from_a_subfolder_of_where_training_ran(tmp_path):
    from jcdl import netgen
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:   # paths in the solver relative to tmp_path, where it "trained"
        netgen.write_nets("runs/r", "small", "jcdl", 0.8, 3, "db/train",
                          "db/test", batch=4, crop=32, test_iter=1,
                          snapshot_prefix="runs/r/snap")
        (tmp_path / "db" / "test").mkdir(parents=True)
        (tmp_path / "runs" / "r" / "snap_iter_5.caffemodel").write_bytes(b"")
        (tmp_path / "runs" / "r" / "snap_iter_40.caffemodel").write_bytes(b"")
        os.chdir(tmp_path / "runs")
        run = evaluate.find_run("r")
        assert run.weights.name == "snap_iter_40.caffemodel"
        assert run.test_db.resolve() == (tmp_path / "db" / "test").resolve()
        assert run.mean is None and run.log is None
    finally:
        os.chdir(cwd)


def test_a_mean_that_is_not_finite_is_named(data, tmp_path):  # noqa: F811
    mean = data["mean"].copy()
    mean[0, 0, 0] = np.nan
    with pytest.raises(JcdlError, match="^mean: the mean holds values that "
                       "are not finite"):
        predict.load_model(data["model"], data["weights"], mean)
