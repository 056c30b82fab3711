"""jcdl train on real LMDBs and real Caffe: training, legacy prototxts,
snapshots, Ctrl-C and resume, bad input, and prototxt/train_vgg_gs.sh."""
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest

from conftest import (BIN, ROOT, assert_clean_error, default_signals, jcdl,
                      run)
from jcdl import netgen
from jcdl.caffenet import import_caffe
from jcdl.plot import parse_log

caffe = import_caffe()
from caffe.proto import caffe_pb2  # noqa: E402

SIZE = 36
CAFFE_LOG = {"GLOG_minloglevel": "0"}  # caffe's INFO lines, for the checks
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")


# ------------------------------------------------------------ helpers

def make_lmdb(path, n, K, seed=0):
    """n Datums of 3 x SIZE x SIZE images whose dominant emotion (i % K)
    shows as a brighter channel, with a K-value distribution in float_data;
    keys %08d_name as convert_imageset_r writes them."""
    rng = np.random.default_rng(seed)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(n):
            c = i % K
            img = rng.integers(0, 60, (3, SIZE, SIZE)).astype(np.uint8)
            img[c % 3] += np.uint8(40 * (c // 3 + 1))
            p = 0.5 * rng.dirichlet(np.ones(K))
            p[c] += 0.5
            d = caffe_pb2.Datum(channels=3, height=SIZE, width=SIZE,
                                data=img.tobytes())
            d.float_data.extend(p.astype(np.float32).tolist())
            txn.put(f"{i:08d}_img{i}.png".encode(), d.SerializeToString())
    env.close()
    return path


def make_mean(path, value=40.0):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([1, 3, SIZE, SIZE])
    blob.data.extend([value] * (3 * SIZE * SIZE))
    Path(path).write_bytes(blob.SerializeToString())
    return path


def make_k7_data(root):
    """root/data/train7 (40 records), test7 (20), K = 7, and mean: what the
    small net trains on; returns root."""
    (root / "data").mkdir()
    make_lmdb(root / "data/train7", 40, 7, seed=7)
    make_lmdb(root / "data/test7", 20, 7, seed=8)
    make_mean(root / "data/mean.binaryproto")
    return root


def small_solver(work, name, K, **options):
    """netgen's small net over work/data's K-emotion LMDBs, written to
    work/NAME with paths relative to work (run from there, as with caffe);
    returns the solver's path."""
    opts = dict(base_lr=0.001, max_iter=60, display=10, test_interval=20,
                snapshot=30, seed=1, test_iter=2)
    opts.update(options)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        netgen.write_nets(
            name, "small", "jcdl", 0.8, K, f"data/train{K}",
            f"data/test{K}", batch=8, test_batch=10,
            mean="data/mean.binaryproto" if K == 7 else None, **opts)
    finally:
        os.chdir(cwd)
    return work / name / "solver.prototxt"


def set_solver(solver, **fields):
    """Rewrites fields of a solver prototxt."""
    from google.protobuf import text_format
    param = caffe_pb2.SolverParameter()
    text_format.Merge(Path(solver).read_text(), param)
    for name, value in fields.items():
        setattr(param, name, value)
    Path(solver).write_text(text_format.MessageToString(param))


def net_blobs(path):
    """{layer: [arrays]} of a caffemodel."""
    net = caffe_pb2.NetParameter()
    net.ParseFromString(Path(path).read_bytes())
    return {layer.name: [np.array(b.data) for b in layer.blobs]
            for layer in list(net.layer) + list(net.layers) if layer.blobs}


def to_v1(src, dst):
    """Rewrites a caffemodel in Caffe's old V1 layer format with legacy
    (num, channels, height, width) blob shapes, as
    VGG_ILSVRC_16_layers.caffemodel is stored."""
    net = caffe_pb2.NetParameter()
    net.ParseFromString(Path(src).read_bytes())
    old = caffe_pb2.NetParameter(name=net.name)
    for layer in net.layer:
        if not layer.blobs:
            continue
        v1 = old.layers.add(name=layer.name)
        v1.type = getattr(caffe_pb2.V1LayerParameter,
                          layer.type.upper().replace("INNERPRODUCT",
                                                     "INNER_PRODUCT"))
        for blob in layer.blobs:
            dims = [1] * (4 - len(blob.shape.dim)) + list(blob.shape.dim)
            legacy = v1.blobs.add(num=dims[0], channels=dims[1],
                                  height=dims[2], width=dims[3])
            legacy.data.extend(blob.data)
    Path(dst).write_bytes(old.SerializeToString())
    return dst


def log_lines(text):
    return [line for line in text.splitlines() if GLOG.match(line)]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with data/train7, test7 (K = 7, with a mean), train8, test8
    (K = 8)."""
    root = tmp_path_factory.mktemp("train")
    (root / "data").mkdir()
    for K in (7, 8):
        make_lmdb(root / f"data/train{K}", 40, K, seed=K)
        make_lmdb(root / f"data/test{K}", 20, K, seed=K + 100)
    make_mean(root / "data/mean.binaryproto")
    return root


@pytest.fixture(scope="module")
def trained(work):
    """One short K = 7 training: (solver, its final snapshot prefix)."""
    solver = small_solver(work, "trained", 7, max_iter=20,
                          snapshot=10, test_interval=10)
    jcdl("train", "--solver", solver.relative_to(work), cwd=work)
    return solver, work / "trained/snapshots/small_jcdl_iter_20"


# ------------------------------------------------------------ training

@pytest.mark.parametrize("K", [7, 8])
def test_small_net_trains_with_falling_loss(work, K):
    folder = Path(f"run{K}")
    jcdl("netgen", "--out", folder, "--arch", "small", "--classes", K,
         "--train-db", f"data/train{K}", "--test-db", f"data/test{K}",
         "--batch", 8, "--test-batch", 10, "--base-lr", 0.01,
         "--max-iter", 60, "--display", 10, "--test-interval", 20,
         "--snapshot", 30, "--seed", 1, cwd=work)
    proc = jcdl("train", "--solver", folder / "solver.prototxt", "--log",
                folder / "logs/train.log", cwd=work)   # its folder is made
    prefix = f"{folder}/snapshots/small_jcdl_iter_"
    assert proc.stdout.strip() == prefix + "60.caffemodel"
    for it in (30, 60):
        for ext in ("caffemodel", "solverstate"):
            assert (work / f"{prefix}{it}.{ext}").is_file()
        state = caffe_pb2.SolverState()
        state.ParseFromString((work / f"{prefix}{it}.solverstate")
                              .read_bytes())
        assert state.iter == it
        assert state.learned_net == f"{prefix}{it}.caffemodel"
    assert not list((work / folder / "snapshots").glob(".*"))  # no temps
    assert net_blobs(work / f"{prefix}60.caffemodel")["my_fc8"][1].shape \
        == (K,)

    # the same lines on stderr and in --log, in glog's format
    log = (work / folder / "logs/train.log").read_text()
    assert log_lines(proc.stderr) == log.splitlines()
    assert all(GLOG.match(line) for line in log.splitlines())
    series = parse_log(work / folder / "logs/train.log")
    its, loss = series["loss"]
    assert list(its) == [0, 10, 20, 30, 40, 50, 60]
    # my_fc8 starts at zero (as the original's): loss[0] is the loss of the
    # uniform prediction, and 60 iterations take it well below that
    assert loss[-1] < 0.7 * loss[0], loss
    assert list(series["lr"][1]) == [0.01] * 6
    assert "train/loss_kl" in series and "train/loss_dominant" in series
    for name in ("kl", "chebyshev", "clark", "canberra", "cosine",
                 "intersection", "accuracy", "ldl_accuracy", "loss_kl"):
        assert list(series[f"test/{name}"][0]) == [0, 20, 40, 60], name
    # KL measured from the logits agrees with the KL loss layer
    assert np.allclose(series["test/kl"][1], series["test/loss_kl"][1],
                       rtol=1e-4)
    assert re.search(r"Train net output #1: loss_kl = \S+ \(\* 0\.8 = \S+ "
                     r"loss\)", log)
    assert re.search(r"Train net output #0: loss_dominant = \S+ \(\* 0\.2 "
                     r"= \S+ loss\)", log)
    assert "Snapshotting to binary proto file " + prefix + "30.caffemodel" \
        in log


LEGACY_NET = """name: "legacy"
layer {
  name: "data"  type: "Data"  top: "data"  top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.00390625  mirror: true  crop_size: 32 }
  data_param { source: "data/train7"  batch_size: 8  backend: LMDB }
}
layer {
  name: "data"  type: "Data"  top: "data"  top: "label"
  include { phase: TEST }
  transform_param { scale: 0.00390625  crop_size: 32 }
  data_param { source: "data/test7"  batch_size: 10  backend: LMDB }
}
layer {
  name: "fc1"  type: "InnerProduct"  bottom: "data"  top: "fc1"
  inner_product_param { num_output: 32  weight_filler { type: "xavier" } }
}
layer { name: "relu1"  type: "ReLU"  bottom: "fc1"  top: "fc1" }
layer {
  name: "my_fc8"  type: "InnerProduct"  bottom: "fc1"  top: "my_fc8"
  param { lr_mult: 10 }  param { lr_mult: 20 }
  inner_product_param { num_output: 7  weight_filler { type: "xavier" } }
}
layer {
  name: "loss"  type: "SoftmaxWithKLLoss"  bottom: "my_fc8"  bottom: "label"
  top: "loss"  loss_weight: 0.8
}
layer {
  name: "loss2"  type: "SoftmaxWithMyKLLoss"  bottom: "my_fc8"
  bottom: "label"  top: "loss2"  loss_weight: 0.2
}
layer {
  name: "accuracy"  type: "Accuracy"  bottom: "my_fc8"  bottom: "label"
  top: "accuracy"  include { phase: TEST }  accuracy_param { top_k: 1 }
}
"""

LEGACY_SOLVER = """net: "legacy/train_val.prototxt"
test_iter: 2
test_interval: 10
base_lr: 0.001
lr_policy: "step"
gamma: 0.1
stepsize: 10000
display: 5
max_iter: 20
momentum: 0.9
weight_decay: 0.005
snapshot: 10
snapshot_prefix: "legacy/snap"
solver_mode: CPU
random_seed: 3
"""


def test_legacy_prototxt_trains_with_jcdl_and_caffe(work):
    legacy = work / "legacy"
    legacy.mkdir()
    (legacy / "train_val.prototxt").write_text(LEGACY_NET)
    (legacy / "solver.prototxt").write_text(LEGACY_SOLVER)
    # stock caffe, unchanged files
    proc = run("caffe", "train", "--solver", "legacy/solver.prototxt",
               cwd=work, env=CAFFE_LOG)
    assert "Optimization Done" in proc.stderr
    caffe_model = net_blobs(work / "legacy/snap_iter_20.caffemodel")
    # jcdl train, the same files: the same training (same seed)
    proc = jcdl("train", "--solver", "legacy/solver.prototxt", cwd=work)
    assert proc.stdout.strip() == "legacy/snap_iter_20.caffemodel"
    jcdl_model = net_blobs(work / "legacy/snap_iter_20.caffemodel")
    for name in ("fc1", "my_fc8"):
        for a, b in zip(caffe_model[name], jcdl_model[name]):
            assert np.allclose(a, b, atol=1e-5), name
    log = proc.stderr
    assert "Train net output #0: loss = " in log
    assert "Train net output #1: loss2 = " in log
    assert re.search(r"Test net output #6: kl = \d", log)
    # caffe resumes from jcdl's snapshot (learned_net names its caffemodel)
    proc = run("caffe", "train", "--solver", "legacy/solver.prototxt",
               "--snapshot", "legacy/snap_iter_10.solverstate", cwd=work,
               env=CAFFE_LOG)
    assert "Iteration 15 (" in proc.stderr
    assert "Iteration 5 (" not in proc.stderr  # it started at 10

    # a legacy solver without a test net
    (legacy / "solver_notest.prototxt").write_text(
        "\n".join(line for line in LEGACY_SOLVER.splitlines()
                  if not line.startswith("test_"))
        .replace('"legacy/snap"', '"legacy/notest"'))
    proc = jcdl("train", "--solver", "legacy/solver_notest.prototxt",
                cwd=work)
    assert proc.stdout.strip() == "legacy/notest_iter_20.caffemodel"
    assert "Testing net" not in proc.stderr


def test_fine_tune_loads_weights_in_both_formats(work, trained):
    _, prefix = trained
    weights = Path(f"{prefix}.caffemodel")
    v1 = to_v1(weights, work / "v1.caffemodel")
    want = net_blobs(weights)
    for i, source in enumerate((weights, v1)):
        solver = small_solver(work, f"tune{i}", 7, max_iter=0,
                              test_interval=1000, snapshot=0)
        proc = jcdl("train", "--solver", solver.relative_to(work),
                    "--weights", source, cwd=work)
        assert f"Finetuning from {source}" in proc.stderr
        got = net_blobs(work / proc.stdout.strip())
        assert proc.stdout.strip().endswith("_iter_0.caffemodel")
        for name in ("conv1", "conv2", "fc3", "my_fc8"):
            for a, b in zip(want[name], got[name]):
                assert np.array_equal(a.ravel(), b.ravel()), name


def test_vgg16_weights_load_by_layer_name(work, tmp_path):
    """A VGG-named caffemodel in the format of VGG_ILSVRC_16_layers
    (V1 layers, legacy shapes) loads into netgen's VGG-16; one with a wrong
    shape is refused naming the layer and both shapes."""
    solver = netgen.write_nets(
        tmp_path / "vgg", "vgg16", "jcdl", 0.8, 7, str(work / "data/train7"),
        str(work / "data/test7"), batch=2, test_batch=10, crop=32,
        max_iter=0, test_interval=1000, snapshot=0, mode="CPU")[2]
    set_solver(solver, snapshot_after_train=False)
    shapes = {"conv1_1": [(64, 3, 3, 3), (64,)],
              "conv1_2": [(64, 64, 3, 3), (64,)]}
    model = caffe_pb2.NetParameter(name="VGG_ILSVRC_16_layers")
    for name, blobs in shapes.items():
        layer = model.layer.add(name=name, type="Convolution")
        for shape in blobs:
            blob = layer.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend(np.full(math.prod(shape), 0.5, np.float32))
    (tmp_path / "new.caffemodel").write_bytes(model.SerializeToString())
    weights = to_v1(tmp_path / "new.caffemodel", tmp_path / "vgg.caffemodel")
    proc = jcdl("train", "--solver", solver, "--weights", weights)
    assert f"Finetuning from {weights}" in proc.stderr

    model.layer[1].blobs[0].shape.dim[1] = 32
    del model.layer[1].blobs[0].data[32 * 9 * 64:]
    (tmp_path / "new.caffemodel").write_bytes(model.SerializeToString())
    to_v1(tmp_path / "new.caffemodel", weights)
    proc = jcdl("train", "--solver", solver, "--weights", weights,
                check=False)
    assert_clean_error(proc, str(weights), "'conv1_2'", "(64, 32, 3, 3)",
                       "(64, 64, 3, 3)")


# ------------------------------------------------- interruption, resume

def wait_for(path, pattern, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited early: {proc.stderr.read()}")
        if path.exists() and re.search(pattern, path.read_text()):
            return
        time.sleep(0.05)
    pytest.fail(f"no {pattern!r} in {path}")


def start(work, *args):
    return subprocess.Popen([str(BIN / "jcdl"), *map(str, args)], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_signals)


def test_ctrl_c_snapshots_then_resume_continues(work):
    solver = small_solver(work, "sigint", 7, max_iter=100000,
                          snapshot=0, test_interval=50, display=5)
    rel = solver.relative_to(work)
    proc = start(work, "train", "--solver", rel, "--log", "sigint/log")
    wait_for(work / "sigint/log", r"Iteration 20 \(", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    it = int(re.search(r"interrupted at iteration (\d+)", err).group(1))
    assert it >= 20
    prefix = f"sigint/snapshots/small_jcdl_iter_{it}"
    assert out.strip() == f"{prefix}.caffemodel"
    assert (work / f"{prefix}.caffemodel").is_file()
    command = err.strip().splitlines()[-1].strip()
    assert command == (f"jcdl train --solver {rel} --resume "
                       f"{prefix}.solverstate --log sigint/log")

    # resume with the printed command, to a max_iter a little further on
    set_solver(solver, max_iter=it + 12)
    args = shlex.split(command)[2:]
    proc = jcdl("train", *args, cwd=work)
    assert proc.stdout.strip() == \
        f"sigint/snapshots/small_jcdl_iter_{it + 12}.caffemodel"
    resumed = [int(m) for m in re.findall(r"Iteration (\d+)", proc.stderr)]
    assert resumed and min(resumed) >= it, resumed
    state = caffe_pb2.SolverState()
    state.ParseFromString((work / "sigint/snapshots" /
                           f"small_jcdl_iter_{it + 12}.solverstate")
                          .read_bytes())
    assert state.iter == it + 12
    # the log was appended: one curve from 0 to the end
    its = list(parse_log(work / "sigint/log")["loss"][0])
    assert its[0] == 0 and its == sorted(its) and its[-1] > it


def test_kill_during_snapshots_leaves_only_complete_files(work):
    """Snapshots at every iteration, killed with SIGKILL: every file under
    a final name is complete, and the newest state resumes."""
    solver = small_solver(work, "kill", 7, max_iter=100000,
                          snapshot=1, test_interval=100000, display=1)
    rel = solver.relative_to(work)
    proc = start(work, "train", "--solver", rel, "--log", "kill/log")
    wait_for(work / "kill/log", r"Iteration 30 \(", proc)
    proc.kill()
    proc.communicate(timeout=60)
    folder = work / "kill/snapshots"
    states = sorted(folder.glob("*.solverstate"),
                    key=lambda p: int(re.search(r"_(\d+)\.", p.name)[1]))
    assert len(states) >= 30
    for model in folder.glob("*.caffemodel"):
        assert net_blobs(model)["my_fc8"][0].size == 7 * 64, model
    for path in states:
        state = caffe_pb2.SolverState()
        state.ParseFromString(path.read_bytes())
        assert len(state.history) == 8
        assert (work / state.learned_net).is_file()
    last = int(re.search(r"_(\d+)\.", states[-1].name)[1])
    set_solver(solver, max_iter=last + 2, snapshot=0)
    proc = jcdl("train", "--solver", rel, "--resume",
                states[-1].relative_to(work), cwd=work)
    assert proc.stdout.strip().endswith(f"_iter_{last + 2}.caffemodel")


# ---------------------------------------------------------- bad input

def bad_inputs(work, trained):
    """(name, args, fragments of the error line)."""
    solver, prefix = trained
    rel = solver.relative_to(work)
    bad = work / "bad"
    if not bad.exists():
        bad.mkdir()
        # nets with a missing LMDB, K mismatch (8 outputs on 7-value labels),
        # a missing mean file, a solver naming a missing net
        text = (work / "trained/train_val.prototxt").read_text()
        for name, new in (("nolmdb", text.replace("data/train7",
                                                  "data/gone_lmdb")),
                          ("k8", text.replace("num_output: 7",
                                              "num_output: 8")),
                          ("nomean", text.replace("data/mean.binaryproto",
                                                  "data/gone.binaryproto"))):
            (bad / f"{name}.prototxt").write_text(new)
            (bad / f"{name}_solver.prototxt").write_text(
                solver.read_text().replace("trained/train_val.prototxt",
                                           f"bad/{name}.prototxt"))
        (bad / "nonet_solver.prototxt").write_text(
            solver.read_text().replace("trained/train_val.prototxt",
                                       "bad/gone.prototxt"))
        # what Caffe aborts on: a typo in a layer type, a bottom nobody
        # makes, a batch of 0, a learning-rate policy or solver type it does
        # not know, no test iterations
        for name, new in (
                ("typo", text.replace('type: "ReLU"', 'type: "ReLu"', 1)),
                ("bottom", text.replace('bottom: "pool1"', 'bottom: "pool9"',
                                        1)),
                ("batch0", text.replace("batch_size: 8", "batch_size: 0")),
                ("onebottom", text.replace('bottom: "my_fc8"\n  bottom: '
                                           '"label"', 'bottom: "my_fc8"', 1))):
            assert new != text, name
            (bad / f"{name}.prototxt").write_text(new)
            (bad / f"{name}_solver.prototxt").write_text(
                solver.read_text().replace("trained/train_val.prototxt",
                                           f"bad/{name}.prototxt"))
        (bad / "mdb.prototxt").write_text(text.replace(
            'source: "data/train7"', 'source: "data/train7/data.mdb"'))
        (bad / "python.prototxt").write_text(text.replace(
            'type: "ReLU"', 'type: "Python"\n  python_param { module: '
            '"no_such_module" layer: "Layer" }', 1))
        for name, old, new in (
                ("policy", 'lr_policy: "step"', 'lr_policy: "steps"'),
                ("type", 'lr_policy: "step"',
                 'lr_policy: "step"\ntype: "SDG"'),
                ("testiter", "test_iter: 2", "test_iter: 0"),
                ("stepsize", "stepsize: 10000", "stepsize: 0"),
                ("gamma", "gamma: 0.1", "gamma: -1.0"),
                ("average", 'lr_policy: "step"',
                 'lr_policy: "step"\naverage_loss: 0'),
                ("twotypes", 'lr_policy: "step"',
                 'lr_policy: "step"\ntype: "Adam"\nsolver_type: ADAM'),
                ("adam", 'lr_policy: "step"',
                 'lr_policy: "step"\ntype: "Adam"'),
                ("mdb", 'net: "trained/train_val.prototxt"',
                 'net: "bad/mdb.prototxt"'),
                ("python", 'net: "trained/train_val.prototxt"',
                 'net: "bad/python.prototxt"')):
            assert old in solver.read_text(), name
            (bad / f"{name}_solver.prototxt").write_text(
                solver.read_text().replace(old, new))
        state = Path(f"{prefix}.solverstate").read_bytes()
        (bad / "cut.solverstate").write_bytes(state[:len(state) // 2])
        (bad / "junk.solverstate").write_bytes(b"\xff" * 1000)
        orphan = caffe_pb2.SolverState()
        orphan.ParseFromString(state)
        orphan.learned_net = "bad/gone.caffemodel"
        (bad / "orphan.solverstate").write_bytes(orphan.SerializeToString())
        # a caffemodel of the K = 8 net: my_fc8 does not fit
        deploy = netgen.write_nets(bad / "net8", "small", "jcdl", 0.8, 8,
                                   "x", "y", test_iter=1)[1]
        caffe.Net(str(deploy), caffe.TEST).save(str(bad / "k8.caffemodel"))
    return [
        ("missing solver", ["--solver", "bad/gone_solver.prototxt"],
         ["bad/gone_solver.prototxt", "no such solver file"]),
        ("missing net", ["--solver", "bad/nonet_solver.prototxt"],
         ["bad/gone.prototxt", "no such net file"]),
        ("missing LMDB", ["--solver", "bad/nolmdb_solver.prototxt"],
         ["data/gone_lmdb", "no such LMDB", "layer 'data'"]),
        ("K mismatch", ["--solver", "bad/k8_solver.prototxt"],
         ["bad/k8.prototxt", "'my_fc8'", "num_output 8", "K = 7"]),
        ("missing mean", ["--solver", "bad/nomean_solver.prototxt"],
         ["data/gone.binaryproto", "no such mean file"]),
        ("missing weights", ["--solver", rel, "--weights", "bad/gone.w"],
         ["bad/gone.w", "no such weights file"]),
        ("weights do not fit", ["--solver", rel, "--weights",
                                "bad/k8.caffemodel"],
         ["bad/k8.caffemodel", "'my_fc8'", "(8, 64)", "(7, 64)"]),
        ("truncated solverstate", ["--solver", rel, "--resume",
                                   "bad/cut.solverstate"],
         ["bad/cut.solverstate", "damaged"]),
        ("junk solverstate", ["--solver", rel, "--resume",
                              "bad/junk.solverstate"],
         ["bad/junk.solverstate", "damaged"]),
        ("caffemodel of solverstate missing",
         ["--solver", rel, "--resume", "bad/orphan.solverstate"],
         ["bad/orphan.solverstate", "bad/gone.caffemodel", "missing"]),
        ("weights and resume", ["--solver", rel, "--resume",
                                f"{prefix}.solverstate", "--weights",
                                "bad/k8.caffemodel"],
         ["not both"]),
        ("GPU on a CPU-only build", ["--solver", rel, "--gpu", "0"],
         ["--gpu 0", "CPU-only"]),
        ("unknown layer type", ["--solver", "bad/typo_solver.prototxt"],
         ["bad/typo.prototxt", "layer 'relu1'", "unknown type 'ReLu'"]),
        ("unknown bottom", ["--solver", "bad/bottom_solver.prototxt"],
         ["bad/bottom.prototxt", "blob 'pool9'", "no layer before it"]),
        ("batch of 0", ["--solver", "bad/batch0_solver.prototxt"],
         ["bad/batch0.prototxt", "batch_size must be at least 1"]),
        ("unknown lr_policy", ["--solver", "bad/policy_solver.prototxt"],
         ["bad/policy_solver.prototxt", "unknown lr_policy 'steps'"]),
        ("unknown solver type", ["--solver", "bad/type_solver.prototxt"],
         ["bad/type_solver.prototxt", "unknown solver type 'SDG'"]),
        ("no test iterations", ["--solver", "bad/testiter_solver.prototxt"],
         ["bad/testiter_solver.prototxt", "test_iter must be at least 1"]),
        ("stepsize 0", ["--solver", "bad/stepsize_solver.prototxt"],
         ["lr_policy 'step' needs a stepsize > 0"]),
        ("negative gamma", ["--solver", "bad/gamma_solver.prototxt"],
         ["gamma must not be negative"]),
        ("average_loss 0", ["--solver", "bad/average_solver.prototxt"],
         ["average_loss must be at least 1"]),
        ("two solver types", ["--solver", "bad/twotypes_solver.prototxt"],
         ["by 'type' or by the old 'solver_type', not both"]),
        ("resume with another solver type",
         ["--solver", "bad/adam_solver.prototxt", "--resume",
          f"{prefix}.solverstate"],
         ["small_jcdl_iter_20.solverstate", "8 history blobs",
          "Adam solver keeps 16"]),
        ("a loss with one bottom", ["--solver",
                                    "bad/onebottom_solver.prototxt"],
         ["bad/onebottom.prototxt", "layer 'loss_kl' (SoftmaxWithKLLoss) "
          "takes 2 bottoms (logits, label), not 1"]),
        ("data.mdb as source", ["--solver", "bad/mdb_solver.prototxt"],
         ["data/train7/data.mdb", "name the folder that holds data.mdb"]),
        ("Python layer that does not load",
         ["--solver", "bad/python_solver.prototxt"],
         ["bad/python.prototxt", "cannot load Python layer "
          "no_such_module.Layer", "ModuleNotFoundError"]),
    ]


CASES = ["missing solver", "missing net", "missing LMDB", "K mismatch",
         "missing mean", "missing weights", "weights do not fit",
         "truncated solverstate", "junk solverstate",
         "caffemodel of solverstate missing", "weights and resume",
         "GPU on a CPU-only build", "unknown layer type", "unknown bottom",
         "batch of 0", "unknown lr_policy", "unknown solver type",
         "no test iterations", "stepsize 0", "negative gamma",
         "average_loss 0", "two solver types",
         "resume with another solver type", "a loss with one bottom",
         "data.mdb as source",
         "Python layer that does not load"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(work, trained, case):
    cases = {name: (args, frags) for name, args, frags in
             bad_inputs(work, trained)}
    args, fragments = cases[case]
    before = sorted(p.name for p in (work / "trained/snapshots").iterdir())
    proc = jcdl("train", *args, cwd=work, check=False)
    assert_clean_error(proc, "jcdl train: ", *fragments)
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
    after = sorted(p.name for p in (work / "trained/snapshots").iterdir())
    assert before == after  # nothing written, nothing left behind


def test_a_failed_run_keeps_the_earlier_log(work, trained):
    """The log file is opened (truncated) only once the set-up succeeded:
    weights that do not fit leave an earlier log as it was. A --log that
    names an input of the run is refused before anything is written."""
    solver, _ = trained
    rel = solver.relative_to(work)
    bad_inputs(work, trained)   # writes bad/k8.caffemodel
    log = work / "trained" / "earlier.log"
    log.write_text("I1130 01:00:00.000000  1 solver.cpp:1] an earlier run\n")
    proc = jcdl("train", "--solver", rel, "--weights", "bad/k8.caffemodel",
                "--log", log.relative_to(work), cwd=work, check=False)
    assert_clean_error(proc, "bad/k8.caffemodel", "'my_fc8'")
    assert log.read_text().endswith("an earlier run\n")
    text = solver.read_text()
    proc = jcdl("train", "--solver", rel, "--log", rel, cwd=work,
                check=False)
    assert_clean_error(proc, str(rel), "is an input of this run")
    assert solver.read_text() == text
    mean = (work / "data/mean.binaryproto").read_bytes()
    for log, what in (("data/mean.binaryproto", "is an input of this run"),
                      ("data/train7/data.mdb", "is inside the LMDB"),
                      ("data/train7/new.log", "is inside the LMDB")):
        proc = jcdl("train", "--solver", rel, "--log", log, cwd=work,
                    check=False)
        assert_clean_error(proc, log, what)
    assert (work / "data/mean.binaryproto").read_bytes() == mean
    assert not (work / "data/train7/new.log").exists()


def test_an_lmdb_caffe_cannot_lock_is_named(work):
    """A shared, read-only LMDB (another user's): Caffe would abort on its
    lock.mdb; jcdl train says so first. As root, the run is another user's
    (setpriv), since root may write anything."""
    shared = Path(tempfile.mkdtemp(prefix="jcdl-shared-"))
    try:
        shutil.copytree(work / "data/train7", shared / "db")
        netgen.write_nets(shared / "net", "small", "jcdl", 0.8, 7,
                          shared / "db", shared / "db", max_iter=2,
                          test_iter=1)
        for path in [shared, *shared.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        (shared / "net").chmod(0o777)             # snapshots may go there
        command = [BIN / "jcdl", "train", "--solver",
                   shared / "net/solver.prototxt"]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=65534", "--regid=65534",
                       "--clear-groups", *command]
        else:
            (shared / "db/lock.mdb").chmod(0o444)
        proc = subprocess.run(command, capture_output=True, text=True,
                              cwd=shared, timeout=120)
        assert_clean_error(proc, f"{shared / 'db'}: Caffe opens an LMDB by "
                           "writing its lock.mdb")
    finally:
        shutil.rmtree(shared)


# ------------------------------------------------------ train_vgg_gs.sh

def test_train_vgg_gs_sh_says_what_is_missing(tmp_path):
    (tmp_path / "prototxt").mkdir()
    for name in ("train_vgg_gs.sh", "train_val.prototxt", "solver.prototxt"):
        shutil.copy(ROOT / "prototxt" / name, tmp_path / "prototxt")
    proc = subprocess.run(["bash", "./train_vgg_gs.sh"],
                          cwd=tmp_path / "prototxt", capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    err = proc.stderr
    assert "../models/VGG_ILSVRC_16_layers.caffemodel is missing" in err
    assert "Caffe Model Zoo" in err and "models/README.md" in err
    for path in ("../data/emotion6/train_lmdb", "../data/emotion6/test_lmdb",
                 "../data/emotion6/mean.binaryproto"):
        assert f"{path} (in train_val.prototxt) is missing" in err
    assert not (tmp_path / "prototxt/snapshots").exists()
    (tmp_path / "models").mkdir()
    (tmp_path / "models/VGG_ILSVRC_16_layers.caffemodel").write_bytes(b"")
    proc = subprocess.run(["bash", "./train_vgg_gs.sh"],
                          cwd=tmp_path / "prototxt", capture_output=True,
                          text=True, timeout=60)
    assert "VGG_ILSVRC_16_layers.caffemodel is empty" in proc.stderr


@pytest.mark.parametrize("gpu_build", [False, True])
def test_train_vgg_gs_sh_trains_on_the_cpu_build(work, trained, tmp_path,
                                                 gpu_build):
    """The script, unchanged, in a tree with the CPU build only, or with a
    GPU build that cannot use GPU 0 (here: a CPU-only caffe in its place):
    it switches the GPU solver to the CPU and trains from
    models/...caffemodel."""
    _, prefix = trained
    if gpu_build:
        tools = tmp_path / "build/cuda/build/tools"
        tools.mkdir(parents=True)
        (tools / "caffe").symlink_to(BIN / "caffe")
    proto = tmp_path / "prototxt"
    shutil.copytree(work / "data", tmp_path / "data")
    netgen.write_nets(proto, "small", "jcdl", 0.8, 7, "../data/train7",
                      "../data/test7", mean="../data/mean.binaryproto",
                      batch=8, test_batch=10, test_iter=2, max_iter=4,
                      display=1,
                      test_interval=2, snapshot=2, mode="GPU",
                      snapshot_prefix="snapshots/vgg16_jcdl")
    shutil.copy(ROOT / "prototxt/train_vgg_gs.sh", proto)
    (tmp_path / "models").mkdir()
    shutil.copy(f"{prefix}.caffemodel",
                tmp_path / "models/VGG_ILSVRC_16_layers.caffemodel")
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", **CAFFE_LOG)
    env.pop("CAFFE", None)
    env.pop("GPU", None)
    proc = subprocess.run(["bash", "./train_vgg_gs.sh"], cwd=proto, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training on the CPU" in proc.stderr
    assert ("the GPU build cannot use GPU 0 here" in proc.stderr) == gpu_build
    log = (proto / "train_vgg_gs.log").read_text()
    assert "Finetuning from ../models/VGG_ILSVRC_16_layers.caffemodel" in log
    assert "Optimization Done" in log
    assert (proto / "snapshots/vgg16_jcdl_iter_4.caffemodel").is_file()
    assert "loss" in parse_log(proto / "train_vgg_gs.log")


def test_diverging_training_stops_with_a_clear_line(work):
    """A loss of nan/inf ends training with one line, not hours of training
    on garbage (nor Caffe's out-of-bounds writes in max pooling on nan)."""
    solver = small_solver(work, "diverge", 7, base_lr=50.0, max_iter=200,
                          display=1000, test_interval=1000, snapshot=0)
    proc = jcdl("train", "--solver", solver.relative_to(work), cwd=work,
                check=False)
    assert_clean_error(proc, "diverge/solver.prototxt", "training diverged",
                       "lower base_lr")
    assert proc.returncode == 1
    assert not list((work / "diverge/snapshots").iterdir())


STAGED_DATA = '''layer {
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  include { phase: TRAIN stage: "big" }
  data_param { source: "data/gone_lmdb" batch_size: 8 backend: LMDB }
}
'''


def test_stage_rules_as_caffe_applies_them(work, trained):
    """A TRAIN Data layer for stage 'big' only (over an LMDB that is not
    there): Caffe leaves it out unless the solver's train_state names the
    stage, and so do jcdl's checks."""
    solver, _ = trained
    text = (work / "trained/train_val.prototxt").read_text()
    head, first, rest = text.partition("layer {")
    staged = head + STAGED_DATA + first + rest.replace(
        "phase: TRAIN\n", 'phase: TRAIN\n    not_stage: "big"\n', 1)
    (work / "staged.prototxt").write_text(staged)
    base = solver.read_text().replace(
        "trained/train_val.prototxt", "staged.prototxt").replace(
        "trained/snapshots", "staged/snapshots")
    (work / "staged_solver.prototxt").write_text(base)
    jcdl("train", "--solver", "staged_solver.prototxt", cwd=work)
    (work / "big_solver.prototxt").write_text(
        base + 'train_state { stage: "big" }\n')
    proc = jcdl("train", "--solver", "big_solver.prototxt", cwd=work,
                check=False)
    assert_clean_error(proc, "data/gone_lmdb", "no such LMDB")


def test_an_image_smaller_than_the_crop_anywhere_in_the_lmdb(tmp_path):
    """Images of mixed sizes (converted without --resize): the first fits
    the crop, a later one does not. Caffe would abort on it mid-run; jcdl
    train names the record first."""
    from conftest import write_image
    from jcdl import lmdbio
    root = tmp_path / "img"
    lines = []
    for i, size in enumerate((40, 40, 20, 40)):
        write_image(root / f"{i}.png", size, size, seed=i)
        lines.append(f"{i}.png 1 {i}\n")
    (tmp_path / "l.txt").write_text("".join(lines))
    lmdbio.convert(root, tmp_path / "l.txt", tmp_path / "db", progress=False)
    solver = netgen.write_nets(tmp_path / "net", "small", "jcdl", 0.8, None,
                               tmp_path / "db", tmp_path / "db", max_iter=2,
                               test_iter=1)[2]
    proc = jcdl("train", "--solver", solver, check=False)
    assert_clean_error(proc, "crop_size 32 is larger than record "
                       "00000002_2.png (20x20)")


def test_an_lmdb_on_a_read_only_filesystem_trains(work, tmp_path):
    """On a read-only mount LMDB works without a lock file, and Caffe reads
    it: the lock check must not refuse it (as for another user's LMDB on a
    writable disk). Needs the right to bind-mount, which root has here."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    bind = subprocess.run(["mount", "--bind", str(work / "data"), str(mnt)],
                          capture_output=True)
    if bind.returncode != 0:
        pytest.skip("no right to bind-mount here: " + bind.stderr.decode())
    try:
        ro = subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)],
                            capture_output=True)
        assert ro.returncode == 0, ro.stderr
        solver = netgen.write_nets(tmp_path / "net", "small", "jcdl", 0.8, 7,
                                   mnt / "train7", mnt / "test7", max_iter=2,
                                   test_iter=1)[2]
        jcdl("train", "--solver", solver)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_temporaries_of_dead_runs_are_removed(work):
    """A run Caffe aborted (or that was killed) leaves its .jcdl-train-PID-*
    folder; the next run in that snapshot folder removes it, and leaves a
    live process's alone."""
    solver = small_solver(work, "stale", 7, max_iter=2, snapshot=0,
                          test_interval=2)
    folder = work / "stale/snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = folder / f".jcdl-train-{gone.pid}-x1"
    live = folder / f".jcdl-train-{os.getpid()}-x2"
    for d in (dead, live):
        d.mkdir()
        (d / "snapshot_iter_1.caffemodel").write_bytes(b"partial")
    jcdl("train", "--solver", solver.relative_to(work), cwd=work)
    assert not dead.exists() and live.is_dir()
    shutil.rmtree(live)
