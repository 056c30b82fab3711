"""jcdl reproduce: the whole protocol over splits on a small Emotion6-layout
folder made here (real images, LMDBs, Caffe training and evaluation), its
summary, and a rerun that skips or resumes."""
import json

import numpy as np
import pytest

from conftest import assert_clean_error, jcdl, write_image

HEADER = ("[image_filename]\t[valence]\t[arousal]\t[prob. anger]\t"
          "[prob. disgust]\t[prob. fear]\t[prob. joy]\t[prob. sadness]\t"
          "[prob. surprise]\t[prob. neutral]\n")
FOLDERS = ("anger", "disgust", "fear", "joy", "sadness", "surprise")
MEASURES = ("kl", "chebyshev", "clark", "clark_over_sqrt_k", "canberra",
            "canberra_over_k", "cosine", "intersection", "accuracy")


def emotion6(root, n=20):
    """Emotion6's release layout: images/<folder>/<n>.jpg and
    ground_truth.txt (header, tab-separated, 6 significant digits)."""
    rng = np.random.default_rng(1)
    lines = [HEADER]
    for i in range(n):
        name = f"{FOLDERS[i % 6]}/{i + 1}.jpg"
        p = rng.dirichlet(np.ones(7))
        lines.append(f"{name}\t5.0\t4.5\t" + "\t".join(f"{v:.6g}" for v in p)
                     + "\n")
        write_image(root / "images" / name, 24, 20, seed=i,
                    color=(40 * (i % 6), 100, 200 - 30 * (i % 6)))
    (root / "ground_truth.txt").write_text("".join(lines))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce")
    root, out = tmp / "Emotion6", tmp / "out"
    emotion6(root)
    proc = jcdl("reproduce", "emotion6", root, out, "--arch", "small",
                "--splits", "2", "--iterations", "30")
    return root, out, proc


def test_two_splits_and_summary(first_run):
    root, out, proc = first_run
    for stage in ("split 1/2: convert", "split 1/2: mean", "split 1/2: "
                  "netgen", "split 1/2: train 30 iterations", "split 1/2: "
                  "evaluate", "split 2/2: train", "2 split(s) done"):
        assert stage in proc.stderr, (stage, proc.stderr[-2000:])
    s = json.loads((out / "summary.json").read_text())
    assert s["splits"] == 2 and s["ground_truth"] == "distribution"
    assert set(MEASURES) <= set(s["mean"]) and set(MEASURES) <= set(s["std"])
    per = [r["measures"] for r in s["per_split"]]
    assert [r["split"] for r in s["per_split"]] == [1, 2]
    for c in MEASURES:
        values = [m[c] for m in per]
        assert s["mean"][c] == pytest.approx(np.mean(values))
        assert s["std"][c] == pytest.approx(np.std(values, ddof=1))
    for m in per:
        assert m["n"] == 4 and m["k"] == 7       # 20 images, 80/20
        assert m["clark_over_sqrt_k"] == pytest.approx(m["clark"] / 7 ** .5)
    for r in s["per_split"]:
        for key in ("train_list", "test_list", "train_lmdb", "test_lmdb",
                    "mean", "solver", "deploy", "weights", "log", "eval"):
            assert (out / r["paths"][key]).exists(), (key, r["paths"][key])
        assert r["paths"]["weights"].endswith("small_jcdl_iter_30.caffemodel")
    # the two splits' test sets differ (random splits, seeded)
    tests = [(out / r["paths"]["test_list"]).read_text()
             for r in s["per_split"]]
    assert tests[0] != tests[1]
    md = (out / "summary.md").read_text()
    assert "±" in md and "StyleEDL" in md and "Clark/√K" in md
    assert f"{s['mean']['kl']:.4f} ± {s['std']['kl']:.4f}" in md
    assert "summary.json: 2 split(s), kl" in proc.stdout


def test_rerun_skips_then_resumes(first_run):
    root, out, _ = first_run
    results = [out / f"split{k}" / "result.json" for k in (1, 2)]
    stamps = [p.stat().st_mtime_ns for p in results]
    proc = jcdl("reproduce", "emotion6", root, out, "--arch", "small",
                "--splits", "2", "--iterations", "30")
    assert "split 1/2: complete" in proc.stderr
    assert "split 2/2: complete" in proc.stderr
    assert "convert" not in proc.stderr and "train" not in proc.stderr
    assert [p.stat().st_mtime_ns for p in results] == stamps

    # split 2 as a run killed after its snapshot at iteration 20: the rerun
    # keeps split 1 and continues split 2's training from that snapshot
    snaps = out / "split2" / "net" / "snapshots"
    for f in snaps.glob("small_jcdl_iter_30.*"):
        f.unlink()
    results[1].unlink()
    assert (snaps / "small_jcdl_iter_20.solverstate").is_file()
    proc = jcdl("reproduce", "emotion6", root, out, "--arch", "small",
                "--splits", "2", "--iterations", "30")
    assert "split 1/2: complete" in proc.stderr
    assert "split 2/2: train, resuming at iteration 20 of 30" in proc.stderr
    assert "split 2/2: convert" not in proc.stderr
    assert (snaps / "small_jcdl_iter_30.caffemodel").is_file()
    log = (out / "split2" / "train.log").read_text()
    assert "Restoring previous solver status from" in log
    assert json.loads((out / "summary.json").read_text())["splits"] == 2


def test_other_settings_and_bad_input(first_run, tmp_path):
    root, out, _ = first_run
    proc = jcdl("reproduce", "emotion6", root, out, "--arch", "small",
                "--splits", "2", "--iterations", "40", check=False)
    assert_clean_error(proc, "reproduce.json: OUT was made with other "
                       "settings (iterations: 30 there, 40 now)")
    proc = jcdl("reproduce", "emotion6", tmp_path / "nope", tmp_path / "o",
                check=False)
    assert_clean_error(proc, "nope: no such dataset folder")
    (tmp_path / "e6").mkdir()
    proc = jcdl("reproduce", "emotion6", tmp_path / "e6", tmp_path / "o",
                "--arch", "small", check=False)
    assert_clean_error(proc, "e6: no ground_truth.txt")
    assert not (tmp_path / "o").exists()
    proc = jcdl("reproduce", "emotion6", root, tmp_path / "o", "--weights",
                tmp_path / "none.caffemodel", check=False)
    assert_clean_error(proc, "none.caffemodel: no such weights file")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine\n")
    proc = jcdl("reproduce", "emotion6", root, tmp_path / "busy", check=False)
    assert_clean_error(proc, "busy: exists and is not a jcdl reproduce folder")


def test_fi_single_label_through_reproduce_and_evaluate(tmp_path):
    """FI's layout through the whole protocol: distributions made by the
    priors, accuracy the headline; jcdl evaluate finds the marker beside
    the classes file and says it is single-label ground truth."""
    from test_priors import fi_folder  # noqa: PLC0415
    root, out = tmp_path / "FI", tmp_path / "out"
    fi_folder(root, per_class=3)
    proc = jcdl("reproduce", "fi", root, out, "--arch", "small", "--splits",
                "1", "--iterations", "5", "--sigma", "0.7")
    assert "summary.json: 1 split(s), accuracy" in proc.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["ground_truth"] == "single_label" and s["std"]["kl"] is None
    assert s["prior"] == {"prior": "both", "sigma": 0.7}
    md = (out / "summary.md").read_text()
    assert md.index("Accuracy") < md.index("KL ↓")
    assert "Single-label ground truth" in md and "prior 'both'" in md
    paths = s["per_split"][0]["paths"]
    args = ["evaluate", "--model", paths["deploy"], "--weights",
            paths["weights"], "--mean", paths["mean"], "--db",
            paths["test_lmdb"], "--classes", paths["classes"]]
    proc = jcdl(*args)
    result = json.loads(proc.stdout)
    assert list(result)[:2] == ["ground_truth", "accuracy"]
    assert result["ground_truth"] == "single_label"
    assert result["prior"] == {"prior": "both", "sigma": 0.7}
    assert result["accuracy"] == pytest.approx(
        s["per_split"][0]["measures"]["accuracy"])
    assert "single-label ground truth: accuracy" in proc.stderr
    result = json.loads(jcdl(*args, "--truth", "distribution").stdout)
    assert result["ground_truth"] == "distribution"
