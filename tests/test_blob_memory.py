"""Patch 0017: Caffe's host memory of 2 MB or more is asked for on
transparent huge pages (madvise MADV_HUGEPAGE: the mapping's VmFlags say
"hg"); smaller blobs stay on malloc's heap."""
import os
import re

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe")


def vm_flags(address):
    """The VmFlags of this process's mapping that holds address."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                inside = int(m[1], 16) <= address < int(m[2], 16)
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_large_blobs_are_on_huge_pages_and_small_ones_are_not(tmp_path):
    from caffe import layers as L
    caffe.set_mode_cpu()
    n = caffe.NetSpec()
    n.big = L.Input(shape=dict(dim=[4, 1024, 1024]))    # 16 MB
    n.small = L.Input(shape=dict(dim=[16, 1024]))       # 64 kB
    path = tmp_path / "net.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    big, small = net.blobs["big"].data, net.blobs["small"].data
    big[...], small[...] = 1.0, 2.0
    address = big.__array_interface__["data"][0]
    assert address % (2 << 20) == 0
    assert "hg" in vm_flags(address)
    assert "hg" not in vm_flags(small.__array_interface__["data"][0])
    assert np.all(big == 1.0) and np.all(small == 2.0)
