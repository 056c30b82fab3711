"""``jcdl demo``: the whole method on a synthetic emotion dataset, in minutes
on a CPU, with no download.

The dataset imitates how Flickr_LDL was made: each image shows one of eight
scenes (four background colours x two shapes, drawn at random places and
sizes with noise), each scene has a fixed emotion distribution over Mikels'
eight emotions, and each image's ground truth is the votes of eleven
simulated annotators drawn from its scene's distribution. It is written in
Flickr_LDL's release format (images plus a ``name v_1 ... v_8`` votes file),
and the real pipeline runs on it: prepare -> convert -> mean -> netgen ->
train -> evaluate, training the same small net with the same seed and
budget: the joint JCDL loss, the KL loss alone and the softmax loss alone,
and the joint loss once more on distributions made from each training
image's dominant emotion alone through the paper's two priors (the
single-label extension, jcdl.priors), scored against the real votes.
"""
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from . import (datasets, evaluate, lmdbio, metrics, netgen, plot, predict,
               priors, train)
from .errors import JcdlError, int_arg
from .files import (claim, output_folder, output_path, pid_alive, remove,
                    write_text)
from .lists import read_distributions, write_distributions

VARIANTS = {"jcdl": "jcdl", "kl_only": "kl", "softmax_only": "softmax"}
# the joint loss on the dominant emotion made a distribution by the priors
PRIORS_VARIANT = "jcdl_priors"
MARKER = ".jcdl-demo"
MIN_IMAGES = 16
COLOURS = ((40, 40, 200), (200, 60, 40), (40, 180, 60), (20, 200, 220))


def scene_distributions(K, seed):
    """The true emotion distribution of each of the 8 scenes."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(K, 0.6), size=2 * len(COLOURS))


def draw(scene, size, rng):
    """One BGR image of a scene: a noisy background colour and a circle (even
    scenes) or a square (odd scenes) in a contrasting colour."""
    colour = np.asarray(COLOURS[scene // 2], np.float64)
    img = np.empty((size, size, 3))
    img[:] = colour * rng.uniform(0.7, 1.1)
    shape_colour = tuple(int(v) for v in 255 - colour)
    r = int(rng.integers(size // 6, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    if scene % 2 == 0:
        cv2.circle(img, (cx, cy), r, shape_colour, -1)
    else:
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), shape_colour, -1)
    img += rng.normal(0, 18, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root, n=800, size=36, annotators=11, seed=0):
    """Writes ROOT/images/*.jpg and ROOT/votes.txt (``name v_1 ... v_8``);
    returns the scenes' true distributions."""
    root = Path(root)
    K = len(datasets.MIKELS_CLASSES)
    truth = scene_distributions(K, seed)
    rng = np.random.default_rng(seed + 1)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        scene = i % len(truth)
        name = f"img_{i:04d}.jpg"
        _, jpg = cv2.imencode(".jpg", draw(scene, size, rng),
                              [cv2.IMWRITE_JPEG_QUALITY, 95])
        path = root / "images" / name
        try:
            path.write_bytes(jpg.tobytes())
        except OSError as e:   # a full disk: the file named
            raise JcdlError(path, f"cannot write ({e.strerror})") from None
        votes = rng.multinomial(annotators, truth[scene])
        lines.append(name + " " + " ".join(str(v) for v in votes))
    write_text(root / "votes.txt", "\n".join(lines) + "\n")
    return truth


def _earlier(out, pid):
    """Where a run (process pid) keeps the earlier demo of OUT aside."""
    return out.with_name(f".{out.name}.earlier-{pid}")


def _recover(out):
    """After a run that was killed (SIGKILL, a crash): the earlier demo it
    had set aside goes back to OUT, unless that run had completed (OUT has
    its report), whose earlier demo is then removed."""
    pattern = re.compile(re.escape(f".{out.name}.earlier-") + r"(\d+)")
    for aside in sorted(out.parent.glob(f".{out.name}.earlier-*")):
        m = pattern.fullmatch(aside.name)
        if not m or pid_alive(int(m.group(1))):
            continue
        if (out / MARKER).exists() and (out / "report.md").exists():
            remove(aside)
            continue
        if out.exists() and not (out / MARKER).exists() and \
                any(out.iterdir()):
            continue   # not a demo's: the user's, left alone
        remove(out)
        os.replace(aside, out)
        say(f"put back the earlier demo at {out} (a run there was killed)")


def _set_aside(out):
    """Moves an earlier demo at OUT aside (returned, to restore if this run
    fails); OUT with other content is refused."""
    _recover(out)
    if not out.exists():
        return None
    if not out.is_dir():
        raise JcdlError(out, "exists and is not a folder; choose another "
                        "--out")
    if not (out / MARKER).exists() and any(out.iterdir()):
        raise JcdlError(out, "exists and is not an earlier demo's "
                        "folder; choose another --out")
    old = _earlier(out, os.getpid())
    remove(old)
    os.replace(out, old)
    return old


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def say(text):
    print(f"[demo] {text}", file=sys.stderr, flush=True)


def run_demo(out, iterations=600, n_images=800, seed=0):
    """Runs everything into OUT; returns {variant: summary}. An earlier
    demo there is replaced when this one completes, and kept when it
    fails."""
    if iterations < 1:
        raise JcdlError("--iterations", f"must be at least 1, not "
                        f"{iterations}")
    if n_images < MIN_IMAGES:
        raise JcdlError("--images", f"must be at least {MIN_IMAGES} (two "
                        f"of each scene), not {n_images}")
    out = output_path(out)
    # SIGTERM and SIGHUP as Ctrl-C: the earlier demo is put back (while a
    # variant trains, its snapshot comes first); one ignored when jcdl
    # started (nohup) stays ignored
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _interrupt)
                for sig in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(sig) != signal.SIG_IGN} if main else {}
    try:
        with claim(out):   # a second demo into OUT is refused
            return _replace(out, iterations, n_images, seed)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _replace(out, iterations, n_images, seed):
    old = _set_aside(out)
    try:
        out.mkdir(parents=True)
        write_text(out / MARKER, "written by jcdl demo\n")
        results = _run(out, iterations, n_images, seed)
    except BaseException:
        remove(out)
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        remove(old)
    return results


def _run(out, iterations, n_images, seed):
    start = time.time()
    data = out / "data"
    say(f"synthetic dataset: {n_images} images, 8 emotions -> {data}")
    truth = make_dataset(data, n=n_images, seed=seed)
    lists = out / "lists"
    datasets.prepare("flickr_ldl", data, lists, test_ratio=0.2, seed=seed)
    say("convert -> LMDBs, mean")
    dbs = {}
    for part in ("train", "test"):
        dbs[part] = out / f"{part}_lmdb"
        lmdbio.convert(data, lists / f"{part}.txt", dbs[part], progress=False)
    mean = out / "mean.binaryproto"
    lmdbio.compute_mean(dbs["train"], mean, progress=False)
    classes = lists / "classes.txt"
    # the votes forgotten but for the dominant emotion, which the priors
    # make a distribution again (ties to the lowest index, as the loss)
    say(f"{PRIORS_VARIANT}: train.txt's dominant emotions -> the prior "
        f"'{priors.DEFAULT_PRIOR}' (sigma {priors.DEFAULT_SIGMA:g})")
    names, P, _ = read_distributions(lists / "train.txt")
    rule = priors.Prior(datasets.MIKELS_CLASSES)
    write_distributions(lists / "train_priors.txt", names,
                        rule.distributions(P.argmax(axis=1)))
    dbs["train_priors"] = out / "train_priors_lmdb"
    lmdbio.convert(data, lists / "train_priors.txt", dbs["train_priors"],
                   progress=False)

    results, logs = {}, {}
    runs = [(v, loss, dbs["train"]) for v, loss in VARIANTS.items()]
    runs.append((PRIORS_VARIANT, "jcdl", dbs["train_priors"]))
    for variant, loss, train_db in runs:
        folder = out / variant
        say(f"{variant}: netgen, train {iterations} iterations, evaluate")
        _, deploy, solver = netgen.write_nets(
            folder, "small", loss, 0.8, None, train_db, dbs["test"],
            mean=mean, batch=32, crop=32, mirror=True, base_lr=0.01,
            stepsize=max(1, iterations * 2 // 3), max_iter=iterations,
            weight_decay=0.0005, snapshot=0,
            test_interval=max(1, iterations // 6),
            display=20, mode="CPU", seed=seed)
        logs[variant] = folder / "train.log"
        weights = train.train(solver, log=logs[variant], echo=False,
                              interrupt_raises=True)
        model = predict.load_model(deploy, weights, mean, classes=classes)
        ev = evaluate.evaluate(model, db=dbs["test"])
        with output_folder(folder / "eval") as tmp:
            evaluate.write_evaluation(ev, tmp)
        results[variant] = ev.summary
    write_text(out / "metrics.json", metrics.to_json(results, indent=2)
               + "\n")
    plot.save_figure(plot.curves_figure(logs), out / "training_curves.png")
    ceiling = scene_ceiling(lists / "test.txt", truth)
    write_report(out, results, ceiling, iterations, n_images,
                 time.time() - start)
    return results


def scene_ceiling(test_list, truth):
    """The measures of predicting each test image's scene distribution
    itself: the best any model can expect against noisy votes."""
    names, P, _ = read_distributions(test_list)
    scenes = [int(Path(n).stem.split("_")[1]) % len(truth) for n in names]
    return metrics.summary(P, truth[scenes])


def write_report(out, results, ceiling, iterations, n_images, seconds):
    columns = ["kl", "chebyshev", "clark", "canberra", "cosine",
               "intersection", "accuracy"]
    rows = [dict({"variant": v}, **{c: r[c] for c in columns})
            for v, r in results.items()]
    rows.append(dict({"variant": "*scenes' true distributions*"},
                     **{c: ceiling[c] for c in columns}))
    arrows = {c: "↓" if metrics.LOWER_IS_BETTER[c] else "↑" for c in columns}
    table = metrics.markdown_table(
        [dict(r, **{f"{c} {arrows[c]}": r[c] for c in columns}) for r in rows],
        ["variant"] + [f"{c} {arrows[c]}" for c in columns])
    n_test = next(iter(results.values()))["n"]
    text = f"""# JCDL demo report

**The data are synthetic.** {n_images} images of eight simple scenes (four
background colours x two shapes); each scene has a fixed distribution over
Mikels' eight emotions and each image's ground truth is eleven simulated
annotators' votes drawn from it, as Flickr_LDL was made. Nothing here says
how JCDL does on real images; it shows the whole pipeline working and the
losses compared under the same seed and budget.

The same small CPU net (`jcdl netgen --arch small`) was trained {len(results)}
times for {iterations} iterations (batch 32, crop 32, mirror, base_lr 0.01,
seed fixed): `jcdl` is the joint loss (0.8 KL + 0.2 softmax on the dominant
emotion), `kl_only` the KL loss alone, `softmax_only` the dominant-emotion
softmax alone. `{PRIORS_VARIANT}` is the joint loss trained without the
votes: each training image keeps only its dominant emotion, which the
paper's two priors turn into a distribution (`{priors.DEFAULT_PRIOR}`:
a Gaussian of the distance on Mikels' wheel, sigma
{priors.DEFAULT_SIGMA:g}, and nothing on the other polarity; `jcdl prepare
fi` does the same for FI), as the single-label extension does; it is scored
against the real votes like the others, so its row shows how much of what
the votes know the priors recover. Measured on the {n_test} test images
(Geng's definitions; Clark and Canberra unnormalised; accuracy of the
dominant emotion):

{table}
The last row scores the scenes' true distributions themselves against the
votes: the ceiling for any model, since eleven votes are a noisy sample.

Total time: {seconds:.0f} s.

## Training curves
![training curves](training_curves.png)

## Predicted vs true distributions (test images)
""" + "".join(f"""
### {v}
![{v} distributions]({v}/eval/distributions.png)
![{v} confusion]({v}/eval/confusion.png)
""" for v in results) + """
Per-variant files: `<variant>/train_val.prototxt`, `deploy.prototxt`,
`solver.prototxt`, `train.log`, `snapshots/`, and `eval/` (predictions.txt,
metrics, per-class table, confusion matrix). `metrics.json` holds all
measures of the variants; `lists/train_priors.txt` the distributions
`{PRIORS_VARIANT}` was trained on.
""".replace("{PRIORS_VARIANT}", PRIORS_VARIANT)
    write_text(out / "report.md", text)


def cmd_demo(args):
    results = run_demo(args.out, iterations=args.iterations,
                       n_images=args.images, seed=args.seed)
    for variant, r in results.items():
        say(f"{variant:13s} kl {r['kl']:.4f}  cosine {r['cosine']:.4f}  "
            f"accuracy {r['accuracy']:.3f}")
    print(Path(args.out) / "report.md")


def register(sub):
    p = sub.add_parser(
        "demo", help="the whole method on a synthetic dataset (minutes, CPU)",
        description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--out", default="runs/demo",
                   help="output folder (default runs/demo; an earlier "
                        "demo's folder is replaced)")
    p.add_argument("--iterations", type=int_arg(1), default=600,
                   help="training iterations per variant (default 600)")
    p.add_argument("--images", type=int_arg(MIN_IMAGES, 10 ** 6),
                   default=800,
                   help="synthetic images (default 800)")
    p.add_argument("--seed", type=int_arg(0, 2 ** 31 - 1), default=0)
    p.set_defaults(func=cmd_demo)
