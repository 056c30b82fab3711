"""InnerProduct on the CPU at batch 1, the path patch 0016 changed (a
matrix-vector product instead of a GEMM of one row), against float64 NumPy,
with and without bias and transpose; batch 2 stays on the GEMM and must
agree with it row for row."""
import os

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe")


def ip_net(tmp_path, batch, num, bias, transpose):
    from caffe import layers as L
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[batch, 3, 7, 5]))
    n.ip = L.InnerProduct(n.data, num_output=num, bias_term=bias,
                          transpose=transpose,
                          weight_filler=dict(type="gaussian", std=0.1),
                          bias_filler=dict(type="gaussian", std=0.1))
    path = tmp_path / f"ip{batch}.prototxt"
    path.write_text(str(n.to_proto()))
    return caffe.Net(str(path), caffe.TEST)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("transpose", [False, True], ids=["plain", "transpose"])
def test_one_row_matches_numpy_and_the_gemm(tmp_path, bias, transpose):
    caffe.set_mode_cpu()
    rng = np.random.default_rng(4)
    one, two = (ip_net(tmp_path, b, 11, bias, transpose) for b in (1, 2))
    for p, q in zip(one.params["ip"], two.params["ip"]):
        q.data[...] = p.data
    x = rng.standard_normal((2, 3, 7, 5)).astype(np.float32)
    w = one.params["ip"][0].data.astype(np.float64)
    w = w.T if transpose else w            # (num, 105) either way
    b = one.params["ip"][1].data if bias else np.zeros(11)
    two.blobs["data"].data[...] = x
    two.forward()
    for i in range(2):
        one.blobs["data"].data[...] = x[i:i + 1]
        one.forward()
        want = w @ x[i].reshape(-1).astype(np.float64) + b
        got = one.blobs["ip"].data[0]
        assert got.shape == (11,)
        assert np.abs(got - want).max() < 1e-5
        assert np.abs(got - two.blobs["ip"].data[i]).max() < 1e-5
