"""dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) in PyTorch.

The weights come straight from dlib's file (``dat.read_dat``); the forward pass reproduces
dlib's to float32 rounding (max abs difference 5e-7 over 1,884 real chips). What an exact port
must copy from dlib, which a "textbook" ResNet would get wrong:

* input: RGB planes, ``(pixel - mean) / 256`` (no std division);
* padding: a conv or pool with stride 2 has NO padding, stride 1 pads k//2
  (so 150 -> 72 -> 35 -> 17 -> 8 -> 3|4 -> 1|2 spatially);
* the residual add of a down-sampling block sums tensors of different shapes: the
  pooled shortcut has fewer channels, and in the last two stages it is spatially larger
  (4x4 vs 3x3, 2x2 vs 1x1). dlib treats the missing elements as zeros, aligned at index 0;
* no L2 normalisation of the 128-d output (norms are ~1.3-1.6; match threshold 0.6).

The architecture (dlib's examples/dnn_face_recognition_ex.cpp):

    conv 32 7x7/2 -> affine -> relu -> maxpool 3x3/2
    3 x block(32), down(64) + 3 x block(64), down(128) + 2 x block(128),
    down(256) + 2 x block(256), down(256)
    global average pool -> fc 128 (no bias)

where block(c) = relu(x + affine(conv3x3(relu(affine(conv3x3(x)))))) and a down block uses a
stride-2 first conv and an avg-pool 2x2/2 shortcut. dlib's "affine" (frozen batch norm) is
folded into the convolution before it: same function, one op fewer.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facejob.face.backends import TorchRunner, ort_session, torch_device, use_onnxruntime
from facejob.face.dlibport.dat import TAG_OR_SKIP, DatNetwork, LayerRecord, read_dat

CHIP_SIZE = 150
DESCRIPTOR_DIM = 128


def dlib_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: sum of two NCHW tensors, the smaller one zero-filled to the larger
    shape (aligned at index 0 in every dimension)."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


def _folded_conv(con: LayerRecord, affine: LayerRecord) -> nn.Conv2d:
    """A Conv2d computing affine(con(x)) with dlib's padding."""
    p = con.params
    out_c, in_c, kh, kw = p["weight"].shape
    conv = nn.Conv2d(in_c, out_c, (kh, kw), stride=p["stride"], padding=p["padding"], bias=True)
    gamma = torch.from_numpy(affine.params["gamma"]).float()
    beta = torch.from_numpy(affine.params["beta"]).float()
    bias = torch.from_numpy(p["bias"]).float() if p["bias"] is not None else torch.zeros(out_c)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(p["weight"]) * gamma[:, None, None, None])
        conv.bias.copy_(bias * gamma + beta)
    return conv


class Block(nn.Module):
    """Two 3x3 convs with a residual; ``down`` = first conv stride 2, shortcut avg-pooled."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, down: bool) -> None:
        super().__init__()
        self.conv1, self.conv2, self.down = conv1, conv2, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(dlib_add(y, shortcut))


class DlibResNet(nn.Module):
    """(N, 3, 150, 150) float RGB in [0, 255] -> (N, 128) descriptors, exactly as dlib."""

    def __init__(self, net: DatNetwork) -> None:
        super().__init__()
        inp = net.input
        if inp.name != "input_rgb_image_sized":
            raise ValueError(f"not the face recognition ResNet: input layer {inp.name}")
        self.register_buffer("mean", torch.from_numpy(inp.params["mean"]).view(1, 3, 1, 1))
        self.stem, self.pool, blocks, self.fc = _wire(net.layers[1:])
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / 256
        x = self.pool(F.relu(self.stem(x)))
        x = self.blocks(x)
        x = x.mean(dim=(2, 3))  # avg_pool_everything
        return self.fc(x)


class _Cursor:
    """Walks the layer records, checking each is what the architecture says comes next."""

    def __init__(self, layers: list[LayerRecord]) -> None:
        self.layers, self.i = layers, 0

    def peek(self) -> str:
        return self.layers[self.i].name if self.i < len(self.layers) else "<end>"

    def take(self, *names: str) -> LayerRecord:
        found = self.peek()
        if not any(found == n or (n == "con" and found.startswith("con_")) for n in names):
            raise ValueError(f"layer {self.i + 1}: expected {' or '.join(names)}, found {found}")
        self.i += 1
        return self.layers[self.i - 1]


def _wire(layers: list[LayerRecord]) -> tuple[nn.Conv2d, nn.MaxPool2d, list[Block], nn.Linear]:
    """Build the modules from dlib's records. Tags and skips carry no ids in the file, so
    residuals are recognised by their place in dlib's block pattern:
    ``tag conv affine relu conv affine add_prev relu`` (identity shortcut) or
    ``tag conv affine relu conv affine tag skip avg_pool add_prev relu`` (down block)."""
    cur = _Cursor(layers)
    stem = _folded_conv(cur.take("con"), cur.take("affine_"))
    cur.take("relu_")
    mp = cur.take("max_pool_2").params
    pool = nn.MaxPool2d(mp["kernel"], mp["stride"], mp["padding"])
    blocks = []
    while cur.peek() == TAG_OR_SKIP:
        cur.take(TAG_OR_SKIP)
        conv1 = _folded_conv(cur.take("con"), cur.take("affine_"))
        cur.take("relu_")
        conv2 = _folded_conv(cur.take("con"), cur.take("affine_"))
        down = cur.peek() == TAG_OR_SKIP
        if down:
            cur.take(TAG_OR_SKIP), cur.take(TAG_OR_SKIP)
            ap = cur.take("avg_pool_2").params
            if ap["kernel"] != (2, 2) or ap["stride"] != (2, 2) or ap["padding"] != (0, 0):
                raise ValueError(f"unexpected shortcut pool {ap}")
        cur.take("add_prev_"), cur.take("relu_")
        if down != (conv1.stride == (2, 2)):
            raise ValueError("a down block needs a stride-2 first conv, and only it")
        blocks.append(Block(conv1, conv2, down))
    if not cur.take("avg_pool_2").params["is_global"]:
        raise ValueError("expected a global average pool before the fc layer")
    fcp = cur.take("fc_2", "fc_3").params
    fc = nn.Linear(fcp["num_inputs"], fcp["num_outputs"], bias=fcp["bias"] is not None)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(fcp["weight"]))
        if fcp["bias"] is not None:
            fc.bias.copy_(torch.from_numpy(fcp["bias"]))
    if cur.peek() != "<end>":
        raise ValueError(f"unexpected layer after fc: {cur.peek()}")
    return stem, pool, blocks, fc


def load_resnet(path: str | Path | None = None) -> DlibResNet:
    """The recogniser with dlib's weights, in eval mode, on CPU."""
    if path is None:
        from facejob.face.model_files import model_path

        path = model_path("resnet")
    return DlibResNet(read_dat(path)).eval()


def to_onnx(model: DlibResNet) -> bytes:
    """The same network as an ONNX graph (NCHW float32 input "chips" in [0, 255], output
    "descriptors"), built node by node from the modules: no tracing, ~0.1 s. dlib's zero-filling
    residual adds become Pad + Add, with the shapes of a 150 x 150 input."""
    from onnx import TensorProto, helper, numpy_helper

    inits: list = []
    nodes: list = []

    def const(name: str, t: torch.Tensor) -> str:
        inits.append(numpy_helper.from_array(t.detach().cpu().numpy().astype(np.float32), name))
        return name

    def node(op: str, inputs: list[str], **attrs) -> str:
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(x: str, c: nn.Conv2d, name: str) -> str:
        ph, pw = c.padding
        return node("Conv", [x, const(f"{name}.w", c.weight), const(f"{name}.b", c.bias)],
                    kernel_shape=list(c.kernel_size), strides=list(c.stride), pads=[ph, pw, ph, pw])

    def grow(x: str, shape: torch.Size, full: list[int], name: str) -> str:
        """dlib_add's zero fill of the smaller addend, at the end of each dimension."""
        if list(shape) == full:
            return x
        inits.append(numpy_helper.from_array(np.array([0] * 4 + [f - d for f, d in zip(full, shape)], np.int64), name))
        return node("Pad", [x, name])

    # shapes of every block's two addends, from one pass of a chip-sized input
    shapes: list[tuple[torch.Size, torch.Size]] = []
    with torch.inference_mode():
        x = model.pool(F.relu(model.stem(torch.zeros(1, 3, CHIP_SIZE, CHIP_SIZE))))
        for b in model.blocks:
            y = b.conv2(F.relu(b.conv1(x)))
            s = F.avg_pool2d(x, 2, 2) if b.down else x
            shapes.append((y.shape, s.shape))
            x = b(x)
    x = node("Div", [node("Sub", ["chips", const("mean", model.mean)]), const("scale", torch.tensor(256.0))])
    p = model.pool
    k, st, pad = (v if isinstance(v, int) else v[0] for v in (p.kernel_size, p.stride, p.padding))
    x = node("MaxPool", [node("Relu", [conv(x, model.stem, "stem")])],
             kernel_shape=[k, k], strides=[st, st], pads=[pad] * 4)
    for i, (b, (ys, ss)) in enumerate(zip(model.blocks, shapes)):
        y = conv(node("Relu", [conv(x, b.conv1, f"b{i}.1")]), b.conv2, f"b{i}.2")
        s = node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2]) if b.down else x
        full = [max(a, c) for a, c in zip(ys, ss)]
        y, s = (grow(v, sh, full, f"b{i}.pad{j}") for j, (v, sh) in enumerate(((y, ys), (s, ss))))
        x = node("Relu", [node("Add", [y, s])])
    x = node("Flatten", [node("GlobalAveragePool", [x])])
    fc_inputs = [x, const("fc.w", model.fc.weight)] + ([const("fc.b", model.fc.bias)] if model.fc.bias is not None else [])
    nodes.append(helper.make_node("Gemm", fc_inputs, ["descriptors"], transB=1))
    graph = helper.make_graph(
        nodes, "dlib_resnet", [helper.make_tensor_value_info("chips", TensorProto.FLOAT, ["n", 3, CHIP_SIZE, CHIP_SIZE])],
        [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["n", DESCRIPTOR_DIM])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def cache_dir() -> Path:
    """Where built models are kept between processes: $XDG_CACHE_HOME/facejob (~/.cache/facejob)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facejob"


def onnx_model() -> bytes:
    """`to_onnx` of dlib's recogniser, built once per machine and kept in `cache_dir`.

    Every index worker needs this graph; building it costs a worker ~0.8 CPU s (importing onnx,
    reading dlib's file, a shape pass) of its ~2.8 s start, reading it a few ms. The file is named
    by a digest of everything the graph comes from (dlib's file, this module, the torch and onnx
    versions) and written whole before it takes that name. No home, a folder that cannot be
    written or a file that cannot be read only mean building the graph here."""
    from facejob.face.model_files import model_path

    dat = model_path("resnet")
    key = hashlib.sha256()
    for part in (dat.read_bytes(), Path(__file__).read_bytes(),
                 *(importlib.metadata.version(d).encode() for d in ("torch", "onnx"))):
        key.update(hashlib.sha256(part).digest())
    try:
        path = cache_dir() / f"dlib-resnet-{key.hexdigest()[:32]}.onnx"
    except RuntimeError:  # no home folder
        return to_onnx(load_resnet(dat))
    try:
        return path.read_bytes()
    except OSError:
        pass
    model = to_onnx(load_resnet(dat))
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(model)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return model


class TorchEmbedder:
    """Batched 128-d dlib face descriptors computed by the PyTorch port.

    ``embed`` takes (n, 150, 150, 3) uint8 RGB chips (dlib's ``get_face_chips`` size 150,
    padding 0.25) and returns (n, 128) float32, equal to dlib's
    ``compute_face_descriptor`` to ~1e-6. (Flip TTA is the FaceModel's, for every embedder.)
    On a CPU (runtime "auto") the network runs in ONNX Runtime (`to_onnx`): the same
    descriptors to ~4e-7, ~1.25x faster than torch's oneDNN on one core.
    """

    name = "torch-resnet"

    def __init__(self, device: str = "auto", batch_size: int = 0, runtime: str = "auto", precision: str = "fp32",
                 compile: bool = False) -> None:
        self.device = torch_device(device)
        # CPU throughput is flat from ~16 chips on; a GPU wants big batches to fill it.
        self.batch_size = batch_size or (512 if self.device.type == "cuda" else 32)
        if precision == "fp32" and use_onnxruntime(runtime, self.device):
            self._session = ort_session(onnx_model())
            self.model = None
        else:
            # NHWC: oneDNN (CPU, ~20% faster than NCHW here) and cuDNN run it without reordering.
            self.model = TorchRunner(load_resnet(), self.device, precision, compile)

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Descriptors of (n, 150, 150, 3) uint8 RGB chips -> (n, 128) float32."""
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"chips must be (n, 150, 150, 3), got {chips.shape}")
        if chips.dtype != np.uint8:
            raise ValueError(f"chips must be uint8, got {chips.dtype}")
        out = np.empty((len(chips), DESCRIPTOR_DIM), np.float32)
        step = max(self.batch_size, 1)
        for start in range(0, len(chips), step):
            out[start:start + step] = self._embed_batch(chips[start:start + step])
        return out

    def _embed_batch(self, chips: np.ndarray) -> np.ndarray:
        if self.model is None:
            return self._session.run(None, {"chips": chips.transpose(0, 3, 1, 2).astype(np.float32)})[0]
        x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2)  # a channels_last NCHW view
        return self.model(x.float() if self.device.type == "cpu" else x)

