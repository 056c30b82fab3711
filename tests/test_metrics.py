"""jcdl score and the LDL measures against the textbook definitions."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import assert_clean_error, jcdl
from jcdl import metrics


def reference(p, q):
    """Geng's definitions for one sample, term by term in plain Python."""
    K = len(p)
    cheb = max(abs(a - b) for a, b in zip(p, q))
    clark2 = sum((a - b) ** 2 / (a + b) ** 2 for a, b in zip(p, q) if a + b)
    canb = sum(abs(a - b) / (a + b) for a, b in zip(p, q) if a + b)
    kl = sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)
    dot = sum(a * b for a, b in zip(p, q))
    cos = dot / (math.sqrt(sum(a * a for a in p)) * math.sqrt(sum(b * b for b in q)))
    inter = sum(min(a, b) for a, b in zip(p, q))
    acc = float(max(range(K), key=lambda k: (p[k], -k)) ==
                max(range(K), key=lambda k: (q[k], -k)))
    return dict(chebyshev=cheb, clark=math.sqrt(clark2), canberra=canb, kl=kl,
                cosine=cos, intersection=inter, accuracy=acc)


def random_distributions(rng, n, K, zero_rate):
    X = rng.random((n, K)) * (rng.random((n, K)) >= zero_rate)
    X[X.sum(axis=1) == 0, 0] = 1.0
    return X / X.sum(axis=1, keepdims=True)


def write(path, names, P):
    with open(path, "w") as f:
        for name, row in zip(names, P):
            f.write(name + "\t" + " ".join(repr(float(v)) for v in row) + "\n")


def test_summary_matches_definitions_with_zeros():
    rng = np.random.default_rng(0)
    P = random_distributions(rng, 200, 8, 0.4)
    Q = random_distributions(rng, 200, 8, 0.0)  # a softmax is never 0
    got = metrics.summary(P, Q)
    refs = [reference(p, q) for p, q in zip(P, Q)]
    for name in metrics.MEASURES + ("accuracy",):
        assert got[name] == pytest.approx(np.mean([r[name] for r in refs]),
                                          abs=1e-12), name
    # the normalised forms of StyleEDL's metric code: the sum inside the
    # square root divided by K, and Canberra's sum divided by K
    assert got["clark_over_sqrt_k"] == pytest.approx(np.mean(
        [math.sqrt(r["clark"] ** 2 / 8) for r in refs]), abs=1e-12)
    assert got["canberra_over_k"] == pytest.approx(np.mean(
        [r["canberra"] / 8 for r in refs]), abs=1e-12)
    assert got["n"] == 200 and got["k"] == 8 and got["kl_infinite"] == 0


def test_identical_distributions_are_perfect():
    rng = np.random.default_rng(1)
    P = random_distributions(rng, 50, 7, 0.5)
    got = metrics.summary(P, P.copy())
    for name in ("chebyshev", "clark", "canberra", "kl"):
        assert got[name] == pytest.approx(0, abs=1e-12)
    for name in ("cosine", "intersection", "accuracy"):
        assert got[name] == pytest.approx(1)


def test_tiny_predictions_stay_finite():
    P = np.array([[1.0, 0, 0], [0.5, 0.5, 0]])
    Q = np.array([[1 - 2e-30, 1e-30, 1e-30], [1e-30, 1 - 2e-30, 1e-30]])
    got = metrics.summary(P, Q)
    assert all(math.isfinite(v) for v in got.values())
    assert got["kl"] == pytest.approx(0.5 * math.log(0.5 / 1e-30) / 2 +
                                      0.5 * math.log(0.5 / (1 - 2e-30)) / 2)


def test_clark_of_values_below_the_square_underflow():
    """(p - q)^2 and (p + q)^2 underflow to 0 below 1e-154; their ratio
    does not: p = (0, 1), q = (1e-200, 1) has Clark 1, like Canberra."""
    got = metrics.summary(np.array([[0.0, 1.0]]), np.array([[1e-200, 1.0]]))
    assert got["clark"] == pytest.approx(1.0)
    assert got["canberra"] == pytest.approx(1.0)


def test_infinite_kl_is_null_in_strict_json(tmp_path):
    """q_k = 0 < p_k: KL is infinite; the JSON stays valid (null, not
    Infinity) and kl_infinite counts the samples."""
    write(tmp_path / "gt.txt", ["a", "b", "c"],
          np.array([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]]))
    write(tmp_path / "pred.txt", ["a", "b", "c"],
          np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    stdout = jcdl("score", tmp_path / "gt.txt", tmp_path / "pred.txt",
                  "--out", tmp_path / "report").stdout
    for text in (stdout, (tmp_path / "report" / "metrics.json").read_text()):
        out = json.loads(text, parse_constant=lambda c: pytest.fail(
            f"{c} is not JSON"))
        assert out["kl"] is None and out["kl_infinite"] == 2
        assert out["chebyshev"] == pytest.approx(1 / 3)


def test_strict_json_of_nested_summaries():
    """jcdl demo's metrics.json holds a summary per variant: the same rule
    (null, not Infinity) holds inside."""
    text = metrics.to_json({"a": {"kl": math.inf, "n": 2}, "b": {"kl": 0.5}})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "a": {"kl": None, "n": 2}, "b": {"kl": 0.5}}


def test_confusion_and_per_class():
    P = np.array([[.7, .2, .1], [.1, .8, .1], [.1, .1, .8], [.5, .5, 0]])
    Q = np.array([[.6, .3, .1], [.6, .3, .1], [.1, .2, .7], [.3, .6, .1]])
    m = metrics.confusion(P, Q)
    assert m.tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 1]]
    rows = metrics.per_class(P, Q, ["a", "b", "c"])
    assert rows[0]["support"] == 2 and rows[0]["recall"] == 0.5
    assert rows[0]["precision"] == 0.5 and rows[1]["recall"] == 0.0
    assert rows[2]["mae"] == pytest.approx((0 + 0 + .1 + .1) / 4)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.integers(2, 9).flatmap(
    lambda K: st.tuples(
        st.lists(st.lists(st.floats(0, 1e6), min_size=K, max_size=K),
                 min_size=n, max_size=n),
        st.lists(st.lists(st.floats(1e-30, 1e6), min_size=K, max_size=K),
                 min_size=n, max_size=n)))))
def test_measures_stay_in_their_ranges(pq):
    P, Q = (np.asarray(x, dtype=np.float64) for x in pq)
    P[P.sum(axis=1) == 0, 0] = 1.0
    P /= P.sum(axis=1, keepdims=True)
    Q /= Q.sum(axis=1, keepdims=True)
    K = P.shape[1]
    got = metrics.summary(P, Q)
    eps = 1e-9
    assert -eps <= got["chebyshev"] <= 1 + eps
    assert -eps <= got["clark"] <= math.sqrt(K) + eps
    assert -eps <= got["canberra"] <= K + eps
    assert got["kl"] >= -eps and math.isfinite(got["kl"])
    assert -eps <= got["cosine"] <= 1 + eps
    assert -eps <= got["intersection"] <= 1 + eps
    assert got["accuracy"] in [i / len(P) for i in range(len(P) + 1)]


def test_score_cli_matches_definitions(tmp_path):
    rng = np.random.default_rng(2)
    P = random_distributions(rng, 30, 7, 0.4)
    Q = random_distributions(rng, 30, 7, 0.0)
    names = [f"img{i}.jpg" for i in range(30)]
    write(tmp_path / "gt.txt", names, P)
    order = rng.permutation(30)  # matched by name, not by line
    write(tmp_path / "pred.txt", [names[i] for i in order], Q[order])
    out = json.loads(jcdl("score", tmp_path / "gt.txt", tmp_path / "pred.txt").stdout)
    refs = [reference(p, q) for p, q in zip(P, Q)]
    for name in metrics.MEASURES + ("accuracy",):
        assert out[name] == pytest.approx(np.mean([r[name] for r in refs]),
                                          abs=1e-6), name
    assert out["n"] == 30


def test_score_writes_reports(tmp_path):
    rng = np.random.default_rng(3)
    P = random_distributions(rng, 12, 3, 0.3)
    names = [f"n{i}" for i in range(12)]
    write(tmp_path / "gt.txt", names, P)
    write(tmp_path / "pred.txt", names, P[::-1])
    (tmp_path / "classes.txt").write_text("joy\nfear\nawe\n")
    stdout = jcdl("score", tmp_path / "gt.txt", tmp_path / "pred.txt",
                  "--classes", tmp_path / "classes.txt",
                  "--out", tmp_path / "report").stdout
    report = tmp_path / "report"
    assert json.loads((report / "metrics.json").read_text()) == json.loads(stdout)
    assert "| joy |" in (report / "per_class.md").read_text()
    assert (report / "confusion.csv").read_text().splitlines()[0] == \
        "true\\pred,joy,fear,awe"


@pytest.mark.parametrize("gt, pred, fragments", [
    ("a 1 0\nb 0 1\n", "a 1 0\n", ["pred.txt", "no prediction", "'b'"]),
    ("a 1 0\n", "a 1 0\nc 0 1\n", ["gt.txt", "no ground truth", "'c'"]),
    ("a 1 0\n", "a 1 0 0\n", ["pred.txt", "3 values per line", "has 2"]),
    ("a 1 0\nb 1\n", "a 1 0\n", ["gt.txt:2", "1 values, but the first line has 2"]),
    ("a 1 x\n", "a 1 0\n", ["gt.txt:1", "'x' is not a finite number"]),
    ("a 1 0\n", "a nan 0\n", ["pred.txt:1", "'nan' is not a finite number"]),
    ("a 0 0\n", "a 1 0\n", ["gt.txt:1", "all values are zero"]),
    ("a 1 -1\n", "a 1 0\n", ["gt.txt:1", "negative value -1"]),
    ("", "a 1 0\n", ["gt.txt", "is empty"]),
    ("a 1 0\n\na 0 1\n", "a 1 0\n",
     ["gt.txt:3", "'a' is listed twice (lines 1 and 3)"]),
    ("a 1 0\n", "a 1 0\na 0 1\n",
     ["pred.txt:2", "'a' is listed twice (lines 1 and 2)"]),
])
def test_score_bad_input(tmp_path, gt, pred, fragments):
    (tmp_path / "gt.txt").write_text(gt)
    (tmp_path / "pred.txt").write_text(pred)
    proc = jcdl("score", tmp_path / "gt.txt", tmp_path / "pred.txt",
                "--out", tmp_path / "report", check=False)
    assert_clean_error(proc, *fragments)
    assert not (tmp_path / "report").exists()


def test_score_missing_file(tmp_path):
    (tmp_path / "gt.txt").write_text("a 1 0\n")
    proc = jcdl("score", tmp_path / "gt.txt", tmp_path / "nope.txt", check=False)
    assert_clean_error(proc, "nope.txt", "cannot open the prediction file")
