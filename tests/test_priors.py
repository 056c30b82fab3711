"""The paper's two weak priors (jcdl.priors) over every class, and the
single-label datasets through them: ``jcdl prepare fi`` on a folder in FI's
release layout, ``jcdl prepare single`` on a ``path class`` list."""
import json

import numpy as np
import pytest

from conftest import assert_clean_error, jcdl, write_image
from jcdl import datasets, priors
from jcdl.errors import JcdlError

MIKELS = datasets.MIKELS_CLASSES     # the lists' column order
NEGATIVE = {"anger", "disgust", "fear", "sadness"}


def wheel_distance(a, b, wheel=priors.MIKELS_WHEEL):
    i, j = wheel.index(a), wheel.index(b)
    return min(abs(i - j), len(wheel) - abs(i - j))


def check_rows(P, labels, prior, classes=MIKELS):
    """What every generated distribution must satisfy: rows sum to 1, the
    argmax is the label, no mass on the other polarity under exclusion and
    both, mass not increasing with wheel distance under implication and
    both (among the emotions that get any)."""
    assert np.allclose(P.sum(axis=1), 1, atol=1e-6, rtol=0)
    assert (P >= 0).all()
    for p, y in zip(P, labels):
        assert int(np.argmax(p)) == y
        assert (p[y] > np.delete(p, y)).all(), "the label must win alone"
        label = classes[y]
        opposite = [k for k, c in enumerate(classes)
                    if (c in NEGATIVE) != (label in NEGATIVE)]
        if prior in ("exclusion", "both"):
            assert (p[opposite] == 0).all()
        else:
            assert (p[opposite] > 0).all() or prior == "onehot"
        if prior in ("implication", "both"):
            support = [k for k in range(len(classes)) if p[k] > 0]
            for a in support:
                for b in support:
                    if wheel_distance(label, classes[a]) < \
                            wheel_distance(label, classes[b]):
                        assert p[a] >= p[b], (label, classes[a], classes[b])
            # and strictly: the nearest neighbours get more than the next
            near = [k for k in support
                    if wheel_distance(label, classes[k]) == 1]
            far = [k for k in support
                   if wheel_distance(label, classes[k]) == 2]
            if near and far:
                assert min(p[near]) > max(p[far])
        if prior == "onehot":
            assert p[y] == 1


@pytest.mark.parametrize("prior", priors.PRIORS)
@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_every_class_under_every_prior(prior, sigma):
    rule = priors.Prior(MIKELS, prior, sigma)
    labels = np.arange(len(MIKELS))
    P = rule.distributions(labels)
    assert P.shape == (8, 8)
    check_rows(P, labels, prior)


def test_known_values():
    # amusement's neighbours on the default wheel: excitement and
    # contentment (one step), awe and anger (two steps)
    d = dict(zip(MIKELS, priors.Prior(MIKELS, "implication", 1.0)
                 .distributions([MIKELS.index("amusement")])[0]))
    g = np.exp(-np.arange(5) ** 2 / 2)
    total = g[0] + 2 * g[1] + 2 * g[2] + 2 * g[3] + g[4]
    assert d["amusement"] == pytest.approx(1 / total)
    assert d["excitement"] == pytest.approx(g[1] / total)
    assert d["contentment"] == pytest.approx(g[1] / total)
    assert d["awe"] == pytest.approx(g[2] / total)
    assert d["anger"] == pytest.approx(g[2] / total)
    assert d["fear"] == pytest.approx(g[4] / total)       # opposite side
    both = dict(zip(MIKELS, priors.Prior(MIKELS, "both", 1.0)
                    .distributions([MIKELS.index("amusement")])[0]))
    t = g[0] + 2 * g[1] + g[2]
    assert both["amusement"] == pytest.approx(1 / t)
    assert both["awe"] == pytest.approx(g[2] / t)
    assert both["anger"] == both["fear"] == 0
    excl = dict(zip(MIKELS, priors.Prior(MIKELS, "exclusion", 1.0)
                    .distributions([MIKELS.index("fear")])[0]))
    assert excl["fear"] == pytest.approx(1 / (1 + 3 * g[1]))
    assert excl["anger"] == excl["sadness"] == pytest.approx(
        g[1] / (1 + 3 * g[1]))
    assert excl["awe"] == 0


def test_sigma_spreads_the_mass():
    label = [MIKELS.index("sadness")]
    kept = [priors.Prior(MIKELS, "both", s).distributions(label)[0][7]
            for s in (0.3, 1, 2, 10)]
    assert kept == sorted(kept, reverse=True) and kept[0] > 0.99
    assert kept[-1] > 0.25                  # near uniform over 4, still first


def test_custom_wheel_and_classes():
    classes = ("happy", "calm", "sad", "angry")
    rule = priors.Prior(classes, "both", 1.0, wheel="happy,calm,sad,angry",
                        positive="happy,calm")
    P = rule.distributions([0, 1, 2, 3])
    assert np.allclose(P.sum(1), 1)
    assert P[0, 2] == P[0, 3] == 0 and P[0, 1] > 0
    assert list(P.argmax(1)) == [0, 1, 2, 3]
    with pytest.raises(JcdlError, match="not Mikels' eight emotions: give "
                       "--wheel"):
        priors.Prior(classes, "both", 1.0)
    assert priors.Prior(classes, "onehot").matrix.tolist() == \
        np.eye(4).tolist()
    with pytest.raises(JcdlError, match="'glad' is not one of the classes"):
        priors.Prior(classes, "implication", wheel="happy,calm,sad,glad")
    with pytest.raises(JcdlError, match="names 3 emotions, but there are 4"):
        priors.Prior(classes, "implication", wheel="happy,calm,sad")
    with pytest.raises(JcdlError, match="not none or all"):
        priors.Prior(classes, "exclusion", positive="happy,calm,sad,angry")
    with pytest.raises(JcdlError, match=r"--sigma: 0 is not in \(0, 10\]"):
        priors.Prior(MIKELS, "both", 0)


# ---------------------------------------------------------------- FI


def fi_folder(root, per_class=2, base="emotion_dataset"):
    """FI's release layout: one folder per emotion (as the archive unpacks,
    in emotion_dataset/), image names as in the release
    (<emotion>_<n>.jpg); one folder spelt in capitals."""
    for k, emotion in enumerate(MIKELS):
        folder = emotion.capitalize() if emotion == "awe" else emotion
        for i in range(per_class):
            write_image(root / base / folder / f"{emotion}_{i + 1:05d}.jpg",
                        12, 10, seed=10 * k + i)
    (root / base / "fear" / "Thumbs.db").write_bytes(b"\0")  # not an image


def read_list(path):
    rows = [line.split() for line in path.read_text().splitlines()]
    return [r[0] for r in rows], np.array([[float(v) for v in r[1:]]
                                           for r in rows])


def read_split(folder):
    """(names, P) of a split's train.txt and test.txt together, as
    written (not normalised again)."""
    names, P = [], []
    for part in ("train.txt", "test.txt"):
        n, p = read_list(folder / part)
        names += n
        P.append(p)
    return names, np.concatenate(P)


@pytest.mark.parametrize("prior", priors.PRIORS)
def test_prepare_fi(tmp_path, prior):
    root = tmp_path / "FI"
    fi_folder(root)
    out = tmp_path / "lists"
    proc = jcdl("prepare", "fi", root, out, "--prior", prior,
                "--splits", "2", "--test-ratio", "0.25")
    assert "16 images, 8 emotions" in proc.stdout, proc.stdout
    assert f"prior {prior}" in proc.stdout
    for folder in (out, out / "split1", out / "split2"):
        assert folder.joinpath("classes.txt").read_text().split() == \
            list(MIKELS)
        names, P = read_split(folder)
        assert sorted(names) == sorted(
            f"emotion_dataset/{e.capitalize() if e == 'awe' else e}/"
            f"{e}_{i:05d}.jpg" for e in MIKELS for i in (1, 2))
        labels = [MIKELS.index(n.split("/")[2].split("_")[0])
                  for n in names]
        check_rows(P, labels, prior)
        marker = json.loads((folder / "single_label.json").read_text())
        assert marker["kind"] == "single_label" and marker["prior"] == prior
        assert datasets.single_label_info(folder / "classes.txt") == marker
    # the lists convert as any other
    jcdl("convert", root, out / "test.txt", tmp_path / "db")


def test_prepare_fi_flat_and_sigma(tmp_path):
    root = tmp_path / "FI"
    fi_folder(root, base="")
    out = tmp_path / "lists"
    jcdl("prepare", "fi", root, out, "--sigma", "0.5")
    names, P = read_list(out / "train.txt")
    g = priors.Prior(MIKELS, "both", 0.5).matrix
    for name, p in zip(names, P):
        y = MIKELS.index(name.split("/")[1].split("_")[0])
        assert np.allclose(p, g[y], atol=1e-8)
    assert json.loads((out / "single_label.json").read_text())["sigma"] == 0.5


def test_fi_errors(tmp_path):
    root = tmp_path / "FI"
    fi_folder(root, per_class=1)
    (root / "emotion_dataset" / "sadness").rename(root / "emotion_dataset"
                                                  / "sadnes")
    proc = jcdl("prepare", "fi", root, tmp_path / "o", check=False)
    assert_clean_error(proc, "emotion_dataset: no folder for sadness")
    (root / "emotion_dataset" / "sadnes").rename(root / "emotion_dataset"
                                                 / "sad")
    for f in (root / "emotion_dataset" / "fear").iterdir():
        f.unlink()
    proc = jcdl("prepare", "fi", root, tmp_path / "o", check=False)
    assert_clean_error(proc, "emotion_dataset/fear: no images")
    proc = jcdl("prepare", "fi", tmp_path, tmp_path / "o", check=False)
    assert_clean_error(proc, "no FI emotion folders (amusement/")
    proc = jcdl("prepare", "fi", root, tmp_path / "o", "--sigma", "-1",
                check=False)
    assert proc.returncode == 2 and "--sigma" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_prior_options_refused_for_distribution_datasets(tmp_path):
    (tmp_path / "list.txt").write_text("a.png 1 0\nb.png 0 1\n")
    for n in "ab":
        write_image(tmp_path / f"{n}.png")
    proc = jcdl("prepare", "list", tmp_path, tmp_path / "o", "--prior",
                "both", check=False)
    assert_clean_error(proc, "--prior: turns single labels into "
                       "distributions: it is for the datasets fi and single")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- single


def test_prepare_single(tmp_path):
    root = tmp_path / "imgs"
    lines = []
    for i in range(8):
        write_image(root / f"im{i}.png", seed=i)
        lines.append(f"im{i}.png {MIKELS[i] if i % 2 else i}\n")  # name/index
    (tmp_path / "labels.txt").write_text("".join(lines))
    (tmp_path / "classes.txt").write_text("\n".join(MIKELS) + "\n")
    out = tmp_path / "out"
    jcdl("prepare", "single", root, tmp_path / "labels.txt", out,
         "--classes", tmp_path / "classes.txt", "--prior", "implication",
         "--test-ratio", "0.5")
    names, P = read_split(out)
    check_rows(P, [int(n[2]) for n in names], "implication")
    assert json.loads((out / "single_label.json").read_text())["prior"] == \
        "implication"

    # the user's own classes: a wheel and the polarity given
    (tmp_path / "c4.txt").write_text("happy\ncalm\nsad\nangry\n")
    (tmp_path / "l4.txt").write_text("im0.png happy\nim1.png sad\n"
                                     "im2.png 3\nim3.png calm\n")
    jcdl("prepare", "single", root, tmp_path / "l4.txt", tmp_path / "o4",
         "--classes", tmp_path / "c4.txt", "--wheel", "happy,calm,sad,angry",
         "--positive", "happy,calm")
    n, p = read_list(tmp_path / "o4" / "train.txt")
    assert p.shape[1] == 4 and np.allclose(p.sum(1), 1)


def test_single_errors(tmp_path):
    root = tmp_path / "imgs"
    write_image(root / "a.png")
    write_image(root / "b.png")
    (tmp_path / "classes.txt").write_text("\n".join(MIKELS) + "\n")
    (tmp_path / "l.txt").write_text("a.png awe\nb.png joy\n")
    args = ["prepare", "single", root, tmp_path / "l.txt", tmp_path / "o"]
    proc = jcdl(*args, "--classes", tmp_path / "classes.txt", check=False)
    assert_clean_error(proc, "l.txt:2: class 'joy' is not in", "index 0 to 7")
    (tmp_path / "l.txt").write_text("a.png awe\nb.png 8\n")
    proc = jcdl(*args, "--classes", tmp_path / "classes.txt", check=False)
    assert_clean_error(proc, "l.txt:2: class '8' is not in")
    (tmp_path / "l.txt").write_text("a.png awe\nb.png fear extra\n")
    proc = jcdl(*args, "--classes", tmp_path / "classes.txt", check=False)
    assert_clean_error(proc, "l.txt:2: 3 columns, expected 2 (image and "
                       "class)")
    (tmp_path / "l.txt").write_text("a.png awe\nc.png fear\n")
    proc = jcdl(*args, "--classes", tmp_path / "classes.txt", check=False)
    assert_clean_error(proc, "l.txt:2: image not found: c.png")
    proc = jcdl(*args, check=False)
    assert_clean_error(proc, "l.txt: give --classes FILE")
    (tmp_path / "c2.txt").write_text("good\nbad\n")
    (tmp_path / "l.txt").write_text("a.png good\nb.png bad\n")
    proc = jcdl(*args, "--classes", tmp_path / "c2.txt", check=False)
    assert_clean_error(proc, "c2.txt: the classes (good, bad) are not "
                       "Mikels' eight emotions: give --wheel")
    proc = jcdl("prepare", "single", root, tmp_path / "o", check=False)
    assert_clean_error(proc, "give ROOT LIST OUT")
    assert not (tmp_path / "o").exists()
