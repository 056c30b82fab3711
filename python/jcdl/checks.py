"""What ``caffe train`` would abort on, checked before Caffe starts: the
solver's fields, the nets it trains and tests (layer types, bottoms, K of
each LMDB against the net's output count, crops and means against the
LMDB's images), and weights and solverstates that must fit the net. Each
problem is one JcdlError naming the file."""
import math
import os
from pathlib import Path

from google.protobuf.message import DecodeError

from .errors import INT32_MAX, JcdlError
from .caffenet import (blob_count, blob_shape, caffe_pb2, check_layer_graph,
                       fmt_shape, net_layers, read_mean, read_text_proto,
                       shape_fits)
from .lmdbread import db_info, scan_records
from .netgen import LR_POLICIES

# loss layers whose bottoms are (logits, distribution label)
DISTRIBUTION_LOSSES = ("SoftmaxWithKLLoss", "SoftmaxWithDominantLoss",
                       "SoftmaxWithMyKLLoss")


# ------------------------------------------------------ solver and nets

def read_solver(path):
    """The SolverParameter of a solver prototxt."""
    return read_text_proto(path, caffe_pb2().SolverParameter(), "solver file")


def solver_nets(solver, solver_path):
    """The nets a solver trains and tests, as Caffe picks them: (train,
    tests), each net a (NetParameter, file it comes from)."""
    pb = caffe_pb2()

    def load(path):
        if not Path(path).is_file():
            raise JcdlError(path, f"no such net file (named in {solver_path};"
                            " caffe reads it relative to the working "
                            "directory)")
        return (read_text_proto(path, pb.NetParameter(), "net file"),
                str(path))

    general = None
    if solver.HasField("train_net_param"):
        train = (solver.train_net_param, str(solver_path))
    elif solver.train_net:
        train = load(solver.train_net)
    elif solver.HasField("net_param"):
        train = general = (solver.net_param, str(solver_path))
    elif solver.net:
        train = general = load(solver.net)
    else:
        raise JcdlError(solver_path, "the solver names no net ('net: ...')")
    tests = [(p, str(solver_path)) for p in solver.test_net_param]
    tests += [load(f) for f in solver.test_net]
    if general is not None:
        tests += [general] * (len(solver.test_iter) - len(tests))
    if len(solver.test_iter) != len(tests):
        raise JcdlError(solver_path, f"{len(tests)} test nets but "
                        f"{len(solver.test_iter)} test_iter values")
    if tests and solver.test_interval <= 0:
        raise JcdlError(solver_path, "the solver has test nets but no "
                        "test_interval > 0")
    if any(n < 1 for n in solver.test_iter):
        raise JcdlError(solver_path, "test_iter must be at least 1")
    check_solver_fields(solver, solver_path, len(tests))
    return train, tests


# What Caffe's solvers understand; anything else aborts it mid-run.
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")


def solver_type(solver, solver_path):
    """The solver's type, from ``type`` or the legacy ``solver_type``."""
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise JcdlError(solver_path, "give the solver's type by 'type' "
                            "or by the old 'solver_type', not both")
        return SOLVER_TYPES[solver.solver_type]  # the enum's order
    if solver.type not in SOLVER_TYPES:
        raise JcdlError(solver_path, f"unknown solver type '{solver.type}' "
                        f"(Caffe's are {', '.join(SOLVER_TYPES)})")
    return solver.type


def check_solver_fields(solver, solver_path, test_nets):
    """What Caffe's solver CHECKs, most of them only when training reaches
    them."""
    solver_type(solver, solver_path)
    policy = solver.lr_policy
    if policy not in LR_POLICIES:
        raise JcdlError(solver_path, f"unknown lr_policy '{policy}' "
                        f"(Caffe's are {', '.join(LR_POLICIES)})")
    if policy in ("step", "sigmoid") and solver.stepsize <= 0:
        raise JcdlError(solver_path, f"lr_policy '{policy}' needs a "
                        "stepsize > 0")
    if policy not in ("fixed", "poly") and solver.gamma < 0:
        raise JcdlError(solver_path, "gamma must not be negative")
    if solver.max_iter < 0:
        raise JcdlError(solver_path, "max_iter must not be negative")
    if solver.average_loss < 1:
        raise JcdlError(solver_path, "average_loss must be at least 1")
    if solver.test_state and len(solver.test_state) != test_nets:
        raise JcdlError(solver_path, f"{len(solver.test_state)} test_state "
                        f"entries for {test_nets} test nets")


def check_layers(layers, net_file, inputs=()):
    """What Caffe would abort on while building one phase's net (see
    check_layer_graph), and a batch of 0."""
    check_layer_graph(layers, net_file, inputs)
    for layer in layers:
        if layer.type == "Data" and layer.data_param.batch_size < 1:
            raise JcdlError(net_file, f"layer '{layer.name}': batch_size "
                            "must be at least 1")


def _num_output(layer):
    if layer.type == "InnerProduct":
        return layer.inner_product_param.num_output
    if layer.type in ("Convolution", "Deconvolution"):
        return layer.convolution_param.num_output
    return None


def _producer(layers, before, blob):
    """The last layer before index ``before`` with ``blob`` among its tops."""
    for layer in reversed(layers[:before]):
        if blob in layer.top:
            return layer
    return None


def check_net(net, net_file, phase, state=None):
    """Checks the Data layers and the distribution losses of one phase of a
    net. Returns (logits, label) blob names of its first distribution loss,
    or None."""
    if not net.layer:
        return None  # a V1 net ('layers'): Caffe upgrades it, not checked
    pb = caffe_pb2()
    layers = net_layers(net, phase, state)
    check_layers(layers, net_file, net.input)
    label_k = {}  # label top -> (K, LMDB)
    for layer in layers:
        if layer.type != "Data":
            continue
        source = layer.data_param.source
        where = f"(source of layer '{layer.name}' in {net_file})"
        if not source:
            raise JcdlError(net_file, f"layer '{layer.name}' has no source")
        if layer.data_param.backend != pb.DataParameter.LMDB:
            if not Path(source).exists():
                raise JcdlError(source, f"no such database {where}")
            continue
        if not Path(source).exists():
            raise JcdlError(source, f"no such LMDB {where}")
        if not Path(source).is_dir():
            raise JcdlError(source, f"Caffe reads an LMDB folder: name the "
                            f"folder that holds data.mdb {where}")
        info = db_info(source)
        lock = Path(source) / "lock.mdb"
        read_only_fs = os.statvfs(source).f_flag & os.ST_RDONLY  # no lock
        if not read_only_fs and not os.access(
                lock if lock.exists() else source, os.W_OK):
            raise JcdlError(source, "Caffe opens an LMDB by writing its "
                            "lock.mdb, which cannot be written here "
                            f"{where}: copy the LMDB somewhere writable")
        if len(layer.top) > 1:
            label_k[layer.top[1]] = (info["k"], source)
        _check_transform(layer, info, source, net_file)
    found = None
    for i, layer in enumerate(layers):
        if layer.type not in DISTRIBUTION_LOSSES:
            continue
        if len(layer.bottom) != 2:
            raise JcdlError(net_file, f"layer '{layer.name}' ({layer.type}) "
                            f"takes 2 bottoms (logits, label), not "
                            f"{len(layer.bottom)}")
        logits, label = layer.bottom[:2]
        found = found or (logits, label)
        if label not in label_k:
            continue
        k, source = label_k[label]
        if k == 0:
            raise JcdlError(source, f"the LMDB has integer labels (no "
                            f"float_data), but layer '{layer.name}' "
                            f"({layer.type}) in {net_file} needs a "
                            "distribution per image")
        producer = _producer(layers, i, logits)
        outputs = producer is not None and _num_output(producer)
        if outputs and outputs != k:
            raise JcdlError(net_file, f"layer '{producer.name}' has "
                            f"num_output {outputs}, but the LMDB {source} "
                            f"holds K = {k} values per label "
                            f"(for loss '{layer.name}')")
    return found


def _check_transform(layer, info, source, net_file):
    tp = layer.transform_param
    crop = tp.crop_size
    if crop and crop > min(info["height"], info["width"]):
        raise JcdlError(net_file, f"layer '{layer.name}': crop_size {crop} "
                        f"is larger than the {info['height']}x"
                        f"{info['width']} images of {source}")
    mean_shape = None
    if tp.mean_file:
        mean = Path(tp.mean_file)
        if not mean.is_file():
            raise JcdlError(mean, f"no such mean file (layer '{layer.name}' "
                            f"in {net_file})")
        shape = read_mean(mean).shape
        want = (info["channels"], info["height"], info["width"])
        if tp.force_color or tp.force_gray:  # channels set by the layer
            want = want[1:]
            shape = shape[1:]
        if shape != want:
            raise JcdlError(mean, f"mean of shape {'x'.join(map(str, shape))}"
                            f", but the images of {source} are "
                            f"{'x'.join(map(str, want))}")
        mean_shape = shape
    _check_batch(layer, info, net_file)
    _check_records(layer, info, source, net_file, mean_shape)


def _check_batch(layer, info, net_file):
    """Caffe counts a blob's values in an int: a batch of N x C x H x W
    beyond 2^31 - 1 aborts it (blob size exceeds INT_MAX)."""
    crop = layer.transform_param.crop_size
    h, w = (crop, crop) if crop else (info["height"], info["width"])
    batch = layer.data_param.batch_size
    count = batch * info["channels"] * h * w
    if count > INT32_MAX or batch * max(info["k"], 1) > INT32_MAX:
        raise JcdlError(net_file, f"layer '{layer.name}': batch_size {batch} "
                        f"of {info['channels']}x{h}x{w} images is {count} "
                        f"values, more than Caffe's blobs can count "
                        f"({INT32_MAX}): lower batch_size")


_SCANNED = {}


def _check_records(layer, info, source, net_file, mean_shape):
    """Every record against what Caffe's Data layer CHECKs mid-run: the
    first record's K, the mean's size, at least the crop (one pass over the
    records' headers)."""
    tp = layer.transform_param
    fixed = tp.force_color or tp.force_gray   # channels set by the layer
    crop = tp.crop_size
    data = Path(source) / "data.mdb"
    id_ = (str(data.resolve()), data.stat().st_mtime_ns, mean_shape, crop,
           fixed)
    if id_ in _SCANNED:
        return
    first = None
    for key, (c, h, w), k in scan_records(source):
        shape = (h, w) if fixed else (c, h, w)
        first = first or shape
        if k != info["k"]:
            raise JcdlError(source, f"record {key} has {k} label values, but "
                            f"the first record has {info['k']} (Caffe would "
                            "abort mid-run): one K in an LMDB")
        if crop and crop > min(h, w):
            raise JcdlError(net_file, f"layer '{layer.name}': crop_size "
                            f"{crop} is larger than record {key} ({h}x{w}) "
                            f"of {source}")
        want = mean_shape if mean_shape is not None else \
            (first[:1] + shape[1:] if crop and not fixed else
             None if crop else first)
        if want is not None and shape != want:
            what = (f"the mean {tp.mean_file}" if mean_shape is not None
                    else "the first record")
            raise JcdlError(source, f"record {key} is "
                            f"{'x'.join(map(str, shape))} "
                            f"({'HxW' if fixed else 'CxHxW'}), but {what} is "
                            f"{'x'.join(map(str, want))} (layer "
                            f"'{layer.name}' in {net_file}; Caffe would abort "
                            "mid-run): convert with --resize_height and "
                            "--resize_width")
    _SCANNED[id_] = True


# ----------------------------------------------------- weights and state

def read_solverstate(path):
    """(SolverState, the path of its caffemodel). ``learned_net`` is read
    like Caffe (relative to the working directory), falling back to the
    file of that name beside the solverstate."""
    path = Path(path)
    if not path.is_file():
        raise JcdlError(path, "no such solverstate")
    if path.suffix == ".h5":
        raise JcdlError(path, "HDF5 solverstates are not supported by jcdl "
                        "train (use caffe train --snapshot)")
    state = caffe_pb2().SolverState()
    try:
        state.ParseFromString(path.read_bytes())
    except DecodeError:
        raise JcdlError(path, "cannot parse: damaged or not a "
                        ".solverstate") from None
    if not state.HasField("iter") or not state.learned_net:
        raise JcdlError(path, "damaged or not a .solverstate (no iteration "
                        "or caffemodel recorded)")
    model = Path(state.learned_net)
    if not model.is_file():
        model = path.parent / model.name
    if not model.is_file():
        raise JcdlError(path, f"its caffemodel {state.learned_net} is "
                        "missing")
    return state, model


def check_history(path, state, net, kind):
    """The solverstate's history blobs must match the net's parameters: one
    per parameter, two for Adam and AdaDelta (``kind``, the solver type)."""
    shapes, seen = [], set()
    for layer in net.layers:
        for blob in layer.blobs:
            ptr = blob.data.ctypes.data
            if ptr not in seen:  # shared parameters count once, as in Caffe
                seen.add(ptr)
                shapes.append(tuple(blob.data.shape))
    history = []
    for blob in state.history:
        history.append((*blob_shape(blob), blob_count(blob)))
    per = 2 if kind in ("Adam", "AdaDelta") else 1
    if len(history) != per * len(shapes):
        raise JcdlError(path, f"has {len(history)} history blobs, but the "
                        f"net's {kind} solver keeps {per * len(shapes)} "
                        "(damaged, or from another net or solver type?)")
    for (shape, legacy, count), target in zip(history, shapes * per):
        if not shape_fits(shape, legacy, target) or count != math.prod(shape):
            raise JcdlError(path, f"a history blob of shape {fmt_shape(shape)} "
                            f"({count} values) does not match the net's "
                            f"parameter {fmt_shape(target)} (damaged, or from "
                            "another net?)")


def set_learned_net(state_path, model):
    """Makes a binary solverstate name ``model`` as its caffemodel by
    appending a second ``learned_net`` field: protobuf parsers keep the last
    value of a field that occurs twice, and the file (as large as the net)
    is not rewritten."""
    field = caffe_pb2().SolverState(learned_net=str(model)).SerializeToString()
    with open(state_path, "ab") as f:
        f.write(field)
