"""``jcdl evaluate``: a trained net on a test set (an LMDB, or a list with
its image folder) against its ground truth.

From Python, ``evaluate(model, db=...)`` returns an Evaluation holding the
arrays (names, true P, predicted Q) and the measures; ``write_evaluation``
saves what the command saves.
"""
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import metrics
from .errors import JcdlError
from .files import (atomic_output, check_output_file, claim_outputs,
                    output_folder)
from .lists import read_distributions, write_distributions
from .predict import (db_samples, list_samples, model_from_args, net_args)

N_EXAMPLES = 6  # images shown in distributions.png
OUT_FILES = ("predictions.txt", "metrics.json", "metrics.csv", "metrics.md",
             "per_class.csv", "per_class.md", "confusion.csv",
             "confusion.png", "distributions.png")   # what --out holds


@dataclass
class Evaluation:
    """A net's predictions on a test set: ``names`` (n), true ``P`` and
    predicted ``Q`` (float64 (n, K)), the ``classes``, the ``summary``
    (metrics.summary) and the first images (``examples``, as stored)."""
    names: list
    P: np.ndarray
    Q: np.ndarray
    classes: list
    summary: dict
    examples: list = field(default_factory=list, repr=False)

    def per_sample(self):
        """Each measure for each image: {measure: (n,) array}."""
        return metrics.per_sample(self.P, self.Q)


@dataclass
class RunFiles:
    """The files of a training run folder (``jcdl netgen --out`` and what
    training wrote there): ``deploy``, the newest snapshot's ``weights``,
    the TEST phase's ``test_db`` and ``mean`` (None without one), the
    training ``log`` (None when missing)."""
    folder: Path
    deploy: Path
    weights: Path
    test_db: Path
    mean: Path
    log: Path


def find_run(folder):
    """The RunFiles of a run folder. Paths inside its solver and nets are
    relative to where training ran: each is looked up as written, then
    under the folder's ancestors."""
    from .caffenet import caffe_pb2, net_layers, read_text_proto  # noqa
    from .trainer import snapshot_prefix  # noqa: PLC0415
    folder = Path(folder)
    if not (folder / "solver.prototxt").is_file():
        raise JcdlError(folder, "not a run folder (no solver.prototxt: "
                        "make one with jcdl netgen --out)")
    # where training ran: here, an ancestor of the folder, or of here
    bases = [Path(".")] + [Path(os.path.normpath(folder / ("../" * i)))
                           for i in range(len(folder.parts) + 1)] + \
        list(Path.cwd().parents)

    def resolve(path):
        path = Path(path)
        if path.is_absolute():
            return path
        return next((b / path for b in bases if (b / path).exists()), path)

    pb2 = caffe_pb2()
    solver_path = folder / "solver.prototxt"
    solver = read_text_proto(solver_path, pb2.SolverParameter(),
                             "solver file")
    net_path = resolve(solver.net or solver.train_net)
    net = read_text_proto(net_path, pb2.NetParameter(), "net file")
    data = [layer for layer in net_layers(net, pb2.TEST)
            if layer.type == "Data"]
    if not data:
        raise JcdlError(net_path, "no Data layer in the TEST phase: which "
                        "LMDB does the run test on?")
    prefix = snapshot_prefix(solver, solver_path)
    snaps = [(int(m.group(1)), p) for p in
             resolve(Path(prefix).parent).glob(
                 Path(prefix).name + "_iter_*.caffemodel")
             if (m := re.search(r"_iter_(\d+)\.caffemodel$", p.name))]
    if not snaps:
        raise JcdlError(folder, f"no snapshot {prefix}_iter_N.caffemodel: "
                        "has the run been trained?")
    mean = data[0].transform_param.mean_file
    log = folder / "train.log"
    return RunFiles(folder, folder / "deploy.prototxt", max(snaps)[1],
                    resolve(data[0].data_param.source),
                    resolve(mean) if mean else None,
                    log if log.is_file() else None)


def _check_k(source, K, model):
    if K != model.K:
        raise JcdlError(source, f"the ground truth has {K} values per "
                        f"distribution, but {model.model_path} outputs "
                        f"{model.K}")


def read_test_set(model, db=None, list_path=None, root=None):
    """(count, samples) of a test set: an LMDB, or a list and its image
    ROOT; (name, image, distribution) each, checked against the model's K."""
    if (db is None) == (list_path is None) or \
            (list_path is not None and root is None):
        raise ValueError("give either db, or list_path and root")
    if list_path is not None:
        names, P, _ = read_distributions(list_path)
        if not Path(root).is_dir():
            raise JcdlError(root, "no such image folder")
        _check_k(list_path, P.shape[1], model)
        return len(names), list_samples(names, P, root, model)
    from .lmdbread import db_info  # noqa: PLC0415
    info = db_info(db)
    if not info["k"]:
        raise JcdlError(db, "no distribution (float_data) in its records: "
                        "make it with 'jcdl convert' or convert_imageset_r")
    _check_k(db, info["k"], model)
    return info["n"], db_samples(db)


def evaluate(model, db=None, list_path=None, root=None, batch=32,
             progress=True):
    """Predicts every image of an LMDB (``db``) or of a list with its image
    ``root`` with ``model`` (predict.load_model) and returns the
    Evaluation."""
    from tqdm import tqdm  # noqa: PLC0415
    total, samples = read_test_set(model, db, list_path, root)
    names, P, examples = [], [], []

    def arrays():
        for name, img, dist in samples:
            if len(dist) != model.K:
                raise JcdlError(db, f"record '{name}' has {len(dist)} "
                                f"values, but {model.model_path} outputs "
                                f"{model.K}")
            names.append(name)
            P.append(dist)
            if len(examples) < N_EXAMPLES:
                examples.append(img)
            bar.update(1)
            yield img

    with tqdm(total=total, desc="evaluate", unit="img",
              disable=None if progress else True, file=sys.stderr) as bar:
        Q = model.predict_arrays(arrays(), batch, names)
    P = np.asarray(P)
    return Evaluation(names, P, Q, model.classes, metrics.summary(P, Q),
                      examples)


def with_ground_truth(summary, info):
    """The summary saying which ground truth it was measured against:
    ``ground_truth`` "distribution" (votes), or "single_label" (``info``:
    what datasets.single_label_info read) with accuracy first and the
    prior that made the distributions."""
    if not info:
        return dict(summary, ground_truth="distribution")
    out = {"ground_truth": "single_label", "accuracy": summary["accuracy"]}
    out.update(summary)
    out["prior"] = {k: info.get(k) for k in ("prior", "sigma")}
    return out


def ground_truth_info(truth, classes):
    """What the test set's labels are: ``truth`` "auto" (single-label when
    the classes file has prepare's single_label.json beside it),
    "distribution" or "single_label"."""
    from .datasets import single_label_info  # noqa: PLC0415
    info = single_label_info(classes) if truth != "distribution" else None
    if truth == "single_label" and info is None:
        info = {"kind": "single_label", "prior": None, "sigma": None}
    return info


def result(ev, classes=None, truth="auto"):
    """What ``jcdl evaluate`` prints of an Evaluation: its summary, saying
    which ground truth it was measured against (``classes``: the classes
    file, beside which prepare marks single-label sets)."""
    return with_ground_truth(ev.summary, ground_truth_info(truth, classes))


def write_evaluation(ev, out_dir):
    """predictions.txt, metrics.write_reports' files, confusion.png and
    distributions.png in out_dir; returns the summary."""
    from . import plot  # noqa: PLC0415
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise JcdlError(out_dir, "exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_distributions(out_dir / "predictions.txt", ev.names, ev.Q)
    result = metrics.write_reports(out_dir, ev.P, ev.Q, ev.classes)
    plot.save_figure(plot.confusion_figure(metrics.confusion(ev.P, ev.Q),
                                           ev.classes),
                     out_dir / "confusion.png")
    plot.save_figure(plot.distributions_figure(
        ev.names, ev.P, ev.Q, ev.classes, n=N_EXAMPLES, images=ev.examples),
        out_dir / "distributions.png")
    return result


# -------------------------------------------------------------------- CLI

def _check_outputs(args):
    """No output on, or inside, what the run reads."""
    from .files import check_output_dir  # noqa: PLC0415
    inputs = (args.db, args.list, args.root, args.model, args.weights,
              args.mean, args.classes)
    if args.predictions is not None:
        check_output_file(args.predictions, *inputs)
    if args.out is not None:
        check_output_dir(args.out, OUT_FILES, *inputs)


def cmd_evaluate(args):
    _check_outputs(args)
    # the outputs claimed first: another run writing them is refused
    with claim_outputs(args.out, args.predictions):
        _cmd_evaluate(args)


def _cmd_evaluate(args):
    if args.db is None and (args.list is None or args.root is None):
        raise JcdlError("evaluate", "give --db DB, or --list LIST and "
                        "--root ROOT")
    if args.db is not None and (args.list or args.root):
        raise JcdlError("evaluate", "give --db, or --list and --root, "
                        "not both")
    if args.out is not None and Path(args.out).exists() and \
            not Path(args.out).is_dir():
        raise JcdlError(args.out, "exists and is not a folder")
    info = ground_truth_info(args.truth, args.classes)
    if args.predictions is not None:
        check_output_file(args.predictions, args.list, args.model,
                          args.weights, args.mean, args.classes)
    if args.list is not None:       # bad input before the slow net loading
        read_distributions(args.list)
        if not Path(args.root).is_dir():
            raise JcdlError(args.root, "no such image folder")
    elif not Path(args.db).exists():
        raise JcdlError(args.db, "no such LMDB")
    model = model_from_args(args)
    ev = evaluate(model, db=args.db, list_path=args.list, root=args.root,
                  batch=args.batch)
    if args.out is None:
        if args.predictions is not None:
            write_distributions(args.predictions, ev.names, ev.Q)
    elif args.predictions is None:
        with output_folder(args.out) as tmp:
            write_evaluation(ev, tmp)
    else:   # the predictions file renamed only once the folder is in place
        with atomic_output(args.predictions) as predictions, \
                output_folder(args.out) as tmp:
            write_evaluation(ev, tmp)
            write_distributions(predictions, ev.names, ev.Q)
    if info:
        how = f" by the prior '{info['prior']}'" if info.get("prior") else ""
        print(f"jcdl evaluate: single-label ground truth: accuracy "
              f"{ev.summary['accuracy']:.4f} is the measure (the LDL measures "
              f"compare with distributions made from the labels{how})",
              file=sys.stderr)
    print(metrics.to_json(with_ground_truth(ev.summary, info)))


def register(sub):
    p = sub.add_parser(
        "evaluate", help="measures of a trained net on a test set",
        description="Predicts the emotion distribution of every image of a "
                    "test LMDB (--db) or list file with its image folder "
                    "(--list, --root), preprocessed as Caffe's TEST-phase "
                    "Data layer does (mean subtracted, centre crop), and "
                    "prints one JSON object: chebyshev, clark, canberra, "
                    "kl, cosine, intersection, accuracy (dominant emotion), "
                    "clark_over_sqrt_k, canberra_over_k, kl_infinite, n, k.")
    net_args(p)
    p.add_argument("--db", help="test LMDB (jcdl convert / convert_imageset_r)")
    p.add_argument("--list", help="test list: 'path p_1 ... p_K' lines")
    p.add_argument("--root", help="folder the list's paths are relative to")
    p.add_argument("--out", help="write predictions.txt, metrics.{json,csv,"
                                 "md}, per_class.{csv,md}, confusion.csv, "
                                 "confusion.png, distributions.png here")
    p.add_argument("--predictions", help="also write the predictions "
                                         "('name q_1 ... q_K') to this file")
    p.add_argument("--truth", choices=("auto", "distribution",
                                       "single_label"), default="auto",
                   help="what the test labels are: auto (default) reads "
                   "single_label.json beside --classes, which jcdl prepare "
                   "writes for fi and single; the JSON's ground_truth says "
                   "which, and for single labels accuracy is the headline")
    p.set_defaults(func=cmd_evaluate)
