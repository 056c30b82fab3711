"""pycaffe's public helpers, as a notebook uses them, with today's numpy,
scikit-image, protobuf and matplotlib (patches 0008 and 0009): each works
as its docstring says, on real images and a real net."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from jcdl.caffenet import import_caffe
from jcdl.predict import load_model

caffe = import_caffe()
from caffe import layers as L  # noqa: E402

MEAN_H, MEAN_W = 10, 12        # the stored images and the mean
IN_H, IN_W = 7, 8              # the net input: centre crop offsets 1, 2


@pytest.fixture(scope="module")
def net_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pycaffe")
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, IN_H, IN_W]))
    n.fc = L.InnerProduct(n.data, num_output=4)
    n.prob = L.Softmax(n.fc)
    (d / "deploy.prototxt").write_text(str(n.to_proto()))
    net = caffe.Net(str(d / "deploy.prototxt"), caffe.TEST)
    rng = np.random.default_rng(0)
    net.params["fc"][0].data[...] = rng.normal(0, 0.01,
                                              net.params["fc"][0].data.shape)
    net.params["fc"][1].data[...] = rng.normal(0, 0.5, 4)
    net.save(str(d / "w.caffemodel"))
    mean = rng.uniform(0, 255, (3, MEAN_H, MEAN_W)).astype(np.float32)
    blob = caffe.io.array_to_blobproto(mean[None])
    (d / "mean.binaryproto").write_bytes(blob.SerializeToString())
    img = rng.integers(0, 256, (MEAN_H, MEAN_W, 3), dtype=np.uint8)
    assert cv2.imwrite(str(d / "a.png"), img)
    assert cv2.imwrite(str(d / "a.jpg"), img)
    return {"dir": d, "deploy": d / "deploy.prototxt",
            "weights": d / "w.caffemodel", "mean": mean,
            "mean_file": d / "mean.binaryproto", "png": d / "a.png",
            "jpg": d / "a.jpg", "bgr": img}


def test_load_image_reads_rgb_floats_and_grey(net_files):
    rgb = caffe.io.load_image(str(net_files["png"]))
    assert rgb.shape == (MEAN_H, MEAN_W, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb, net_files["bgr"][:, :, ::-1] / 255.0,
                               atol=1e-6)
    grey = caffe.io.load_image(str(net_files["png"]), color=False)
    assert grey.shape == (MEAN_H, MEAN_W, 1)
    assert 0 <= grey.min() and grey.max() <= 1
    jpg = caffe.io.load_image(str(net_files["jpg"]))
    assert jpg.shape == (MEAN_H, MEAN_W, 3) and jpg.max() <= 1


def test_transformer_crops_a_full_size_mean_as_the_data_layer(net_files):
    t = caffe.io.Transformer({"data": (1, 3, IN_H, IN_W)})
    t.set_mean("data", net_files["mean"])
    np.testing.assert_array_equal(t.mean["data"],
                                  net_files["mean"][:, 1:1 + IN_H, 2:2 + IN_W])
    # a mean smaller than the input is still resized, as upstream does
    t.set_mean("data", np.arange(48, dtype=np.float32).reshape(3, 4, 4))
    assert t.mean["data"].shape == (3, IN_H, IN_W)


def test_classifier_on_files_equals_jcdl_predict(net_files):
    """caffe.Classifier set up like training (image_dims = the stored size,
    the full-size mean, 0-255 BGR) gives the probabilities of the Data
    layer's preprocessing, which jcdl's Model reproduces."""
    clf = caffe.Classifier(str(net_files["deploy"]), str(net_files["weights"]),
                           image_dims=(MEAN_H, MEAN_W),
                           mean=net_files["mean"], raw_scale=255,
                           channel_swap=(2, 1, 0))
    image = caffe.io.load_image(str(net_files["png"]))
    probs = clf.predict([image], oversample=False)
    model = load_model(net_files["deploy"], net_files["weights"],
                       net_files["mean_file"])
    np.testing.assert_allclose(probs, model.predict([net_files["png"]]),
                               atol=2e-5)
    assert clf.predict([image], oversample=True).shape == (1, 4)
    on_jpeg = clf.predict([caffe.io.load_image(str(net_files["jpg"]))],
                          oversample=False)
    assert on_jpeg.shape == (1, 4) and abs(on_jpeg.sum() - 1) < 1e-5


def test_blobs_and_datums_round_trip(net_files):
    blob = caffe.proto.caffe_pb2.BlobProto()
    blob.ParseFromString(Path(net_files["mean_file"]).read_bytes())
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob)[0],
                                  net_files["mean"])
    image = net_files["bgr"].transpose(2, 0, 1)
    datum = caffe.io.array_to_datum(image, 3)
    back = caffe.io.datum_to_array(datum)
    np.testing.assert_array_equal(back, image)
    back[0, 0, 0] ^= 1             # a copy the caller owns, as before
    assert datum.label == 3


def test_net_forward_and_draw(net_files, tmp_path):
    import caffe.draw  # noqa: PLC0415
    net = caffe.Net(str(net_files["deploy"]), caffe.TEST,
                    weights=str(net_files["weights"]))
    out = net.forward(data=np.zeros((1, 3, IN_H, IN_W), np.float32))
    assert out["prob"].shape == (1, 4)
    param = caffe.proto.caffe_pb2.NetParameter()
    text_format.Merge(Path(net_files["deploy"]).read_text(), param)
    dot = caffe.draw.get_pydot_graph(param, "LR").to_string()
    assert "InnerProduct" in dot and "Softmax" in dot
    caffe.draw.draw_net_to_file(param, str(tmp_path / "net.png"))
    img = cv2.imread(str(tmp_path / "net.png"))
    assert img is not None and img.shape[1] > 50
