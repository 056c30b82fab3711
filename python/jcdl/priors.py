"""Single labels -> emotion distributions through the paper's two weak
priors (the single-label extension of JCDL, used for FI).

For an image labelled with emotion ``y``, class ``k`` gets a weight, and the
weights are divided by their sum:

- ``implication``: ``exp(-d(y, k)^2 / (2 sigma^2))``, where ``d`` is the
  number of steps between the two emotions around the emotion wheel (0 for
  ``y`` itself, 1 for its neighbours, at most K/2): emotions nearer ``y`` on
  the wheel get more.
- ``exclusion``: 1 for ``y``, ``exp(-1 / (2 sigma^2))`` (one step) for every
  other emotion of ``y``'s polarity, 0 for the emotions of the other
  polarity: no wheel, only the polarity.
- ``both`` (the paper's): the implication weights, with 0 for the other
  polarity.
- ``onehot``: 1 for ``y``, 0 elsewhere (no prior).

``y`` always gets the largest share (exp(0) = 1 beats every other weight for
any sigma in (0, MAX_SIGMA]), so the argmax of every generated distribution
is the label.

Defaults, and how sure they are (the README says the same):

- the wheel: ``MIKELS_WHEEL``, amusement, excitement, anger, disgust, fear,
  sadness, awe, contentment (circular), as the Emotion Circle of Yang et
  al., "A Circular-Structured Representation for Visual Emotion
  Distribution Learning" (CVPR 2021, arXiv 2106.12450) places Mikels' eight
  at angles (2j - 1) pi / 8. It is a later paper of the same field, not the
  JCDL paper's own figure, which could not be read here; its positive
  emotions form one arc and its negative ones the other, as the exclusion
  prior assumes.
- the polarity: positive amusement, awe, contentment, excitement; negative
  anger, disgust, fear, sadness (the JCDL paper, as quoted in its abstract
  and reviews: "exclusion ... same valence"; Mikels et al. 2005).
- sigma = 1 wheel step: our choice. The JCDL paper says "a Gaussian function
  of the emotion distance"; its sigma was not found in any material
  reachable here. One step is the natural unit (a neighbour then gets
  e^-0.5 = 0.61 of the label's weight).

Both are options (``--wheel``, ``--positive``, ``--sigma``) of ``jcdl
prepare fi`` / ``jcdl prepare single``.
"""
import math
import re
from pathlib import Path

import numpy as np

from .errors import JcdlError
from .files import read_lines
from .lists import GroundTruth, columns_error, read_classes
from .matfiles import MIKELS_CLASSES

PRIORS = ("both", "implication", "exclusion", "onehot")
DEFAULT_PRIOR = "both"
DEFAULT_SIGMA = 1.0
MAX_SIGMA = 10.0    # beyond it exp(-d^2 / 2 sigma^2) rounds towards ties
MIKELS_WHEEL = ("amusement", "excitement", "anger", "disgust", "fear",
                "sadness", "awe", "contentment")
MIKELS_POSITIVE = ("amusement", "awe", "contentment", "excitement")


class Prior:
    """A prior over a class list: ``matrix[y]`` is the distribution of an
    image labelled ``classes[y]``."""

    def __init__(self, classes, prior=DEFAULT_PRIOR, sigma=DEFAULT_SIGMA,
                 wheel=None, positive=None, where="--classes"):
        self.classes = tuple(classes)
        self.prior, self.sigma = prior, float(sigma)
        if prior not in PRIORS:
            raise JcdlError("--prior", f"unknown prior '{prior}' (one of "
                            + ", ".join(PRIORS) + ")")
        if not (math.isfinite(self.sigma) and 0 < self.sigma <= MAX_SIGMA):
            raise JcdlError("--sigma", f"{sigma} is not in (0, {MAX_SIGMA:g}]"
                            " (wheel steps)")
        K = len(self.classes)
        if K < 2:
            raise JcdlError(where, f"{K} class(es): a prior needs at least 2")
        mikels = set(self.classes) == set(MIKELS_WHEEL)
        self.wheel = self.positive = None
        if prior in ("both", "implication"):
            self.wheel = _names(wheel, MIKELS_WHEEL if mikels else None,
                                self.classes, "--wheel", where, prior)
            if len(self.wheel) != K:
                raise JcdlError("--wheel", f"names {len(self.wheel)} "
                                f"emotions, but there are {K} classes "
                                f"({', '.join(self.classes)}): give each "
                                "once, in their order around the wheel")
        if prior in ("both", "exclusion"):
            self.positive = _names(positive,
                                   MIKELS_POSITIVE if mikels else None,
                                   self.classes, "--positive", where, prior)
            if not 0 < len(self.positive) < K:
                raise JcdlError("--positive", "must name some of the "
                                "classes, not none or all")
        self.matrix = self._matrix()

    def distance(self):
        """(K, K) steps around the wheel between classes i and j."""
        pos = np.array([self.wheel.index(c) for c in self.classes])
        steps = np.abs(pos[:, None] - pos[None, :])
        return np.minimum(steps, len(self.classes) - steps)

    def same_polarity(self):
        """(K, K) booleans: classes i and j have the same polarity."""
        positive = np.array([c in self.positive for c in self.classes])
        return positive[:, None] == positive[None, :]

    def _matrix(self):
        K = len(self.classes)
        step = math.exp(-1.0 / (2 * self.sigma ** 2))
        if self.prior == "onehot":
            W = np.eye(K)
        elif self.prior == "exclusion":
            W = np.where(self.same_polarity(), step, 0.0)
            np.fill_diagonal(W, 1.0)
        else:
            W = np.exp(-self.distance().astype(np.float64) ** 2
                       / (2 * self.sigma ** 2))
            if self.prior == "both":
                W = np.where(self.same_polarity(), W, 0.0)
        return W / W.sum(axis=1, keepdims=True)

    def distributions(self, labels):
        """(n, K) distributions of integer labels (indices into classes)."""
        return self.matrix[np.asarray(labels, dtype=np.int64)]

    def describe(self):
        """What the marker file (ground_truth.json) records."""
        return {"kind": "single_label", "prior": self.prior,
                "sigma": self.sigma if self.prior != "onehot" else None,
                "wheel": list(self.wheel) if self.wheel else None,
                "positive": list(self.positive) if self.positive else None,
                "classes": list(self.classes)}


def _names(given, default, classes, option, where, prior):
    """The class names of --wheel / --positive (comma-separated), or the
    Mikels default; each must be a class."""
    if given is None:
        if default is None:
            raise JcdlError(where, f"the classes ({', '.join(classes)}) are "
                            f"not Mikels' eight emotions: give {option} for "
                            f"the prior '{prior}', or --prior onehot")
        return tuple(default)
    names = tuple(n.strip() for n in given.split(",")) if isinstance(
        given, str) else tuple(given)
    for i, n in enumerate(names):
        if n not in classes:
            raise JcdlError(option, f"'{n}' is not one of the classes ("
                            + ", ".join(classes) + ")")
        if n in names[:i]:
            raise JcdlError(option, f"'{n}' is named twice")
    return names


def sigma_arg(text):
    """An argparse type for --sigma."""
    import argparse  # noqa: PLC0415
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not (math.isfinite(v) and 0 < v <= MAX_SIGMA):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number in (0, {MAX_SIGMA:g}]")
    return v


# ---------------------------------------------------------------- single label
# The readers of single-label datasets (jcdl prepare fi / single): labels
# made distributions by a Prior.

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# FI's folders: the emotion, or another spelling of it
FI_FOLDERS = {**{c: c for c in MIKELS_CLASSES}, "sad": "sadness"}
FI_BASES = ("", "emotion_dataset", "images")


def _is_image(path):
    return path.suffix.lower() in IMAGE_SUFFIXES and not \
        path.name.startswith(".")


def _fi_folders(base):
    """{emotion: folder} of the emotion folders directly in base."""
    found = {}
    if not base.is_dir():
        return found
    for d in sorted(base.iterdir()):
        emotion = FI_FOLDERS.get(d.name.lower())
        if emotion is None or not d.is_dir():
            continue
        if emotion in found:
            raise JcdlError(base, f"two folders for {emotion}: "
                            f"{found[emotion].name}/ and {d.name}/")
        found[emotion] = d
    return found


def read_fi(root, prior):
    """FI's release: one folder per emotion (see the module's docstring).
    Names are paths relative to ROOT."""
    root = Path(root)
    for base in FI_BASES:
        folders = _fi_folders(root / base if base else root)
        if folders:
            break
    else:
        raise JcdlError(root, "no FI emotion folders (" + ", ".join(
            f"{c}/" for c in MIKELS_CLASSES) + ") here, in emotion_dataset/ "
            "or in images/")
    missing = [c for c in MIKELS_CLASSES if c not in folders]
    if missing:
        raise JcdlError(folders[next(iter(folders))].parent, "no folder for "
                        + ", ".join(missing) + " (FI has one per emotion)")
    names, labels = [], []
    for y, emotion in enumerate(MIKELS_CLASSES):
        images = sorted(p for p in folders[emotion].rglob("*")
                        if p.is_file() and _is_image(p))
        if not images:
            raise JcdlError(folders[emotion], "no images (" + ", ".join(
                IMAGE_SUFFIXES) + ") in this emotion's folder")
        for image in images:
            name = image.relative_to(root).as_posix()
            if any(c.isspace() for c in name):
                raise JcdlError(image, "a name with whitespace cannot go in "
                                "a list file: rename the image")
            names.append(name)
            labels.append(y)
    P = Prior(MIKELS_CLASSES, **prior).distributions(labels)
    return GroundTruth(root, names, P, [None] * len(names), MIKELS_CLASSES,
                       prior=Prior(MIKELS_CLASSES, **prior))


def read_single(path, classes_path, prior):
    """``path class`` lines; the class a name of the classes file or its
    0-based index."""
    if classes_path is None:
        raise JcdlError(path, "give --classes FILE: the class names, one "
                        "per line, that the list's classes name (or index "
                        "from 0)")
    classes = tuple(read_classes(classes_path))
    rule = Prior(classes, **prior, where=classes_path)
    index = {c: k for k, c in enumerate(classes)}
    names, labels, lines = [], [], []
    for line, tokens, newline in read_lines(path, "list file"):
        if len(tokens) != 2:
            columns_error(path, line, len(tokens), 2, "image and class",
                           newline)
        name, label = tokens
        if label in index:
            y = index[label]
        elif re.fullmatch(r"\d+", label, re.ASCII) and \
                int(label) < len(classes):
            y = int(label)
        else:
            raise JcdlError(path, f"class '{label}' is not in "
                            f"{classes_path} (" + ", ".join(classes) +
                            f", or an index 0 to {len(classes) - 1})", line)
        names.append(name)
        labels.append(y)
        lines.append(line)
    if not names:
        raise JcdlError(path, "the list file has no images")
    return GroundTruth(path, names, rule.distributions(labels), lines,
                       classes, prior=rule)
