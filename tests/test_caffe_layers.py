"""The JCDL layers through pycaffe and the stock caffe tool (issue: Caffe
with the JCDL layers): values and gradients equal ORIGINAL.md's math, and a
legacy prototxt trains unchanged for K = 7 and K = 8."""
import re

import numpy as np
import pytest

from conftest import run, write_image
from jcdl.caffenet import import_caffe

caffe = import_caffe()
from caffe import layers as L  # noqa: E402


def reference(z, p, dominant):
    """Loss per sample and d loss / d z, in float64, from the definitions:
    KL(p || softmax z) and its gradient q - p, or -log q_c and q - onehot(c)
    with c = argmax p (lowest index on ties)."""
    z = z.astype(np.float64)
    p = p.astype(np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    log_q = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    q = np.exp(log_q)
    if dominant:
        target = np.eye(z.shape[1])[p.argmax(axis=1)]
        return -(target * log_q).sum(axis=1), q - target
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - log_q), 0)
    return terms.sum(axis=1), q * p.sum(axis=1, keepdims=True) - p


def make_net(tmp_path, layer_type, shape, label_shape, loss_weight):
    n = caffe.NetSpec()
    n.z = L.Input(shape=dict(dim=list(shape)))
    n.p = L.Input(shape=dict(dim=list(label_shape)))
    n.loss = L.Layer(n.z, n.p, type=layer_type, loss_weight=loss_weight)
    path = tmp_path / f"{layer_type}.prototxt"
    path.write_text("force_backward: true\n" + str(n.to_proto()))
    return caffe.Net(str(path), caffe.TRAIN)


def random_case(rng, N, K, extreme):
    z = rng.normal(0, 3, size=(N, K))
    if extreme:
        z[::2] = rng.choice([-1000, -80, 0, 80, 1000], size=z[::2].shape)
    p = rng.random((N, K)) * (rng.random((N, K)) > 0.4)
    p[p.sum(axis=1) == 0, 0] = 1
    p /= p.sum(axis=1, keepdims=True)
    p[1] = np.eye(K)[2]  # one-hot
    return z.astype(np.float32), p.astype(np.float32)


@pytest.mark.parametrize("layer_type, dominant", [
    ("SoftmaxWithKLLoss", False),
    ("SoftmaxWithMyKLLoss", True),      # the legacy name
    ("SoftmaxWithDominantLoss", True),
])
@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("label_shape", ["NK", "NK11"])
def test_values_and_gradients_match_the_math(tmp_path, layer_type, dominant,
                                              extreme, label_shape):
    rng = np.random.default_rng(7)
    N, K, weight = 16, 7, 0.8
    z, p = random_case(rng, N, K, extreme)
    lshape = (N, K) if label_shape == "NK" else (N, K, 1, 1)
    net = make_net(tmp_path, layer_type, (N, K), lshape, weight)
    net.blobs["z"].data[...] = z
    net.blobs["p"].data[...] = p.reshape(lshape)
    out = net.forward()
    net.backward()
    loss, grad = reference(z, p, dominant)
    assert np.isfinite(out["loss"]).all()
    assert float(out["loss"]) == pytest.approx(loss.mean(), rel=1e-5, abs=1e-5)
    got = net.blobs["z"].diff
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, weight * grad / N, rtol=1e-4, atol=1e-6)


def test_ties_go_to_the_lowest_class(tmp_path):
    net = make_net(tmp_path, "SoftmaxWithMyKLLoss", (1, 4), (1, 4), 1)
    net.blobs["z"].data[...] = np.log([[0.1, 0.2, 0.3, 0.4]])
    net.blobs["p"].data[...] = [[0, 0.5, 0, 0.5]]
    assert float(net.forward()["loss"]) == pytest.approx(-np.log(0.2), rel=1e-6)


LEGACY_NET = """\
name: "jcdl_legacy"
layer {{
  name: "data" type: "Data" top: "data" top: "label"
  include {{ phase: TRAIN }}
  transform_param {{ crop_size: 16 mirror: true scale: 0.00390625 }}
  data_param {{ source: "{db}" batch_size: 16 backend: LMDB }}
}}
layer {{
  name: "data" type: "Data" top: "data" top: "label"
  include {{ phase: TEST }}
  transform_param {{ crop_size: 16 scale: 0.00390625 }}
  data_param {{ source: "{db}" batch_size: 16 backend: LMDB }}
}}
layer {{
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 3 stride: 2
    weight_filler {{ type: "xavier" }} }}
}}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{
  name: "my_fc8" type: "InnerProduct" bottom: "conv1" top: "my_fc8"
  param {{ lr_mult: 10 }} param {{ lr_mult: 20 }}
  inner_product_param {{ num_output: {K} weight_filler {{ type: "xavier" }} }}
}}
layer {{
  name: "loss" type: "SoftmaxWithKLLoss" bottom: "my_fc8" bottom: "label"
  top: "loss" loss_weight: 0.8
}}
layer {{
  name: "loss_cls" type: "SoftmaxWithMyKLLoss" bottom: "my_fc8"
  bottom: "label" top: "loss_cls" loss_weight: 0.2
}}
layer {{
  name: "accuracy" type: "Accuracy" bottom: "my_fc8" bottom: "label"
  top: "accuracy" include {{ phase: TEST }} accuracy_param {{ top_k: 1 }}
}}
"""

LEGACY_SOLVER = """\
net: "{net}"
test_iter: 2
test_interval: 40
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: 10000
display: 10
max_iter: 80
momentum: 0.9
weight_decay: 0.0005
snapshot: 0
snapshot_prefix: "{prefix}"
solver_mode: CPU
random_seed: 1
"""


def make_lmdb(tmp_path, K, n=48):
    """Real images whose colour decides a distribution, through the real
    convert_imageset_r."""
    rng = np.random.default_rng(K)
    colors = rng.integers(0, 256, size=(4, 3))
    dists = rng.dirichlet(np.full(K, 0.5), size=4)
    lines = []
    for i in range(n):
        c = i % 4
        name = f"img{i}.png"
        write_image(tmp_path / "images" / name, 20, 20, seed=i, color=colors[c])
        lines.append(name + " " + " ".join(f"{v:.6f}" for v in dists[c]))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    db = tmp_path / f"k{K}_lmdb"
    run("convert_imageset_r", str(tmp_path / "images") + "/",
        tmp_path / "list.txt", db)
    return db


@pytest.mark.parametrize("K", [7, 8])
def test_legacy_prototxt_trains_with_stock_caffe(tmp_path, K):
    db = make_lmdb(tmp_path, K)
    net = tmp_path / "train_val.prototxt"
    net.write_text(LEGACY_NET.format(db=db, K=K))
    solver = tmp_path / "solver.prototxt"
    solver.write_text(LEGACY_SOLVER.format(net=net, prefix=tmp_path / "snap"))
    log = run("caffe", "train", f"--solver={solver}").stderr
    losses = [float(x) for x in
              re.findall(r"Iteration \d+ \(.*?\), loss = ([\d.e+-]+)", log)]
    assert len(losses) >= 8, log[-2000:]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses
    assert f"Top shape: 16 {K} ({16 * K})" in log  # the (N, K) label top
    assert re.search(r"Test net output #\d+: accuracy = ", log)
