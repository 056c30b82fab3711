"""Start-up: import caffe leaves caffe.io (scikit-image) for its first use
(patch 0011), and caffe.io still works every way it was reached."""
import subprocess

from conftest import BIN


def py(code):
    return subprocess.run([str(BIN / "python"), "-c", code],
                          capture_output=True, text=True, timeout=120)


def test_import_caffe_does_not_import_caffe_io_or_skimage():
    p = py("import sys, caffe\n"
           "caffe.Net, caffe.SGDSolver, caffe.NetSpec, caffe.layers\n"
           "print(sorted(m for m in sys.modules\n"
           "      if m == 'caffe.io' or m.split('.')[0] == 'skimage'))")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_caffe_io_is_there_when_used():
    for code in ("import caffe; caffe.io.Transformer",
                 "import caffe.io; caffe.io.load_image",
                 "from caffe import io; io.array_to_blobproto",
                 "from caffe.io import Transformer",
                 "import caffe; caffe.Classifier; caffe.Detector"):
        p = py(code)
        assert p.returncode == 0, (code, p.stderr)


def test_a_missing_attribute_is_still_an_attribute_error():
    p = py("import caffe\n"
           "try:\n    caffe.no_such_thing\nexcept AttributeError as e:\n"
           "    print('AttributeError', e)")
    assert p.stdout.startswith("AttributeError"), p.stdout + p.stderr
    assert "no_such_thing" in p.stdout
