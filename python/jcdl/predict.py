"""Using a trained net from Python and ``jcdl predict``: load it with every
check made before Caffe could abort the process, prepare images exactly as
the ``Data`` layer did in training, and predict emotion distributions of
arrays, image files, lists and LMDBs as numpy arrays.

Images are prepared exactly as Caffe's ``Data`` layer does in the TEST phase
with ``transform_param { mean_file crop_size }``: the BGR uint8 image as
float32 CHW, minus the full-size mean image (subtracted before cropping, at
the same positions, as Caffe's DataTransformer does), then the centre crop of
the deploy input's H x W (offsets ``(H_img - H) // 2``, ``(W_img - W) // 2``).
Images read from files (a list with ROOT, or ``predict``) are first resized
with OpenCV's bilinear ``resize``, as ``convert_imageset_r --resize_*`` does,
to the size the training LMDB stored them at: ``--resize H W`` (convert's
``--resize_height``/``--resize_width``), else the mean's H x W, else the
net input's (no crop: give one of the two when training cropped). Datums of
an LMDB are used at their stored size.

The net's output is the deploy net's last blob (a Softmax: one distribution
per image).
"""
import json
import os
import re
from pathlib import Path

import numpy as np

from .errors import JcdlError, int_arg
from .files import quiet_opencv
from .lists import default_classes, image_path, read_classes
from .caffenet import (caffe_pb2, check_layer_graph, check_weights,
                       import_caffe, net_layers, read_caffemodel, read_mean,
                       read_text_proto, use_device)


# ---------------------------------------------------------------- the net

def check_deploy(path):
    """Checks what Python can check of a deploy prototxt before Caffe parses
    it (Caffe aborts on errors): it parses, its layer types exist, bottoms
    are produced, and it has an input."""
    pb2 = caffe_pb2()
    param = read_text_proto(path, pb2.NetParameter(),
                            "model (deploy prototxt)")
    layers = net_layers(param, pb2.TEST)
    check_layer_graph(layers, path, param.input)
    has_input = bool(param.input) or any(layer.type == "Input"
                                         for layer in layers)
    if not has_input:
        raise JcdlError(path, "the net has no Input layer: give the deploy "
                        "prototxt (made by 'jcdl netgen'), not train_val")


def load_net(deploy, weights, gpu=None):
    """The pycaffe deploy net in TEST phase with trained weights, after
    checking both files (the weights must fit every layer: an 8-emotion
    snapshot in a 7-emotion deploy is an error, not an abort)."""
    caffe = import_caffe()
    deploy, weights = Path(deploy), Path(weights)
    check_deploy(deploy)
    if not weights.is_file():
        raise JcdlError(weights, "no such weights file")
    use_device(caffe, gpu)
    net = caffe.Net(str(deploy), caffe.TEST)
    check_weights(weights, read_caffemodel(weights), net, require_all=deploy)
    net.copy_from(str(weights))
    return net


def input_shape(net):
    """(C, H, W) of the net's first input."""
    shape = net.blobs[net.inputs[0]].data.shape
    if len(shape) != 4:
        raise ValueError(f"input '{net.inputs[0]}' has shape {shape}, "
                         f"not (N, C, H, W)")
    return tuple(int(s) for s in shape[1:])


def output_count(net):
    """K: values per image of the net's output blob."""
    shape = net.blobs[net.outputs[-1]].data.shape
    return int(np.prod(shape[1:]))


# ---------------------------------------------------------- preprocessing

class Preprocessor:
    """Caffe's TEST-phase transform for a net input of shape (C, H, W), an
    optional mean: an image (C, Hm, Wm), or one value per channel (C,) as
    ``mean_value`` gives, and the optional (H, W) images were stored at
    (``size``)."""

    def __init__(self, shape, mean=None, size=None):
        self.shape = tuple(shape)
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        if self.mean is not None and self.mean.ndim == 1:
            self.mean = self.mean[:, None, None]   # per channel
        if self.mean is not None and self.mean.ndim != 3:
            raise ValueError(f"the mean has shape {self.mean.shape}: give "
                             "(C, H, W) or one value per channel (C,)")
        if self.mean is not None and not np.all(np.isfinite(self.mean)):
            raise ValueError("the mean holds values that are not finite "
                             "(NaN or inf)")
        self.per_channel = self.mean is not None and \
            self.mean.shape[1:] == (1, 1)
        self.size = None if size is None else tuple(size)
        if self.mean is not None and self.mean.shape[0] != self.shape[0]:
            raise ValueError(f"the mean has {self.mean.shape[0]} channels, "
                             f"the net input {self.shape[0]}")
        if self.mean is not None and not self.per_channel and (
                self.mean.shape[1] < self.shape[1] or
                self.mean.shape[2] < self.shape[2]):
            raise ValueError(f"the mean is {self.mean.shape[1]}x"
                             f"{self.mean.shape[2]} (HxW), smaller than the "
                             f"net input {self.shape[1]}x{self.shape[2]}: "
                             "give the mean the net was trained with")
        if self.size is not None and (self.size[0] < self.shape[1] or
                                      self.size[1] < self.shape[2]):
            raise ValueError(f"--resize {self.size[0]} {self.size[1]} is "
                             f"smaller than the net input {self.shape[1]}x"
                             f"{self.shape[2]} (HxW)")
        if self.mean is not None and not self.per_channel and \
                self.size is not None and self.mean.shape[1:] != self.size:
            raise ValueError(f"the mean is {self.mean.shape[1]}x"
                             f"{self.mean.shape[2]} (HxW), but --resize "
                             f"says {self.size[0]}x{self.size[1]}")

    @property
    def file_size(self):
        """(H, W) that images read from files are resized to."""
        if self.size is not None:
            return self.size
        return (self.mean.shape[1:] if self.mean is not None and
                not self.per_channel else self.shape[1:])

    def load(self, path):
        """An image file as H x W x C uint8 BGR (grey for 1-channel nets),
        resized to ``file_size``. Any byte name works (read here, decoded
        from memory)."""
        try:
            with open(os.fsencode(path), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise JcdlError(path, "no such image") from None
        except OSError as e:
            raise JcdlError(path, f"cannot read the image ({e.strerror})") \
                from None
        return self.decode(data, path)

    def decode(self, data, name="image"):
        """The bytes of an image file, decoded and resized as ``load``."""
        import cv2  # noqa: PLC0415
        flag = cv2.IMREAD_GRAYSCALE if self.shape[0] == 1 else cv2.IMREAD_COLOR
        with quiet_opencv():
            try:
                img = cv2.imdecode(np.frombuffer(data, np.uint8), flag) \
                    if len(data) else None
            except cv2.error:   # e.g. a header claiming 2^30+ pixels
                img = None
        if img is None:
            raise JcdlError(name, "cannot decode the image")
        return self.resize(img, name)

    def resize(self, img, name="image"):
        """An H x W (x C) uint8 array at ``file_size``, resized with
        OpenCV's bilinear resize as convert_imageset_r does."""
        import cv2  # noqa: PLC0415
        h, w = self.file_size
        if img.shape[:2] != (h, w):
            try:
                img = cv2.resize(img, (w, h))
            except cv2.error:
                raise JcdlError(name, f"cannot resize the image to {w}x{h}") \
                    from None
        return img.reshape(h, w, -1)

    def __call__(self, image, name="image"):
        """H x W x C uint8 -> float32 (C, H, W) ready for the net."""
        img = np.asarray(image)
        if img.ndim == 2:
            img = img[:, :, None]
        x = img.transpose(2, 0, 1).astype(np.float32)
        C, H, W = self.shape
        if x.shape[0] != C:
            raise JcdlError(name, f"{x.shape[0]} channels, but the net "
                            f"takes {C}")
        if self.mean is not None:
            if x.shape != self.mean.shape and not self.per_channel:
                raise JcdlError(name, f"image of {x.shape[2]}x{x.shape[1]}, "
                                f"but the mean is {self.mean.shape[2]}x"
                                f"{self.mean.shape[1]}")
            x = x - self.mean
        if x.shape[1] < H or x.shape[2] < W:
            raise JcdlError(name, f"image of {x.shape[2]}x{x.shape[1]} is "
                            f"smaller than the net input {W}x{H}")
        h_off, w_off = (x.shape[1] - H) // 2, (x.shape[2] - W) // 2
        return np.ascontiguousarray(x[:, h_off:h_off + H, w_off:w_off + W])


def forward(net, batch):
    """The net's output for a float32 (n, C, H, W) batch, as (n, K)."""
    data = net.blobs[net.inputs[0]]
    data.reshape(*batch.shape)
    net.reshape()
    data.data[...] = batch
    out = net.forward()[net.outputs[-1]]
    return np.array(out.reshape(len(batch), -1), dtype=np.float64)


# --------------------------------------------------------------- the model

class Model:
    """A trained net ready to predict: the pycaffe ``net``, its ``classes``
    (K names), and the ``prep`` (Preprocessor) training used. Made by
    load_model."""

    def __init__(self, net, classes, prep, model_path, weights_path):
        self.net, self.classes, self.prep = net, list(classes), prep
        self.model_path, self.weights_path = Path(model_path), \
            Path(weights_path)

    @property
    def K(self):
        return len(self.classes)

    def image(self, image, name=None):
        """An image as the net's files are read: a path, the bytes of an
        image file, or an H x W x C uint8 BGR array, resized to the size
        training stored images at (see Preprocessor)."""
        if isinstance(image, (str, os.PathLike)):
            return self.prep.load(image)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return self.prep.decode(image, name or "image")
        img = np.asarray(image)
        if img.dtype != np.uint8:
            raise JcdlError(name or "image", f"{img.dtype} values: give uint8 "
                            "BGR images (0-255, as OpenCV reads them); "
                            "caffe.io.load_image's RGB floats in [0, 1] are "
                            "(img[:, :, ::-1] * 255).round().astype('uint8')")
        if img.ndim not in (2, 3):
            raise JcdlError(name or "image", f"an array of shape {img.shape}:"
                            " give H x W x C images (a list of them)")
        return self.prep.resize(img, name or "image")

    def predict(self, images, batch=32, names=None):
        """Emotion distributions, float64 (n, K), of images (paths, bytes of
        image files or BGR arrays; see ``image``), ``batch`` at a time."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        if isinstance(images, (str, os.PathLike, bytes)) or (
                isinstance(images, np.ndarray) and images.ndim < 4):
            images = [images]          # one image, not a sequence of them
        images = list(images)
        names = names or [str(im) if isinstance(im, (str, os.PathLike))
                          else f"image {i}" for i, im in enumerate(images)]
        return self.predict_arrays(
            (self.image(im, n) for im, n in zip(images, names)), batch,
            names)

    def predict_arrays(self, arrays, batch=32, names=None):
        """Distributions of images already at the stored size (an LMDB's
        records, or ``image``'s results): mean, crop, forward."""
        outs, pending = [], []  # one batch of inputs in memory at a time
        for i, img in enumerate(arrays):
            pending.append(self.prep(img, names[i] if names else
                                     f"image {i}"))
            if len(pending) == batch:
                outs.append(self._forward(pending))
                pending = []
        if pending:
            outs.append(self._forward(pending))
        return np.concatenate(outs) if outs else np.zeros((0, self.K))

    def _forward(self, inputs):
        Q = forward(self.net, np.stack(inputs))
        if not np.all(np.isfinite(Q)):
            raise JcdlError(self.weights_path, "the net's output is not "
                            "finite (NaN): the weights hold NaN or inf (a "
                            "training that diverged?)")
        if not (np.all(Q >= 0) and np.allclose(Q.sum(axis=1), 1, atol=1e-3)):
            raise JcdlError(self.model_path, f"output '{self.net.outputs[-1]}'"
                            " is not a distribution per image: end the "
                            "deploy net with a Softmax")
        return Q

    def records(self, names, Q):
        """What ``jcdl predict`` prints, one dict per image: ``image`` (and
        ``image_bytes``: see name_fields), ``distribution`` ({emotion: q})
        and ``dominant``."""
        if len(names) != len(Q):
            raise ValueError(f"{len(names)} names for {len(Q)} predictions")
        return [{**name_fields(name),
                 "distribution": {c: float(v) for c, v in
                                  zip(self.classes, q)},
                 "dominant": self.classes[int(np.argmax(q))]}
                for name, q in zip(names, Q)]


def name_fields(name):
    """A file name as JSON takes it strictly: ``image``, valid Unicode
    (bytes that are not UTF-8 become U+FFFD), and only for a name that is
    not UTF-8 (an old Latin-1 archive's), ``image_bytes``: its exact bytes
    in hex. ``name``: a str whose bytes that are not UTF-8 are surrogates
    (os.fsdecode's), a path, or bytes."""
    text = valid_unicode(name)
    if text == os.fsdecode(name):
        return {"image": text}
    return {"image": text, "image_bytes": os.fsencode(name).hex()}


def valid_unicode(text):
    """Text (or bytes) with the bytes that are not UTF-8 (surrogates, in a
    str) as U+FFFD: what strict JSON takes."""
    return os.fsencode(text).decode("utf-8", "replace")


def load_model(model, weights, mean=None, resize=None, classes=None,
               gpu=None):
    """A Model of a deploy prototxt and its trained weights, checked before
    Caffe could abort: ``mean`` (file or (C, H, W) array) and ``resize``
    ((H, W) the training LMDB stored images at) as in training; ``classes``
    a classes file (or a list of K names); ``gpu`` an id, None for the
    CPU."""
    net = load_net(model, weights, gpu)
    K = output_count(net)
    if classes is None:
        names = default_classes(K)
    elif isinstance(classes, (str, os.PathLike)):
        names = read_classes(classes, K)
    elif len(classes) != K:
        raise JcdlError(model, f"{len(classes)} class names given, but the "
                        f"net outputs {K} values")
    else:
        names = list(classes)
    mean_arr = mean if mean is None or isinstance(mean, np.ndarray) \
        else read_mean(mean)
    try:
        prep = Preprocessor(input_shape(net), mean_arr, resize)
    except ValueError as e:
        where = model if mean is None or str(e).startswith("--resize") \
            else "mean" if isinstance(mean, np.ndarray) else mean
        raise JcdlError(where, str(e)) \
            from None
    return Model(net, names, prep, model, weights)


# ---------------------------------------------------------------- samples

def key_name(key):
    """A record's name: the path of an ``%08d_<path>`` key."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", errors="surrogateescape")
    m = re.fullmatch(r"\d{8}_(.+)", key, re.S)
    return m.group(1) if m else key


def db_samples(db):
    """(name, image, distribution) of each Datum of an LMDB, in key order."""
    from .lmdbread import datum_image, iter_datums  # noqa: PLC0415
    for key, datum in iter_datums(db):
        name = key_name(key)
        dist = np.asarray(datum.float_data, np.float64)
        if not (np.all(np.isfinite(dist)) and np.all(dist >= 0)
                and dist.sum() > 0):
            raise JcdlError(db, f"record '{name}' holds no valid "
                            f"distribution")
        yield name, datum_image(datum, f"{db}: record {name}"), \
            dist / dist.sum()


def list_samples(names, P, root, model):
    """(name, image, distribution) of each row of a list, the image read
    from ROOT as the model reads files."""
    for name, dist in zip(names, P):
        yield name, model.prep.load(image_path(root, name)), dist


def sample_images(names, db=None, root=None):
    """The images of these names as stored (an LMDB's records, or the files
    under ``root``), for showing beside their distributions."""
    import cv2  # noqa: PLC0415
    from .lmdbio import imread  # noqa: PLC0415
    if db is not None:
        wanted, found = set(names), {}
        for name, img, _ in db_samples(db):
            if name in wanted:
                found[name] = img
        missing = [n for n in names if n not in found]
        if missing:
            raise JcdlError(db, f"no record named '{missing[0]}'")
        return [found[n] for n in names]
    with quiet_opencv():
        return [imread(image_path(root, n), cv2.IMREAD_COLOR)
                for n in names]


# -------------------------------------------------------------------- CLI

def net_args(p):
    """The options every command that loads a trained net takes."""
    p.add_argument("--model", required=True,
                   help="deploy prototxt (an Input layer, ending in Softmax)")
    p.add_argument("--weights", required=True, help="trained .caffemodel")
    p.add_argument("--mean", help="mean image (.binaryproto or .npy) used "
                                  "in training; files are resized to its "
                                  "size, then centre-cropped to the input")
    p.add_argument("--resize", type=int_arg(1, 65535), nargs=2,
                   metavar=("HEIGHT", "WIDTH"),
                   help="the size the training LMDB stored images at "
                   "(convert's --resize_height/--resize_width): image files "
                   "are resized to it, then centre-cropped to the input. "
                   "Default: the mean's size; without a mean, the input "
                   "size (no crop)")
    p.add_argument("--classes", help="emotion names, one per line "
                                     "(classes.txt of 'jcdl prepare')")
    p.add_argument("--batch", type=int_arg(1, 4096), default=32,
                   help="images per forward (default 32)")
    p.add_argument("--gpu", type=int, help="GPU id (default: CPU)")


def model_from_args(args):
    return load_model(args.model, args.weights, args.mean, args.resize,
                      args.classes, args.gpu)


def cmd_predict(args):
    model = model_from_args(args)
    Q = model.predict(args.images, batch=args.batch)
    for record in model.records(args.images, Q):
        print(json.dumps(record))


def register(sub):
    p = sub.add_parser(
        "predict", help="emotion distributions of images",
        description="Prints one JSON line per image: {\"image\", "
                    "\"distribution\": {emotion: p}, \"dominant\"}. A "
                    "name that is not UTF-8 is shown with U+FFFD for its "
                    "other bytes, and \"image_bytes\" holds its exact bytes "
                    "in hex.")
    net_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=cmd_predict)
