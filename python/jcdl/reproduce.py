"""``jcdl reproduce``: the paper's protocol in one command.

For each train/test split (the dataset's own splits where it has them,
else N random 80/20 ones, seeded) it runs the stages as their commands do
(``prepare`` once, then per split ``convert`` at 256x256 -- 40x40 for
``--arch small`` --, ``mean``, ``netgen`` with the original recipe,
``train`` from ``--weights``, ``evaluate`` on the test LMDB) and writes:

- ``OUT/summary.json``: ``splits`` (how many), ``mean`` and ``std`` (the
  sample standard deviation, null for one split) over the splits of every
  measure (both Clark/Canberra forms) and accuracy, and ``per_split``
  (each split's measures and the paths of its files);
- ``OUT/summary.md``: the table as mean +- std, with published numbers
  beside it for orientation, saying which form each paper used.

It is resumable: a rerun skips every split whose evaluation is complete
(``OUT/splitK/result.json``), each stage's output appears only when
complete, and training continues from its last snapshot. Ctrl-C during
training snapshots first; rerun the same command to continue. A rerun with
other settings than OUT was made with is refused.
"""
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from . import datasets, lmdbio, metrics, netgen
from .errors import JcdlError, int_arg
from .files import output_folder, output_path, read_text, write_text
from .priors import PRIORS, sigma_arg

KINDS = ("emotion6", "flickr_ldl", "twitter_ldl", "fi", "list", "single")
DEFAULT_SPLITS = 5
SIZE = {"vgg16": 256, "small": 40}          # convert's --resize_*
SETTINGS = "reproduce.json"
RESULT = "result.json"
# the measures summarised, in the table's order, with their forms
COLUMNS = tuple(key for key, _ in metrics.FORMS)
LABELS = dict(metrics.FORMS)
PUBLISHED, PUBLISHED_BY = metrics.PUBLISHED, metrics.PUBLISHED_BY


def say(text):
    print(f"[reproduce] {text}", file=sys.stderr, flush=True)


def _abs(path):
    return None if path is None else str(Path(path).resolve())


def _check_settings(out, settings):
    """Refuses OUT when it is not this run's (other settings, or other
    files); returns True when OUT holds an earlier run of the same
    settings."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise JcdlError(out, "exists and is not a folder; choose another OUT")
    path = out / SETTINGS
    if not path.is_file():
        if any(out.iterdir()):
            raise JcdlError(out, "exists and is not a jcdl reproduce folder "
                            f"(no {SETTINGS}); choose another OUT")
        return False
    try:
        old = json.loads(read_text(path, "settings file"))
    except ValueError:
        raise JcdlError(path, "is not JSON: remove OUT or choose another")\
            from None
    for key, value in settings.items():
        if old.get(key) != value:
            def shown(v):
                return "the default" if v is None else repr(v)
            raise JcdlError(path, f"OUT was made with other settings ({key}: "
                            f"{shown(old.get(key))} there, {shown(value)} "
                            "now): rerun "
                            "with those, or choose another OUT")
    return True


def _split_lists(lists, k):
    folder = lists / f"split{k}"
    return folder if folder.is_dir() else lists


def _count_splits(lists):
    n = len([p for p in lists.iterdir()
             if re.fullmatch(r"split\d+", p.name) and p.is_dir()])
    return n or 1


def _latest_snapshot(prefix):
    """(iteration, solverstate) of the last complete snapshot, or None."""
    best = None
    for state in Path(prefix).parent.glob(Path(prefix).name +
                                          "_iter_*.solverstate"):
        m = re.fullmatch(re.escape(Path(prefix).name) +
                         r"_iter_(\d+)\.solverstate", state.name)
        if m and state.with_suffix(".caffemodel").is_file():
            it = int(m.group(1))
            if best is None or it > best[0]:
                best = (it, state)
    return best


def _read_result(path):
    try:
        result = json.loads(read_text(path, "result file"))
        if isinstance(result, dict) and isinstance(result.get("measures"),
                                                   dict):
            return result
    except (ValueError, JcdlError):
        pass
    return None


def _solver_options(arch, iterations, gpu, seed):
    """The original recipe (netgen's defaults) with --iterations as max_iter
    and, for the small CPU net trained from scratch, the demo's rate."""
    opts = {"mode": "GPU" if gpu is not None else "CPU", "seed": seed}
    if iterations is not None:
        opts.update(max_iter=iterations,
                    snapshot=max(1, min(1000, iterations // 3)),
                    test_interval=max(1, min(100, iterations)),
                    display=max(1, min(20, iterations)))
    if arch == "small":
        opts.update(base_lr=0.01, weight_decay=0.0005)
    return opts


def run_split(k, n, root, lists, out, arch, weights, gpu, iterations, seed,
              progress):
    """Every stage of split k into OUT/splitK; returns its result dict."""
    from . import evaluate, predict, train  # noqa: PLC0415 (pycaffe)
    folder = out / f"split{k}"
    result_path = folder / RESULT
    if result_path.is_file() and _read_result(result_path) is not None:
        say(f"split {k}/{n}: complete ({result_path}), skipped")
        return _read_result(result_path)
    source = _split_lists(lists, k)
    classes = source / "classes.txt"
    size = SIZE[arch]
    dbs = {}
    for part in ("train", "test"):
        dbs[part] = folder / f"{part}_lmdb"
        if not dbs[part].exists():
            say(f"split {k}/{n}: convert {part}.txt at {size}x{size} -> "
                f"{dbs[part]}")
            lmdbio.convert(root, source / f"{part}.txt", dbs[part],
                           resize_height=size, resize_width=size,
                           progress=progress)
    mean = folder / "mean.binaryproto"
    if not all(p.is_file() for p in lmdbio.mean_paths(mean)):
        say(f"split {k}/{n}: mean -> {mean}")
        lmdbio.compute_mean(dbs["train"], mean, progress=progress)
    opts = _solver_options(arch, iterations, gpu, seed)
    say(f"split {k}/{n}: netgen -> {folder / 'net'}")
    _, deploy, solver = netgen.write_nets(
        folder / "net", arch, "jcdl", 0.8, None, dbs["train"], dbs["test"],
        mean=mean, **opts)
    max_iter = opts.get("max_iter", netgen.SOLVER_DEFAULTS["max_iter"])
    prefix = folder / "net" / "snapshots" / f"{arch}_jcdl"
    final = Path(f"{prefix}_iter_{max_iter}.caffemodel")
    log = folder / "train.log"
    if final.is_file():
        say(f"split {k}/{n}: trained ({final}), skipped")
    else:
        last = _latest_snapshot(prefix)
        if last is not None:
            say(f"split {k}/{n}: train, resuming at iteration {last[0]} of "
                f"{max_iter} ({last[1]})")
            train.train(solver, gpu=gpu, resume=str(last[1]), log=log,
                        progress=progress, echo=False, interrupt_raises=True)
        else:
            say(f"split {k}/{n}: train {max_iter} iterations" +
                (f" from {weights}" if weights else " from scratch"))
            train.train(solver, weights=weights, gpu=gpu, log=log,
                        progress=progress, echo=False, interrupt_raises=True)
        if not final.is_file():
            raise JcdlError(solver, f"training ended without {final}")
    say(f"split {k}/{n}: evaluate on {dbs['test']}")
    model = predict.load_model(deploy, final, mean, classes=classes, gpu=gpu)
    ev = evaluate.evaluate(model, db=dbs["test"], progress=progress)
    with output_folder(folder / "eval") as tmp:
        evaluate.write_evaluation(ev, tmp)
    info = datasets.single_label_info(classes)
    measures = evaluate.with_ground_truth(ev.summary, info)
    result = {"split": k, "measures": measures, "paths": {
        "train_list": str(source / "train.txt"),
        "test_list": str(source / "test.txt"),
        "classes": str(classes), "train_lmdb": str(dbs["train"]),
        "test_lmdb": str(dbs["test"]), "mean": str(mean),
        "solver": str(solver), "deploy": str(deploy),
        "weights": str(final), "log": str(log), "eval": str(folder / "eval")}}
    if info:
        result["prior"] = {k2: info.get(k2) for k2 in ("prior", "sigma")}
    write_text(result_path, metrics.to_json(result, indent=2) + "\n")
    return _read_result(result_path)     # as JSON has it: inf is null


def summarise(results):
    """{'mean': ..., 'std': ...} over the splits' measures; a measure that
    is null (an infinite KL) in any split is null."""
    mean, std = {}, {}
    for c in COLUMNS:
        values = [r["measures"].get(c) for r in results]
        if any(v is None for v in values):
            mean[c] = std[c] = None
            continue
        a = np.asarray(values, dtype=np.float64)
        mean[c] = float(a.mean())
        std[c] = float(a.std(ddof=1)) if len(a) > 1 else None
    return mean, std


def _cell(m, s):
    if m is None:
        return "—"
    return f"{m:.4f}" + (f" ± {s:.4f}" if s is not None else "")


def summary_markdown(kind, summary):
    single = summary["ground_truth"] == "single_label"
    columns = (("accuracy",) + COLUMNS[:-1]) if single else COLUMNS
    published = PUBLISHED.get(kind, {})
    rows = []
    for c in columns:
        p = published.get(c)
        rows.append(f"| {LABELS[c]} | {_cell(summary['mean'][c], summary['std'][c])}"
                    f" | {'—' if p is None else f'{p:.2f}'} |")
    n = summary["splits"]
    spread = "mean ± sample standard deviation" if n > 1 else \
        "one split: no spread"
    note = ""
    if single:
        p = summary.get("prior") or {}
        note = ("\n**Single-label ground truth**: accuracy is the measure; "
                "the LDL measures compare the predictions with distributions "
                f"made from the labels by the prior '{p.get('prior')}'"
                + (f" (sigma {p['sigma']:g})" if p.get("sigma") else "")
                + ", and say little.\n")
    pub = (f"Published: {PUBLISHED_BY}. Compare Clark and Canberra with the "
           "normalised rows. The JCDL paper's own table is not stored "
           "here." if published else
           "No published numbers for this dataset are stored here (FI is "
           "reported by accuracy in the JCDL paper).")
    return f"""# jcdl reproduce: {kind}

{n} split(s), {spread}; `--arch {summary['arch']}`, {summary['iterations']}
iterations per split, weights {summary['weights'] or 'none (from scratch)'}.
Measures of the test sets (Geng's definitions; Clark and Canberra also
normalised: Clark/√K and Canberra/K).
{note}
| measure | ours | published |
|---|---|---|
""" + "\n".join(rows) + f"""

{pub}

Per split: `split<K>/result.json` (measures and paths), `split<K>/eval/`
(predictions, per-class tables, confusion matrix), `split<K>/train.log`.
"""


def reproduce(kind, root, out, splits=None, arch="vgg16", weights=None,
              gpu=None, iterations=None, seed=0, gt=None, classes=None,
              prior=None, sigma=None, progress=True):
    """Runs the protocol into OUT (see the module's docstring); returns the
    summary dict."""
    if kind not in KINDS:
        raise JcdlError(kind, "unknown dataset (one of " + ", ".join(KINDS)
                        + ")")
    if arch not in SIZE:
        raise JcdlError(arch, "unknown architecture (vgg16 or small)")
    if not Path(root).is_dir():
        raise JcdlError(root, "no such dataset folder")
    if kind == "single" and (gt is None or classes is None):
        raise JcdlError("reproduce single", "give --gt LIST (its 'path "
                        "class' lines) and --classes FILE")
    if weights is not None and not Path(weights).is_file():
        raise JcdlError(weights, "no such weights file")
    if iterations is not None and iterations < 1:
        raise JcdlError("--iterations", f"must be at least 1, not "
                        f"{iterations}")
    if gpu is not None:                  # before hours of converting
        from .caffenet import import_caffe, use_device  # noqa: PLC0415
        use_device(import_caffe(), gpu)
    out = output_path(out).resolve()
    root = Path(root).resolve()
    settings = {"kind": kind, "root": str(root), "splits": splits,
                "arch": arch, "weights": _abs(weights),
                "iterations": iterations, "seed": seed, "gt": _abs(gt),
                "classes": _abs(classes), "prior": prior, "sigma": sigma}
    earlier = _check_settings(out, settings)
    if weights is None and arch == "vgg16":
        say("no --weights: VGG-16 trains from scratch (the paper fine-tunes "
            "VGG_ILSVRC_16_layers.caffemodel)")
    lists = out / "lists"
    made_out = not out.exists()
    start = time.time()
    try:
        if not lists.is_dir():
            count = splits
            if count is None:
                truth = datasets.read_ground_truth(
                    kind, root, gt, classes,
                    dict(prior=prior or "both", sigma=sigma or 1.0)
                    if kind in datasets.SINGLE_LABEL else None)
                count = len(truth.splits) if truth.splits else DEFAULT_SPLITS
            say(f"prepare {kind} {root} -> {lists} ({count} split(s))")
            datasets.prepare(kind, root, lists, seed=seed, splits=count,
                             gt=gt, classes=classes, prior=prior, sigma=sigma)
        if not earlier:
            write_text(out / SETTINGS, json.dumps(settings, indent=2) + "\n")
    except BaseException:
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    n = _count_splits(lists)
    results = []
    for k in range(1, n + 1):
        try:
            results.append(run_split(k, n, root, lists, out, arch, weights,
                                     gpu, iterations, seed, progress))
        except KeyboardInterrupt:
            say(f"interrupted in split {k}/{n}; rerun the same command to "
                "continue (complete stages are kept, training resumes from "
                "its last snapshot)")
            raise
    mean, std = summarise(results)
    kinds = {r["measures"].get("ground_truth") for r in results}
    summary = {
        "kind": kind, "root": str(root), "splits": n, "arch": arch,
        "iterations": iterations or netgen.SOLVER_DEFAULTS["max_iter"],
        "weights": _abs(weights), "ground_truth": kinds.pop(),
        "mean": mean, "std": std, "std_ddof": 1,
        "published": {"by": PUBLISHED_BY, "measures": PUBLISHED[kind]}
        if kind in PUBLISHED else None,
        "per_split": results}
    prior_info = [r.get("prior") for r in results if r.get("prior")]
    if prior_info:
        summary["prior"] = prior_info[0]
    write_text(out / "summary.json", metrics.to_json(summary, indent=2)
               + "\n")
    write_text(out / "summary.md", summary_markdown(kind, summary))
    say(f"{n} split(s) done in {time.time() - start:.0f} s: "
        f"{out / 'summary.md'}")
    return summary


def cmd_reproduce(args):
    s = reproduce(args.kind, args.root, args.out, splits=args.splits,
                  arch=args.arch, weights=args.weights, gpu=args.gpu,
                  iterations=args.iterations, seed=args.seed, gt=args.gt,
                  classes=args.classes, prior=args.prior, sigma=args.sigma)
    head = "accuracy" if s["ground_truth"] == "single_label" else "kl"
    m, sd = s["mean"][head], s["std"][head]
    also = "" if head == "accuracy" else (
        f", accuracy {_cell(s['mean']['accuracy'], s['std']['accuracy'])}")
    print(f"{Path(args.out) / 'summary.json'}: {s['splits']} split(s), "
          f"{head} {_cell(m, sd)}{also}")


def register(sub):
    p = sub.add_parser(
        "reproduce", help="the paper's protocol over splits, in one command",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS, metavar="KIND",
                   help="dataset: " + ", ".join(KINDS))
    p.add_argument("root", metavar="ROOT",
                   help="the dataset folder (as for jcdl prepare)")
    p.add_argument("out", metavar="OUT",
                   help="output folder (a rerun continues it)")
    p.add_argument("--splits", type=int_arg(1, 1000), metavar="N",
                   help="N random 80/20 splits (default: the dataset's own "
                   f"splits, else {DEFAULT_SPLITS})")
    p.add_argument("--arch", choices=tuple(SIZE), default="vgg16",
                   help="vgg16 (the paper's; default) or small (a little "
                   "CPU net, images at 40x40)")
    p.add_argument("--weights", metavar="W",
                   help="caffemodel to fine-tune from (the paper: "
                   "models/VGG_ILSVRC_16_layers.caffemodel)")
    p.add_argument("--gpu", type=int_arg(0, 1023), metavar="G",
                   help="train and evaluate on GPU G (default: the CPU)")
    p.add_argument("--iterations", type=int_arg(1), metavar="N",
                   help="training iterations per split (default: the "
                   f"recipe's {netgen.SOLVER_DEFAULTS['max_iter']})")
    p.add_argument("--seed", type=int_arg(0, 2 ** 31 - 1), default=0,
                   help="seed of the splits and of the solver (default 0)")
    p.add_argument("--gt", help="the ground-truth file (jcdl prepare's "
                   "--gt; for single: its LIST of 'path class' lines)")
    p.add_argument("--classes", help="emotion names, one per line (needed "
                   "for single)")
    p.add_argument("--prior", choices=PRIORS,
                   help="fi, single: the prior (default both)")
    p.add_argument("--sigma", type=sigma_arg,
                   help="fi, single: its sigma in wheel steps (default 1)")
    p.set_defaults(func=cmd_reproduce)
