"""What every stage shares: the clear-error type, atomic outputs, the
``name p_1 ... p_K`` distribution files, and importing pycaffe quietly."""
import ctypes
import math
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError


INT32_MAX = 2 ** 31 - 1   # Caffe's int32 fields (batch, iterations, ...)


def int_arg(low=0, high=INT32_MAX):
    """An argparse type: an integer from low to high."""
    import argparse  # noqa: PLC0415

    def integer(text):
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or not low <= v <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an integer from {low} to {high}")
        return v
    return integer


class JcdlError(Exception):
    """Bad input. The CLI prints it as one line, ``FILE[:LINE]: what``, and
    exits non-zero."""

    def __init__(self, path, what, line=None):
        super().__init__(what)
        self.path, self.what, self.line = str(path), what, line

    def __str__(self):
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.what}"


def remove(path):
    """Removes a file or a folder tree, if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def output_path(path):
    """An output's path: a symbolic link stands for where it points; '.',
    '..' and '' name no file or folder to write."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.name in ("", ".", ".."):
        raise JcdlError(path, "name the output: a file or folder name, not "
                        "'.' or '..'")
    return path


def make_folder_for(path):
    """Makes the folder an output goes in, or says what is in the way."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (folder, *folder.parents)
                        if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file" if blocker else e.strerror
        raise JcdlError(path, f"cannot make its folder {folder} ({why})") \
            from None


@contextmanager
def atomic_output(path):
    """Yields a temporary path beside ``path`` to write a file or folder into;
    renames it to ``path`` when the block completes and removes it when the
    block fails, so ``path`` is either complete or untouched. The folder
    ``path`` goes in is made if needed. A folder at ``path`` is replaced only
    by a folder (the caller has checked it is its own output), never by a
    file; errors about the temporary name are reported about ``path``."""
    path = output_path(path)
    make_folder_for(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    remove(tmp)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            if not tmp.is_dir():
                raise JcdlError(path, "is a folder: give a file name")
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            remove(old)
        else:
            os.replace(tmp, path)
    except OSError as e:
        remove(tmp)
        if e.filename is not None and str(tmp) in str(e.filename):
            raise JcdlError(path, f"cannot write ({e.strerror})") from None
        raise
    except BaseException:
        remove(tmp)
        raise


@contextmanager
def output_folder(path):
    """Yields a temporary folder for an output folder's files. When the
    block completes they go to ``path``: a new folder is renamed whole; in
    an existing one they replace the files of the same names and nothing
    else is touched ('.' is the current folder). When it fails, nothing at
    ``path`` has changed."""
    if Path(path).is_dir():
        path = Path(os.path.realpath(path))
    path = output_path(path)
    if path.exists() and not path.is_dir():
        raise JcdlError(path, "exists and is not a folder")
    if not path.is_dir():
        with atomic_output(path) as tmp:
            yield tmp
        return
    tmp = path / f".jcdl-new-{os.getpid()}"
    remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for item in sorted(tmp.iterdir()):
            os.replace(item, path / item.name)
    finally:
        remove(tmp)


def check_output_file(path, *inputs):
    """Refuses, before any work, an output file that is a folder or is one
    of the run's inputs (None inputs are skipped)."""
    path = Path(path)
    if path.is_dir():
        raise JcdlError(path, "is a folder: give a file name")
    for given in inputs:
        if given is not None and path.exists() and Path(given).exists() \
                and os.path.samefile(path, given):
            raise JcdlError(path, f"is an input of this run ({given}): "
                            "write the output elsewhere")


def text_bytes(data, path, what="file"):
    """The bytes of a text file without a UTF-8 byte-order mark; a UTF-16
    file or one with NUL bytes is refused (convert_imageset_r says the
    same)."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\0" in data:
        raise JcdlError(path, f"not UTF-8 text (UTF-16 or binary): save the "
                        f"{what} as UTF-8")
    return data.removeprefix(b"\xef\xbb\xbf")


def read_text(path, what="file", names_only=False):
    """The text of a UTF-8 file (see text_bytes). Bytes that are not UTF-8
    become surrogates, as in file names; with ``names_only`` (names that
    are written out again) they are an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise JcdlError(path, f"no such {what}")
    try:
        data = text_bytes(path.read_bytes(), path, what)
    except OSError as e:
        raise JcdlError(path, f"cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8", errors="strict" if names_only
                           else "surrogateescape")
    except UnicodeDecodeError as e:
        raise JcdlError(path, f"not UTF-8 text: save the {what} as UTF-8",
                        data[:e.start].count(b"\n") + 1) from None


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


def read_lines(path, what="file"):
    """(line number, tokens, ends with a newline) of each non-blank line of a
    text file (any whitespace separates)."""
    pieces = read_text(path, what).split("\n")
    return [(i + 1, piece.split(), i < len(pieces) - 1)
            for i, piece in enumerate(pieces) if piece.split()]


def read_distribution_rows(path, *, what="distribution file"):
    """Reads ``name p_1 ... p_K`` lines (blank lines skipped). Returns
    (names, P, line numbers), P float64 (n, K) with rows normalised to 1."""
    path = Path(path)
    names, rows, lines, K = [], [], [], None
    for line_no, tokens, newline in read_lines(path, what):
        if len(tokens) < 2:
            raise JcdlError(path, "expected 'name p_1 ... p_K'", line_no)
        values = parse_values(tokens[1:], path, line_no)
        if K is None:
            K = len(values)
        elif len(values) < K and not newline:
            raise JcdlError(path, f"truncated line: {len(values)} of {K} "
                            "values; is the file cut short?", line_no)
        elif len(values) != K:
            raise JcdlError(path, f"{len(values)} values, but the first "
                            f"line has {K}", line_no)
        names.append(tokens[0])
        rows.append(to_distribution(values, path, line_no))
        lines.append(line_no)
    if not names:
        raise JcdlError(path, f"the {what} is empty")
    return names, np.asarray(rows, dtype=np.float64), lines


def read_distribution_file(path, *, what="distribution file"):
    """(names, P) of a ``name p_1 ... p_K`` file; see read_distribution_rows."""
    names, P, _ = read_distribution_rows(path, what=what)
    return names, P


def format_row(name, dist):
    """One ``name p_1 ... p_K`` line; 9 significant digits round-trip a
    float32."""
    return name + " " + " ".join(f"{float(v):.9g}" for v in dist) + "\n"


def write_distribution_file(path, names, P):
    """Writes ``name p_1 ... p_K`` lines atomically."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for name, dist in zip(names, P):
            f.write(format_row(name, dist))


@contextmanager
def quiet_opencv():
    """OpenCV's own warnings (a bad image) off: our one line says it."""
    import cv2  # noqa: PLC0415
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def import_caffe():
    """pycaffe, with Caffe's INFO logging off unless GLOG_minloglevel says
    otherwise."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe  # noqa: PLC0415  (slow: imported only where needed)
    return caffe


# ---------------------------------------------------------------- nets

def _meets(rule, phase, level, stages):
    """Caffe's StateMeetsRule."""
    return not ((rule.HasField("phase") and rule.phase != phase)
                or (rule.HasField("min_level") and level < rule.min_level)
                or (rule.HasField("max_level") and level > rule.max_level)
                or any(s not in stages for s in rule.stage)
                or any(s in stages for s in rule.not_stage))


def net_layers(net, phase, state=None):
    """The layers Caffe builds of a NetParameter for ``phase``: the net's own
    ``state`` and then ``state`` (the solver's train_state or test_state)
    merged over it as Caffe merges them, include/exclude rules applied."""
    level, stages = 0, set()
    for st in (net.state, state):
        if st is None:
            continue
        phase = st.phase if st.HasField("phase") else phase
        level = st.level if st.HasField("level") else level
        stages |= set(st.stage)

    def built(layer):
        if layer.include:
            return any(_meets(r, phase, level, stages) for r in layer.include)
        return not any(_meets(r, phase, level, stages) for r in layer.exclude)

    return [layer for layer in net.layer if built(layer)]


def check_layer_graph(layers, path, inputs=()):
    """What Caffe aborts on while building a net from these layers (one
    phase's): a layer type it does not know, a Python layer whose module or
    class cannot be loaded, a bottom no earlier layer (or net input) makes.
    Returns the blobs the net makes."""
    import importlib  # noqa: PLC0415
    known = set(import_caffe().layer_type_list())
    made = set(inputs)
    for layer in layers:
        if layer.type not in known:
            raise JcdlError(path, f"layer '{layer.name}' has unknown type "
                            f"'{layer.type}'")
        if layer.type == "Python":
            module, name = (layer.python_param.module,
                            layer.python_param.layer)
            try:
                getattr(importlib.import_module(module), name)
            except Exception as e:  # what Caffe's import would stop on
                raise JcdlError(path, f"layer '{layer.name}': cannot load "
                                f"Python layer {module}.{name} "
                                f"({type(e).__name__}: {e})") from None
        for bottom in layer.bottom:
            if bottom not in made:
                raise JcdlError(path, f"layer '{layer.name}' reads blob "
                                f"'{bottom}', which no layer before it "
                                "makes")
        made.update(layer.top)
    return made


# ---------------------------------------------------------------- caffemodels

def blob_shape(blob):
    """(shape, legacy) of a BlobProto."""
    if blob.HasField("shape"):
        return tuple(blob.shape.dim), False
    return (blob.num, blob.channels, blob.height, blob.width), True


def blob_count(blob):
    return len(blob.data) or len(blob.double_data)


def shape_fits(shape, legacy, target):
    if legacy:
        return len(target) <= 4 and \
            (1,) * (4 - len(target)) + tuple(target) == shape
    return tuple(target) == shape


def fmt_shape(shape):
    return "(" + ", ".join(map(str, shape)) + ")"


def read_caffemodel(path, what="weights file"):
    """{layer name: [(shape, legacy, count), ...]} of a binary caffemodel
    (new or V1 layer format)."""
    path = Path(path)
    if not path.is_file():
        raise JcdlError(path, f"no such {what}")
    net = import_caffe().proto.caffe_pb2.NetParameter()
    try:
        net.ParseFromString(path.read_bytes())
    except DecodeError:
        raise JcdlError(path, "cannot parse: damaged, or not a Caffe "
                        f"weights file (.caffemodel; {what})") from None
    out = {}
    for layer in list(net.layer) + list(net.layers):
        out[layer.name] = [(*blob_shape(b), blob_count(b))
                           for b in layer.blobs]
    if not out:
        raise JcdlError(path, f"holds no layers: not a caffemodel ({what})")
    return out


def check_weights(path, model, net, require_all=None):
    """Raises unless the blobs of every layer of ``model`` (from
    read_caffemodel) named like a layer of the pycaffe ``net`` fit it, as
    Caffe's CopyTrainedLayersFrom requires. With ``require_all`` (the net's
    file, for the message), every layer of the net with parameters must get
    them too: a net left partly random cannot be evaluated."""
    targets = dict(zip(net._layer_names, net.layers))
    missing = [name for name in net.params if name not in model]
    if require_all and missing:
        raise JcdlError(path, f"no weights for layer '{missing[0]}' of "
                        f"{require_all}" + (f" (and {len(missing) - 1} more)"
                                            if len(missing) > 1 else ""))
    for name, blobs in model.items():
        if name not in targets:
            continue
        want = [tuple(b.data.shape) for b in targets[name].blobs]
        if len(want) != len(blobs):
            raise JcdlError(path, f"layer '{name}' has {len(blobs)} blobs "
                            f"in the weights but {len(want)} in the net")
        for j, ((shape, legacy, count), target) in enumerate(
                zip(blobs, want)):
            if not shape_fits(shape, legacy, target):
                raise JcdlError(path, f"layer '{name}' does not fit: blob "
                                f"{j} has shape {fmt_shape(shape)} in the weights "
                                f"but {fmt_shape(target)} in the net")
            if count != math.prod(shape):
                raise JcdlError(path, f"layer '{name}': blob {j} holds "
                                f"{count} values for shape {fmt_shape(shape)} "
                                f"(damaged file?)")


# ---------------------------------------------------------------- devices

def cuda_libraries():
    """The CUDA runtime and cuBLAS libraries this process loaded with
    pycaffe: none for a CPU-only Caffe."""
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f}
    return sorted(p for p in paths if "/libcudart" in p or "/libcublas" in p)


def _gpu_count(libraries):
    """cudaGetDeviceCount, or None when it cannot be asked."""
    for library in libraries:
        if "/libcudart" in library:
            try:
                count = ctypes.c_int()
                cudart = ctypes.CDLL(library)
                if cudart.cudaGetDeviceCount(ctypes.byref(count)) != 0:
                    return 0
                return count.value
            except (OSError, AttributeError):
                return None
    return None


def use_device(caffe, gpu):
    """Caffe's CPU mode (gpu None) or GPU ``gpu``, after checking that this
    pycaffe can use it (Caffe aborts the process when it cannot)."""
    if gpu is None:
        caffe.set_mode_cpu()
        return
    where = Path(caffe.__file__).parent
    libraries = cuda_libraries()
    if not libraries:
        raise JcdlError(where, f"--gpu {gpu}: GPU {gpu} cannot be used: this "
                        "pycaffe is a CPU-only build ('CUDA=1 make' puts the GPU "
                        "build in .venv; leave out --gpu to use the CPU)")
    count = _gpu_count(libraries)
    if count is not None and not 0 <= gpu < count:
        raise JcdlError(where, f"--gpu {gpu}: {count} GPU(s) visible")
    caffe.set_device(gpu)
    caffe.set_mode_gpu()
