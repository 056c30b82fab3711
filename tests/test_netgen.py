"""jcdl netgen: the generated nets load in Caffe with the right losses,
learning rates and VGG-16 layer names; the committed VGG-16 prototxts are
exactly what netgen writes."""
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import ROOT, assert_clean_error, jcdl
from jcdl import netgen
from jcdl.caffenet import import_caffe
from test_train import make_lmdb, make_mean

caffe = import_caffe()
from caffe.proto import caffe_pb2  # noqa: E402

# VGG_ILSVRC_16_layers_deploy.prototxt of the Model Zoo, up to fc8
VGG16_LAYERS = """data conv1_1 relu1_1 conv1_2 relu1_2 pool1 conv2_1 relu2_1
conv2_2 relu2_2 pool2 conv3_1 relu3_1 conv3_2 relu3_2 conv3_3 relu3_3 pool3
conv4_1 relu4_1 conv4_2 relu4_2 conv4_3 relu4_3 pool4 conv5_1 relu5_1 conv5_2
relu5_2 conv5_3 relu5_3 pool5 fc6 relu6 drop6 fc7 relu7 drop7""".split()


def read(path, message):
    text_format.Merge(Path(path).read_text(), message)
    return message


def layers(path):
    return {layer.name: layer
            for layer in read(path, caffe_pb2.NetParameter()).layer}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("netgen")
    for K in (7, 8):
        make_lmdb(root / f"train{K}", 12, K)
        make_lmdb(root / f"test{K}", 25, K, seed=1)
    make_mean(root / "mean.binaryproto")
    return root


@pytest.mark.parametrize("K", [7, 8])
def test_small_nets_load_in_caffe(data, K):
    out = data / f"small{K}"
    proc = jcdl("netgen", "--out", out, "--arch", "small", "--train-db",
                data / f"train{K}", "--test-db", data / f"test{K}",
                "--batch", 4, "--test-batch", 10, "--mean",
                data / "mean.binaryproto")
    paths = [out / n for n in ("train_val.prototxt", "deploy.prototxt",
                               "solver.prototxt")]
    assert proc.stdout.split() == [str(p) for p in paths]

    # the solver: the original recipe; K, test_iter from the LMDBs
    s = read(paths[2], caffe_pb2.SolverParameter())
    assert (s.base_lr, s.lr_policy, s.gamma, s.stepsize, s.max_iter,
            s.momentum, s.weight_decay, s.snapshot, s.test_interval,
            s.display) == pytest.approx(
        (0.0001, "step", 0.1, 10000, 3000, 0.9, 0.005, 1000, 100, 20))
    assert list(s.test_iter) == [3]  # 25 test images, batches of 10
    assert s.net == str(out / "train_val.prototxt")
    assert s.snapshot_prefix == str(out / "snapshots/small_jcdl")
    assert (out / "snapshots").is_dir()   # the stock caffe train needs it
    assert s.solver_mode == caffe_pb2.SolverParameter.CPU

    # the losses on my_fc8 and the label, lr_mult 10/20 on my_fc8 only
    net = layers(paths[0])
    assert (net["loss_kl"].type, list(net["loss_kl"].loss_weight)) == \
        ("SoftmaxWithKLLoss", [pytest.approx(0.8)])
    assert (net["loss_dominant"].type,
            list(net["loss_dominant"].loss_weight)) == \
        ("SoftmaxWithDominantLoss", [pytest.approx(0.2)])
    for name in ("loss_kl", "loss_dominant", "accuracy"):
        assert list(net[name].bottom) == ["my_fc8", "label"]
    assert net["accuracy"].accuracy_param.top_k == 1
    assert net["accuracy"].include[0].phase == caffe.TEST
    assert net["my_fc8"].inner_product_param.num_output == K
    assert [p.lr_mult for p in net["my_fc8"].param] == [10, 20]
    for name in ("conv1", "conv2", "fc3"):
        assert [p.lr_mult for p in net[name].param] == [1, 2]
    # as the original: weights and biases decayed, my_fc8 starts at zero
    for name in ("conv1", "conv2", "fc3", "my_fc8"):
        assert [p.decay_mult for p in net[name].param] == [1, 1], name
    fc8 = net["my_fc8"].inner_product_param
    assert (fc8.weight_filler.type, fc8.weight_filler.value) == ("constant", 0)

    # both phases load; the data layers give (N, K) labels
    train = caffe.Net(str(paths[0]), caffe.TRAIN)
    assert train.blobs["label"].data.shape == (4, K)
    assert set(train.outputs) == {"loss_kl", "loss_dominant"}
    assert train.blob_loss_weights["loss_kl"] == pytest.approx(0.8)
    test = caffe.Net(str(paths[0]), caffe.TEST)
    assert test.blobs["data"].data.shape == (10, 3, 32, 32)
    assert set(test.outputs) == {"loss_kl", "loss_dominant", "accuracy"}
    deploy = caffe.Net(str(paths[1]), caffe.TEST)
    assert deploy.blobs["data"].data.shape == (1, 3, 32, 32)
    prob = deploy.forward()["prob"]
    assert prob.shape == (1, K)
    assert prob.sum() == pytest.approx(1, abs=1e-5)
    assert list(deploy.params) == ["conv1", "conv2", "fc3", "my_fc8"]


def test_loss_variants(data):
    def losses(loss, lam=0.8):
        paths = netgen.write_nets(data / f"loss_{loss}_{lam}", "small", loss,
                                  lam, None, str(data / "train7"),
                                  str(data / "test7"))
        return {layer.type: list(layer.loss_weight)
                for layer in layers(paths[0]).values()
                if layer.type.startswith("SoftmaxWith")}

    assert losses("jcdl", 0.6) == {
        "SoftmaxWithKLLoss": [pytest.approx(0.6)],
        "SoftmaxWithDominantLoss": [pytest.approx(0.4)]}
    assert losses("kl") == {"SoftmaxWithKLLoss": [1]}
    assert losses("softmax") == {"SoftmaxWithDominantLoss": [1]}


def test_vgg16_names_and_weights(data, tmp_path):
    """VGG-16 at crop 32 (where pool5 is 1x1): the Model Zoo layer names in
    both nets, and a caffemodel with those names loads by name."""
    paths = netgen.write_nets(tmp_path, "vgg16", "jcdl", 0.8, 7,
                              str(data / "train7"), str(data / "test7"),
                              crop=32, batch=2, test_iter=1)
    net = layers(paths[0])
    assert list(net)[:len(VGG16_LAYERS)] == VGG16_LAYERS
    assert list(net)[len(VGG16_LAYERS):] == [
        "my_fc8", "loss_kl", "loss_dominant", "accuracy"]
    assert [p.lr_mult for p in net["conv3_2"].param] == [1, 2]
    assert [p.lr_mult for p in net["my_fc8"].param] == [10, 20]
    assert [p.decay_mult for p in net["fc7"].param] == [1, 1]
    # the TEST phase does not mirror (the original did, at random)
    data = [l for l in read(paths[0], caffe_pb2.NetParameter()).layer
            if l.type == "Data"]
    assert [(l.include[0].phase, l.transform_param.mirror) for l in data] == \
        [(caffe.TRAIN, True), (caffe.TEST, False)]
    assert net["drop6"].dropout_param.dropout_ratio == pytest.approx(0.5)
    deploy = layers(paths[1])
    assert list(deploy) == VGG16_LAYERS + ["my_fc8", "prob"]
    s = read(paths[2], caffe_pb2.SolverParameter())
    assert s.solver_mode == caffe_pb2.SolverParameter.GPU

    # a small caffemodel with two of VGG's layers, as the Model Zoo file
    # stores them (V1 layers, legacy 4-d shapes)
    model = caffe_pb2.NetParameter(name="VGG_ILSVRC_16_layers")
    rng = np.random.default_rng(0)
    want = {}
    for name, shape in (("conv1_1", (64, 3, 3, 3)),
                        ("conv1_2", (64, 64, 3, 3))):
        layer = model.layers.add(name=name)
        layer.type = caffe_pb2.V1LayerParameter.CONVOLUTION
        want[name] = rng.standard_normal(shape).astype(np.float32)
        dims = (1,) * (4 - len(shape)) + shape
        blob = layer.blobs.add(num=dims[0], channels=dims[1], height=dims[2],
                               width=dims[3])
        blob.data.extend(want[name].ravel())
        bias = layer.blobs.add(num=1, channels=1, height=1, width=shape[0])
        bias.data.extend(np.ones(shape[0], np.float32))
    weights = tmp_path / "vgg.caffemodel"
    weights.write_bytes(model.SerializeToString())

    net = caffe.Net(str(paths[1]), caffe.TEST)
    net.copy_from(str(weights))
    for name, w in want.items():
        assert np.array_equal(net.params[name][0].data, w)
        assert np.all(net.params[name][1].data == 1)
    assert net.forward()["prob"].shape == (1, 7)


def test_committed_prototxts_are_what_netgen_writes(tmp_path):
    """prototxt/*.prototxt: VGG-16 JCDL for Emotion6 (K = 7), regenerated
    byte for byte by the command in their header."""
    committed = ROOT / "prototxt"
    header = (committed / "solver.prototxt").read_text().splitlines()[0]
    command = shlex.split(re.search(r"`(jcdl netgen [^`]*)`", header)[1])
    work = tmp_path / "prototxt"
    work.mkdir()
    jcdl(*command[1:], cwd=work)
    for name in ("train_val.prototxt", "deploy.prototxt", "solver.prototxt"):
        assert (work / name).read_text() == (committed / name).read_text()

    net = layers(committed / "train_val.prototxt")
    assert net["my_fc8"].inner_product_param.num_output == 7
    assert net["data"].transform_param.crop_size == 224
    assert net["data"].transform_param.mean_file == \
        "../data/emotion6/mean.binaryproto"
    s = read(committed / "solver.prototxt", caffe_pb2.SolverParameter())
    assert s.net == "train_val.prototxt"
    assert s.snapshot_prefix == "snapshots/vgg16_jcdl"
    assert (s.base_lr, s.max_iter, s.snapshot) == pytest.approx(
        (0.0001, 3000, 1000))
    sources = [layer.data_param.source for layer in
               read(committed / "train_val.prototxt",
                    caffe_pb2.NetParameter()).layer
               if layer.type == "Data"]
    assert sources == ["../data/emotion6/train_lmdb",
                       "../data/emotion6/test_lmdb"]
    assert list(s.test_iter) == [33]  # 396 Emotion6 test images / 12


def test_bad_input(data, tmp_path):
    common = ["netgen", "--out", tmp_path / "out", "--arch", "small"]
    dbs = ["--train-db", data / "train7", "--test-db", data / "test7"]
    proc = jcdl(*common, *dbs, "--classes", 8, check=False)
    assert_clean_error(proc, str(data / "train7"), "7 values per label",
                       "--classes is 8")
    proc = jcdl(*common, "--train-db", data / "train7", "--test-db",
                tmp_path / "gone", check=False)
    assert_clean_error(proc, str(tmp_path / "gone"), "--test-iter")
    proc = jcdl(*common, *dbs, "--crop", 40, check=False)
    assert_clean_error(proc, "--crop 40", "36x36")
    proc = jcdl(*common, "--train-db", tmp_path / "gone", "--test-db",
                tmp_path / "gone", "--test-iter", 1, check=False)
    assert_clean_error(proc, "give --classes")
    proc = jcdl(*common, *dbs, "--lr-policy", "bogus", check=False)
    assert_clean_error(proc, "--lr-policy bogus", "fixed, step")
    proc = jcdl(*common, *dbs, "--test-iter", 0, check=False)
    assert_clean_error(proc, "--test-iter must be at least 1")
    proc = jcdl(*common, *dbs, "--stepsize", 0, check=False)
    assert_clean_error(proc, "--lr-policy step needs --stepsize of at least 1")
    proc = jcdl(*common, *dbs, "--gamma", -1, check=False)
    assert_clean_error(proc, "--gamma must not be negative")
    jcdl("netgen", "--out", tmp_path / "fixed", "--arch", "small", *dbs,
         "--lr-policy", "fixed", "--gamma", -1)   # fixed uses no gamma
    proc = jcdl(*common, *dbs, "--max-iter", 9999999999, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'9999999999' is not an integer from" in proc.stderr
    assert not (tmp_path / "out").exists()
