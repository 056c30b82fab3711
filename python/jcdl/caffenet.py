"""pycaffe and the Caffe files around it: importing it quietly, checking
net prototxts and caffemodels before Caffe could abort on them, reading
mean files, and choosing the device."""
import ctypes
import math
import os
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from .errors import JcdlError
from .files import read_text


def import_caffe():
    """pycaffe, with Caffe's INFO logging off unless GLOG_minloglevel says
    otherwise."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe  # noqa: PLC0415  (slow: imported only where needed)
    return caffe


def caffe_pb2():
    """Caffe's protobuf messages (caffe.proto.caffe_pb2)."""
    return import_caffe().proto.caffe_pb2


def read_text_proto(path, message, what):
    """Parses a prototxt into ``message``; a syntax error names its line."""
    from google.protobuf import text_format  # noqa: PLC0415
    text = read_text(path, what)
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as e:  # "LINE:COLUMN : what"
        raise JcdlError(path, f"not a valid {what}: "
                        f"{str(e).split(' : ', 1)[-1]}",
                        line=e.GetLine()) from None
    return message


def read_mean(path):
    """The mean image as float32 (C, H, W), from ``.binaryproto``
    (compute_image_mean / ``jcdl mean``) or ``.npy``."""
    path = Path(path)
    if not path.is_file():
        raise JcdlError(path, "no such mean file")
    if path.suffix == ".npy":
        try:
            mean = np.load(path)
        except Exception:  # noqa: BLE001  (numpy's many reasons)
            raise JcdlError(path, "not a .npy array") from None
    else:
        blob = caffe_pb2().BlobProto()
        try:
            blob.ParseFromString(path.read_bytes())
        except DecodeError:
            raise JcdlError(path, "not a .binaryproto mean file") from None
        shape, _ = blob_shape(blob)
        values = blob.data if len(blob.data) else blob.double_data
        if not len(values) or math.prod(shape) != len(values):
            raise JcdlError(path, "not a .binaryproto mean file")
        mean = np.asarray(values, np.float32).reshape(shape)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise JcdlError(path, f"the mean has shape {mean.shape}, "
                        f"not (C, H, W)")
    return mean.astype(np.float32)


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
    net = caffe_pb2().NetParameter()
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

def loaded_libraries():
    """The files this process has mapped (its shared libraries)."""
    with open("/proc/self/maps") as f:
        return sorted({line.split()[-1] for line in f
                       if len(line.split()) > 5})


def cuda_libraries():
    """The CUDA runtime and cuBLAS libraries this process loaded with
    pycaffe: none for a CPU-only Caffe."""
    return [p for p in loaded_libraries()
            if "/libcudart" in p or "/libcublas" in p]


def gpu_count(libraries):
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
    count = gpu_count(libraries)
    if count is not None and not 0 <= gpu < count:
        raise JcdlError(where, f"--gpu {gpu}: {count} GPU(s) visible")
    caffe.set_device(gpu)
    caffe.set_mode_gpu()
