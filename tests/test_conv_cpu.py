"""Caffe's CPU convolution on the paths patches 0010 and 0012 changed:
im2col/col2im over whole rows, and a forward pass big enough (a column
buffer above 4 Mi values) to be made and multiplied in bands of output rows.
Caffe's gtests use small blobs only, which never reach the banded path;
here a float64 NumPy convolution is the reference."""
import os

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe")


def reference(x, w, b, stride, pad, dilation, group):
    """Direct convolution in float64: (N, C, H, W) * (M, C/g, kh, kw)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    oh = (h - (dilation * (kh - 1) + 1)) // stride + 1
    ow = (wd - (dilation * (kw - 1) + 1)) // stride + 1
    out = np.zeros((n, m, oh, ow))
    mg = m // group
    for g in range(group):
        xs = x[:, g * cg:(g + 1) * cg]
        wg = w[g * mg:(g + 1) * mg].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dilation:i * dilation + stride * oh:stride,
                           j * dilation:j * dilation + stride * ow:stride]
                out[:, g * mg:(g + 1) * mg] += np.einsum(
                    "nchw,mc->nmhw", patch, wg[:, :, i, j])
    return out + b[None, :, None, None]


def conv_net(tmp_path, shape, num, kernel, stride, pad, dilation, group):
    from caffe import layers as L
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=list(shape)))
    n.conv = L.Convolution(n.data, num_output=num, kernel_size=kernel,
                           stride=stride, pad=pad, dilation=dilation,
                           group=group, weight_filler=dict(type="gaussian",
                                                           std=0.1),
                           bias_filler=dict(type="gaussian", std=0.1))
    path = tmp_path / "conv.prototxt"
    proto = n.to_proto()
    proto.force_backward = True  # a data gradient for the Input blob
    path.write_text(str(proto))
    return caffe.Net(str(path), caffe.TEST)


# (input shape, outputs, kernel, stride, pad, dilation, group): every one has
# a column buffer above 4 Mi values, so the forward pass goes in bands
CASES = [((1, 64, 96, 96), 32, 3, 1, 1, 1, 1),     # VGG-like, 5.3 Mi
         ((2, 64, 200, 200), 16, 3, 2, 2, 2, 2),   # stride, dilation, group
         ((1, 16, 130, 170), 8, 5, 1, 0, 1, 1),    # rectangular, no pad
         ((1, 3, 1100, 1100), 4, 3, 1, 1, 1, 1)]   # bands of one row


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_banded_forward_matches_a_direct_convolution(tmp_path, case):
    shape, num, kernel, stride, pad, dilation, group = case
    caffe.set_mode_cpu()
    net = conv_net(tmp_path, shape, num, kernel, stride, pad, dilation, group)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    w, b = net.params["conv"][0].data, net.params["conv"][1].data
    want = reference(x, w, b, stride, pad, dilation, group)
    got = net.blobs["conv"].data
    assert got.shape == want.shape
    k = shape[1] // group * kernel * kernel
    # float32 sums of k products of values around 1
    assert np.abs(got - want).max() < 1e-6 * k * 10, np.abs(got - want).max()


def test_backward_over_the_changed_col2im_matches_numpy(tmp_path):
    """Data and weight gradients (im2col and col2im over whole rows) of a
    strided, padded, dilated convolution against float64 NumPy."""
    shape, num, kernel, stride, pad, dilation = (2, 5, 23, 19), 6, 3, 2, 3, 2
    caffe.set_mode_cpu()
    net = conv_net(tmp_path, shape, num, kernel, stride, pad, dilation, 1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    top = rng.standard_normal(net.blobs["conv"].data.shape).astype(np.float32)
    net.blobs["conv"].diff[...] = top
    for p in net.params["conv"]:
        p.diff[...] = 0
    net.backward()
    w = net.params["conv"][0].data.astype(np.float64)
    # the adjoint of the reference convolution, by its Jacobian's columns
    eps_x = np.zeros_like(x, dtype=np.float64)
    base = reference(x, w, np.zeros(num), stride, pad, dilation, 1)
    for idx in np.ndindex(*shape):
        e = np.zeros(shape)
        e[idx] = 1.0
        eps_x[idx] = (reference(e, w, np.zeros(num), stride, pad, dilation, 1)
                      * top).sum()
    assert np.abs(net.blobs["data"].diff - eps_x).max() < 1e-4
    gw = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        e = np.zeros_like(w)
        e[idx] = 1.0
        gw[idx] = (reference(x, e, np.zeros(num), stride, pad, dilation, 1)
                   * top).sum()
    assert np.abs(net.params["conv"][0].diff - gw).max() < 1e-3
    assert base.shape == top.shape
