"""Using a trained net: ``jcdl evaluate`` (a test LMDB or list against its
ground truth) and ``jcdl predict`` (emotion distributions of images).

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
import re
import sys
from pathlib import Path

import numpy as np

from .common import (JcdlError, blob_shape, check_layer_graph,
                     check_output_file, check_weights, import_caffe, int_arg,
                     net_layers, output_folder, quiet_opencv,
                     read_caffemodel, read_distribution_file, read_text,
                     use_device, write_distribution_file)
from . import metrics

N_EXAMPLES = 6  # images shown in distributions.png


# ---------------------------------------------------------------- the net

def _caffe_pb2():
    from caffe.proto import caffe_pb2  # noqa: PLC0415
    return caffe_pb2


def check_deploy(path):
    """Checks what Python can check of a deploy prototxt before Caffe parses
    it (Caffe aborts on errors): it parses, its layer types exist, bottoms
    are produced, and it has an input."""
    caffe_pb2 = _caffe_pb2()
    from google.protobuf import text_format  # noqa: PLC0415
    path = Path(path)
    text = read_text(path, "model (deploy prototxt)")
    param = caffe_pb2.NetParameter()
    try:
        text_format.Merge(text, param)
    except text_format.ParseError as e:
        line = e.GetLine() if hasattr(e, "GetLine") else None
        raise JcdlError(path, f"not a Caffe net prototxt: {e}", line) from None
    layers = net_layers(param, caffe_pb2.TEST)
    check_layer_graph(layers, path, param.input)
    has_input = bool(param.input) or any(layer.type == "Input"
                                         for layer in layers)
    if not has_input:
        raise JcdlError(path, "the net has no Input layer: give the deploy "
                        "prototxt (made by 'jcdl netgen'), not train_val")


def load_net(deploy, weights, gpu=None):
    """The deploy net in TEST phase with trained weights, after checking
    both files so that no Caffe CHECK aborts the process."""
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

def read_mean(path):
    """The mean image as float32 (C, H, W), from ``.binaryproto``
    (compute_image_mean / ``jcdl mean``) or ``.npy``."""
    path = Path(path)
    if not path.is_file():
        raise JcdlError(path, "no such mean file")
    if path.suffix == ".npy":
        try:
            mean = np.load(path)
        except Exception:
            raise JcdlError(path, "not a .npy array") from None
    else:
        blob = _caffe_pb2().BlobProto()
        try:
            blob.ParseFromString(path.read_bytes())
        except Exception:
            raise JcdlError(path, "not a .binaryproto mean file") from None
        shape, _ = blob_shape(blob)
        values = blob.data if len(blob.data) else blob.double_data
        if not len(values) or int(np.prod(shape)) != len(values):
            raise JcdlError(path, "not a .binaryproto mean file")
        mean = np.asarray(values, np.float32).reshape(shape)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise JcdlError(path, f"the mean has shape {mean.shape}, "
                        f"not (C, H, W)")
    return mean.astype(np.float32)


class Preprocessor:
    """Caffe's TEST-phase transform for a net input of shape (C, H, W), an
    optional mean image (C, Hm, Wm) and the optional (H, W) images were
    stored at (``size``)."""

    def __init__(self, shape, mean=None, size=None):
        self.shape = tuple(shape)
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.size = None if size is None else tuple(size)
        if self.mean is not None and self.mean.shape[0] != self.shape[0]:
            raise ValueError(f"the mean has {self.mean.shape[0]} channels, "
                             f"the net input {self.shape[0]}")
        if self.mean is not None and self.size is not None and \
                self.mean.shape[1:] != self.size:
            raise ValueError(f"the mean is {self.mean.shape[1]}x"
                             f"{self.mean.shape[2]} (HxW), but --resize "
                             f"says {self.size[0]}x{self.size[1]}")

    @property
    def file_size(self):
        """(H, W) that images read from files are resized to."""
        if self.size is not None:
            return self.size
        return (self.mean.shape[1:] if self.mean is not None
                else self.shape[1:])

    def load(self, path):
        """An image file as H x W x C uint8 BGR (grey for 1-channel nets),
        resized to ``file_size``."""
        import cv2  # noqa: PLC0415
        path = Path(path)
        if not path.is_file():
            raise JcdlError(path, "no such image")
        flag = cv2.IMREAD_GRAYSCALE if self.shape[0] == 1 else cv2.IMREAD_COLOR
        with quiet_opencv():
            img = cv2.imread(str(path), flag)
        if img is None:
            raise JcdlError(path, "cannot decode the image")
        h, w = self.file_size
        if img.shape[:2] != (h, w):
            try:
                img = cv2.resize(img, (w, h))
            except cv2.error:
                raise JcdlError(path, f"cannot resize the image to {w}x{h}") \
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
            if x.shape != self.mean.shape:
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


def check_distributions(Q, model, blob):
    """The output must be a distribution per image (a Softmax)."""
    if not (np.all(Q >= 0) and np.allclose(Q.sum(axis=1), 1, atol=1e-3)):
        raise JcdlError(model, f"output '{blob}' is not a distribution per "
                        f"image: end the deploy net with a Softmax")


def predict_images(net, images, mean=None, batch=32, size=None):
    """Emotion distributions (n, K) of images: file paths, or H x W x C
    uint8 BGR arrays (resized like files). mean: array or file; size: the
    (H, W) images were stored at in training (see Preprocessor)."""
    if mean is not None and not isinstance(mean, np.ndarray):
        mean = read_mean(mean)
    prep = Preprocessor(input_shape(net), mean, size)
    import cv2  # noqa: PLC0415
    outs, pending = [], []   # a batch at a time in memory, outputs kept
    for i, image in enumerate(images):
        if isinstance(image, (str, Path)):
            img = prep.load(image)
            name = str(image)
        else:
            h, w = prep.file_size
            img = np.asarray(image)
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h))
            name = f"image {i}"
        pending.append(prep(img, name))
        if len(pending) == batch:
            outs.append(forward(net, np.stack(pending)))
            pending = []
    if pending:
        outs.append(forward(net, np.stack(pending)))
    K = output_count(net)
    return np.concatenate(outs) if outs else np.zeros((0, K))


# ---------------------------------------------------------------- samples

def key_name(key):
    """A record's name: the path of an ``%08d_<path>`` key."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", errors="replace")
    m = re.fullmatch(r"\d{8}_(.+)", key, re.S)
    return m.group(1) if m else key


def db_samples(db):
    """(name, image, distribution) of each Datum of an LMDB."""
    from .lmdbio import datum_image, iter_datums  # noqa: PLC0415
    for key, datum in iter_datums(db):
        name = key_name(key)
        dist = np.asarray(datum.float_data, np.float64)
        if not (np.all(np.isfinite(dist)) and np.all(dist >= 0)
                and dist.sum() > 0):
            raise JcdlError(db, f"record '{name}' holds no valid "
                            f"distribution")
        yield name, datum_image(datum, f"{db}: record {name}"), \
            dist / dist.sum()


def list_samples(names, P, root, prep):
    for name, dist in zip(names, P):
        yield name, prep.load(Path(root) / name), dist


# --------------------------------------------------------------- evaluate

def _check_k(source, K, K_net, model):
    if K != K_net:
        raise JcdlError(source, f"the ground truth has {K} values per "
                        f"distribution, but {model} outputs {K_net}")


def evaluate(model, weights, db=None, list_path=None, root=None, mean=None,
             classes=None, out=None, batch=32, gpu=None, predictions=None,
             size=None):
    """Predicts every image of an LMDB (``db``) or of a list with its image
    ROOT, and returns metrics.summary of ground truth vs predictions. With
    ``out``: predictions.txt, metrics.write_reports' files, confusion.png and
    distributions.png there (a new folder appears only when complete).
    ``predictions``: also write the predictions file there."""
    from tqdm import tqdm  # noqa: PLC0415
    if (db is None) == (list_path is None) or \
            (list_path is not None and root is None):
        raise ValueError("give either db, or list_path and root")
    if batch < 1:
        raise JcdlError("--batch", f"{batch} is not a positive batch size")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise JcdlError(out, "exists and is not a folder")
    if predictions is not None:
        check_output_file(predictions, list_path, model, weights, mean,
                          classes)
    if list_path is not None:
        names, P = read_distribution_file(list_path, what="list file")
        if not Path(root).is_dir():
            raise JcdlError(root, "no such image folder")
    elif not Path(db).exists():
        raise JcdlError(db, "no such LMDB")  # before the slow net loading
    net = load_net(model, weights, gpu)
    K_net = output_count(net)
    class_names = (metrics.read_class_names(classes, K_net) if classes
                   else metrics.default_class_names(K_net))
    mean_arr = read_mean(mean) if mean is not None else None
    try:
        prep = Preprocessor(input_shape(net), mean_arr, size)
    except ValueError as e:
        raise JcdlError(mean, str(e)) from None
    if list_path is not None:
        _check_k(list_path, P.shape[1], K_net, model)
        samples = list_samples(names, P, root, prep)
        total = len(names)
    else:
        from .lmdbio import db_info  # noqa: PLC0415
        info = db_info(db)
        if not info["k"]:
            raise JcdlError(db, "no distribution (float_data) in its "
                            "records: make it with 'jcdl convert' or "
                            "convert_imageset_r")
        _check_k(db, info["k"], K_net, model)
        samples = db_samples(db)
        total = info["n"]

    names_out, P_out, Q_parts, examples, pending = [], [], [], [], []

    def flush():
        Q = forward(net, np.stack(pending))
        check_distributions(Q, model, net.outputs[-1])
        Q_parts.append(Q)
        pending.clear()

    with tqdm(total=total, desc="evaluate", unit="img", disable=None,
              file=sys.stderr) as bar:
        for name, img, dist in samples:
            if len(dist) != K_net:
                raise JcdlError(db, f"record '{name}' has {len(dist)} "
                                f"values, but {model} outputs {K_net}")
            pending.append(prep(img, name))
            names_out.append(name)
            P_out.append(dist)
            if len(examples) < N_EXAMPLES:
                examples.append(img)
            if len(pending) == batch:
                flush()
            bar.update(1)
        if pending:
            flush()
    P, Q = np.asarray(P_out), np.concatenate(Q_parts)

    if predictions is not None:
        write_distribution_file(predictions, names_out, Q)
    if out is None:
        return metrics.summary(P, Q)
    with output_folder(out) as tmp:
        result = write_outputs(tmp, names_out, P, Q, class_names, examples)
    return result


def write_outputs(out_dir, names, P, Q, class_names, examples=None):
    """predictions.txt, the reports of metrics.write_reports, confusion.png
    and distributions.png in out_dir; returns the summary."""
    from . import plot  # noqa: PLC0415
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_distribution_file(out_dir / "predictions.txt", names, Q)
    result = metrics.write_reports(out_dir, P, Q, class_names)
    plot.plot_confusion(metrics.confusion(P, Q), class_names,
                        out_dir / "confusion.png")
    plot.plot_distributions(names, P, Q, class_names,
                            out_dir / "distributions.png", n=N_EXAMPLES,
                            images=examples)
    return result


# -------------------------------------------------------------------- CLI

def cmd_evaluate(args):
    if args.db is None and (args.list is None or args.root is None):
        raise JcdlError("evaluate", "give --db DB, or --list LIST and "
                        "--root ROOT")
    if args.db is not None and (args.list or args.root):
        raise JcdlError("evaluate", "give --db, or --list and --root, "
                        "not both")
    result = evaluate(args.model, args.weights, db=args.db,
                      list_path=args.list, root=args.root, mean=args.mean,
                      size=args.resize,
                      classes=args.classes, out=args.out, batch=args.batch,
                      gpu=args.gpu, predictions=args.predictions)
    print(metrics.to_json(result))


def cmd_predict(args):
    net = load_net(args.model, args.weights, args.gpu)
    K = output_count(net)
    class_names = (metrics.read_class_names(args.classes, K) if args.classes
                   else metrics.default_class_names(K))
    mean = read_mean(args.mean) if args.mean else None
    try:
        Preprocessor(input_shape(net), mean, args.resize)
    except ValueError as e:
        raise JcdlError(args.mean, str(e)) from None
    Q = predict_images(net, args.images, mean, batch=args.batch,
                       size=args.resize)
    check_distributions(Q, args.model, net.outputs[-1])
    for image, q in zip(args.images, Q):
        print(json.dumps({
            "image": image,
            "distribution": {c: float(v) for c, v in zip(class_names, q)},
            "dominant": class_names[int(np.argmax(q))]}))


def _net_args(p):
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


def register(sub):
    p = sub.add_parser(
        "evaluate", help="measures of a trained net on a test set",
        description="Predicts the emotion distribution of every image of a "
                    "test LMDB (--db) or list file with its image folder "
                    "(--list, --root), preprocessed as Caffe's TEST-phase "
                    "Data layer does (mean subtracted, centre crop), and "
                    "prints one JSON object: chebyshev, clark, canberra, "
                    "kl, cosine, intersection, accuracy (dominant emotion), "
                    "clark_over_sqrt_k, canberra_over_k, kl_infinite, n, k.")
    _net_args(p)
    p.add_argument("--db", help="test LMDB (jcdl convert / convert_imageset_r)")
    p.add_argument("--list", help="test list: 'path p_1 ... p_K' lines")
    p.add_argument("--root", help="folder the list's paths are relative to")
    p.add_argument("--out", help="write predictions.txt, metrics.{json,csv,"
                                 "md}, per_class.{csv,md}, confusion.csv, "
                                 "confusion.png, distributions.png here")
    p.add_argument("--predictions", help="also write the predictions "
                                         "('name q_1 ... q_K') to this file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "predict", help="emotion distributions of images",
        description="Prints one JSON line per image: {\"image\", "
                    "\"distribution\": {emotion: p}, \"dominant\"}.")
    _net_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=cmd_predict)
