"""The .dat reader and the PyTorch ResNet port, checked against dlib itself on real chips."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# resnet before torch: it sets OMP_WAIT_POLICY=PASSIVE, read once when torch loads.
from facejob.face.dlibport.dat import TAG_OR_SKIP, DatFormatError, read_dat
from facejob.face.dlibport.resnet import TorchEmbedder, dlib_add
from facejob.face.model_files import model_path

# ---------------------------------------------------------------------------- reader


def test_reader_recogniser_layers_and_params():
    net = read_dat(model_path("resnet"))
    assert net.count() == {
        "input_rgb_image_sized": 1, "con_4": 29, "affine_": 29, "relu_": 29, "add_prev_": 14,
        "avg_pool_2": 5, "max_pool_2": 1, TAG_OR_SKIP: 22, "fc_2": 1,
    }
    assert net.num_params == 5_614_592
    assert net.loss.name == "loss_metric_2"
    assert net.loss.params["distance_threshold"] == pytest.approx(0.6)
    assert net.input.params["mean"] == pytest.approx([122.782, 117.001, 104.298], abs=1e-4)
    assert (net.input.params["nr"], net.input.params["nc"]) == (150, 150)
    stem = net.layers[1]
    assert stem.params["weight"].shape == (32, 3, 7, 7)
    assert stem.params["stride"] == (2, 2) and stem.params["padding"] == (0, 0)
    fc = net.layers[-1]
    assert fc.params["weight"].shape == (128, 256) and fc.params["bias"] is None
    # dlib's padding rule: stride 2 -> no padding, stride 1 -> k // 2
    for layer in net.layers:
        if layer.name == "con_4":
            k, s, p = layer.params["kernel"][0], layer.params["stride"][0], layer.params["padding"][0]
            assert p == (0 if s != 1 else k // 2)


def test_reader_mmod_detector():
    net = read_dat(model_path("cnn_detector"))
    assert net.count() == {"input_rgb_image_pyramid": 1, "con_4": 7, "bn_con2": 6, "relu_": 6}
    assert net.num_params == 181_141
    assert net.loss.name == "loss_mmod_"
    opts = net.loss.params
    assert [(w["width"], w["height"]) for w in opts["detector_windows"]] == [(80, 80)]
    assert opts["overlaps_nms"]["iou_thresh"] == pytest.approx(0.3382761351109955, abs=1e-12)
    cons = [layer.params for layer in net.layers if layer.name == "con_4"]
    assert [c["weight"].shape[0] for c in cons] == [16, 32, 32, 45, 45, 45, 1]
    assert [c["kernel"] for c in cons] == [(5, 5)] * 6 + [(9, 9)]
    assert [c["padding"] for c in cons] == [(0, 0)] * 3 + [(2, 2)] * 3 + [(4, 4)]
    bn = next(layer for layer in net.layers if layer.name == "bn_con2").params
    assert bn["eps"] == pytest.approx(1e-4) and bn["running_var"].shape == (16,)
    assert (bn["running_var"] > 0).all()


@pytest.fixture(scope="module")
def resnet_bytes() -> bytes:
    return model_path("resnet").read_bytes()


@pytest.mark.parametrize("cut", [0, 1, 7, 1000, -1, -100_000])
def test_reader_rejects_truncated_file(tmp_path: Path, resnet_bytes: bytes, cut: int):
    path = tmp_path / "cut.dat"
    path.write_bytes(resnet_bytes[:cut])
    with pytest.raises(DatFormatError, match=r"at byte \d+: expected"):
        read_dat(path)


def test_reader_rejects_trailing_bytes(tmp_path: Path, resnet_bytes: bytes):
    path = tmp_path / "extra.dat"
    path.write_bytes(resnet_bytes + b"\x00")
    with pytest.raises(DatFormatError, match=f"at byte {len(resnet_bytes)}: expected end of file"):
        read_dat(path)


def test_reader_rejects_garbage_and_unknown_layers(tmp_path: Path, resnet_bytes: bytes):
    path = tmp_path / "garbage.dat"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DatFormatError):
        read_dat(path)
    at = resnet_bytes.index(b"\x01\x05relu_") + 2  # control byte, length 5, the name
    path.write_bytes(resnet_bytes.replace(b"relu_", b"relX_", 1))
    with pytest.raises(DatFormatError, match=f"at byte {at - 2}: expected a known layer name.*relX_"):
        read_dat(path)


# ---------------------------------------------------------------------------- model


def test_dlib_add_zero_fills_the_smaller_tensor():
    import torch

    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 4, 4, 4), 10.0)
    out = dlib_add(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert (out[:, :2, :3, :3] == 11).all()
    assert (out[:, 2:] == 10).all() and (out[:, :, 3, :] == 10).all() and (out[:, :, :, 3] == 10).all()


def _dlib_chips(paths: list[Path], limit: int) -> np.ndarray:
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_path("landmarks5")))
    chips: list[np.ndarray] = []
    for path in paths:
        img = dlib.load_rgb_image(str(path))
        shapes = dlib.full_object_detections([predictor(img, r) for r in detector(img, 1)])
        if len(shapes):
            chips += [np.asarray(c) for c in dlib.get_face_chips(img, shapes, size=150, padding=0.25)]
        if len(chips) >= limit:
            break
    return np.stack(chips[:limit])


def _view1_paths(data_dir: Path, pairs: int) -> list[Path]:
    lines = (data_dir / "lfw" / "pairsDevTest.txt").read_text().split("\n")[1:]
    out = []
    for line in lines[:pairs]:
        f = line.split()
        named = [(f[0], f[1]), (f[0], f[2])] if len(f) == 3 else [(f[0], f[1]), (f[2], f[3])]
        out += [data_dir / "lfw" / "images" / n / f"{n}_{int(i):04d}.jpg" for n, i in named]
    return out


@pytest.fixture(scope="module")
def chips(data_dir: Path) -> np.ndarray:
    """~32 real chips: one photo per labelled person (varied sizes), then LFW View 1."""
    first: dict[Path, Path] = {}
    for path in sorted((data_dir / "labelled").rglob("*")):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            first.setdefault(path.parent, path)
    labelled = list(first.values())
    out = np.concatenate([_dlib_chips(labelled, 16), _dlib_chips(_view1_paths(data_dir, 12), 16)])
    assert len(out) >= 24
    return out


@pytest.fixture(scope="module")
def reference(chips: np.ndarray) -> np.ndarray:
    import dlib

    rec = dlib.face_recognition_model_v1(str(model_path("resnet")))
    return np.array(rec.compute_face_descriptor(list(chips)), dtype=np.float64)


@pytest.fixture(scope="module")
def embedder() -> TorchEmbedder:
    return TorchEmbedder(device="cpu")


def test_descriptors_equal_dlib(chips, reference, embedder):
    got = embedder.embed(chips)
    assert got.shape == (len(chips), 128) and got.dtype == np.float32
    assert np.abs(got - reference).max() <= 1e-4
    # Raw, un-normalised descriptors, as dlib returns them.
    assert np.linalg.norm(got, axis=1).min() > 1.0


def test_onnxruntime_graph_equals_the_torch_module(chips, embedder):
    """runtime auto on a CPU is ONNX Runtime over to_onnx's graph: the torch module's descriptors."""
    assert embedder.model is None   # the CPU default
    torch_run = TorchEmbedder(device="cpu", runtime="torch")
    assert np.abs(embedder.embed(chips) - torch_run.embed(chips)).max() <= 1e-5


def test_onnx_graph_is_built_once_per_machine(chips, embedder, tmp_path, monkeypatch):
    """Workers read the ONNX graph from the cache folder: to_onnx's bytes, written once; a cache
    folder that cannot be made only means building the graph each time."""
    from facejob.face.dlibport import resnet

    fresh = resnet.to_onnx(resnet.load_resnet())
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    assert resnet.onnx_model() == fresh
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resnet.onnx_model() == fresh
    kept = list((tmp_path / "cache" / "facejob").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("dlib-resnet-") and kept[0].read_bytes() == fresh
    monkeypatch.setattr(resnet, "to_onnx", None)  # a second build would fail
    assert resnet.onnx_model() == fresh
    np.testing.assert_array_equal(TorchEmbedder(device="cpu").embed(chips), embedder.embed(chips))


def test_batch_size_does_not_change_results(chips, embedder):
    odd = TorchEmbedder(device="cpu", batch_size=7)
    np.testing.assert_allclose(odd.embed(chips), embedder.embed(chips), atol=1e-5)
    single = embedder.embed(chips[3:4])
    np.testing.assert_allclose(single, embedder.embed(chips)[3:4], atol=1e-5)


def test_flip_tta_is_mean_of_chip_and_mirror_for_every_backend(chips, embedder):
    from facejob.face.embed import DlibEmbedder, embed_chips

    got = embed_chips(TorchEmbedder(device="cpu", batch_size=10), chips, "flip")
    want = (embedder.embed(chips) + embedder.embed(np.ascontiguousarray(chips[:, :, ::-1]))) / 2
    np.testing.assert_allclose(got, want, atol=1e-5)
    # and it is a real change, not the plain descriptor
    assert np.abs(got - embedder.embed(chips)).max() > 1e-3
    # dlib's backend goes through the same TTA path and agrees with the port
    np.testing.assert_allclose(embed_chips(DlibEmbedder(), chips, "flip"), got, atol=1e-4)


def test_embed_empty_and_bad_input(embedder):
    assert embedder.embed(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
    with pytest.raises(ValueError):
        embedder.embed(np.zeros((2, 150, 150, 3), np.float32))
    with pytest.raises(ValueError):
        embedder.embed(np.zeros((2, 100, 100, 3), np.uint8))
    from facejob.config import ConfigError, ModelConfig

    with pytest.raises(ConfigError, match="tta"):
        ModelConfig(tta="jitter")
