"""The ``name p_1 ... p_K`` files every stage reads and writes (lists,
ground truth, predictions) and the classes files beside them: one reader and
one writer of each.

A row is read as convert_imageset_r reads it: fields split at ASCII
whitespace, each value what C's ``strtod`` reads whole (finite, >= 0), rows
normalised to sum 1. Names are kept as written, bytes that are not UTF-8
as surrogates (``os.fsencode`` gives the bytes back)."""
import math
import os
import re
import sys

from pathlib import Path

import numpy as np

from .errors import JcdlError
from .files import atomic_output, read_text, text_bytes


# The finite numbers C's strtod reads whole (C locale, ASCII): decimal and
# hexadecimal floats. Every reader of distributions and votes accepts what
# convert_imageset_r accepts, and nothing else ("1_0", non-ASCII digits...).
_STRTOD = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
    r"|0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?)",
    re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)


def parse_number(tok):
    """The finite value strtod reads from the whole token, or None where
    convert_imageset_r refuses it (not a number, trailing characters, inf,
    nan, overflow, or underflow of a non-zero value: ERANGE)."""
    if not _STRTOD.fullmatch(tok):
        return None
    body = tok.lstrip("+-")
    if body[:2].lower() == "0x":
        v = float.fromhex(tok)
        digits = re.split(r"[pP]", body[2:])[0].strip("0.")
    else:
        v = float(tok)
        digits = re.split(r"[eE]", body)[0].strip("0.")
    if not math.isfinite(v) or (digits and abs(v) < sys.float_info.min):
        return None
    return v


def parse_values(tokens, path, line, *, integer=False):
    """Numbers of one row: finite, >= 0 (integers where ``integer``)."""
    values = []
    for tok in tokens:
        if integer:
            v = int(tok) if _INTEGER.fullmatch(tok) else None
        else:
            v = parse_number(tok)
        if v is None:
            kind = "an integer" if integer else "a finite number"
            raise JcdlError(path, f"'{tok}' is not {kind}", line)
        if v < 0:
            raise JcdlError(path, f"negative value {tok}", line)
        values.append(v)
    return values


def to_distribution(values, path, line):
    """Row normalised to sum 1; an all-zero row, or one whose sum overflows,
    is an error."""
    total = float(sum(values))
    if not math.isfinite(total):
        raise JcdlError(path, "values too large", line)
    if not total > 0:
        raise JcdlError(path, "all values are zero", line)
    return [v / total for v in values]


BOM = b"\xef\xbb\xbf"   # U+FEFF in UTF-8: dropped at the file's start only
BOM_IN_LINE = ("a byte-order mark (U+FEFF) in the line, as where files saved "
               "with one were joined: remove it")   # convert_imageset_r too


def read_distributions(path, what="list file", root=None):
    """Reads ``name p_1 ... p_K`` lines (blank lines skipped) as
    convert_imageset_r does, with its messages. Returns (names, P, line
    numbers): P float64 (n, K), rows normalised to 1; no name twice (the
    name is what matches predictions to ground truth). With ``root``, each
    name must also be an image file under it. Reads pipes too
    (/dev/stdin)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        raise JcdlError(path, f"cannot open the {what}") from None
    pieces = text_bytes(data, path, what).split(b"\n")
    names, rows, lines, K = [], [], [], 0
    first_line = {}   # of each name (convert_imageset_r says the same)
    for line_no, text in enumerate(pieces, 1):
        tokens = text.split()            # C isspace, as the C++ tool splits
        if not tokens:
            continue
        if BOM in text:
            raise JcdlError(path, BOM_IN_LINE, line_no)
        name = os.fsdecode(tokens[0])
        fields = [t.decode("utf-8", "surrogateescape") for t in tokens[1:]]
        if len(fields) > 1 and parse_number(fields[0]) is None:
            raise JcdlError(path, f"'{fields[0]}' is not a finite number "
                            f"(the first field, '{name}', is the name: "
                            "names cannot contain spaces)", line_no)
        values = parse_values(fields, path, line_no)
        if not values:
            raise JcdlError(path, "no distribution after the path (expected "
                            "'path p_1 ... p_K')", line_no)
        K = K or len(values)
        if len(values) < K and line_no == len(pieces):
            raise JcdlError(path, f"truncated line: {len(values)} of {K} "
                            "values; is the file cut short?", line_no)
        if len(values) != K:
            raise JcdlError(path, f"{len(values)} values, but the first "
                            f"line has {K}", line_no)
        if root is not None and not os.path.isfile(image_path(root, name)):
            raise JcdlError(path, "image not found: " +
                            image_path(root, name), line_no)
        rows.append(to_distribution(values, path, line_no))
        first = first_line.setdefault(name, line_no)
        if first != line_no:
            raise JcdlError(path, f"'{name}' is listed twice (lines {first} "
                            f"and {line_no}): each image once (the name "
                            "matches predictions to ground truth)", line_no)
        names.append(name)
        lines.append(line_no)
    if not names:
        raise JcdlError(path, f"the {what} is empty")
    return names, np.asarray(rows, dtype=np.float64), lines


def image_path(root, name):
    """root + name, with a '/' between them unless root already ends in one
    (the C++ tool concatenates: pass ROOT/ to get the same messages)."""
    root = os.fspath(root)
    if root and not root.endswith("/"):
        root += "/"
    return root + name


def format_row(name, dist):
    """One ``name p_1 ... p_K`` line; 9 significant digits round-trip a
    float32."""
    return name + " " + " ".join(f"{float(v):.9g}" for v in dist) + "\n"


def write_distributions(path, names, P):
    """Writes ``name p_1 ... p_K`` lines atomically (names as read: bytes
    that were not UTF-8 are written back as they were)."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8",
                                          errors="surrogateescape") as f:
        for name, dist in zip(names, P):
            f.write(format_row(name, dist))


def default_classes(K):
    """class0 ... class{K-1}: the names when no classes file is given."""
    return [f"class{k}" for k in range(K)]


def read_classes(path, K=None):
    """The emotion names of a classes file (``classes.txt`` of ``jcdl
    prepare``): one word per line, no name twice, and K of them when K is
    given."""
    names = [t.strip() for t in
             read_text(path, "classes file", True).splitlines() if t.strip()]
    if K is not None and len(names) != K:
        raise JcdlError(path, f"{len(names)} class names (one per line), but "
                        f"the distributions have {K} values (emotions)")
    if not names:
        raise JcdlError(path, "the classes file is empty")
    for i, name in enumerate(names):
        if len(name.split()) != 1:
            raise JcdlError(path, f"'{name}': a class name is one word")
        if name in names[:i]:
            raise JcdlError(path, f"class '{name}' is named twice: each "
                            "emotion once")
    return names


class GroundTruth:
    """What a dataset reader returns: image names as written in the ground
    truth, distributions (n x K, rows sum 1), where each came from (line
    numbers, or None), the class names, and the dataset's own splits (list of
    (train indices, test indices)) if it has any."""

    def __init__(self, path, names, P, lines, classes, splits=None,
                 prior=None):
        self.path, self.names, self.P = Path(path), list(names), P
        self.lines, self.classes, self.splits = list(lines), classes, splits
        self.prior = prior   # a priors.Prior for single-label data


def columns_error(path, line, n, want, what, has_newline):
    """A row of n columns where want were expected: a truncated last line
    (no newline) is named as such."""
    if n < want and not has_newline:
        raise JcdlError(path, f"truncated line: {n} of {want} columns ({what}); "
                        "is the file cut short?", line)
    raise JcdlError(path, f"{n} columns, expected {want} ({what})", line)
