"""jcdl demo end to end on a small budget: the real pipeline, three
variants, the report."""
import json
import signal
import subprocess
import time

import cv2
import numpy as np
import pytest

from conftest import BIN, assert_clean_error, default_signals, jcdl
from jcdl import datasets, demo, metrics, priors
from jcdl.errors import JcdlError
from jcdl.lists import read_distributions

KEYS = set(metrics.MEASURES) | {"accuracy", "n"}


def test_demo_small_budget(tmp_path):
    out = tmp_path / "demo"
    proc = jcdl("demo", "--out", out, "--iterations", 120, "--images", 240)
    assert proc.stdout.strip() == str(out / "report.md")
    # Caffe-style log lines go to each variant's train.log, not the terminal
    assert "solver.cpp" not in proc.stderr
    assert "Iteration 120, Testing net" in (out / "jcdl" / "train.log").read_text()
    results = json.loads((out / "metrics.json").read_text())
    assert set(results) == {"jcdl", "kl_only", "softmax_only", "jcdl_priors"}
    for variant, r in results.items():
        assert KEYS <= set(r), variant
        assert r["n"] == 48
        # evaluate's predictions file scores to the same numbers
        again = json.loads(jcdl("score", out / "lists" / "test.txt",
                                out / variant / "eval" / "predictions.txt").stdout)
        assert again["kl"] == pytest.approx(r["kl"], abs=1e-6)
    # every variant learned something: the distribution losses beat the
    # uniform distribution, and all beat chance on the dominant emotion
    P = read_distributions(out / "lists" / "test.txt")[1]
    uniform = metrics.summary(P, P * 0 + 1 / P.shape[1])
    for variant in ("jcdl", "kl_only"):
        assert results[variant]["kl"] < uniform["kl"], variant
    for r in results.values():
        assert r["accuracy"] > 2 / P.shape[1]
    # the priors variant trained on the dominant emotion alone, made a
    # distribution by the prior 'both', and was scored against the votes
    names, T, _ = read_distributions(out / "lists" / "train.txt")
    names_p, Tp, _ = read_distributions(out / "lists" / "train_priors.txt")
    assert names_p == names
    assert np.allclose(Tp, priors.Prior(datasets.MIKELS_CLASSES).matrix[
        T.argmax(axis=1)], atol=1e-8)
    assert (Tp.argmax(axis=1) == T.argmax(axis=1)).all()
    assert results["jcdl_priors"]["kl"] < uniform["kl"]
    assert "train_priors_lmdb" in (out / "jcdl_priors" /
                                   "train_val.prototxt").read_text()
    assert "| jcdl_priors |" in (out / "report.md").read_text()
    report = (out / "report.md").read_text()
    assert "synthetic" in report
    for variant in results:
        assert f"| {variant} |" in report
    for png in ["training_curves.png", "jcdl/eval/distributions.png",
                "softmax_only/eval/confusion.png"]:
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[0] > 100, png
    # a second run replaces the earlier demo's folder
    jcdl("demo", "--out", out, "--iterations", 20, "--images", 80)
    assert json.loads((out / "metrics.json").read_text())["jcdl"]["n"] == 16


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    proc = jcdl("demo", "--out", tmp_path, check=False)
    assert_clean_error(proc, str(tmp_path), "not an earlier demo")
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_a_failed_demo_keeps_the_earlier_one(tmp_path, monkeypatch):
    """Arguments are checked before anything is touched; a run that fails
    part-way removes what it wrote and puts the earlier demo back."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / demo.MARKER).write_text("earlier\n")
    (out / "report.md").write_text("the earlier report")
    for args, message in ((["--iterations", 0], "--iterations: '0' is not "
                           "an integer from 1"),
                          (["--images", 5], "--images: '5' is not an "
                           "integer from 16")):
        proc = jcdl("demo", "--out", out, *args, check=False)
        assert_clean_error(proc, message)
    with pytest.raises(JcdlError, match="--images: must be at least 16"):
        demo.run_demo(out, iterations=1, n_images=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]

    def broken_mean(*args, **kw):
        raise JcdlError(args[0], "the mean failed")

    monkeypatch.setattr(demo.lmdbio, "compute_mean", broken_mean)
    with pytest.raises(JcdlError, match="the mean failed"):
        demo.run_demo(out, iterations=1, n_images=16)
    assert (out / "report.md").read_text() == "the earlier report"
    assert sorted(p.name for p in out.iterdir()) == [demo.MARKER, "report.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_one_iteration_and_ctrl_c(tmp_path):
    """--iterations 1 trains (no step size of 0 for Caffe to abort on); a
    Ctrl-C stops the whole demo, not just one variant, and puts the
    earlier demo back."""
    out = tmp_path / "demo"
    jcdl("demo", "--out", out, "--iterations", 1, "--images", 16)
    report = (out / "report.md").read_text()
    proc = subprocess.Popen([str(BIN / "jcdl"), "demo", "--out", str(out),
                             "--iterations", "100000", "--images", "16"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_signals)
    log = out / "jcdl" / "train.log"
    deadline = time.time() + 120
    while not (log.exists() and "Iteration 20 " in log.read_text()):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "jcdl demo: interrupted"
    assert "kl_only" not in err          # the next variant never started
    assert (out / "report.md").read_text() == report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_votes_follow_the_scene_distributions(tmp_path):
    truth = demo.make_dataset(tmp_path, n=400, annotators=11, seed=3)
    lines = (tmp_path / "votes.txt").read_text().splitlines()
    assert len(lines) == 400
    import numpy as np
    votes = np.array([[int(v) for v in l.split()[1:]] for l in lines])
    assert (votes.sum(axis=1) == 11).all()
    for scene in range(len(truth)):
        observed = votes[scene::len(truth)].sum(axis=0) / (11 * 50)
        assert np.abs(observed - truth[scene]).max() < 0.08
