"""Plots: training curves parsed from Caffe-format logs (``jcdl plot``), the
confusion matrix and predicted-vs-true distributions (used by ``evaluate``),
and several runs overlaid (used by the demo). Each ``*_figure`` function
returns a matplotlib Figure (to show in a notebook); ``save_figure`` writes
one as a PNG.

Logs are read in the formats the stock ``caffe train`` writes through glog,
which ``jcdl train`` writes too::

  ... solver.cpp:239] Iteration 20 (2.1 iter/s, 9.5s/20 iters), loss = 1.2345
  ... solver.cpp:239] Iteration 20, loss = 1.2345           (older Caffe)
  ... solver.cpp:258]     Train net output #0: loss_kl = 0.123 (* 0.8 = ...)
  ... sgd_solver.cpp:112] Iteration 20, lr = 0.0001
  ... solver.cpp:347] Iteration 100, Testing net (#0)
  ... solver.cpp:414]     Test net output #0: accuracy = 0.5

``parse_log`` turns them into series named ``loss`` (the smoothed loss of
the display lines), ``train/<output>``, ``test/<output>`` (``test<N>/`` for
test net #N > 0) and ``lr``; each is a pair of arrays (iterations, values).
"""
import csv
import re
import sys
from pathlib import Path

import numpy as np

from .errors import JcdlError
from .files import atomic_output, output_folder

_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
_LR = re.compile(r"Iteration (\d+), lr = (\S+)")
_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
_OUTPUT = re.compile(r"(Train|Test) net output #\d+: (\S+) = (\S+)")

# test outputs shown first when several runs are compared
_PREFERRED = ("accuracy", "kl", "cosine", "intersection", "chebyshev",
              "clark", "canberra")


def _pyplot():
    import matplotlib  # noqa: PLC0415  (slow: only where plots are made)
    if "matplotlib.pyplot" not in sys.modules:  # a notebook chose its own
        matplotlib.use("Agg")
    # labels are names (emotions, blobs, files): a '$' in one is text, not
    # the start of a formula matplotlib would fail to parse
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


def _number(text):
    try:
        return float(text.rstrip(","))
    except ValueError:
        return None


def parse_log(path):
    """Series of a Caffe-format training log: {name: (iterations, values)}
    with int64 and float64 arrays, in log order. A log without any
    ``Iteration N, loss = ...`` line is an error."""
    path = Path(path)
    if not path.is_file():
        raise JcdlError(path, "no such log file")
    series = {}

    def add(name, iteration, value):
        if value is not None:
            its, vals = series.setdefault(name, ([], []))
            its.append(iteration)
            vals.append(value)

    train_iter = test_iter = None
    test_prefix = "test"
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "Iteration" in line:
                m = _LOSS.search(line)
                if m:
                    train_iter = int(m.group(1))
                    add("loss", train_iter, _number(m.group(2)))
                    continue
                m = _LR.search(line)
                if m:
                    add("lr", int(m.group(1)), _number(m.group(2)))
                    continue
                m = _TESTING.search(line)
                if m:
                    test_iter = int(m.group(1))
                    net = int(m.group(2))
                    test_prefix = "test" if net == 0 else f"test{net}"
                    continue
            if "net output #" in line:
                m = _OUTPUT.search(line)
                if not m:
                    continue
                if m.group(1) == "Train" and train_iter is not None:
                    add(f"train/{m.group(2)}", train_iter,
                        _number(m.group(3)))
                elif m.group(1) == "Test" and test_iter is not None:
                    add(f"{test_prefix}/{m.group(2)}", test_iter,
                        _number(m.group(3)))
    if "loss" not in series:
        raise JcdlError(path, "no training iterations found ('Iteration N, "
                        "loss = ...' lines): not a Caffe training log?")
    return {name: (np.asarray(its, np.int64), np.asarray(vals, np.float64))
            for name, (its, vals) in series.items()}


def write_series_csv(series, path):
    """The parsed series as CSV rows ``series,iteration,value``."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["series", "iteration", "value"])
        for name, (its, vals) in series.items():
            for i, v in zip(its, vals):
                writer.writerow([name, int(i), repr(float(v))])


def save_figure(fig, path):
    """Writes a figure atomically, as a PNG (or the format the name's
    suffix says: .pdf, .svg ...), and closes it."""
    plt = _pyplot()
    suffix = Path(path).suffix.lower().lstrip(".")
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=suffix or "png", dpi=100)
    plt.close(fig)
    return Path(path)


def _grid(plt, n, width=5.0, height=3.2):
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def loss_figure(series, title="training"):
    """The training loss and the train-net outputs of parsed series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    its, vals = series["loss"]
    ax.plot(its, vals, label="loss (smoothed, weighted sum)", linewidth=2)
    for name in sorted(n for n in series if n.startswith("train/")):
        ax.plot(*series[name], label=name, alpha=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(f"training loss: {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def test_figure(series, title="training"):
    """Each test-net output of parsed series, or None when there is none."""
    tests = [n for n in series if n.startswith("test")]
    if not tests:
        return None
    plt = _pyplot()
    fig, axes = _grid(plt, len(tests))
    for ax, name in zip(axes, tests):
        ax.plot(*series[name], marker="o", markersize=3)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle(f"test outputs: {title}")
    fig.tight_layout()
    return fig


def lr_figure(series, title="training"):
    """The learning rate of parsed series, or None when the log has none."""
    if "lr" not in series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(*series["lr"])
    if np.all(series["lr"][1] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    ax.set_title(f"learning rate: {title}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_log(log_path, out_dir):
    """PNGs of one training log in out_dir: ``loss.png`` (training loss and
    train-net outputs), ``test.png`` (each test output), ``lr.png``; plus
    ``series.csv``. Returns the PNG paths."""
    series = parse_log(log_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = Path(log_path).name
    pngs = []
    for name, make in (("loss", loss_figure), ("test", test_figure),
                       ("lr", lr_figure)):
        fig = make(series, title)
        if fig is not None:
            pngs.append(save_figure(fig, out_dir / f"{name}.png"))
    write_series_csv(series, out_dir / "series.csv")
    return pngs


def curves_figure(logs):
    """Several runs overlaid ({label: log path}, or a list of logs, each
    labelled by its folder): their training loss and
    each test output (accuracy, kl, ... first)."""
    if not isinstance(logs, dict):   # a list of logs: label by folder
        logs = {Path(log).parent.name or str(log): log for log in logs}
    parsed = {label: parse_log(log) for label, log in logs.items()}
    names = {n for s in parsed.values() for n in s if n.startswith("test/")}
    order = {f"test/{n}": i for i, n in enumerate(_PREFERRED)}
    tests = sorted(names, key=lambda n: (order.get(n, len(order)), n))[:5]
    plt = _pyplot()
    fig, axes = _grid(plt, 1 + len(tests))
    for ax, name in zip(axes, ["loss"] + tests):
        for label, series in parsed.items():
            if name in series:
                ax.plot(*series[name], label=label,
                        marker="o" if name != "loss" else None, markersize=3)
        ax.set_title("training loss" if name == "loss" else name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_figure(matrix, class_names):
    """The confusion matrix of dominant emotions (rows true, columns
    predicted): counts, coloured by the share of their row. Past 30
    classes the counts are left out of the cells."""
    m = np.asarray(matrix)
    K = len(class_names)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    plt = _pyplot()
    size = min(2.5 + 0.6 * K, 30)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if K <= 30:
        for i in range(K):
            for j in range(K):
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center",
                        color="white" if share[i, j] > 0.5 else "black",
                        fontsize=9)
        ax.set_xticks(range(K), class_names, rotation=45, ha="right")
        ax.set_yticks(range(K), class_names)
    ax.set_xlabel("predicted dominant emotion")
    ax.set_ylabel("true dominant emotion")
    ax.set_title("confusion (counts; colour: share of row)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def distributions_figure(names, P, Q, class_names, n=6, images=None):
    """Bar charts of true (P) and predicted (Q) distributions of the first n
    samples, with each image (BGR arrays, optional) beside its chart."""
    n = min(n, len(P))
    if n == 0:
        raise ValueError("no samples to plot")
    K = len(class_names)
    with_images = images is not None and len(images) >= n
    plt = _pyplot()
    cols = 2 if with_images else 1
    many = K > 30      # then lines over the class index: bounded size, time
    fig, axes = plt.subplots(n, cols, figsize=(3 + 0.7 * min(K, 30)
                                               + 2.5 * (cols - 1),
                                               2.4 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.5]}
                             if with_images else None)
    x = np.arange(K)
    for i in range(n):
        if with_images:
            img = np.asarray(images[i])
            ax = axes[i][0]
            if img.ndim == 3 and img.shape[2] == 3:
                ax.imshow(img[:, :, ::-1])
            else:
                ax.imshow(img.reshape(img.shape[0], img.shape[1]),
                          cmap="gray")
            ax.axis("off")
        ax = axes[i][-1]
        if many:
            ax.plot(x, P[i], drawstyle="steps-mid", label="true")
            ax.plot(x, Q[i], drawstyle="steps-mid", label="predicted")
            ax.set_xlabel(f"class index (of {K})", fontsize=8)
        else:
            ax.bar(x - 0.2, P[i], width=0.4, label="true")
            ax.bar(x + 0.2, Q[i], width=0.4, label="predicted")
            ax.set_xticks(x, class_names, rotation=30, ha="right",
                          fontsize=8)
        ax.set_ylim(0, 1)
        name = str(names[i]).encode("utf-8", "surrogateescape").decode(
            "utf-8", "replace")          # a name that is not UTF-8: shown
        ax.set_title(name if len(name) <= 50 else "..." + name[-47:],
                     fontsize=9)
        if i == 0:
            ax.legend(fontsize=8)
    fig.suptitle("predicted vs true emotion distributions")
    fig.tight_layout()
    return fig


def histogram_figure(values, label="KL(p || q) per image", bins=30):
    """A histogram of per-sample values; values that are not finite (an
    infinite KL) cannot be drawn and are counted in the title, with the
    mean over all (infinite when one is)."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(finite, bins=bins)
    ax.set_xlabel(label)
    ax.set_ylabel("images")
    title = f"{label}: mean {values.mean():.4f}" if len(values) and \
        not np.isnan(values).any() else label
    if len(finite) < len(values):
        title += f" ({len(values) - len(finite)} not finite, not drawn)"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def cmd_plot(args):
    parse_log(args.log)  # a bad log fails before anything is written
    out = Path(args.out)
    from .files import check_output_dir  # noqa: PLC0415
    check_output_dir(out, ("loss.png", "test.png", "lr.png", "series.csv"),
                     args.log)
    with output_folder(out) as tmp:
        pngs = [out / p.name for p in plot_log(args.log, tmp)]
    for p in pngs + [out / "series.csv"]:
        print(p)


def register(sub):
    p = sub.add_parser(
        "plot", help="training curves of a Caffe-format log as PNG",
        description="Parses a training log of 'caffe train' or 'jcdl train' "
                    "and writes loss.png (training loss, train-net outputs), "
                    "test.png (test-net outputs), lr.png (learning rate) "
                    "and series.csv (series,iteration,value) to --out.")
    p.add_argument("log", help="the training log (glog text)")
    p.add_argument("--out", required=True, help="folder for the PNGs and CSV")
    p.set_defaults(func=cmd_plot)
