"""The MATLAB ``*_config.mat`` files Flickr_LDL and Twitter_LDL are released
with (v7.3, which is HDF5, or the older v5/v7 format): ``imgname`` (image
names), ``vote`` (8 x N integer votes) and, when present, split indices
(see jcdl.datasets)."""
import numpy as np

from .errors import JcdlError
from .lists import GroundTruth

# Flickr_LDL's and Twitter_LDL's columns, in Mikels' order (as released)
MIKELS_CLASSES = ("amusement", "awe", "contentment", "excitement", "anger",
                  "disgust", "fear", "sadness")


def _mat_string(f, obj):
    """A MATLAB char array (uint16 codes, any orientation) as a str."""
    if obj.attrs.get("MATLAB_empty", 0):
        return ""
    a = np.asarray(obj[()])
    if a.dtype.kind in "SUO":
        v = a.ravel()[0] if a.size else b""
        return v.decode() if isinstance(v, bytes) else str(v)
    return "".join(map(chr, a.ravel(order="F").astype(np.int64))).rstrip(
        "\0 ")


def _mat_strings(f, ds, n, path):
    """imgname: a cell array (object references to char arrays), a char
    matrix with one name per row (MATLAB), or HDF5 strings."""
    a = ds[()]
    if a.dtype.kind == "O" and a.size and not isinstance(
            a.ravel()[0], (bytes, str)):
        return [_mat_string(f, f[ref]) for ref in a.ravel(order="F")]
    if a.dtype.kind in "SUO":
        return [v.decode() if isinstance(v, bytes) else str(v)
                for v in a.ravel()]
    if a.ndim == 2 and a.dtype.kind in "ui":
        cols = a if a.shape[1] == n else a.T     # h5py: (chars, names)
        return ["".join(map(chr, cols[:, j])).rstrip("\0 ")
                for j in range(cols.shape[1])]
    raise JcdlError(path, f"cannot read 'imgname' (shape {a.shape}, "
                    f"type {a.dtype})")


def _numeric(a):
    return np.asarray(a).dtype.kind in "biuf"


def _h5_vectors(f, ds):
    """Index vectors of an HDF5 variable: a cell array of vectors, one
    vector, or a matrix whose MATLAB columns (h5py rows) are vectors. None
    for what holds no numbers (a struct, a string, a cell of strings)."""
    import h5py  # noqa: PLC0415
    if not isinstance(ds, h5py.Dataset) or \
            ds.attrs.get("MATLAB_class") in (b"char", b"struct"):
        return None
    if ds.attrs.get("MATLAB_empty", 0):
        return [np.zeros(0)]                     # [] in MATLAB
    a = ds[()]
    if a.dtype.kind == "O":
        vectors = [np.asarray(f[ref][()]).ravel() for ref in a.ravel()]
        return vectors if all(_numeric(v) for v in vectors) else None
    if not _numeric(a):
        return None
    a = np.asarray(a)
    return [a.ravel()] if a.ndim <= 1 or min(a.shape) <= 1 else list(a)


def _v5_vectors(a):
    """The same for a variable of scipy.io.loadmat (MATLAB's own shape)."""
    if hasattr(a, "toarray"):                    # a sparse matrix
        a = a.toarray()
    if a.dtype.kind == "O":
        vectors = [np.asarray(x).ravel() for x in a.ravel(order="F")]
        return vectors if all(_numeric(v) for v in vectors) else None
    if not _numeric(a):
        return None
    return [a.ravel()] if a.ndim <= 1 or min(a.shape) <= 1 else list(a.T)


def _v5_strings(a, path):
    """imgname of scipy.io.loadmat: a cell array of char arrays, or a char
    matrix with one name per row."""
    if a.dtype.kind == "O":
        return [str(np.asarray(x).ravel()[0]).strip() if np.size(x) else ""
                for x in a.ravel(order="F")]
    if a.dtype.kind == "U":
        return [str(v).rstrip() for v in a.ravel()]
    raise JcdlError(path, f"cannot read 'imgname' (shape {a.shape}, "
                    f"type {a.dtype})")


def _index_sets(vectors, n, path, name):
    """Index vectors (1-based, or logical masks) -> list of 0-based int
    arrays."""
    out = []
    for v in vectors:
        v = v.astype(np.float64)
        if not v.size:
            raise JcdlError(path, f"'{name}' is empty")
        if v.size == n and set(np.unique(v)) <= {0.0, 1.0} and (v == 0).any():
            out.append(np.flatnonzero(v))        # logical mask
            continue
        if not (np.all(v == np.round(v)) and v.size
                and v.min() >= 1 and v.max() <= n):
            raise JcdlError(path, f"'{name}' holds values that are not "
                            f"1-based indices of the {n} images")
        out.append(v.astype(np.int64) - 1)
    return out


def _orient_votes(a, K, path):
    """'vote' as N x K float64 (MATLAB's K x N, or N x K)."""
    try:
        votes = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise JcdlError(path, "'vote' is not a numeric matrix") from None
    if votes.ndim != 2 or K not in votes.shape:
        raise JcdlError(path, f"'vote' is {votes.shape}, expected {K} x N")
    return votes if votes.shape[1] == K else votes.T


def _is_split(key):
    return "train" in key.lower() or "test" in key.lower()


def _read_mat_v73(path, K):
    """(votes N x K, names, {split variable: index vectors}) of a MATLAB
    v7.3 (HDF5) file."""
    import h5py  # noqa: PLC0415
    with h5py.File(path, "r") as f:
        keys = [k for k in f.keys() if not k.startswith("#")]
        _require(keys, path)
        for k in ("vote", "imgname"):
            if not isinstance(f[k], h5py.Dataset):
                raise JcdlError(path, f"'{k}' is a struct, not a matrix")
        votes = _orient_votes(f["vote"][()], K, path)
        names = _mat_strings(f, f["imgname"], len(votes), path)
        sets = {k: _h5_vectors(f, f[k]) for k in keys if _is_split(k)}
    return votes, names, _only_indices(sets)


def _read_mat_v5(path, K):
    """The same for a MATLAB v5/v7 file (scipy.io.loadmat)."""
    from scipy.io import loadmat  # noqa: PLC0415
    try:
        m = loadmat(path)
    except Exception:  # scipy raises several kinds for a file it cannot read
        raise JcdlError(path, "cannot read as a MATLAB file (v5, v7 or "
                        "v7.3); use a votes text file") from None
    keys = [k for k in m if not k.startswith("__")]
    _require(keys, path)
    votes = _orient_votes(m["vote"], K, path)
    names = _v5_strings(m["imgname"], path)
    sets = {k: _v5_vectors(m[k]) for k in keys if _is_split(k)}
    return votes, names, _only_indices(sets)


def _only_indices(sets):
    """The split variables that hold numbers (not names or notes)."""
    return {k: v for k, v in sets.items() if v is not None}


def _require(keys, path):
    for need in ("imgname", "vote"):
        if need not in keys:
            raise JcdlError(path, f"no '{need}' in the file (it holds: "
                            f"{', '.join(keys)})")


def read_config_mat(path, classes=MIKELS_CLASSES):
    """A MATLAB ``*_config.mat`` (v7.3 HDF5, or v5/v7): imgname, vote,
    split indices."""
    import h5py  # noqa: PLC0415
    K = len(classes)
    reader = _read_mat_v73 if h5py.is_hdf5(path) else _read_mat_v5
    votes, names, sets = reader(path, K)
    n = votes.shape[0]
    if len(names) != n:
        raise JcdlError(path, f"{len(names)} names in 'imgname', but "
                        f"'vote' has {n} images")
    P, lines = [], []
    for i, (name, row) in enumerate(zip(names, votes)):
        where = f"image {i + 1} ({name})"
        if not name or any(c.isspace() for c in name):
            raise JcdlError(path, f"{where}: the name is empty or holds "
                            "whitespace")
        if not np.all(np.isfinite(row)) or (row < 0).any():
            raise JcdlError(path, f"{where}: votes must be finite and >= 0")
        if not np.all(row == np.round(row)):
            raise JcdlError(path, f"{where}: votes are not integers")
        if not row.sum() > 0:
            raise JcdlError(path, f"{where}: all votes are zero")
        P.append(row / row.sum())
        lines.append(None)
    train_keys = [k for k in sets if "train" in k.lower()]
    test_keys = [k for k in sets if "test" in k.lower()]
    splits = None
    if train_keys or test_keys:
        trains = (_index_sets(sets[train_keys[0]], n, path, train_keys[0])
                  if train_keys else None)
        tests = (_index_sets(sets[test_keys[0]], n, path, test_keys[0])
                 if test_keys else None)
        if trains is None:
            trains = [np.setdiff1d(np.arange(n), t) for t in tests]
        if tests is None:
            tests = [np.setdiff1d(np.arange(n), t) for t in trains]
        if len(trains) != len(tests):
            raise JcdlError(path, f"{len(trains)} train and {len(tests)} "
                            "test index sets")
        splits = []
        for tr, te in zip(trains, tests):
            if not len(tr) or not len(te) or np.intersect1d(tr, te).size:
                raise JcdlError(path, "a split's train and test sets are "
                                "empty or overlap")
            splits.append((tr, te))
    return GroundTruth(path, names, np.asarray(P), lines, classes, splits)
