"""The six label-distribution measures (Geng's definitions), dominant-emotion
accuracy, per-class tables, and ``jcdl score``.

All measures are means over samples of per-sample values, in float64, with
0/0 and 0*log 0 terms counted as 0:

  chebyshev     max_k |p_k - q_k|                        lower is better
  clark         sqrt(sum_k (p_k - q_k)^2 / (p_k + q_k)^2) lower is better
  canberra      sum_k |p_k - q_k| / (p_k + q_k)           lower is better
  kl            sum_k p_k ln(p_k / q_k)                   lower is better
  cosine        p.q / (|p| |q|)                           higher is better
  intersection  sum_k min(p_k, q_k)                       higher is better
  accuracy      argmax p == argmax q (ties: lowest index) higher is better

Clark and Canberra are unnormalised (Clark <= sqrt(K), Canberra <= K).
Later papers (StyleEDL and those that copy its code) report them divided
inside the sum by K: ``clark_over_sqrt_k`` = sqrt(sum_k ... / K) = Clark /
sqrt(K) and ``canberra_over_k`` = Canberra / K, both at most 1.

KL is infinite where q_k = 0 < p_k (a float32 softmax that underflowed). The
JSON then holds ``"kl": null`` (JSON has no infinity) and ``kl_infinite``
counts those samples; it is 0 otherwise.
"""
import csv
import io
import json
from pathlib import Path

import numpy as np

from .errors import JcdlError
from .files import write_text
from .lists import default_classes, read_classes, read_distributions

MEASURES = ("chebyshev", "clark", "canberra", "kl", "cosine", "intersection")
LOWER_IS_BETTER = {"chebyshev": True, "clark": True, "canberra": True,
                   "kl": True, "cosine": False, "intersection": False,
                   "accuracy": False}


# Published numbers for orientation (ORIGINAL.md): StyleEDL (Jing et al.,
# ACM MM 2023), whose metric code divides the sum under Clark's root by K and
# Canberra by K: compare them with clark_over_sqrt_k and canberra_over_k.
PUBLISHED = {
    "flickr_ldl": {"kl": 0.39, "chebyshev": 0.21, "clark_over_sqrt_k": 0.76,
                   "canberra_over_k": 0.66, "cosine": 0.88,
                   "intersection": 0.71},
    "twitter_ldl": {"kl": 0.42, "chebyshev": 0.22, "clark_over_sqrt_k": 0.84,
                    "canberra_over_k": 0.77, "cosine": 0.89,
                    "intersection": 0.73},
    "emotion6": {"kl": 0.36, "chebyshev": 0.22, "clark_over_sqrt_k": 0.59,
                 "canberra_over_k": 0.47, "cosine": 0.84,
                 "intersection": 0.70},
}
PUBLISHED_BY = ("StyleEDL (Jing et al., 2023; Clark and Canberra divided by "
                "K inside the sums: Clark/√K and Canberra/K)")
# every measure in both forms, with the form each is in
FORMS = (("kl", "KL ↓"), ("chebyshev", "Chebyshev ↓"),
         ("clark", "Clark ↓ (Geng's, unnormalised)"),
         ("clark_over_sqrt_k", "Clark/√K ↓ (StyleEDL's form)"),
         ("canberra", "Canberra ↓ (Geng's, unnormalised)"),
         ("canberra_over_k", "Canberra/K ↓ (StyleEDL's form)"),
         ("cosine", "Cosine ↑"), ("intersection", "Intersection ↑"),
         ("accuracy", "Accuracy ↑ (dominant emotion)"))


PUBLISHED_K = {"flickr_ldl": 8, "twitter_ldl": 8, "emotion6": 7}


def published_rows(result, dataset=None):
    """Rows {measure, ours, published} of a summary in both forms, beside
    the numbers published for ``dataset`` ("—" where there are none)."""
    if dataset is not None and dataset not in PUBLISHED:
        raise ValueError(f"no published numbers for '{dataset}': "
                         + ", ".join(PUBLISHED))
    if dataset is not None and result.get("k") != PUBLISHED_K[dataset]:
        raise ValueError(f"{dataset} has {PUBLISHED_K[dataset]} emotions, "
                         f"but these results {result.get('k')}")
    published = PUBLISHED.get(dataset, {})
    return [{"measure": label, "ours": result[key],
             "published": published.get(key, "—")} for key, label in FORMS]


def _ratio(num, den):
    """num / den elementwise, 0 where den == 0."""
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def per_sample(P, Q):
    """Each measure for each sample: dict of (n,) float64 arrays."""
    P = np.asarray(P, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    if P.shape != Q.shape or P.ndim != 2 or not P.size:
        raise ValueError(f"P and Q must have the same (n, K) shape, n and "
                         f"K at least 1, not {P.shape} and {Q.shape}")
    for name, X in (("P", P), ("Q", Q)):
        if not (np.all(np.isfinite(X)) and np.all(X >= 0)):
            raise ValueError(f"{name} holds values that are negative or not "
                             "finite: the measures compare distributions")
        worst = np.abs(X.sum(axis=1) - 1).max()
        if worst > 1e-3:
            raise ValueError(f"a row of {name} sums to {1 + worst:g} or "
                             f"{1 - worst:g}, not 1: divide each row by its "
                             "sum first (jcdl score does)")
    diff = np.abs(P - Q)
    total = P + Q
    support = P > 0  # 0 * log 0 = 0: only these terms count
    with np.errstate(divide="ignore"):  # q = 0 < p gives +inf, honestly
        kl_terms = P * (np.log(np.where(support, P, 1.0))
                        - np.log(np.where(support, Q, 1.0)))
    norms = np.linalg.norm(P, axis=1) * np.linalg.norm(Q, axis=1)
    return {
        "chebyshev": diff.max(axis=1),
        # the ratio first, then squared: (p - q)^2 and (p + q)^2 underflow
        # to 0 below 1e-154 where their ratio does not
        "clark": np.sqrt((_ratio(diff, total) ** 2).sum(axis=1)),
        "canberra": _ratio(diff, total).sum(axis=1),
        "kl": kl_terms.sum(axis=1),
        "cosine": _ratio((P * Q).sum(axis=1), norms),
        "intersection": np.minimum(P, Q).sum(axis=1),
        "accuracy": (P.argmax(axis=1) == Q.argmax(axis=1)).astype(np.float64),
    }


def summary(P, Q):
    """Means over samples: the JSON object of ``evaluate`` and ``score``."""
    values = per_sample(P, Q)
    K = np.asarray(P).shape[1]
    out = {name: float(values[name].mean()) for name in MEASURES}
    out["accuracy"] = float(values["accuracy"].mean())
    out["clark_over_sqrt_k"] = out["clark"] / np.sqrt(K)
    out["canberra_over_k"] = out["canberra"] / K
    out["kl_infinite"] = int(np.isinf(values["kl"]).sum())
    out["n"] = int(len(P))
    out["k"] = int(K)
    return out


def _finite_or_null(value):
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    return None if isinstance(value, float) and not np.isfinite(value) \
        else value


def to_json(result, indent=None):
    """A summary (or a dict of summaries) as strict JSON: a non-finite value
    (an infinite KL) becomes null."""
    return json.dumps(_finite_or_null(result), allow_nan=False,
                      indent=indent)


def confusion(P, Q):
    """(K, K) counts: row = dominant true emotion, column = predicted."""
    K = np.asarray(P).shape[1]
    m = np.zeros((K, K), dtype=np.int64)
    np.add.at(m, (np.argmax(P, axis=1), np.argmax(Q, axis=1)), 1)
    return m


def per_class(P, Q, class_names):
    """One row per emotion: support (samples whose dominant emotion it is),
    precision and recall of the dominant emotion, mean true and predicted
    probability, and their mean absolute difference."""
    P, Q = np.asarray(P, np.float64), np.asarray(Q, np.float64)
    m = confusion(P, Q)
    rows = []
    for k, name in enumerate(class_names):
        support, predicted = int(m[k].sum()), int(m[:, k].sum())
        rows.append({
            "class": name,
            "support": support,
            "recall": float(m[k, k] / support) if support else 0.0,
            "precision": float(m[k, k] / predicted) if predicted else 0.0,
            "mean_true": float(P[:, k].mean()),
            "mean_pred": float(Q[:, k].mean()),
            "mae": float(np.abs(P[:, k] - Q[:, k]).mean()),
        })
    return rows


def markdown_table(rows, columns):
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows, columns):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: r[c] for c in columns} for r in rows)
    return buf.getvalue()


REPORT_FILES = ("metrics.json", "metrics.csv", "metrics.md", "per_class.csv",
                "per_class.md", "confusion.csv")   # what write_reports writes


def write_reports(out_dir, P, Q, class_names):
    """metrics.json/.csv/.md, per_class.csv/.md and confusion.csv in out_dir;
    returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = summary(P, Q)
    columns = list(result)
    write_text(out_dir / "metrics.json",
               to_json(result, indent=2) + "\n")
    write_text(out_dir / "metrics.csv", csv_text([result], columns))
    write_text(out_dir / "metrics.md", markdown_table([result], columns)
               + "\nClark and Canberra are unnormalised (Geng); "
                 "clark_over_sqrt_k and canberra_over_k are them divided by "
                 "sqrt(K) and K, as StyleEDL and later papers report them.\n")
    rows = per_class(P, Q, class_names)
    pc_columns = list(rows[0])
    write_text(out_dir / "per_class.csv", csv_text(rows, pc_columns))
    write_text(out_dir / "per_class.md", markdown_table(rows, pc_columns))
    m = confusion(P, Q)
    conf_rows = [dict({"true\\pred": n}, **{c: int(v) for c, v in
                      zip(class_names, m[i])})
                 for i, n in enumerate(class_names)]
    write_text(out_dir / "confusion.csv",
               csv_text(conf_rows, ["true\\pred"] + list(class_names)))
    return result


def match_by_name(gt_path, pred_path):
    """Reads both files and returns (names, P, Q) in the ground truth's
    order; every name must be in both files (once: read_distributions),
    with the same K."""
    gt_names, P, _ = read_distributions(gt_path, what="ground-truth file")
    pred_names, Q, _ = read_distributions(pred_path, what="prediction file")
    if P.shape[1] != Q.shape[1]:
        raise JcdlError(pred_path, f"{Q.shape[1]} values per line, but "
                        f"{gt_path} has {P.shape[1]}")
    index = {n: i for i, n in enumerate(pred_names)}
    missing = [n for n in gt_names if n not in index]
    if missing:
        raise JcdlError(pred_path, f"no prediction for {len(missing)} "
                        f"name(s) of {gt_path}, e.g. '{missing[0]}'")
    extra = set(pred_names) - set(gt_names)
    if extra:
        raise JcdlError(gt_path, f"no ground truth for {len(extra)} name(s) "
                        f"of {pred_path}, e.g. '{sorted(extra)[0]}'")
    return gt_names, P, Q[[index[n] for n in gt_names]]


def cmd_score(args):
    if args.out:
        from .files import check_output_dir  # noqa: PLC0415
        check_output_dir(args.out, REPORT_FILES, args.gt, args.pred,
                         args.classes)
    _, P, Q = match_by_name(args.gt, args.pred)
    names = (read_classes(args.classes, P.shape[1]) if args.classes
             else default_classes(P.shape[1]))
    if args.out:
        from .files import output_folder  # noqa: PLC0415
        with output_folder(args.out) as tmp:   # all the reports, or none
            result = write_reports(tmp, P, Q, names)
    else:
        result = summary(P, Q)
    print(to_json(result))


def register(sub):
    p = sub.add_parser(
        "score", help="measures of a prediction file against ground truth",
        description="Compares two files of 'name p_1 ... p_K' lines, matched "
                    "by name, and prints one JSON object: " +
                    ", ".join(MEASURES) + ", accuracy (dominant emotion), "
                    "clark_over_sqrt_k, canberra_over_k, kl_infinite, n, k. "
                    "Each row of both files is divided by its sum first, so "
                    "counts or unnormalised scores are scored as "
                    "distributions.")
    p.add_argument("gt", help="ground truth: name p_1 ... p_K per line")
    p.add_argument("pred", help="predictions: name q_1 ... q_K per line")
    p.add_argument("--classes", help="emotion names, one per line")
    p.add_argument("--out", help="also write metrics.{json,csv,md}, "
                                 "per_class.{csv,md}, confusion.csv here")
    p.set_defaults(func=cmd_score)
