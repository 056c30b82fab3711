"""Max pooling on the CPU, the path patch 0018 changed (the windows within
the input's width run with the loop over outputs innermost), against a
NumPy transcription of upstream's loop: the same maxima and the same argmax
(ties to the first in scan order, a NaN wins, -FLT_MAX to start), as the
second top and as the routing of the gradient, for the shapes where the
within/edge split differs: no pad, pads, ceil-mode partial windows, strides
1, 2 and 3, non-square kernels, global pooling."""
import os

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe")

FLT_MAX = np.finfo(np.float32).max

# (input h, w), kernel (h, w), stride (h, w), pad (h, w)
CASES = {
    "vgg_2x2_s2": ((12, 16), (2, 2), (2, 2), (0, 0)),
    "odd_2x2_s2": ((7, 9), (2, 2), (2, 2), (0, 0)),     # ceil: clipped last
    "3x3_s2": ((9, 13), (3, 3), (2, 2), (0, 0)),
    "3x3_s1_pad1": ((6, 10), (3, 3), (1, 1), (1, 1)),
    "3x3_s3_pad1": ((10, 11), (3, 3), (3, 3), (1, 1)),  # the generic stride
    "2x3_s21_pad01": ((8, 9), (2, 3), (2, 1), (0, 1)),
    "pad2_4x4_s2": ((9, 9), (4, 4), (2, 2), (2, 2)),
    "wider_than_input": ((5, 3), (2, 4), (1, 1), (0, 1)),
}


def reference(x, kernel, stride, pad, pooled):
    """Upstream's Forward_cpu for MAX: maxima and argmax per window."""
    (kh, kw), (sh, sw), (ph_, pw_) = kernel, stride, pad
    n, c, h, w = x.shape
    top = np.full((n, c) + pooled, -FLT_MAX, np.float32)
    idx = np.full((n, c) + pooled, -1, np.int64)
    for i in range(n):
        for j in range(c):
            for ph in range(pooled[0]):
                for pw in range(pooled[1]):
                    h0, w0 = ph * sh - ph_, pw * sw - pw_
                    h1, w1 = min(h0 + kh, h), min(w0 + kw, w)
                    for y in range(max(h0, 0), h1):
                        for z in range(max(w0, 0), w1):
                            v = x[i, j, y, z]
                            if v > top[i, j, ph, pw] or v != v:
                                top[i, j, ph, pw] = v
                                idx[i, j, ph, pw] = y * w + z
    return top, idx


def pool_net(tmp_path, shape, kernel, stride, pad, ntop, name="p"):
    from caffe import layers as L
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=list(shape)))
    tops = L.Pooling(n.data, pool=caffe.params.Pooling.MAX, kernel_h=kernel[0],
                     kernel_w=kernel[1], stride_h=stride[0],
                     stride_w=stride[1], pad_h=pad[0], pad_w=pad[1],
                     ntop=ntop)
    if ntop == 2:
        n.pool, n.mask = tops
    else:
        n.pool = tops
    path = tmp_path / f"{name}.prototxt"
    path.write_text("force_backward: true\n" + str(n.to_proto()))
    return caffe.Net(str(path), caffe.TEST)


def inputs(rng, shape, special):
    """Small integers (many ties); with special, NaNs and -inf too."""
    x = rng.integers(-3, 4, size=shape).astype(np.float32)
    if special:
        flat = x.reshape(-1)
        k = flat.size // 12
        flat[rng.choice(flat.size, k, replace=False)] = np.nan
        flat[rng.choice(flat.size, k, replace=False)] = -np.inf
    return x


def routed(shape, idx, diff):
    """The input gradient that upstream's loop sends: each output's to its
    argmax, none from a window whose argmax is -1."""
    want = np.zeros(shape, np.float64)
    for i in range(shape[0]):
        for j in range(shape[1]):
            ok = idx[i, j] >= 0
            np.add.at(want[i, j].reshape(-1), idx[i, j][ok],
                      diff[i, j][ok])
    return want


def check_pass(net, x, top, idx, rng):
    """A forward of x: the maxima top (and, with a second top, the argmax
    idx); then a backward of a random gradient: routed as upstream's."""
    net.blobs["data"].data[...] = x
    net.forward()
    np.testing.assert_array_equal(net.blobs["pool"].data, top)
    if "mask" in net.blobs:
        np.testing.assert_array_equal(net.blobs["mask"].data, idx)
    diff = rng.standard_normal(top.shape).astype(np.float32)
    net.blobs["pool"].diff[...] = diff
    net.backward()
    np.testing.assert_allclose(net.blobs["data"].diff,
                               routed(x.shape, idx, diff), rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_max_pooling_matches_upstreams_loop(tmp_path, case):
    caffe.set_mode_cpu()
    (h, w), kernel, stride, pad = CASES[case]
    shape = (2, 3, h, w)
    rng = np.random.default_rng(18)
    with_mask = pool_net(tmp_path, shape, kernel, stride, pad, 2, "m")
    pooled = with_mask.blobs["pool"].data.shape[2:]
    for special in (False, True):
        x = inputs(rng, shape, special)
        top, idx = reference(x, kernel, stride, pad, pooled)
        with_mask.blobs["data"].data[...] = x
        with_mask.forward()
        np.testing.assert_array_equal(with_mask.blobs["pool"].data, top)
        np.testing.assert_array_equal(with_mask.blobs["mask"].data, idx)


@pytest.mark.parametrize("case", sorted(CASES))
def test_max_pooling_gradient_goes_to_the_argmax(tmp_path, case):
    """One top: the argmax is kept inside the layer, seen only through
    Backward; every window here has a finite maximum (no -1 index)."""
    caffe.set_mode_cpu()
    (h, w), kernel, stride, pad = CASES[case]
    shape = (2, 3, h, w)
    rng = np.random.default_rng(19)
    net = pool_net(tmp_path, shape, kernel, stride, pad, 1)
    pooled = net.blobs["pool"].data.shape[2:]
    x = inputs(rng, shape, False)
    top, idx = reference(x, kernel, stride, pad, pooled)
    assert (idx >= 0).all()
    check_pass(net, x, top, idx, rng)


@pytest.mark.parametrize("ntop", [1, 2])
def test_windows_of_only_minus_inf(tmp_path, ntop):
    """A window where nothing beats the initial -FLT_MAX (all -inf): the
    output is -FLT_MAX and the argmax -1, also after a forward that had
    valid indices there (each row's mask is set anew), and Backward sends
    it no gradient instead of writing before the channel (patch 0005)."""
    caffe.set_mode_cpu()
    shape, kernel, stride, pad = (2, 3, 7, 9), (2, 2), (2, 2), (0, 1)
    net = pool_net(tmp_path, shape, kernel, stride, pad, ntop)
    pooled = net.blobs["pool"].data.shape[2:]
    rng = np.random.default_rng(21)
    net.blobs["data"].data[...] = inputs(rng, shape, False)
    net.forward()   # every index valid
    x = inputs(rng, shape, False)
    x[0, 1] = -np.inf          # a whole channel
    x[1, 2, :4, :5] = -np.inf  # the windows over a corner
    top, idx = reference(x, kernel, stride, pad, pooled)
    assert (idx[0, 1] == -1).all() and (idx[1, 2] == -1).sum() >= 4
    check_pass(net, x, top, idx, rng)


def test_global_max_pooling(tmp_path):
    from caffe import layers as L
    caffe.set_mode_cpu()
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 4, 5, 7]))
    n.pool, n.mask = L.Pooling(n.data, pool=caffe.params.Pooling.MAX,
                               global_pooling=True, ntop=2)
    path = tmp_path / "g.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    x = inputs(np.random.default_rng(20), (2, 4, 5, 7), True)
    top, idx = reference(x, (5, 7), (1, 1), (0, 0), (1, 1))
    net.blobs["data"].data[...] = x
    net.forward()
    np.testing.assert_array_equal(net.blobs["pool"].data, top)
    np.testing.assert_array_equal(net.blobs["mask"].data, idx)
