"""Caffe's CPU convolution on the paths patches 0010, 0012, 0014 and 0019
changed: im2col/col2im over whole rows; a forward pass big enough (a column
buffer above 4 Mi values) to be made and multiplied in bands of output rows;
stride 1 over at least 2048 output positions a batch, which runs one GEMM
per kernel tap without a column buffer, forward and backward; and 3 x 3 of
stride 1 from 16 channels and 100 tiles a batch, by Winograd's F(2x2, 3x3).
Caffe's gtests use small blobs only, which never reach these paths; here a
float64 NumPy convolution and its gradients are the reference."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe")


def reference(x, w, b, stride, pad, dilation, group):
    """Direct convolution in float64: (N, C, H, W) * (M, C/g, kh, kw); pad
    is one number or (pad_h, pad_w)."""
    ph, pw = (pad, pad) if np.ndim(pad) == 0 else pad
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
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


def reference_backward(x, w, top, stride, pad, dilation, group):
    """The data and weight gradients of reference() for the top gradient
    top, in float64: the same taps, transposed."""
    ph, pw = (pad, pad) if np.ndim(pad) == 0 else pad
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    gx = np.zeros_like(xp)
    gw = np.zeros(w.shape)
    top = top.astype(np.float64)
    n, m, oh, ow = top.shape
    _, cg, kh, kw = w.shape
    mg = m // group
    for g in range(group):
        cs, ms = slice(g * cg, (g + 1) * cg), slice(g * mg, (g + 1) * mg)
        wg = w[ms].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dilation, i * dilation + stride * oh, stride)
                cols = slice(j * dilation, j * dilation + stride * ow, stride)
                gw[ms, :, i, j] = np.einsum("nmhw,nchw->mc", top[:, ms],
                                            xp[:, cs, rows, cols])
                gx[:, cs, rows, cols] += np.einsum("nmhw,mc->nchw",
                                                   top[:, ms], wg[:, :, i, j])
    return gx[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]], gw


def conv_net(tmp_path, shape, num, kernel, stride, pad, dilation, group,
             bottoms=1):
    """A net of one Convolution over Input blobs data (and data2, ... when
    bottoms > 1, sharing its weights); kernel and pad may be (h, w)."""
    from caffe import layers as L
    n = caffe.NetSpec()
    size = (dict(kernel_h=kernel[0], kernel_w=kernel[1])
            if isinstance(kernel, tuple) else dict(kernel_size=kernel))
    size.update(dict(pad_h=pad[0], pad_w=pad[1]) if isinstance(pad, tuple)
                else dict(pad=pad))
    names = ["data"] + [f"data{i + 2}" for i in range(bottoms - 1)]
    for name in names:
        setattr(n, name, L.Input(shape=dict(dim=list(shape))))
    tops = L.Convolution(*[getattr(n, name) for name in names],
                         num_output=num, stride=stride, dilation=dilation,
                         group=group, ntop=bottoms,
                         weight_filler=dict(type="gaussian", std=0.1),
                         bias_filler=dict(type="gaussian", std=0.1), **size)
    for i, t in enumerate([tops] if bottoms == 1 else tops):
        setattr(n, "conv" if i == 0 else f"conv{i + 1}", t)
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


# Stride 1 with at least 2048 output positions a batch and 32 input channels
# a group: the per-tap path (patch 0014), forward and both gradients. (input shape, outputs, kernel,
# pad, dilation, group, bottoms)
TAP_CASES = [
    ((1, 32, 48, 48), 8, 3, 1, 1, 1, 1),           # VGG-like, 2304 positions
    ((2, 32, 33, 35), 4, (3, 5), (0, 2), 1, 1, 1),  # rectangular, odd sizes
    ((1, 64, 50, 47), 6, 3, 2, 2, 2, 1),            # dilation and groups
    ((2, 32, 31, 35), 5, (1, 4), (2, 0), 1, 1, 1),  # a 1 x 4 kernel, more pad
    ((2, 32, 40, 40), 3, 3, 1, 1, 1, 2),            # two bottoms, one weight
    ((1, 32, 64, 40), 2, 2, 0, 3, 1, 1),            # even kernel, no pad
]


def check_forward_and_backward(tmp_path, case, uses_path, rounding=1):
    """A stride-1 convolution (input shape, outputs, kernel, pad, dilation,
    group, bottoms) against float64 NumPy: outputs, data and weight
    gradients, and the weight gradient accumulated over two passes.
    uses_path(output height, output width) asserts that the case reaches
    the path under test; rounding scales the tolerances, for a path that
    rounds more than the direct sums."""
    shape, num, kernel, pad, dilation, group, bottoms = case
    caffe.set_mode_cpu()
    net = conv_net(tmp_path, shape, num, kernel, 1, pad, dilation, group,
                   bottoms)
    oh, ow = net.blobs["conv"].data.shape[2:]
    assert uses_path(oh, ow)
    rng = np.random.default_rng(2)
    inputs = [n for n in net.inputs]
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in inputs]
    for name, x in zip(inputs, xs):
        net.blobs[name].data[...] = rng.standard_normal(shape)
    net.forward()  # a pass before, whose buffers must not leak into the next
    for name, x in zip(inputs, xs):
        net.blobs[name].data[...] = x
    net.forward()
    w, b = net.params["conv"][0].data, net.params["conv"][1].data
    tops = ["conv"] + [f"conv{i + 2}" for i in range(bottoms - 1)]
    k = shape[1] // group * int(np.prod(w.shape[2:]))
    gw_want = np.zeros(w.shape)
    grads = []
    for top_name, x in zip(tops, xs):
        want = reference(x, w, b, 1, pad, dilation, group)
        got = net.blobs[top_name].data
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-6 * k * 10 * rounding
        top = rng.standard_normal(got.shape).astype(np.float32)
        net.blobs[top_name].diff[...] = top
        gx, gw = reference_backward(x, w, top, 1, pad, dilation, group)
        grads.append(gx)
        gw_want += gw
    for p in net.params["conv"]:
        p.diff[...] = 0
    net.backward()
    for name, gx in zip(inputs, grads):
        assert np.abs(net.blobs[name].diff - gx).max() < 1e-4 * rounding
    sums = shape[0] * oh * ow * bottoms  # products summed per weight
    tol = 1e-6 * sums * 10 * rounding
    assert np.abs(net.params["conv"][0].diff - gw_want).max() < tol
    # Caffe accumulates the weight gradient: a second pass adds as much
    net.backward()
    assert np.abs(net.params["conv"][0].diff - 2 * gw_want).max() < 2 * tol


@pytest.mark.parametrize("case", TAP_CASES,
                         ids=lambda c: "x".join(map(str, c[0])))
def test_per_tap_path_matches_numpy_forward_and_backward(tmp_path, case):
    shape, num, kernel, pad, dilation, group, bottoms = case
    # the per-tap path's thresholds (and not Winograd's: a 3 x 3 kernel
    # here has fewer than 16 outputs)
    check_forward_and_backward(
        tmp_path, case, lambda oh, ow: shape[0] * oh * ow >= 2048 and
        shape[1] // group >= 32 and (kernel != 3 or dilation != 1 or
                                     num // group < 16))


# 3 x 3, stride 1, at least 16 input and output channels a group and 100
# tiles of 2 x 2 outputs a batch: Winograd (patch 0019), F(4x4, 3x3) from
# 160 tiles of 4 x 4 a batch, F(2x2, 3x3) below. (input shape, outputs,
# kernel, pad, dilation, group, bottoms)
WINOGRAD_CASES = [
    ((2, 16, 20, 22), 16, 3, 1, 1, 1, 1),          # VGG-like
    ((1, 32, 21, 23), 24, 3, 1, 1, 1, 1),          # odd sizes: cut tiles
    ((3, 16, 15, 17), 16, 3, 0, 1, 1, 1),          # no pad
    ((2, 16, 13, 11), 20, 3, 2, 1, 1, 1),          # pad 2 (gradient pad 0)
    ((2, 24, 14, 18), 16, 3, (0, 2), 1, 1, 1),     # pads differ
    ((2, 64, 16, 16), 32, 3, 1, 1, 2, 1),          # two groups
    ((2, 16, 16, 16), 16, 3, 1, 1, 1, 2),          # two bottoms, one weight
    ((3, 512, 14, 14), 512, 3, 1, 1, 1, 1),        # VGG-16's conv5 (b3)
]
WINOGRAD4_CASES = [
    ((2, 16, 44, 46), 16, 3, 1, 1, 1, 1),          # VGG-like
    ((1, 32, 49, 51), 24, 3, 1, 1, 1, 1),          # odd sizes: cut 1 and 3
    ((2, 16, 42, 42), 16, 3, 1, 1, 1, 1),          # cut 2
    ((3, 16, 30, 34), 16, 3, 0, 1, 1, 1),          # no pad
    ((2, 16, 42, 38), 20, 3, 2, 1, 1, 1),          # pad 2 (gradient pad 0)
    ((2, 24, 42, 46), 16, 3, (0, 2), 1, 1, 1),     # pads differ
    ((2, 64, 38, 38), 32, 3, 1, 1, 2, 1),          # two groups
    ((2, 16, 38, 38), 16, 3, 1, 1, 1, 2),          # two bottoms, one weight
    ((3, 16, 70, 70), 16, 3, 1, 1, 1, 1),          # bands across images
    ((1, 16, 3, 4200), 16, 3, 1, 1, 1, 1),         # a band of one tile row
    ((4, 256, 28, 28), 256, 3, 1, 1, 1, 1),        # VGG-16's conv4 (b4)
]


def winograd_tiles(shape, oh, ow, m):
    """Tiles of m x m outputs a batch."""
    return shape[0] * -(-oh // m) * -(-ow // m)


def winograd_path(case, m):
    """uses_path for check_forward_and_backward: Winograd of m x m output
    blocks, forward and for the data gradient (whose outputs are the
    input's size)."""
    shape, num, kernel, pad, dilation, group, bottoms = case

    def uses(oh, ow):
        if not (winograd_tiles(shape, oh, ow, 2) >= 100 and
                shape[1] // group >= 16 and num // group >= 16):
            return False
        tiles = (winograd_tiles(shape, oh, ow, 4),
                 winograd_tiles(shape, *shape[2:], 4))
        return all((t >= 160) == (m == 4) for t in tiles)
    return uses


@pytest.mark.parametrize("case", WINOGRAD_CASES,
                         ids=lambda c: "x".join(map(str, c[0])))
def test_winograd_matches_numpy_forward_and_backward(tmp_path, case):
    check_forward_and_backward(tmp_path, case, winograd_path(case, 2))


@pytest.mark.parametrize("case", WINOGRAD4_CASES,
                         ids=lambda c: "x".join(map(str, c[0])))
def test_winograd_4x4_matches_numpy_forward_and_backward(tmp_path, case):
    # F(4x4, 3x3)'s transforms hold 1/6, 1/24, 4, 5 and 8, and it rounds
    # about ten times more than the direct sums (F(2x2, 3x3) twice)
    check_forward_and_backward(tmp_path, case, winograd_path(case, 4),
                               rounding=10)


def test_per_tap_and_im2col_paths_agree_across_the_threshold(tmp_path):
    """The same layer and weights at batch 1 (1024 positions: im2col) and
    batch 2 (2048: per tap) give the same outputs and gradients per image."""
    caffe.set_mode_cpu()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 32, 32, 32)).astype(np.float32)
    top = rng.standard_normal((2, 5, 32, 32)).astype(np.float32)
    out = {}
    for batch in (1, 2):
        d = tmp_path / str(batch)
        d.mkdir()
        net = conv_net(d, (batch, 32, 32, 32), 5, 3, 1, 1, 1, 1)
        if batch == 2:
            for p, q in zip(net.params["conv"], out[1][3]):
                p.data[...] = q
        out[batch] = ([], [], [], [p.data.copy() for p in net.params["conv"]])
        gw = 0
        for i in range(0, 2, batch):
            net.blobs["data"].data[...] = x[i:i + batch]
            net.forward()
            out[batch][0].append(net.blobs["conv"].data.copy())
            net.blobs["conv"].diff[...] = top[i:i + batch]
            for p in net.params["conv"]:
                p.diff[...] = 0
            net.backward()
            out[batch][1].append(net.blobs["data"].diff.copy())
            gw = gw + net.params["conv"][0].diff
        out[batch][2].append(gw)
    for a, b in zip(out[1][:3], out[2][:3]):
        assert np.abs(np.concatenate(a) - np.concatenate(b)).max() < 1e-4


NO_THREADS = r"""
import os, resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy as np
from test_conv_cpu import caffe, conv_net, reference
caffe.set_mode_cpu()
shape = (2, 16, 20, 22)
net = conv_net(Path(tempfile.mkdtemp()), shape, 16, 3, 1, 1, 1, 1)
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
net.blobs["data"].data[...] = x
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no new thread from here
net.forward()
w, b = net.params["conv"][0].data, net.params["conv"][1].data
print(np.abs(net.blobs["conv"].data - reference(x, w, b, 1, 1, 1, 1)).max())
"""


def test_winograd_runs_where_no_thread_can_be_started():
    """The transforms run on as many threads as the BLAS has; where no
    thread can be started (a process limit reached), this one does all the
    work instead of failing. As root, whom the limit does not bind, the
    child runs as another user (setpriv)."""
    here = Path(__file__).resolve().parent
    command = [sys.executable, "-c", NO_THREADS, str(here)]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534",
                   "--clear-groups", *command]
    proc = subprocess.run(command, capture_output=True, text=True,
                          timeout=120, cwd="/",
                          env=dict(os.environ, OPENBLAS_NUM_THREADS="2",
                                   HOME="/tmp"))
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) < 1e-5
