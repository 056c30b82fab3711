"""List files -> LMDB of Caffe ``Datum`` records (``jcdl convert``), the mean
image (``jcdl mean``), and reading those LMDBs back for the other stages.

``convert`` writes the same records as ``convert_imageset_r`` (our C++ tool,
caffe_KL/tools/convert_imageset_r.cpp), byte for byte for the same list
without ``--shuffle``:

- key ``%08d_<path>`` (index in the list, then the path as written there);
- raw (default): ``channels``, ``height``, ``width``, ``data`` = the decoded
  (and resized) image as uint8 CHW BGR bytes, ``encoded: false``;
- ``--encoded`` / ``--encode_type``: ``data`` = the file's own bytes when no
  resize is asked and its extension is the encoding, else ``cv2.imencode``;
  ``encoded: true``, no shape fields (as Caffe's ``ReadFileToDatum``);
- ``float_data`` = the row normalised to sum 1, as float32; ``label`` 0.

The list is validated like the C++ tool does, with its messages: every value
a finite number >= 0 (C ``strtod`` syntax), every row the first row's count
and a positive sum, every image present and decodable.
"""
import errno
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import lmdb
import numpy as np

from .errors import JcdlError, int_arg
from .files import atomic_output, check_output_file, quiet_opencv
from .lists import image_path, read_distributions
from .caffenet import caffe_pb2
from .lmdbread import datum_image, db_info, image_header, iter_datums


# ---------------------------------------------------------------- the list

class Entry:
    """One list line: the path as written, its distribution (float64, sum 1)
    and its 1-based line number."""
    __slots__ = ("path", "dist", "line")

    def __init__(self, path, dist, line):
        self.path, self.dist, self.line = path, dist, line


def read_list(list_path, root=None):
    """The Entries of a ``path p_1 ... p_K`` list (lists.read_distributions,
    with its checks and messages)."""
    names, P, lines = read_distributions(list_path, "list file", root)
    return [Entry(n, p, line) for n, p, line in zip(names, P, lines)]


# ---------------------------------------------------------------- records

def _extension(path):
    """What follows the last '.' (the whole string if none), ASCII lower
    case, as the C++ tool computes it."""
    return path[path.rfind(".") + 1:].encode("utf-8", "surrogateescape") \
        .lower().decode("utf-8", "surrogateescape")


def imread(path, flag):
    """cv2.imread of any file name: a name that is not UTF-8 (kept as
    surrogates) is read here and decoded from memory, as OpenCV cannot
    take it (it crashes); the same decoder, the same pixels. None for a
    file OpenCV cannot (or will not) decode."""
    try:
        os.fsencode(path).decode("utf-8")
        return cv2.imread(path, flag)
    except UnicodeDecodeError:
        pass
    except cv2.error:     # e.g. a header claiming more than 2^30 pixels
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flag) \
            if data else None
    except cv2.error:
        return None


def _decodes_natively_to(path, img):
    """Whether the file decodes as Caffe decodes an encoded Datum (natively,
    IMREAD_UNCHANGED) to exactly img: not a grey, 16-bit, alpha or
    EXIF-rotated file read as colour, whose own bytes would give the net
    other channels or pixels than the rest (it is re-encoded instead)."""
    native = imread(path, cv2.IMREAD_UNCHANGED)
    return (native is not None and native.shape == img.shape
            and native.dtype == img.dtype and np.array_equal(native, img))


# Caffe parses a record with protobuf, which reads at most 2 GB - 1 bytes
# (and a batch's count is an int): a larger image is refused before decoding.
MAX_RECORD = 2 ** 31 - 1 - (1 << 20)


def record_too_large(h, w, c):
    """The message for an image of h x w x c whose raw record would pass
    protobuf's 2 GB limit, or None."""
    if h * w * c <= MAX_RECORD:
        return None
    return (f"{w}x{h}x{c} (WxHxC) is {h * w * c} bytes of pixels, more "
            "than a Caffe record can hold (2 GB)")


def _header_shape(full_path, gray):
    """(h, w, c) of an image as it will be decoded (3 channels, or 1 with
    gray, whatever its own type), from its header; None when the header
    does not say."""
    try:
        with open(full_path, "rb") as f:
            size = image_header(f)
    except OSError:
        return None
    return None if size is None else (size[0], size[1], 1 if gray else 3)


def _check_record_size(entry, list_path, full_path, h, w, c):
    """An image of h x w x c too large for one record."""
    why = record_too_large(h, w, c)
    if why:
        raise JcdlError(list_path, f"image {full_path}: {why}: convert "
                        "with --resize_height and --resize_width",
                        entry.line)


def make_datum(entry, list_path, full_path, gray=False, resize_height=0,
               resize_width=0, encode_type=""):
    """The Datum of one entry, as convert_imageset_r builds it; encode_type
    '' means raw pixels."""
    pb2 = caffe_pb2()
    shape = None if resize_height and resize_width else \
        _header_shape(full_path, gray)
    if shape:   # before decoding it
        _check_record_size(entry, list_path, full_path, *shape)
    img = imread(full_path, cv2.IMREAD_GRAYSCALE if gray
                 else cv2.IMREAD_COLOR)
    if img is None:
        raise JcdlError(list_path, "cannot decode image " + full_path,
                        entry.line)
    if resize_height > 0 and resize_width > 0:
        try:
            img = cv2.resize(img, (resize_width, resize_height))
        except cv2.error:
            raise JcdlError(list_path, f"cannot resize image {full_path} to "
                            f"{resize_width}x{resize_height}",
                            entry.line) from None
    _check_record_size(entry, list_path, full_path, *img.shape[:2],
                       1 if img.ndim == 2 else img.shape[2])   # as decoded
    datum = pb2.Datum()
    if not encode_type:
        chw = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
        datum.channels, datum.height, datum.width = chw.shape
        datum.data = chw.tobytes()
        datum.encoded = False
    else:
        if (resize_height == 0 and resize_width == 0
                and _extension(full_path) == encode_type
                and _decodes_natively_to(full_path, img)):
            with open(full_path, "rb") as f:
                datum.data = f.read()    # the file's own bytes
        else:
            ok = False
            if cv2.haveImageWriter("." + encode_type):
                try:
                    ok, buf = cv2.imencode("." + encode_type, img)
                except cv2.error:
                    ok = False
            if not ok:
                raise JcdlError(list_path, f"cannot encode image {full_path} "
                                f"as {encode_type}", entry.line)
            datum.data = buf.tobytes()
        datum.encoded = True
    datum.float_data.extend(entry.dist)
    datum.label = 0                      # unused: the label is the distribution
    return datum


def _ordered_map(fn, items, workers):
    """fn over items on a thread pool (OpenCV releases the GIL while it
    decodes), results in order, at most a few dozen in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        window = deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 8 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _write_db(path, records, map_size):
    """Writes (key, value) pairs into a new LMDB folder at path, committing
    every 1000 records like Caffe; the map grows as needed. LMDB's own
    errors (a full disk) are one line naming the DB."""
    try:
        _write_records(path, records, map_size)
    except lmdb.Error as e:
        why = str(e).rsplit(": ", 1)[-1]
        try:   # LMDB says EIO for a short write: the disk filled up
            st = os.statvfs(os.path.dirname(os.path.abspath(path)))
            if st.f_bavail * st.f_frsize < 1 << 20:
                why = os.strerror(errno.ENOSPC)
        except OSError:
            pass
        raise JcdlError(path, f"cannot write ({why})") from None


def _write_records(path, records, map_size):
    # LMDB maps its lock.mdb and writes into the map: on a full disk that
    # kills the process (SIGBUS), so its room is taken first
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, "lock.mdb"), os.O_RDWR | os.O_CREAT,
                 0o644)
    try:
        os.posix_fallocate(fd, 0, 8192)
    finally:
        os.close(fd)
    env = lmdb.open(os.fsencode(path), map_size=map_size,
                    subdir=True, sync=False, metasync=False, meminit=False)
    try:
        batch = []

        def flush():
            while True:
                try:
                    with env.begin(write=True) as txn:
                        for k, v in batch:
                            txn.put(k, v, append=False)
                    break
                except lmdb.MapFullError:
                    env.set_mapsize(env.info()["map_size"] * 2)
            batch.clear()

        for kv in records:
            batch.append(kv)
            if len(batch) == 1000:
                flush()
        flush()
        env.sync(True)
    finally:
        env.close()


def convert(root, list_path, db_path, resize_height=0, resize_width=0,
            gray=False, encoded=False, encode_type="", shuffle=False, seed=0,
            check_size=False, threads=None, progress=True):
    """Writes the LMDB db_path from the list (see the module's docstring).
    Nothing is at db_path unless it completed; an existing db_path is
    refused. Returns the number of records."""
    from tqdm import tqdm  # noqa: PLC0415

    db_path = os.fspath(db_path)
    if os.path.lexists(db_path):
        raise JcdlError(db_path, "already exists; remove it or choose "
                        "another name")
    if (resize_height > 0) != (resize_width > 0):
        raise JcdlError("--resize_height/--resize_width", "give both (or "
                        "neither)")
    if encode_type and not cv2.haveImageWriter("." + encode_type):
        raise JcdlError(encode_type, "unknown --encode_type (OpenCV cannot "
                        "write it; use jpg or png)")
    from .files import check_not_inside  # noqa: PLC0415
    check_not_inside(db_path, (root,))
    why = record_too_large(resize_height, resize_width, 1 if gray else 3)
    if why:
        raise JcdlError("--resize_height/--resize_width", why + ": choose "
                        "a smaller size")
    entries = read_list(list_path, root)
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    list_path = os.fspath(list_path)
    resize_height, resize_width = max(0, resize_height), max(0, resize_width)
    encoded = encoded or bool(encode_type)

    def record(item):
        i, e = item
        enc = encode_type
        if encoded and not enc:          # guess the encoding from the name
            enc = _extension(e.path)
        datum = make_datum(e, list_path, image_path(root, e.path), gray,
                           resize_height, resize_width, enc)
        key = b"%08d_" % i + os.fsencode(e.path)
        return e, key, len(datum.data), datum.SerializeToString()

    def checked(results):
        size = None
        for e, key, n, value in results:
            if check_size:
                size = n if size is None else size
                if n != size:
                    raise JcdlError(list_path, f"image {e.path} differs in "
                                    "size from the first one (--check_size)",
                                    e.line)
            yield key, value

    caffe_pb2()                              # import pycaffe before the bar starts
    workers = threads or min(8, os.cpu_count() or 1)
    results = _ordered_map(record, enumerate(entries), workers)
    with atomic_output(db_path, new=True) as tmp, quiet_opencv(), \
            tqdm(total=len(entries), unit="img", desc="convert",
                 file=sys.stderr, disable=not progress) as bar:
        _write_db(tmp, _counted(checked(results), bar),
                  max(1 << 28, len(entries) << 17))
    return len(entries)


def _counted(items, bar):
    for item in items:
        yield item
        bar.update(1)


def mean_paths(out_path):
    """(binaryproto, npy) paths for ``jcdl mean``'s OUT: OUT and OUT with the
    suffix .npy, or for an OUT ending in .npy, OUT with .binaryproto."""
    out = Path(out_path)
    if out.suffix == ".npy":
        return out.with_suffix(".binaryproto"), out
    if out.suffix == ".binaryproto":
        return out, out.with_suffix(".npy")
    return out, out.with_name(out.name + ".npy")


def compute_mean(db_path, out_path, progress=True):
    """Mean image of the LMDB, written as a BlobProto 1 x C x H x W (as
    compute_image_mean writes it) and as a C x H x W float32 .npy beside it
    (see mean_paths). Returns the C x H x W mean."""
    from tqdm import tqdm  # noqa: PLC0415

    proto_path, npy_path = mean_paths(out_path)
    for path in (proto_path, npy_path):
        check_output_file(path, db_path)
    n = db_info(db_path)["n"]
    total, shape = None, None
    for key, datum in tqdm(iter_datums(db_path), total=n, unit="img",
                           desc="mean", file=sys.stderr, disable=not progress):
        img = datum_image(datum, f"{db_path}: record {key}")
        if total is None:
            shape, total = img.shape, np.zeros(img.shape, np.float64)
        elif img.shape != shape:
            raise JcdlError(db_path, f"record {key} is {img.shape[1]}x"
                            f"{img.shape[0]}x{img.shape[2]} (WxHxC), the "
                            f"first one {shape[1]}x{shape[0]}x{shape[2]}: "
                            "a mean needs one size")
        total += img
    mean = (total / n).transpose(2, 0, 1).astype(np.float32)
    blob = caffe_pb2().BlobProto()
    blob.num = 1
    blob.channels, blob.height, blob.width = mean.shape
    blob.data.extend(mean.ravel().tolist())
    # both or neither: the .npy is written, then both are renamed
    with atomic_output(proto_path) as tmp, atomic_output(npy_path) as npy:
        Path(tmp).write_bytes(blob.SerializeToString())
        with open(npy, "wb") as f:
            np.save(f, mean)
    return mean


# ---------------------------------------------------------------- CLI

def cmd_convert(args):
    if args.backend != "lmdb":
        what = ("jcdl convert writes lmdb only; use convert_imageset_r for "
                "leveldb") if args.backend == "leveldb" else \
            f"unknown --backend {args.backend} (use lmdb)"
        raise JcdlError(args.db, what)
    n = convert(args.root, args.list, args.db, args.resize_height,
                args.resize_width, args.gray, args.encoded, args.encode_type,
                args.shuffle, args.seed, args.check_size, args.threads)
    print(f"{args.db}: {n} records")


def cmd_mean(args):
    mean = compute_mean(args.db, args.out)
    proto_path, npy_path = mean_paths(args.out)
    print(f"{proto_path}, {npy_path}: mean of {mean.shape[0]}x"
          f"{mean.shape[1]}x{mean.shape[2]} (CxHxW); per channel "
          + " ".join(f"{v:.3f}" for v in mean.mean(axis=(1, 2))))


def register(sub):
    p = sub.add_parser(
        "convert", help="list file -> LMDB of Caffe Datum records",
        description="Writes the LMDB DB from LIST ('relative/path.jpg p_1 ... "
                    "p_K' lines; images under ROOT): the same records as "
                    "convert_imageset_r with the same flags (keys "
                    "%08d_<path>, the image as raw CHW BGR bytes or encoded, "
                    "the row normalised to sum 1 in float_data). Written "
                    "atomically; an existing DB is refused.")
    p.add_argument("root", help="folder the list's paths are relative to")
    p.add_argument("list", help="'path p_1 ... p_K' lines")
    p.add_argument("db", help="the LMDB folder to create")
    p.add_argument("--shuffle", action="store_true",
                   help="randomly shuffle the order (reproducible by --seed)")
    p.add_argument("--seed", type=int_arg(0, 2 ** 63 - 1), default=0,
                   help="seed of --shuffle")
    p.add_argument("--resize_height", "--resize-height",
                   type=int_arg(0, 65535), default=0,
                   help="height images are resized to (with --resize_width)")
    p.add_argument("--resize_width", "--resize-width",
                   type=int_arg(0, 65535), default=0,
                   help="width images are resized to (with --resize_height)")
    p.add_argument("--gray", action="store_true",
                   help="treat images as grayscale")
    p.add_argument("--encoded", action="store_true",
                   help="store encoded images (the file's bytes where "
                        "possible)")
    p.add_argument("--encode_type", "--encode-type", default="",
                   help="encoding to store ('png', 'jpg', ...); implies "
                        "--encoded")
    p.add_argument("--backend", default="lmdb",
                   help="lmdb (the only one jcdl writes)")
    p.add_argument("--check_size", "--check-size", action="store_true",
                   help="check that all records have the same data size")
    p.add_argument("--threads", type=int_arg(0, 256), default=None,
                   help="decoding threads (default: the CPU count, at most "
                        "8); the records do not depend on it")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "mean", help="mean image of an LMDB (.binaryproto and .npy)",
        description="Writes the mean image of DB as OUT, a BlobProto "
                    "1 x C x H x W as compute_image_mean writes it, and the "
                    "same as a C x H x W float32 .npy beside it (OUT with "
                    "the suffix .npy; an OUT ending in .npy gets the "
                    ".binaryproto beside it instead).")
    p.add_argument("db", help="LMDB of Datum records")
    p.add_argument("out", help="mean.binaryproto")
    p.set_defaults(func=cmd_mean)
