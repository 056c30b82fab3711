"""``jcdl netgen``: the train/val net, the deploy net and the solver of JCDL,
generated with Caffe's NetSpec.

Two architectures:

- ``vgg16``: VGG-16 with the layer names of ``VGG_ILSVRC_16_layers.caffemodel``
  (conv1_1 ... conv5_3, fc6, fc7, their relu/pool/drop layers as in the
  Model Zoo deploy prototxt), so ``--weights`` loads the ImageNet weights;
  its fc8 is replaced by ``my_fc8`` with K outputs.
- ``small``: a little conv net (conv 16 5x5/2, pool, conv 32 3x3, pool,
  fc 64, my_fc8) that trains in seconds on the CPU.

Learning rates and initial values follow the original's
``vgg_train_val16_1.prototxt``: every weight + bias layer has lr_mult 1 / 2
(``my_fc8``: 10 / 20) and Caffe's default decay_mult of 1, so biases are
decayed too; ``my_fc8`` starts at zero (the original gives it no filler,
and Caffe's default filler is the constant 0). Two deliberate differences:
the TEST-phase data layer does not mirror (the original's ``mirror: true``
there made every logged test accuracy depend on random flips), and the
test batch is free (``--test-batch``).

Losses on the ``my_fc8`` logits and the (N, K) distribution label:
``jcdl`` = SoftmaxWithKLLoss (weight lambda) + SoftmaxWithDominantLoss
(weight 1 - lambda); ``kl`` = the first alone; ``softmax`` = the second
alone. The test phase adds top-1 Accuracy against the dominant emotion.

Paths (LMDBs, mean, the net in the solver, the snapshot prefix) are written
as given: like ``caffe train``, ``jcdl train`` reads them relative to the
directory it runs in, so give them relative to that directory.
"""
import argparse
import math
import os
import shlex
from contextlib import ExitStack
from pathlib import Path

from google.protobuf import text_format

from .errors import INT32_MAX, JcdlError, int_arg
from .files import atomic_output, folder_for
from .caffenet import caffe_pb2, import_caffe
from .lmdbread import db_info

ARCHS = ("vgg16", "small")
LOSSES = ("jcdl", "kl", "softmax")
DEFAULT_CROP = {"vgg16": 224, "small": 32}
DEFAULT_MODE = {"vgg16": "GPU", "small": "CPU"}

# The original recipe (ORIGINAL.md); the snapshot prefix and test_iter are
# derived from the other arguments when not given.
SOLVER_DEFAULTS = {
    "base_lr": 0.0001, "lr_policy": "step", "gamma": 0.1, "stepsize": 10000,
    "max_iter": 3000, "momentum": 0.9, "weight_decay": 0.005,
    "snapshot": 1000, "test_interval": 100, "display": 20,
    "snapshot_prefix": None, "mode": None, "test_iter": None, "seed": None,
}

# Values of Caffe's int32 fields; what they must be is checked with a message
INT32 = int_arg(-INT32_MAX - 1, INT32_MAX)

# The learning-rate policies of Caffe's SGD solvers.
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

# VGG-16 as in the Model Zoo: (block, convolutions, channels).
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512),
                (5, 3, 512))


def _params(deploy, lr=1):
    """ParamSpecs of a weight + bias layer: lr_mult lr / 2*lr, both decayed
    (decay_mult 1, Caffe's default, as in the original). The deploy net
    leaves them out."""
    if deploy:
        return {}
    return {"param": [dict(lr_mult=lr, decay_mult=1),
                      dict(lr_mult=2 * lr, decay_mult=1)]}


def _fillers(deploy, weight):
    if deploy:
        return {}
    return {"weight_filler": weight,
            "bias_filler": dict(type="constant", value=0)}


def _conv(bottom, num, kernel, deploy, stride=1, pad=0):
    caffe = import_caffe()
    geometry = {"kernel_size": kernel}
    if stride != 1:
        geometry["stride"] = stride
    if pad:
        geometry["pad"] = pad
    return caffe.layers.Convolution(
        bottom, num_output=num, **geometry, **_params(deploy),
        **_fillers(deploy, dict(type="xavier")))


def _fc(bottom, num, deploy, lr=1, weight_filler=None):
    caffe = import_caffe()
    return caffe.layers.InnerProduct(
        bottom, num_output=num, **_params(deploy, lr),
        **_fillers(deploy, weight_filler or dict(type="xavier")))


def _relu(bottom):
    return import_caffe().layers.ReLU(bottom, in_place=True)


def _max_pool(bottom, kernel=2, stride=2):
    caffe = import_caffe()
    return caffe.layers.Pooling(bottom, pool=caffe.params.Pooling.MAX,
                                kernel_size=kernel, stride=stride)


def _body(n, arch, classes, deploy):
    """Adds the layers from ``n.data`` to ``n.my_fc8`` to the NetSpec."""
    caffe = import_caffe()
    top = n.data
    if arch == "vgg16":
        for block, convs, channels in VGG16_BLOCKS:
            for i in range(1, convs + 1):
                name = f"{block}_{i}"
                setattr(n, f"conv{name}", _conv(top, channels, 3, deploy,
                                                pad=1))
                top = getattr(n, f"conv{name}")
                setattr(n, f"relu{name}", _relu(top))
            setattr(n, f"pool{block}", _max_pool(top))
            top = getattr(n, f"pool{block}")
        for i in (6, 7):
            setattr(n, f"fc{i}", _fc(top, 4096, deploy))
            top = getattr(n, f"fc{i}")
            setattr(n, f"relu{i}", _relu(top))
            setattr(n, f"drop{i}", caffe.layers.Dropout(
                top, dropout_ratio=0.5, in_place=True))
    else:
        # mean-subtracted pixels are in [-255, 255]: bring them near [-1, 1]
        # inside the net, so training and deploy preprocess alike
        n.input_scale = caffe.layers.Power(top, power_param=dict(
            scale=1.0 / 128))
        n.conv1 = _conv(n.input_scale, 16, 5, deploy, stride=2)
        n.relu1 = _relu(n.conv1)
        n.pool1 = _max_pool(n.conv1)
        n.conv2 = _conv(n.pool1, 32, 3, deploy, pad=1)
        n.relu2 = _relu(n.conv2)
        n.pool2 = _max_pool(n.conv2)
        n.fc3 = _fc(n.pool2, 64, deploy)
        n.relu3 = _relu(n.fc3)
        top = n.fc3
    n.my_fc8 = _fc(top, classes, deploy, lr=10,
                   weight_filler=dict(type="constant", value=0))
    return n.my_fc8


def _data_layer(source, batch, crop, mean, mirror, phase):
    """A NetParameter holding one Data layer (tops data, label) of a phase."""
    caffe = import_caffe()
    transform = {"crop_size": crop, "mirror": mirror}
    if mean:
        transform["mean_file"] = os.fspath(mean)
    n = caffe.NetSpec()
    n.data, n.label = caffe.layers.Data(
        source=os.fspath(source), backend=caffe.params.Data.LMDB, batch_size=batch,
        transform_param=transform, include=dict(phase=phase), ntop=2)
    return n.to_proto().layer[0]


def train_val_net(arch, loss, lam, classes, train_db, test_db, mean, batch,
                  test_batch, crop, mirror):
    """The NetParameter of train_val.prototxt."""
    caffe = import_caffe()
    L = caffe.layers
    n = caffe.NetSpec()
    # a stand-in for the two Data layers, replaced below (NetSpec names
    # layers after their tops, so two layers named "data" need splicing)
    n.data, n.label = L.Data(ntop=2)
    logits = _body(n, arch, classes, deploy=False)
    if loss in ("jcdl", "kl"):
        n.loss_kl = L.SoftmaxWithKLLoss(
            logits, n.label, loss_weight=lam if loss == "jcdl" else 1.0)
    if loss in ("jcdl", "softmax"):
        n.loss_dominant = L.SoftmaxWithDominantLoss(
            logits, n.label, loss_weight=1.0 - lam if loss == "jcdl" else 1.0)
    n.accuracy = L.Accuracy(logits, n.label, top_k=1,
                            include=dict(phase=caffe.TEST))
    body = n.to_proto()
    net = caffe_pb2().NetParameter()
    net.name = f"{arch}_{loss}"
    net.layer.extend([
        _data_layer(train_db, batch, crop, mean, mirror, caffe.TRAIN),
        _data_layer(test_db, test_batch, crop, mean, False, caffe.TEST)])
    net.layer.extend(body.layer[1:])
    return net


def deploy_net(arch, loss, classes, crop):
    """The NetParameter of deploy.prototxt: Input (1, 3, crop, crop) ...
    my_fc8, then the softmax ``prob``."""
    caffe = import_caffe()
    n = caffe.NetSpec()
    n.data = caffe.layers.Input(shape=dict(dim=[1, 3, crop, crop]))
    n.prob = caffe.layers.Softmax(_body(n, arch, classes, deploy=True))
    net = n.to_proto()
    net.name = f"{arch}_{loss}"
    return net


def solver_param(net_path, test_iter, opts):
    """The SolverParameter of solver.prototxt."""
    pb = caffe_pb2()
    s = pb.SolverParameter()
    s.net = net_path
    s.test_iter.append(test_iter)
    for name in ("test_interval", "base_lr", "display", "max_iter",
                 "lr_policy", "gamma", "momentum", "weight_decay",
                 "stepsize", "snapshot", "snapshot_prefix"):
        setattr(s, name, opts[name])
    s.solver_mode = getattr(pb.SolverParameter, opts["mode"])
    if opts["seed"] is not None:
        s.random_seed = opts["seed"]
    return s


def _db(path):
    """db_info of an LMDB, or None when it is not there (yet)."""
    if not Path(path).exists():
        return None
    return db_info(path)


def command_line(out_dir, arch, loss, lam, classes, train_db, test_db, mean,
                 batch, test_batch, crop, mirror, opts):
    """The ``jcdl netgen`` command that writes these files (for the header
    of each file)."""
    args = ["jcdl", "netgen", "--out", out_dir, "--arch", arch,
            "--loss", loss, "--lambda", repr(float(lam)), "--classes", classes,
            "--train-db", train_db, "--test-db", test_db]
    if mean:
        args += ["--mean", mean]
    args += ["--batch", batch, "--test-batch", test_batch, "--crop", crop,
             "--mirror" if mirror else "--no-mirror"]
    for name, value in opts.items():
        if value is not None:
            args += ["--" + name.replace("_", "-"),
                     repr(value) if isinstance(value, float) else value]
    return " ".join(shlex.quote(str(a)) for a in args)


def write_nets(out_dir, arch, loss, lam, classes, train_db, test_db,
               mean=None, batch=32, test_batch=None, crop=None, mirror=True,
               **solver_options):
    """Writes OUT_DIR/train_val.prototxt, deploy.prototxt and solver.prototxt
    and returns their three paths.

    ``classes`` may be None when the train LMDB exists (K is read from it);
    ``crop`` None means the architecture's input size (224 for vgg16, 32 for
    small); ``test_batch`` None means ``batch``. ``solver_options`` are the
    keys of SOLVER_DEFAULTS: ``test_iter`` defaults to the test LMDB's size
    divided by the test batch (rounded up), ``snapshot_prefix`` to
    OUT_DIR/snapshots/<arch>_<loss>, ``mode`` to GPU for vgg16 and CPU for
    small, ``seed`` (the solver's random_seed) to none."""
    if arch not in ARCHS:
        raise JcdlError(out_dir, f"unknown architecture '{arch}' "
                        f"(choose from {', '.join(ARCHS)})")
    if loss not in LOSSES:
        raise JcdlError(out_dir, f"unknown loss '{loss}' "
                        f"(choose from {', '.join(LOSSES)})")
    unknown = set(solver_options) - set(SOLVER_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown solver options: {sorted(unknown)}")
    opts = {**SOLVER_DEFAULTS, **{k: v for k, v in solver_options.items()
                                  if v is not None}}
    if not 0.0 <= lam <= 1.0:
        raise JcdlError(out_dir, f"--lambda {lam} is not in [0, 1]")
    test_batch = test_batch or batch
    crop = DEFAULT_CROP[arch] if crop is None else crop
    out_dir, train_db, test_db = str(out_dir), str(train_db), str(test_db)
    mean = str(mean) if mean else None
    opts["mode"] = (opts["mode"] or DEFAULT_MODE[arch]).upper()
    if opts["mode"] not in ("CPU", "GPU"):
        raise JcdlError(out_dir, f"--mode {opts['mode']}: choose CPU or GPU")
    if opts["snapshot_prefix"] is None:
        opts["snapshot_prefix"] = os.path.normpath(
            os.path.join(out_dir, "snapshots", f"{arch}_{loss}"))
    for name in ("max_iter", "test_interval", "snapshot", "display",
                 "stepsize"):
        if opts[name] < 0:
            raise JcdlError(out_dir, f"--{name.replace('_', '-')} must not "
                            f"be negative")
    if opts["test_interval"] < 1:
        raise JcdlError(out_dir, "--test-interval must be at least 1 (Caffe "
                        "needs one with a test net)")
    if batch < 1 or test_batch < 1:
        raise JcdlError(out_dir, "the batch sizes must be at least 1")
    if opts["test_iter"] is not None and opts["test_iter"] < 1:
        raise JcdlError(out_dir, "--test-iter must be at least 1")
    if opts["lr_policy"] not in LR_POLICIES:
        raise JcdlError(out_dir, f"--lr-policy {opts['lr_policy']}: Caffe's "
                        f"are {', '.join(LR_POLICIES)}")
    if opts["lr_policy"] in ("step", "sigmoid") and opts["stepsize"] < 1:
        raise JcdlError(out_dir, f"--lr-policy {opts['lr_policy']} needs "
                        "--stepsize of at least 1")
    if opts["lr_policy"] not in ("fixed", "poly") and opts["gamma"] < 0:
        raise JcdlError(out_dir, "--gamma must not be negative")

    train_info, test_info = _db(train_db), _db(test_db)
    if train_info is not None:
        if classes is None:
            classes = train_info["k"]
        elif classes != train_info["k"]:
            raise JcdlError(train_db, f"the LMDB holds {train_info['k']} "
                            f"values per label, but --classes is {classes}")
        if crop == 0:
            crop = min(train_info["height"], train_info["width"])
        if crop > min(train_info["height"], train_info["width"]):
            raise JcdlError(train_db, f"--crop {crop} is larger than its "
                            f"{train_info['height']}x{train_info['width']} "
                            f"images")
    if classes is None:
        raise JcdlError(train_db, "no such LMDB to read K from: give "
                        "--classes")
    if classes < 2:
        raise JcdlError(train_db, f"K = {classes} emotions: need at least "
                        "2")
    if crop < 1:
        raise JcdlError(out_dir, "--crop 0 needs the train LMDB to read "
                        "the image size from")
    min_crop = 32 if arch == "vgg16" else 5
    if crop < min_crop:
        raise JcdlError(out_dir, f"--crop {crop} is too small for {arch} "
                        f"(at least {min_crop})")
    if opts["test_iter"] is None:
        if test_info is None:
            raise JcdlError(test_db, "no such LMDB to count the test "
                            "images in: give --test-iter")
        opts["test_iter"] = math.ceil(test_info["n"] / test_batch)

    header = ("# Generated by `" + command_line(
        out_dir, arch, loss, lam, classes, train_db, test_db, mean, batch,
        test_batch, crop, mirror, opts) + "`;\n# regenerate rather than "
        "edit. Paths are relative to the directory caffe/jcdl train runs "
        "in.\n")
    net_path = os.path.normpath(os.path.join(out_dir, "train_val.prototxt"))
    nets = {
        "train_val.prototxt": train_val_net(
            arch, loss, lam, classes, train_db, test_db, mean, batch,
            test_batch, crop, mirror),
        "deploy.prototxt": deploy_net(arch, loss, classes, crop),
        "solver.prototxt": solver_param(net_path, opts["test_iter"], opts),
    }
    paths = []
    with ExitStack() as stack:   # the three files, or none of them
        # the stock caffe train does not make the snapshot folder (it
        # aborts); a failed netgen leaves no new folder behind
        stack.enter_context(folder_for(opts["snapshot_prefix"] + "_iter_0"))
        for name, proto in nets.items():
            path = Path(out_dir) / name
            tmp = stack.enter_context(atomic_output(path))
            tmp.write_text(header + text_format.MessageToString(proto))
            paths.append(path)
    return tuple(paths)


def _run(args):
    options = {name: getattr(args, name) for name in SOLVER_DEFAULTS}
    from .files import check_output_dir  # noqa: PLC0415
    check_output_dir(args.out, ("train_val.prototxt", "deploy.prototxt",
                                "solver.prototxt"),
                     args.train_db, args.test_db, args.mean)
    paths = write_nets(
        args.out, args.arch, args.loss, args.lam, args.classes,
        args.train_db, args.test_db, mean=args.mean, batch=args.batch,
        test_batch=args.test_batch, crop=args.crop, mirror=args.mirror,
        **options)
    for path in paths:
        print(path)


def register(sub):
    p = sub.add_parser(
        "netgen", help="write train_val/deploy/solver prototxts",
        description="Writes DIR/train_val.prototxt, DIR/deploy.prototxt and "
        "DIR/solver.prototxt for JCDL with Caffe's NetSpec. Paths are "
        "written as given; caffe/jcdl train read them relative to the "
        "directory they run in. Solver defaults are the original recipe.")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--arch", choices=ARCHS, default="vgg16",
                   help="vgg16 (layer names of VGG_ILSVRC_16_layers) or "
                   "small (a little net for CPU runs); default vgg16")
    p.add_argument("--loss", choices=LOSSES, default="jcdl",
                   help="jcdl: KL (weight lambda) + dominant softmax "
                   "(1 - lambda); kl: KL only; softmax: dominant only")
    p.add_argument("--lambda", dest="lam", type=float, default=0.8,
                   help="weight of the distribution loss (default 0.8)")
    p.add_argument("--classes", type=INT32, metavar="K",
                   help="number of emotions (default: from the train LMDB)")
    p.add_argument("--train-db", required=True, metavar="DB")
    p.add_argument("--test-db", required=True, metavar="DB")
    p.add_argument("--mean", metavar="FILE", help="mean .binaryproto")
    p.add_argument("--batch", type=INT32, default=32)
    p.add_argument("--test-batch", type=INT32,
                   help="test batch size (default: --batch)")
    p.add_argument("--crop", type=INT32,
                   help="crop size (default 224 for vgg16, 32 for small; "
                   "0: the image size)")
    p.add_argument("--mirror", action=argparse.BooleanOptionalAction,
                   default=True,
                   help="random mirroring in training (default on)")
    p.add_argument("--test-iter", type=INT32,
                   help="test batches per test (default: the test LMDB's "
                   "size / test batch, rounded up)")
    g = p.add_argument_group("solver")
    for name in ("base_lr", "gamma", "momentum", "weight_decay"):
        g.add_argument("--" + name.replace("_", "-"), type=float,
                       help=f"default {SOLVER_DEFAULTS[name]}")
    g.add_argument("--lr-policy", help="default step")
    for name in ("stepsize", "max_iter", "snapshot", "test_interval",
                 "display"):
        g.add_argument("--" + name.replace("_", "-"), type=INT32,
                       help=f"default {SOLVER_DEFAULTS[name]}")
    g.add_argument("--snapshot-prefix",
                   help="default DIR/snapshots/<arch>_<loss>")
    g.add_argument("--mode", choices=("GPU", "CPU"), type=str.upper,
                   help="solver_mode (default GPU for vgg16, CPU for small)")
    g.add_argument("--seed", type=int_arg(-2 ** 63, 2 ** 63 - 1),
                   help="the solver's random_seed")
    p.set_defaults(func=_run)
