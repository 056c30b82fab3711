"""Reading LMDBs of Caffe Datums (what ``jcdl convert`` and
convert_imageset_r write) for the other stages: records and images, a
summary of the first record, and a fast scan of every record's size and K
that reads no pixels; a damaged LMDB (truncated, flipped bytes) is one
clear error, never a SIGBUS."""
import os
import sys

import cv2
import lmdb
import numpy as np

from .errors import JcdlError
from .caffenet import caffe_pb2, import_caffe


def _open(db_path):
    """The LMDB opened read-only, after checking that its data.mdb holds
    every page its header says it has: a file cut short would be mapped,
    and reading past its end kills the process (SIGBUS), here and in
    Caffe."""
    db_path = os.fspath(db_path)
    if not os.path.exists(db_path):
        raise JcdlError(db_path, "no such LMDB")
    subdir = os.path.isdir(db_path)
    try:
        env = lmdb.open(os.fsencode(db_path), readonly=True, lock=False,
                        subdir=subdir)
    except lmdb.Error as e:
        raise JcdlError(db_path, f"not an LMDB ({e})") from None
    _watch(env, db_path)
    data = os.path.join(db_path, "data.mdb") if subdir else db_path
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = os.path.getsize(data)
    if have < need:
        _close(env)
        raise JcdlError(db_path, f"damaged LMDB: data.mdb has {have} bytes, "
                        f"but its header says {need} (cut short?): make the "
                        "LMDB again")
    return env


def _watch(env, db_path):
    """A bus error reading env's map (data.mdb cut short while it is read:
    the check of _open cannot see that) is one line naming the LMDB and
    exit 1, from Caffe's handler (patch 0015), never a silent SIGBUS; until
    _close(env). The line starts on a line of its own: a progress bar
    (mean, evaluate) may be open."""
    from .cli import _name  # noqa: PLC0415  (the "jcdl STAGE" of errors)
    name = f"\n{_name(sys.argv[1:])}: {db_path}"
    import_caffe()._caffe.watch_lmdb(id(env), os.fsencode(db_path),
                                     name.encode("utf-8", "surrogateescape"))


def _close(env):
    import_caffe()._caffe.forget_lmdb(id(env))   # before its map is gone
    env.close()


def _cursor(env, db_path, buffers=False):
    """(key, value) of every record, a damaged page one clear line."""
    try:
        with env.begin(buffers=buffers) as txn:
            yield from txn.cursor()
    except lmdb.Error as e:
        raise JcdlError(db_path, f"damaged LMDB ({e}): make the LMDB "
                        "again") from None


def records(db_path):
    """Yields (key, value) as bytes, in key order: the records as stored."""
    env = _open(db_path)
    try:
        yield from _cursor(env, db_path)
    finally:
        _close(env)


def iter_datums(db_path):
    """Yields (key, Datum) in key order; key is a str."""
    pb2 = caffe_pb2()
    for key, value in records(db_path):
        name = key.decode("utf-8", "surrogateescape")
        datum = pb2.Datum()
        try:
            datum.ParseFromString(value)
        except Exception:  # noqa: BLE001  (protobuf's DecodeError)
            raise JcdlError(db_path, f"record {name} is not a Caffe "
                            "Datum") from None
        yield name, datum


def datum_image(datum, where="datum"):
    """The image of a Datum as an H x W x C uint8 numpy array (BGR order as
    stored). Encoded images are decoded as Caffe's Data layer does by default
    (natively: their own channels)."""
    if datum.encoded:
        img = cv2.imdecode(np.frombuffer(datum.data, np.uint8),
                           cv2.IMREAD_UNCHANGED)
        if img is None or img.dtype != np.uint8:
            raise JcdlError(where, "cannot decode the encoded image")
        return img[:, :, None] if img.ndim == 2 else img
    c, h, w = datum.channels, datum.height, datum.width
    if len(datum.data) != c * h * w or not len(datum.data):
        raise JcdlError(where, f"{len(datum.data)} bytes of image data for "
                        f"{c}x{h}x{w}")
    return np.frombuffer(datum.data, np.uint8).reshape(c, h, w) \
        .transpose(1, 2, 0)


def db_info(db_path):
    """n (records), k (len of float_data in the first one, 0 if none),
    channels, height, width (of the first image; decoded if encoded),
    encoded."""
    env = _open(db_path)
    try:
        n = env.stat()["entries"]
    finally:
        _close(env)
    for key, datum in iter_datums(db_path):
        h, w, c = datum_image(datum, f"{db_path}: record {key}").shape
        return {"n": n, "k": len(datum.float_data), "channels": c,
                "height": h, "width": w, "encoded": bool(datum.encoded)}
    raise JcdlError(db_path, "the LMDB is empty")


def _varint(buf, i, end):
    v = shift = 0
    while i < end:
        b = buf[i]
        v |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return v, i
        shift += 7
        if shift > 63:
            break
    raise ValueError("bad varint")


def datum_layout(value):
    """(channels, height, width, data offset, data length, K, encoded) of a
    serialised Datum, read from its field headers only (the pixels are
    skipped, not read): a record whose fields do not add up to its length,
    or whose raw data is not channels x height x width bytes, raises
    ValueError."""
    end, i = len(value), 0
    dims, data, k, encoded = [0, 0, 0], (0, 0), 0, False
    while i < end:
        tag, i = _varint(value, i, end)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            v, i = _varint(value, i, end)
            if 1 <= field <= 3:
                dims[field - 1] = v
            elif field == 7:
                encoded = bool(v)
        elif wire == 2:
            n, i = _varint(value, i, end)
            if i + n > end:
                raise ValueError("field past the end")
            if field == 4:
                data = (i, n)
            elif field == 6:
                if n % 4:
                    raise ValueError("packed floats")
                k += n // 4
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            if field == 6 and wire == 5:
                k += 1
        else:
            raise ValueError("unknown wire type")
        if i > end:
            raise ValueError("field past the end")
    c, h, w = dims
    if not encoded and (data[1] != c * h * w or not data[1]):
        raise ValueError(f"{data[1]} bytes of image data for {c}x{h}x{w}")
    return c, h, w, data[0], data[1], k, encoded


_SOF = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
        0xCE, 0xCF)   # JPEG's start-of-frame markers


def image_header(f):
    """(height, width, channels) an encoded image's header (PNG, BMP, JPEG)
    says, read from the binary file f (seekable, at its start); channels
    as Caffe's Data layer decodes the file natively (no EXIF rotation), or
    None when its own type is not plainly 8-bit grey or colour; None when
    the header does not give the size. A JPEG's segments are walked by
    seeking, to its frame header however far in (an EXIF segment of 65 KB
    first), stopping at its first SOS or EOI or its end. The C++
    convert_imageset_r reads the same sizes (header_size)."""
    import struct  # noqa: PLC0415
    head = f.read(30)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" \
            and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        depth, kind = (head[24], head[25]) if len(head) >= 26 else (16, 0)
        return h, w, {0: 1, 2: 3, 3: 3, 6: 4}.get(kind) if depth <= 8 \
            else None
    if head[:2] == b"BM" and len(head) >= 26:
        if head[14:18] == b"\x0c\0\0\0":    # OS/2's 12-byte header
            w, h, bits = struct.unpack("<HH2xH", head[18:26])
        else:
            w, h = struct.unpack("<ii", head[18:26])
            bits = struct.unpack("<H", head[28:30])[0] \
                if len(head) >= 30 else 0
        return abs(h), abs(w), 3 if bits == 24 else None
    if head[:2] == b"\xff\xd8":
        f.seek(2)
        while True:
            b = f.read(2)
            if len(b) < 2 or b[0] != 0xFF:
                return None
            marker = b[1]
            if marker == 0xFF:               # a fill byte
                f.seek(-1, 1)
            elif marker in (0xD9, 0xDA):     # EOI, SOS: no frame before
                return None
            elif marker not in (0xD8, 0x01) and not 0xD0 <= marker <= 0xD7:
                b = f.read(2)
                if len(b) < 2:
                    return None
                length = struct.unpack(">H", b)[0]
                if marker in _SOF:
                    b = f.read(6)
                    if len(b) < 5:
                        return None
                    h, w = struct.unpack(">HH", b[1:5])
                    comps = b[5] if len(b) == 6 else 0
                    return h, w, comps if comps in (1, 3) else None
                if length < 2:
                    return None
                f.seek(length - 2, 1)
    return None


def encoded_size(head):
    """(channels, height, width) of an encoded image from the first bytes of
    its file, as Caffe's Data layer decodes it (image_header); None when
    the header does not say for sure."""
    import io  # noqa: PLC0415
    size = image_header(io.BytesIO(bytes(head)))
    return (size[2], size[0], size[1]) if size and size[2] else None


def scan_records(db_path):
    """Yields (key, (channels, height, width), K) of every record of the
    LMDB in one pass over the records' field headers (raw records) or their
    image headers (encoded ones; decoded only when the header does not say):
    what Caffe's Data layer will see, without reading the pixels. A damaged
    record is one clear line naming it."""
    env = _open(db_path)
    try:
        for key, value in _cursor(env, db_path, buffers=True):
            name = bytes(key).decode("utf-8", "surrogateescape")
            try:
                c, h, w, off, n, k, encoded = datum_layout(value)
            except (ValueError, IndexError) as e:
                raise JcdlError(db_path, f"record {name} is damaged (not a "
                                f"Caffe Datum: {e}): make the LMDB "
                                "again") from None
            if encoded:
                size = encoded_size(value[off:off + min(n, 1 << 16)])
                if size is None:
                    img = datum_image(_parse_datum(db_path, name, value),
                                      f"{db_path}: record {name}")
                    size = (img.shape[2], *img.shape[:2])
                c, h, w = size
            yield name, (c, h, w), k
    finally:
        _close(env)


def _parse_datum(db_path, name, value):
    datum = caffe_pb2().Datum()
    try:
        datum.ParseFromString(bytes(value))
    except Exception:  # noqa: BLE001  (protobuf's DecodeError)
        raise JcdlError(db_path, f"record {name} is not a Caffe "
                        "Datum") from None
    return datum
