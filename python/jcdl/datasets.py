"""Dataset files -> list files and train/test splits (``jcdl prepare``).

Datasets and where their ground truth is looked for (``--gt FILE`` names it
explicitly):

- ``emotion6``: ``ROOT/ground_truth.txt`` -- a header naming the columns
  ``[image_filename] [valence] [arousal] [prob. anger] ... [prob. neutral]``,
  then ``folder/n.jpg valence arousal p_1 ... p_7`` lines (any whitespace).
  Images in ``ROOT/images/<folder>/`` (as released) or ``ROOT/<folder>/``.
- ``flickr_ldl`` / ``twitter_ldl``: a MATLAB ``ROOT/*_config.mat`` (v7.3,
  which is HDF5, or the older v5/v7 format) with ``imgname`` (cell array of names), ``vote`` (8 x N integer votes) and,
  when present, split indices (datasets whose name contains ``train`` /
  ``test``: 1-based indices or logical masks; a matrix or cell array of them
  holds several splits), which are used instead of a random split. Otherwise
  a votes text file ``name v_1 ... v_8`` (integer votes; an optional header
  naming the 8 emotions): the only ``ROOT/*.txt``, or among several the one
  whose name contains ``vote`` or ``ground_truth``. Images in ``ROOT/`` or
  ``ROOT/images/``. Distribution = votes / total.
- ``list``: ``path p_1 ... p_K`` lines (``--gt FILE``, default
  ``ROOT/list.txt``); ROOT is the image root; classes ``class0`` ...
  unless ``--classes`` names them.
- ``fi`` (single label): FI's release, one folder per emotion
  (``amusement/``, ``anger/``, ``awe/``, ``contentment/``, ``disgust/``,
  ``excitement/``, ``fear/``, ``sadness/``; any case, ``sad/`` too) in
  ROOT, ``ROOT/emotion_dataset/`` (the name of the released archive's
  folder) or ``ROOT/images/``; every image file under a folder has its
  emotion.
- ``single`` (single label): ``jcdl prepare single ROOT LIST OUT --classes
  FILE``: LIST holds ``path class`` lines, the class a name of the classes
  file or its 0-based index (as Caffe's convert_imageset lists).

Single labels become distributions through the paper's priors (``--prior
both``, the default; ``implication``, ``exclusion``, ``onehot``; ``--sigma``,
``--wheel``, ``--positive``: see ``jcdl.priors``), and OUT (and each split)
gets ``single_label.json`` saying so: ``jcdl evaluate`` finds it beside the
classes file and reports accuracy as the headline.

Writes OUT/classes.txt, OUT/train.txt and OUT/test.txt (``path p_1 ... p_K``,
rows normalised, 9 significant digits, paths relative to ROOT -- give the same
ROOT to ``jcdl convert``); with ``--splits N`` also OUT/split1 ... OUT/splitN,
each with its own train.txt, test.txt, classes.txt (OUT/train.txt and
OUT/test.txt are split 1). train.txt is in random order (Caffe's Data layer
reads an LMDB in order, so an unshuffled list would feed one class at a
time); test.txt keeps the ground truth's order. OUT is written as a whole,
atomically.
"""
import os
import re
from pathlib import Path

import numpy as np

from .errors import JcdlError, int_arg
from .files import atomic_output, output_path, read_lines, read_text
from .lists import (GroundTruth, columns_error, default_classes, format_row,
                    parse_number,
                    parse_values, read_classes, read_distributions,
                    to_distribution)
from .matfiles import MIKELS_CLASSES, read_config_mat
from .priors import (DEFAULT_PRIOR, DEFAULT_SIGMA, IMAGE_SUFFIXES,
                     read_fi, read_single)

EMOTION6_CLASSES = ("anger", "disgust", "fear", "joy", "sadness", "surprise",
                    "neutral")
EMOTION6_HEADER = (("image_filename", "valence", "arousal")
                   + tuple(f"prob. {c}" for c in EMOTION6_CLASSES))
DATASETS = ("emotion6", "flickr_ldl", "twitter_ldl", "list", "fi",
            "single")
SINGLE_LABEL = ("fi", "single")
SINGLE_MARKER = "single_label.json"


def _header_columns(tokens):
    """The column names of a header line: [bracketed names] if any, else the
    whitespace-separated words; lower case, inner spaces collapsed."""
    text = " ".join(tokens)
    names = re.findall(r"\[([^\]]*)\]", text) or tokens
    return tuple(" ".join(n.split()).lower() for n in names)


def read_emotion6(path):
    """Emotion6's ground_truth.txt."""
    rows = read_lines(path, "ground-truth file")
    if not rows:
        raise JcdlError(path, "the ground-truth file is empty")
    line, tokens, _ = rows[0]
    if _header_columns(tokens) != EMOTION6_HEADER:
        raise JcdlError(path, "the header does not name Emotion6's columns "
                        "(expected " + " ".join(f"[{c}]" for c in
                                                EMOTION6_HEADER) + ")", line)
    want = len(EMOTION6_HEADER)
    names, P, lines = [], [], []
    for line, tokens, newline in rows[1:]:
        if len(tokens) != want:
            columns_error(path, line, len(tokens), want, "image, valence, "
                           "arousal, 7 probabilities", newline)
        for tok in tokens[1:3]:  # valence, arousal: numbers, any sign
            if parse_number(tok) is None:
                raise JcdlError(path, f"'{tok}' is not a finite number", line)
        values = parse_values(tokens[3:], path, line)
        names.append(tokens[0])
        P.append(to_distribution(values, path, line))
        lines.append(line)
    if not names:
        raise JcdlError(path, "no images after the header")
    return GroundTruth(path, names, np.asarray(P), lines, EMOTION6_CLASSES)


def read_votes(path, classes=MIKELS_CLASSES):
    """A votes file: ``name v_1 ... v_K`` with integer votes, an optional
    header naming the classes."""
    rows = read_lines(path, "votes file")
    want = 1 + len(classes)
    names, P, lines = [], [], []
    for i, (line, tokens, newline) in enumerate(rows):
        if i == 0 and not any(re.fullmatch(r"[-+.\d]\S*", t)
                              for t in tokens[1:]):
            got = tuple(t.lower() for t in tokens[1:])
            if got != classes:
                raise JcdlError(path, "the header does not name the columns "
                                "(expected name " + " ".join(classes) + ")",
                                line)
            continue
        if len(tokens) != want:
            columns_error(path, line, len(tokens), want,
                           f"name and {len(classes)} votes", newline)
        values = parse_values(tokens[1:], path, line, integer=True)
        names.append(tokens[0])
        P.append(to_distribution(values, path, line))
        lines.append(line)
    if not names:
        raise JcdlError(path, "the ground-truth file has no images")
    return GroundTruth(path, names, np.asarray(P), lines, classes)


def read_list_file(path):
    """``path p_1 ... p_K`` lines (the ``list`` dataset)."""
    names, P, lines = read_distributions(path)
    return GroundTruth(path, names, P, lines,
                       tuple(default_classes(P.shape[1])))


# ---------------------------------------------------------------- finding

def _find_gt(dataset, root, gt):
    """The ground-truth file of the dataset in ROOT (or --gt)."""
    if gt is not None:
        if not Path(gt).is_file():
            raise JcdlError(gt, "no such ground-truth file")
        return Path(gt)
    if dataset == "emotion6":
        path = root / "ground_truth.txt"
        if not path.is_file():
            raise JcdlError(root, "no ground_truth.txt (Emotion6's "
                            "ground-truth file) here; give --gt FILE")
        return path
    if dataset == "list":
        path = root / "list.txt"
        if not path.is_file():
            raise JcdlError(root, "no list.txt here; give the list with "
                            "--gt FILE")
        return path
    mats = sorted(root.glob("*_config.mat")) or sorted(root.glob("*.mat"))
    if mats:
        return mats[0]
    txts = sorted(p for p in root.glob("*.txt") if p.is_file())
    if len(txts) > 1:
        txts = [p for p in txts if "vote" in p.name.lower()
                or "ground_truth" in p.name.lower()] or txts
    if len(txts) == 1:
        return txts[0]
    if txts:
        raise JcdlError(root, "several candidate votes files (" +
                        ", ".join(p.name for p in txts) + "); choose one "
                        "with --gt FILE")
    raise JcdlError(root, "no ground-truth file here (a *_config.mat or a "
                    "votes file 'name v_1 ... v_8' *.txt); give --gt FILE")


def read_ground_truth(dataset, root, gt=None, classes=None, prior=None):
    """Reads DATASET's ground truth in ROOT; returns a GroundTruth.
    ``prior``: the keyword arguments of priors.Prior (prior, sigma, wheel,
    positive) for the single-label datasets; ``classes`` the classes file
    of ``single``."""
    if dataset not in DATASETS:
        raise JcdlError(dataset, "unknown dataset (one of "
                        + ", ".join(DATASETS) + ")")
    root = Path(root)
    if not root.is_dir():
        raise JcdlError(root, "no such dataset folder")
    prior = dict(prior or {})
    if dataset == "fi":
        return read_fi(root, prior)
    if dataset == "single":
        if gt is None:
            raise JcdlError(root, "give the list: jcdl prepare single ROOT "
                            "LIST OUT --classes FILE")
        if not Path(gt).is_file():
            raise JcdlError(gt, "no such list file")
        return read_single(gt, classes, prior)
    path = _find_gt(dataset, root, gt)
    if dataset == "emotion6":
        return read_emotion6(path)
    if dataset == "list":
        return read_list_file(path)
    if path.suffix.lower() == ".mat":
        return read_config_mat(path)
    return read_votes(path)


def resolve_images(gt, root, folders):
    """Each name's image as a path relative to ROOT, looked up in ROOT/<f>/
    for the folders in order; a name without a suffix may have a usual image
    suffix."""
    root = Path(root)
    rel, seen = [], {}
    for i, (name, line) in enumerate(zip(gt.names, gt.lines)):
        where = "" if line is not None else f"image {i + 1}: "
        if name.startswith("/") or ".." in Path(name).parts:
            raise JcdlError(gt.path, f"{where}{name}: image names must be "
                            "relative to the dataset folder", line)
        candidates = [name] + ([name + s for s in IMAGE_SUFFIXES]
                               if not Path(name).suffix else [])
        found = None
        for folder in folders:
            for c in candidates:
                r = f"{folder}/{c}" if folder else c
                if os.path.isfile(root / r):
                    found = r
                    break
            if found:
                break
        if found is None:
            places = " and ".join(f"{root / f}/" if f else f"{root}/"
                                  for f in folders)
            raise JcdlError(gt.path, f"{where}image not found: {name} (looked "
                            f"in {places})", line)
        if found in seen:
            raise JcdlError(gt.path, f"{where}{name} is listed twice (first "
                            f"as entry {seen[found] + 1})", line)
        seen[found] = i
        rel.append(found)
    return rel


# ---------------------------------------------------------------- splits

def random_splits(n, test_ratio, seed, count):
    """count random (train, test) index splits of n items; test sets sorted,
    train sets in random order."""
    n_test = min(n - 1, max(1, int(round(n * test_ratio))))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        perm = rng.permutation(n)
        out.append((perm[n_test:], np.sort(perm[:n_test])))
    return out


def _write_split(folder, classes, rel, P, train, test, marker=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("".join(c + "\n" for c in classes))
    if marker is not None:
        (folder / SINGLE_MARKER).write_text(marker)
    for name, idx in (("train.txt", train), ("test.txt", test)):
        with open(folder / name, "w", encoding="utf-8",
                  errors="surrogateescape") as f:
            for i in idx:
                f.write(format_row(rel[i], P[i]))


OUR_FILES = re.compile(r"(train|test|classes)\.txt|split\d+|"
                       + re.escape(SINGLE_MARKER))


def single_label_info(classes_path):
    """What the single_label.json beside a classes file says (None when
    there is none: distributions from votes)."""
    if classes_path is None:
        return None
    marker = Path(classes_path).parent / SINGLE_MARKER
    if not marker.is_file():
        return None
    import json  # noqa: PLC0415
    try:
        info = json.loads(read_text(marker, "marker file"))
    except ValueError:
        raise JcdlError(marker, "is not JSON (written by jcdl prepare for "
                        "single-label data): remove it or prepare again") \
            from None
    if not isinstance(info, dict) or info.get("kind") != "single_label":
        raise JcdlError(marker, "does not describe single-label data "
                        "(kind 'single_label')")
    return info


def prepare(dataset, root, out, test_ratio=0.2, seed=0, splits=None, gt=None,
            classes=None, prior=None, sigma=None, wheel=None, positive=None):
    """Reads the dataset and writes OUT (see the module's docstring).
    Returns a summary dict. ``prior``, ``sigma``, ``wheel`` (the classes in
    their order around the emotion wheel) and ``positive`` (the positive
    ones) turn the single labels of ``fi`` and ``single`` into
    distributions (jcdl.priors; None: its defaults)."""
    root, out = Path(root), output_path(out)
    rule = dict(prior=prior, sigma=sigma, wheel=wheel, positive=positive)
    if dataset not in SINGLE_LABEL:
        given = [k for k, v in rule.items() if v is not None]
        if given:
            raise JcdlError(f"--{given[0]}", "turns single labels into "
                            "distributions: it is for the datasets "
                            f"{' and '.join(SINGLE_LABEL)}, not {dataset}")
    rule["prior"] = prior or DEFAULT_PRIOR
    rule["sigma"] = DEFAULT_SIGMA if sigma is None else sigma
    truth = read_ground_truth(dataset, root, gt, classes, rule)
    folders = {"emotion6": ("images", ""), "list": ("",), "fi": ("",),
               "single": ("",)}.get(dataset, ("", "images"))
    rel = resolve_images(truth, root, folders)
    names = truth.classes if classes is None or dataset == "single" else \
        tuple(read_classes(classes, truth.P.shape[1]))
    if truth.prior is not None:
        names = truth.prior.classes
    n = len(rel)
    if truth.splits is not None:
        chosen = truth.splits
        if splits is not None:
            if splits > len(chosen):
                raise JcdlError(truth.path, f"--splits {splits}, but the file "
                                f"holds {len(chosen)} split(s)")
            chosen = chosen[:splits]
        rng = np.random.default_rng(seed)
        chosen = [(rng.permutation(tr), np.sort(te)) for tr, te in chosen]
        source = f"the split{'s' if len(chosen) > 1 else ''} of {truth.path}"
    else:
        if n < 2:
            raise JcdlError(truth.path, "only one image: nothing to split")
        chosen = random_splits(n, test_ratio, seed, splits or 1)
        source = f"random, test ratio {test_ratio}, seed {seed}"
    # the ground truth would be replaced by a split of itself (a classes
    # file there is rewritten with the same names: fine)
    if out.resolve() in Path(truth.path).resolve().parents:
        raise JcdlError(out, f"holds {truth.path}, which this run reads: "
                        "choose another output folder")
    if out.exists():
        strangers = [p.name for p in out.iterdir()
                     if not OUR_FILES.fullmatch(p.name)] if out.is_dir() \
            else [out.name]
        if strangers:
            raise JcdlError(out, "exists and holds other files ("
                            + ", ".join(sorted(strangers)[:3]) + "); choose "
                            "another output folder")
    marker = None
    if truth.prior is not None:
        import json  # noqa: PLC0415
        marker = json.dumps(dict(truth.prior.describe(), dataset=dataset,
                                 source=str(truth.path)), indent=2) + "\n"
    with atomic_output(out) as tmp:
        _write_split(tmp, names, rel, truth.P, *chosen[0], marker=marker)
        if splits is not None or len(chosen) > 1:
            for s, (train, test) in enumerate(chosen, 1):
                _write_split(tmp / f"split{s}", names, rel, truth.P, train,
                             test, marker=marker)
    return {"n": n, "k": len(names), "train": len(chosen[0][0]),
            "test": len(chosen[0][1]), "splits": len(chosen),
            "source": source, "ground_truth": str(truth.path),
            "prior": truth.prior.describe() if truth.prior else None}


# ---------------------------------------------------------------- CLI

def _ratio(text):
    import argparse  # noqa: PLC0415
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return v


def cmd_prepare(args):
    out, gt = args.out, args.gt
    if args.dataset == "single":
        if args.out2 is None:
            raise JcdlError("prepare single", "give ROOT LIST OUT (the list "
                            "of 'path class' lines between ROOT and OUT)")
        if gt is not None:
            raise JcdlError("--gt", "the list of 'single' is its LIST "
                            "argument: leave out --gt")
        gt, out = args.out, args.out2
    elif args.out2 is not None:
        raise JcdlError(args.out2, f"one argument too many: jcdl prepare "
                        f"{args.dataset} ROOT OUT")
    s = prepare(args.dataset, args.root, out, args.test_ratio, args.seed,
                args.splits, gt, args.classes, args.prior, args.sigma,
                args.wheel, args.positive)
    extra = f", {s['splits']} splits" if s["splits"] > 1 else ""
    if s["prior"]:
        p = s["prior"]
        how = f"prior {p['prior']}" + (f", sigma {p['sigma']:g}"
                                       if p["sigma"] is not None else "")
        extra += f"; single labels -> distributions by the {how}"
    print(f"{out}: {s['n']} images, {s['k']} emotions, train "
          f"{s['train']} / test {s['test']}{extra} ({s['source']}); give "
          f"'{args.root}' as ROOT to jcdl convert")


def register(sub):
    import argparse  # noqa: PLC0415
    from . import priors  # noqa: PLC0415
    p = sub.add_parser(
        "prepare", help="dataset -> list files and train/test splits",
        usage="jcdl prepare [-h] [options] DATASET ROOT OUT\n"
              "       jcdl prepare [-h] [options] single ROOT LIST OUT "
              "--classes FILE",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("root", help="the dataset folder (images and ground "
                                "truth)")
    p.add_argument("out", help="output folder for the lists (for single: "
                               "LIST, then OUT)")
    p.add_argument("out2", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--test-ratio", type=_ratio, default=0.2,
                   help="share of images in the test set (default 0.2; "
                        "unused where a .mat file holds the split)")
    p.add_argument("--seed", type=int_arg(0, 2 ** 63 - 1), default=0,
                   help="seed of the random splits and of train.txt's "
                        "order (default 0)")
    p.add_argument("--splits", type=int_arg(1, 10000), default=None, metavar="N",
                   help="also write N repeated random splits (or a .mat "
                        "file's first N) in OUT/split1 ... OUT/splitN")
    p.add_argument("--gt", help="the ground-truth file, when it is not "
                                "where the dataset keeps it")
    p.add_argument("--classes", help="emotion names, one per line, in "
                                     "column order")
    g = p.add_argument_group("single labels (fi, single) -> distributions")
    g.add_argument("--prior", choices=priors.PRIORS,
                   help="both (the paper's, default): a Gaussian of the "
                   "distance on the emotion wheel, nothing on the other "
                   "polarity; implication: the Gaussian alone; exclusion: "
                   "the polarity alone; onehot: the label alone")
    g.add_argument("--sigma", type=priors.sigma_arg,
                   help="the Gaussian's sigma, in wheel steps (default "
                   f"{priors.DEFAULT_SIGMA:g})")
    g.add_argument("--wheel", metavar="NAMES",
                   help="the classes in their order around the emotion "
                   "wheel, comma-separated (default for Mikels' eight: "
                   + ",".join(priors.MIKELS_WHEEL) + ")")
    g.add_argument("--positive", metavar="NAMES",
                   help="the positive classes, comma-separated (default "
                   "for Mikels' eight: " + ",".join(priors.MIKELS_POSITIVE)
                   + ")")
    p.set_defaults(func=cmd_prepare)
