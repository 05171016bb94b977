"""The detector and embedder backends by name, and the one rule for picking a torch device.

A backend is a class with a `name` (written into every faces row) and one method:

    detector.detect(images: list[RGB uint8 (H, W, 3)], upsample: int) -> list[list[Detection]]
    embedder.embed(chips: (n, 150, 150, 3) uint8) -> (n, 128) float32

Its constructor takes, as keyword arguments, whichever `ModelConfig` fields it names (e.g.
`device`, `batch_size`). Adding a backend is one line here: "module:Class", imported only when
a model is built, so a missing optional dependency never breaks `facejob --help`.
"""
from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

# The names here are the only detector and embedder names of settings, flags, YAML and model.json.
# Faces rows record the backend class's own `name` instead (retinaface → retinaface-mnet025,
# hog → dlib-hog, cnn → torch-cnn, cnn-dlib → dlib-cnn; dlib → dlib-resnet, torch → torch-resnet):
# those are in every output written so far and stay as they are.
DETECTORS = {
    "retinaface": "facejob.face.retinaface:RetinaFaceDetector",
    "hog": "facejob.face.detect:HogDetector",
    "cnn": "facejob.face.dlibport.mmod:TorchCnnDetector",
    "cnn-dlib": "facejob.face.detect:DlibCnnDetector",
}
EMBEDDERS = {
    "dlib": "facejob.face.embed:DlibEmbedder",
    "torch": "facejob.face.dlibport.resnet:TorchEmbedder",
}


def build(registry: dict[str, str], name: str, config: Any) -> Any:
    """Import the backend `name` of `registry` and construct it from `config`'s fields."""
    module, attr = registry[name].split(":")
    # OpenMP reads its wait policy when torch loads: passive, so a torch thread does not spin
    # while dlib or another worker has the core (see pipeline.setup_process); a setting given wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cls = getattr(importlib.import_module(module), attr)
    wanted = inspect.signature(cls).parameters
    return cls(**{k: getattr(config, k) for k in wanted if hasattr(config, k)})


def torch_device(name: str):
    """"auto" → cuda when this process sees a GPU, else cpu; anything else as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
