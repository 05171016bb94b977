"""The detector and embedder backends by name, and the one rule for picking a torch device.

A backend is a class with a `name` (written into every faces row) and one method:

    detector.detect(images: list[RGB uint8 (H, W, 3)], upsample: int) -> list[list[Detection]]
    embedder.embed(chips: (n, 150, 150, 3) uint8) -> (n, 128) float32

Its constructor takes, as keyword arguments, whichever `ModelConfig` fields it names (e.g.
`device`, `batch_size`). Adding a backend is one line here: "module:Class", imported only when
a model is built, so a missing optional dependency never breaks `facejob --help`.
"""
from __future__ import annotations

import contextlib
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


class TorchRunner:
    """A torch network for inference on `device`: channels_last, true fp32 convolutions (TF32
    off: it would cost ~1e-3 of descriptor accuracy) unless `precision` asks for bf16 or fp16
    autocast, optionally compiled (torch.compile, dynamic shapes). Returns numpy float32: one
    array, or a tuple for a network with several outputs."""

    def __init__(self, net, device, precision: str = "fp32", compile: bool = False) -> None:
        import torch

        self.device = device
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        net = net.to(device, memory_format=torch.channels_last).eval()
        self.net = torch.compile(net, dynamic=True) if compile else net

    def __call__(self, x):
        import torch

        autocast = torch.autocast(self.device.type, self.dtype) if self.dtype else contextlib.nullcontext()
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False), autocast:
            out = self.net(x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last))
        return tuple(o.float().cpu().numpy() for o in out) if isinstance(out, tuple) else out.float().cpu().numpy()


def use_onnxruntime(runtime: str, device) -> bool:
    """Whether a network runs in ONNX Runtime: runtime "onnxruntime", or "auto" on a CPU (the
    same networks 1.2-1.25x faster there than torch's oneDNN on one core; see ModelConfig.runtime)."""
    return runtime == "onnxruntime" or (runtime == "auto" and device.type == "cpu")


def ort_session(model: bytes):
    """An ONNX Runtime CPU session on as many threads as torch was given (the worker's CPUs, see
    pipeline.setup_process), never spinning while it waits (the same reason as OMP_WAIT_POLICY)."""
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
