"""dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``) in PyTorch, batched.

What ``dlib.cnn_face_detection_model_v1(path)(img, upsample)`` does, step by step
(tools/python/src/cnn_face_detector.cpp, dlib/dnn/input.h, dlib/dnn/loss.h,
dlib/image_transforms/{image_pyramid,interpolation}.h, dlib/cuda/cpu_dlib.cpp):

1. ``pyramid_up`` the RGB image ``upsample`` times: a bilinear resize to (2·nr+1, 2·nc+2),
   uint8 results truncated.
2. ``input_rgb_image_pyramid<pyramid_down<6>>``: planes (pixel − mean)/256 copied into one big
   zero tensor, then each pyramid level (⌊5/6·previous⌋ until the height drops below 5) is a
   bilinear resize of the previous level *inside the tensor*, packed two columns wide with 10 px
   between levels and 11 px around the whole.
3. The net: 3 × [conv 5×5 stride 2 → bn → relu] (16, 32, 32 filters, no padding),
   3 × [conv 45 5×5 pad 2 → bn → relu], conv 1 9×9 pad 4: one score per 8 px of the tensor.
4. ``loss_mmod`` decoding: every cell scoring > 0 is an 80×80 window centred on tensor point
   8·cell + 14, mapped back to the image through the nearest pyramid level and rounded to an
   integer rectangle; sorted by score; greedy NMS where a box is dropped when its overlap with
   a kept box, intersection / area of the box enclosing both, exceeds 0.338 (from the file).
5. ``rect_down`` the boxes ``upsample`` times and round again.

The resizes mirror dlib's SSE code bit for bit (float32 weights, float32 accumulation of the
sampling positions, truncation), so the network sees the same tensor dlib builds; the
convolutions then differ from dlib's only in float summation order (scores agree to ~1e-5).

Batching: each image gets its own tiled pyramid (so exactly dlib's tensor), and the tensors are
zero-padded at the bottom/right to a common size. The first three convolutions have no padding,
so padding cannot leak into the valid region; after that, the activations outside each image's
valid region are zeroed before every padded convolution, which is exactly dlib's zero padding.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from facejob.face.backends import torch_device
from facejob.face.detect import Detection
from facejob.face.dlibport.geometry import round_half_away, round_rect
from facejob.face.model_files import model_path

__all__ = [
    "MmodOptions", "MmodNet", "load_mmod", "TorchCnnDetector", "tiled_pyramid_layout",
    "pyramid_up_size", "resize_like_dlib", "decode_detections", "nms", "rect_down",
]

Rect = tuple[int, int, int, int]  # dlib rectangle: left, top, right, bottom (inclusive)


# ----------------------------------------------------------------------------------------------
# Options read from the file


@dataclass(frozen=True)
class MmodOptions:
    """The numbers the detector needs besides the weights (all from the .dat file)."""

    mean: tuple[float, float, float]  # RGB means subtracted before /256
    pyramid_padding: int  # pixels between pyramid levels in the tiled tensor
    pyramid_outer_padding: int  # pixels around the whole tiled tensor
    window: tuple[int, int]  # detector window (width, height) in tensor pixels
    nms_iou: float  # test_box_overlap match threshold (intersection / enclosing box area)
    nms_covered: float  # test_box_overlap percent-covered threshold


# ----------------------------------------------------------------------------------------------
# Geometry: the tiled pyramid layout (image_pyramid.h: compute_tiled_image_pyramid_details)


def pyramid_down6_size(nr: int, nc: int) -> tuple[int, int]:
    """find_pyramid_down_output_image_size for pyramid_down<6>: floor(5/6 · n)."""
    rate = 5.0 / 6.0
    return math.floor(rate * nr), math.floor(rate * nc)


def tiled_pyramid_layout(nr: int, nc: int, padding: int, outer_padding: int,
                         ) -> tuple[list[Rect], int, int]:
    """Where each pyramid level of an nr×nc image sits in dlib's tiled tensor.

    Returns (level rects, tensor rows, tensor cols). Level 0 (the image) is at the top left
    (inside the outer padding), the next levels go below it while they are wider than the room
    beside it, and the rest climb up a second column on the right, bottom-aligned.
    """
    if nr * nc == 0:
        return [], 0, 0
    sizes = [(nr, nc)]  # (height, width)
    while True:
        nr, nc = pyramid_down6_size(nr, nc)
        if nr * nc == 0 or nr < 5:
            break
        sizes.append((nr, nc))

    h0, w0 = sizes[0]
    total_height = sum(h + padding for h, _ in sizes) - 2 * padding
    height, prev_width = 0, 0
    for h, w in sizes:
        if w <= w0 - prev_width - padding and (height - h0) * 2 >= total_height - h0:
            break
        height += h + padding
        prev_width = w
    height -= padding
    out_nr, out_nc = height + 2 * outer_padding, w0 + 2 * outer_padding

    rects: list[Rect] = []
    y, i = outer_padding, 0
    while y < height + outer_padding and i < len(sizes):
        h, w = sizes[i]
        rects.append((outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
        i += 1
    y -= padding
    first = rects[0]
    while i < len(sizes):
        h, w = sizes[i]
        right, bottom = outer_padding + w0 - 1, y - 1
        rect = (right - (w - 1), bottom - (h - 1), right, bottom)
        if _intersects(first, rect):  # the second column must not run into the image
            break
        rects.append(rect)
        y -= h + padding
        i += 1
    return rects, out_nr, out_nc


def _intersects(a: Rect, b: Rect) -> bool:
    return max(a[0], b[0]) <= min(a[2], b[2]) and max(a[1], b[1]) <= min(a[3], b[3])


def pyramid_up_size(nr: int, nc: int) -> tuple[int, int]:
    """Size of pyramid_up(img, pyramid_down<2>): the rounded rect_up of the image rect, plus 1.

    rect_up maps (0,0)-(nc−1,nr−1) to (2.5,1.5)-(2nc+0.5, 2nr−0.5); rounding gives right 2nc+1
    and bottom 2nr, so the result is (2nr+1) × (2nc+2), not simply twice the size.
    """
    right = round_half_away((nc - 1 + 1.25) * 2)
    bottom = round_half_away((nr - 1 + 0.75) * 2)
    return bottom + 1, right + 1


def conv_output_size(n: int) -> int:
    """Rows (or cols) of the score map for a tiled tensor of n rows: three 5×5 stride-2
    convolutions without padding, then size-preserving ones."""
    for _ in range(3):
        n = (n - 5) // 2 + 1 if n >= 5 else 0
    return n


# ----------------------------------------------------------------------------------------------
# Bilinear resize exactly as dlib's SSE resize_image (interpolation.h)
#
# dlib walks the output rows with a double y += y_scale, and the columns four at a time in
# float32 lanes (x += 4·x_scale, truncated to int); weights are float32 products and the
# four-term sum is float32. The last few columns (where the 4-lane group would read past the
# edge) take a scalar path with double row weights. Replicating this keeps the pyramid levels
# bit-identical to dlib's, so detections near the decision threshold do not flip.


@dataclass(frozen=True)
class _ResizePlan:
    top: np.ndarray  # int64 (out_h,)
    bottom: np.ndarray
    tb: np.ndarray  # float32 row fraction (SSE lanes)
    inv_tb: np.ndarray  # float32 1 - fraction, rounded from double
    tb_d: np.ndarray  # float64 row fraction (scalar tail)
    left: np.ndarray  # int64 (n_simd,) columns done by the SSE lanes
    right: np.ndarray
    lr: np.ndarray  # float32
    inv_lr: np.ndarray  # float32
    tail_left: np.ndarray  # int64 (out_w - n_simd,) columns done by the scalar tail
    tail_right: np.ndarray
    tail_lr_d: np.ndarray  # float64 column fraction of the tail


@functools.lru_cache(maxsize=1024)
def _resize_plan(in_h: int, in_w: int, out_h: int, out_w: int) -> _ResizePlan:
    y_scale = (in_h - 1) / max(out_h - 1, 1)
    x_scale = (in_w - 1) / max(out_w - 1, 1)

    # rows: y starts at -y_scale and is incremented in double before each row
    steps = np.full(out_h, y_scale)
    steps[0] = -y_scale + y_scale
    y = np.cumsum(steps)  # sequential double additions, as in the C++ loop
    top = np.floor(y).astype(np.int64)
    bottom = np.minimum(top + 1, in_h - 1)
    tb_d = y - top

    # columns, SSE part: 4 float32 lanes start at x0 + k·x_scale (rounded from double) and are
    # advanced by float32(4·x_scale); a group is done only if its last lane's right neighbour is
    # inside the image.
    x0 = -4 * x_scale
    lanes = np.array([x0, x0 + x_scale, x0 + 2 * x_scale, x0 + 3 * x_scale]).astype(np.float32)
    step = np.float32(4 * x_scale)
    groups = out_w // 4 + 2
    inc = np.empty((groups, 4), np.float32)
    inc[:] = step
    inc[0] = lanes + step
    x = np.cumsum(inc, axis=0, dtype=np.float32)  # sequential float32 additions per lane
    left = x.astype(np.int32).astype(np.int64)  # _mm_cvttps_epi32: truncation
    lr = (x - left.astype(np.float32)).astype(np.float32)
    done = np.nonzero(left[:, 3] + 1 >= in_w)[0]
    n_groups = int(done[0]) if done.size else groups
    n_simd = min(4 * n_groups, out_w)
    left, lr = left.reshape(-1)[:n_simd], lr.reshape(-1)[:n_simd]

    # columns, scalar tail: x restarts from -x_scale + c·x_scale in double
    n_tail = out_w - n_simd
    tsteps = np.full(n_tail, x_scale)
    if n_tail:
        tsteps[0] = (-x_scale + n_simd * x_scale) + x_scale
    tx = np.cumsum(tsteps)
    tail_left = np.floor(tx).astype(np.int64)
    return _ResizePlan(
        top=top, bottom=bottom, tb=tb_d.astype(np.float32), inv_tb=(1 - tb_d).astype(np.float32),
        tb_d=tb_d, left=left, right=left + 1, lr=lr, inv_lr=(np.float32(1) - lr),
        tail_left=tail_left, tail_right=np.minimum(tail_left + 1, in_w - 1),
        tail_lr_d=tx - tail_left,
    )


def resize_like_dlib(src: torch.Tensor, out_h: int, out_w: int, rgb_uint8: bool = False,
                     ) -> torch.Tensor:
    """dlib's bilinear ``resize_image`` of (N, C, H, W) float32 planes to (out_h, out_w).

    ``rgb_uint8=False``: float images (the pyramid levels of the input tensor).
    ``rgb_uint8=True``: the planes hold 0..255 integers of an RGB image (pyramid_up); results
    are truncated to integers as dlib's rgb_pixel path does.
    """
    n, c, in_h, in_w = src.shape
    if out_h <= 0 or out_w <= 0 or in_h == 0 or in_w == 0:
        return src.new_zeros((n, c, max(out_h, 0), max(out_w, 0)))
    p = _resize_plan(in_h, in_w, out_h, out_w)
    dev = src.device

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    def columns(idx: np.ndarray) -> torch.Tensor:
        # gather along the last dim (torch's index_select there is ~10x slower on CPU)
        i = t(idx).view(1, 1, 1, -1).expand(n, c, in_h, len(idx))
        return torch.gather(src, 3, i)

    top, bottom = t(p.top), t(p.bottom)
    out = src.new_empty((n, c, out_h, out_w))
    n_simd = len(p.left)
    if n_simd:
        # gather columns first (on the input's rows), then rows: two column gathers, not four
        cols_l, cols_r = columns(p.left), columns(p.right)
        tb, itb = t(p.tb)[:, None], t(p.inv_tb)[:, None]
        lr, ilr = t(p.lr)[None, :], t(p.inv_lr)[None, :]
        # tl·w + tr·w + bl·w + br·w, each product and sum rounded to float32 in dlib's order
        acc = cols_l.index_select(2, top).mul_(itb * ilr)
        acc.add_(cols_r.index_select(2, top).mul_(itb * lr))
        acc.add_(cols_l.index_select(2, bottom).mul_(tb * ilr))
        acc.add_(cols_r.index_select(2, bottom).mul_(tb * lr))
        out[..., :n_simd] = acc.trunc_() if rgb_uint8 else acc
    if n_simd < out_w:
        cols_l, cols_r = columns(p.tail_left), columns(p.tail_right)
        tl, tr = cols_l.index_select(2, top), cols_r.index_select(2, top)
        bl, br = cols_l.index_select(2, bottom), cols_r.index_select(2, bottom)
        tb_d = t(p.tb_d)[:, None]
        if rgb_uint8:  # all in double: pixel_to_vector<double>
            lr = t(p.tail_lr_d)[None, :]
            upper = (1 - lr) * tl.double() + lr * tr.double()
            lower = (1 - lr) * bl.double() + lr * br.double()
            out[..., n_simd:] = torch.trunc((1 - tb_d) * upper + tb_d * lower).float()
        else:  # float column weights, double row weights
            lr = t(p.tail_lr_d.astype(np.float32))[None, :]
            upper = (1 - lr) * tl + lr * tr
            lower = (1 - lr) * bl + lr * br
            out[..., n_simd:] = ((1 - tb_d) * upper.double() + tb_d * lower.double()).float()
    return out


# ----------------------------------------------------------------------------------------------
# The network


class ConvAffineRelu(nn.Module):
    """conv 5×5 → affine (dlib's bn, folded to a per-channel scale and shift) → relu."""

    def __init__(self, cin: int, cout: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 5, stride=stride, padding=padding)
        self.register_buffer("scale", torch.ones(1, cout, 1, 1))
        self.register_buffer("shift", torch.zeros(1, cout, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place: these maps are the big ones, and dlib computes x·scale + shift too
        return self.conv(x).mul_(self.scale).add_(self.shift).relu_()


class MmodNet(nn.Module):
    """The MMOD face net: a 3-stage stride-8 downsampler, 3 same-size blocks, a 9×9 scorer.

    ``forward(x, valid)``: x is a batch of tiled pyramids (N, 3, H, W); ``valid`` optionally
    gives each sample's own (rows, cols) at stride 8, when samples were zero-padded to a common
    size. Outside that region activations are zeroed before every padded convolution, so each
    sample is scored exactly as if it were alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(ConvAffineRelu(3, 16, 2, 0), ConvAffineRelu(16, 32, 2, 0),
                                  ConvAffineRelu(32, 32, 2, 0))
        self.blocks = nn.ModuleList([ConvAffineRelu(32, 45, 1, 2), ConvAffineRelu(45, 45, 1, 2),
                                     ConvAffineRelu(45, 45, 1, 2)])
        self.score = nn.Conv2d(45, 1, 9, padding=4)

    def forward(self, x: torch.Tensor, valid: list[tuple[int, int]] | None = None) -> torch.Tensor:
        x = self.down(x)  # no padding: zero-padded samples cannot leak into their valid region
        mask = None
        if valid is not None and any(v != tuple(x.shape[2:]) for v in valid):
            mask = x.new_zeros((x.shape[0], 1, x.shape[2], x.shape[3]))
            for i, (h, w) in enumerate(valid):
                mask[i, :, :h, :w] = 1
        for block in self.blocks:
            if mask is not None:  # what lies outside a sample must be zeros, as dlib pads
                x = x * mask
            x = block(x)
        if mask is not None:
            x = x * mask
        return self.score(x)

    def layers(self) -> list[ConvAffineRelu]:
        return [*self.down, *self.blocks]

    def convs(self) -> list[nn.Conv2d]:
        """The convolutions input→output (for mapping score cells back to tensor pixels)."""
        return [m.conv for m in self.layers()] + [self.score]


def _fold_bn(p: dict) -> tuple[np.ndarray, np.ndarray]:
    """bn → affine as dlib does when it loads a bn_con2 into an affine_ layer (float32)."""
    eps = np.float32(p["eps"])
    scale = (p["gamma"] / np.sqrt(p["running_var"] + eps)).astype(np.float32)
    shift = (p["beta"] - scale * p["running_mean"]).astype(np.float32)
    return scale, shift


def load_mmod(path=None) -> tuple[MmodNet, MmodOptions]:
    """Build the net and its options from dlib's ``mmod_human_face_detector.dat``."""
    from facejob.face.dlibport.dat import read_dat

    dat = read_dat(path or model_path("cnn_detector"))
    if dat.loss.name != "loss_mmod_" or not dat.input.name.startswith("input_rgb_image_pyramid"):
        raise ValueError(f"not an MMOD detector: {dat.loss.name} on {dat.input.name}")
    opts = dat.loss.params
    if opts["use_bounding_box_regression"] or len(opts["detector_windows"]) != 1:
        raise ValueError("only single-window MMOD nets without box regression are supported")
    layers = [rec for rec in dat.layers[1:] if rec.name != "relu_"]
    names = [rec.name for rec in layers]
    if names != ["con_4", "bn_con2"] * 6 + ["con_4"]:
        raise ValueError(f"unexpected MMOD layer sequence: {names}")

    net = MmodNet()
    with torch.no_grad():
        for layer, con, norm in zip(net.layers(), layers[0:12:2], layers[1:12:2]):
            _load_conv(layer.conv, con.params)
            scale, shift = _fold_bn(norm.params)
            layer.scale.copy_(torch.from_numpy(scale).view(1, -1, 1, 1))
            layer.shift.copy_(torch.from_numpy(shift).view(1, -1, 1, 1))
        _load_conv(net.score, layers[12].params)
    net.eval()

    window = opts["detector_windows"][0]
    inp = dat.input.params
    return net, MmodOptions(
        mean=tuple(float(m) for m in inp["mean"]), pyramid_padding=int(inp["pyramid_padding"]),
        pyramid_outer_padding=int(inp["pyramid_outer_padding"]),
        window=(int(window["width"]), int(window["height"])),
        nms_iou=float(opts["overlaps_nms"]["iou_thresh"]),
        nms_covered=float(opts["overlaps_nms"]["percent_covered_thresh"]))


def _load_conv(conv: nn.Conv2d, p: dict) -> None:
    if tuple(conv.weight.shape) != p["weight"].shape or tuple(conv.stride) != tuple(p["stride"]) \
            or tuple(conv.padding) != tuple(p["padding"]):
        raise ValueError(f"conv mismatch: file {p['weight'].shape} stride {p['stride']} pad "
                         f"{p['padding']} vs {tuple(conv.weight.shape)}")
    conv.weight.copy_(torch.from_numpy(p["weight"]))
    conv.bias.copy_(torch.from_numpy(p["bias"]))


# ----------------------------------------------------------------------------------------------
# Decoding: score map → rectangles in the (upsampled) image, NMS, rect_down


def cell_to_tensor(convs: list[nn.Conv2d]) -> tuple[int, int]:
    """(a, b) such that score cell c is centred on tensor pixel a·c + b, composing dlib's
    con_::map_output_to_input (p·stride − padding + kernel/2) from the output back."""
    a, b = 1, 0
    for conv in reversed(convs):
        s, pad, k = conv.stride[0], conv.padding[0], conv.kernel_size[0]
        a, b = a * s, b * s - pad + k // 2
    return a, b


def _nearest_rect(rects: list[Rect], x: int, y: int) -> int:
    """dlib's nearest_rect: the first rect containing the point, else the closest one."""
    best, best_d = 0, math.inf
    for i, (l, t, r, b) in enumerate(rects):
        if l <= x <= r and t <= y <= b:
            return i
        nx, ny = min(max(x, l), r), min(max(y, t), b)
        d = math.hypot(nx - x, ny - y)
        if d < best_d:
            best, best_d = i, d
    return best


def decode_detections(scores: np.ndarray, rects: list[Rect], window: tuple[int, int],
                      cell: tuple[int, int], threshold: float = 0.0,
                      ) -> list[tuple[Rect, float]]:
    """loss_mmod's tensor_to_dets: cells scoring > threshold as integer image rects, best first.

    Each cell's window (centred_drect: ±(size−1)/2) is mapped to the image through the pyramid
    level nearest its centre: subtract the level origin, then p·6/5 + 0.3 once per level.
    """
    a, b = cell
    half_w, half_h = (window[0] - 1) / 2, (window[1] - 1) / 2
    rows, cols = np.nonzero(scores > threshold)
    ratio = 6 / 5.0  # pyramid_down<6>::point_up
    out = []
    for r, c in zip(rows.tolist(), cols.tolist()):
        px, py = a * c + b, a * r + b
        level = _nearest_rect(rects, px, py)
        ox, oy = rects[level][0], rects[level][1]
        box = [px - half_w - ox, py - half_h - oy, px + half_w - ox, py + half_h - oy]
        for _ in range(level):
            box = [v * ratio + 0.3 for v in box]
        out.append((round_rect(*box[:4]),
                    float(scores[r, c])))
    out.sort(key=lambda d: -d[1])
    return out


def _area(r: Rect) -> int:
    return max(0, r[2] - r[0] + 1) * max(0, r[3] - r[1] + 1)


def _overlaps(a: Rect, b: Rect, iou: float, covered: float) -> bool:
    """dlib's test_box_overlap (note: "iou" is intersection over the enclosing box)."""
    inner = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    if inner == 0:
        return False
    outer = _area((min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])))
    return inner / outer > iou or inner / _area(a) > covered or inner / _area(b) > covered


def nms(dets: list[tuple[Rect, float]], iou: float, covered: float) -> list[tuple[Rect, float]]:
    """Greedy non-max suppression over detections sorted best first."""
    kept: list[tuple[Rect, float]] = []
    for rect, score in dets:
        if not any(_overlaps(k, rect, iou, covered) for k, _ in kept):
            kept.append((rect, score))
    return kept


def rect_down(rect: Rect, times: int) -> Rect:
    """pyramid_down<2>::rect_down applied ``times`` times (p/2 − (1.25, 0.75)), then rounded."""
    l, t, r, b = (float(v) for v in rect)
    for _ in range(times):
        l, t, r, b = l / 2.0 - 1.25, t / 2.0 - 0.75, r / 2.0 - 1.25, b / 2.0 - 0.75
    return round_rect(l, t, r, b)


# ----------------------------------------------------------------------------------------------
# The detector


@dataclass
class _Job:
    index: int  # position in the caller's list
    image: np.ndarray  # RGB uint8 (H, W, 3)
    rects: list[Rect]  # pyramid levels in the tiled tensor
    tensor: tuple[int, int]  # tiled tensor rows, cols


class TorchCnnDetector:
    """dlib's MMOD CNN face detector in PyTorch: same boxes and scores, batched, CPU or GPU.

    ``batch_size`` caps the images per forward pass; 0 means no cap. Batches are also bounded
    by a pixel budget, and by the padding they may add: images are sorted by size and a batch
    closes when padding every image to its largest would add more than ``max_padding`` (a
    fraction of the real pixels). On CPU batching gains nothing, so padding is kept near zero
    (only equal-sized photos share a pass); on a GPU, fewer, larger passes are worth some.
    """

    name = "torch-cnn"

    def __init__(self, device: str = "auto", batch_size: int = 0) -> None:
        self.device = torch_device(device)
        net, self.options = load_mmod()
        # channels-last convolutions are ~1.4x faster on CPU (oneDNN) and suit cuDNN too
        self.net = net.to(self.device, memory_format=torch.channels_last)
        self.cell = cell_to_tensor(self.net.convs())
        self.batch_size = batch_size
        # tiled-tensor pixels per forward pass: ~28 bytes of activations per pixel at the
        # first layer, so ~0.5 GB on CPU; far more fits on a GPU.
        self.pixel_budget = 16_000_000 if self.device.type == "cpu" else 160_000_000
        self.max_padding = 0.02 if self.device.type == "cpu" else 0.5
        self._mean = torch.tensor(self.options.mean, dtype=torch.float32,
                                  device=self.device).view(1, 3, 1, 1)

    def detect(self, images: list[np.ndarray], upsample: int) -> list[list[Detection]]:
        """Faces in each RGB uint8 image (H, W, 3), in original image pixels, best first."""
        jobs = [self._plan(i, img, upsample) for i, img in enumerate(images)]
        out: list[list[Detection]] = [[] for _ in images]
        for batch in self._batches([j for j in jobs if j.rects]):
            for job, dets in zip(batch, self._run(batch, upsample)):
                out[job.index] = dets
        return out

    def _plan(self, index: int, image: np.ndarray, upsample: int) -> _Job:
        if image.ndim == 2:  # dlib accepts grayscale and copies it into all three channels
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} "
                             f"{image.shape}")
        h, w = image.shape[:2]
        for _ in range(upsample):
            h, w = pyramid_up_size(h, w)
        o = self.options
        rects, nr, nc = tiled_pyramid_layout(h, w, o.pyramid_padding, o.pyramid_outer_padding)
        if conv_output_size(nr) <= 0 or conv_output_size(nc) <= 0:
            rects = []  # too small for the net to produce a single score
        return _Job(index, image, rects, (nr, nc))

    def _batches(self, jobs: list[_Job]) -> list[list[_Job]]:
        jobs = sorted(jobs, key=lambda j: (j.tensor, j.image.shape))  # same sizes side by side
        batches: list[list[_Job]] = []
        cur: list[_Job] = []
        rows = cols = real = 0
        for job in jobs:
            r, c = max(rows, job.tensor[0]), max(cols, job.tensor[1])
            padded = (len(cur) + 1) * r * c
            grown_real = real + job.tensor[0] * job.tensor[1]
            if cur and ((self.batch_size > 0 and len(cur) >= self.batch_size)
                        or padded > self.pixel_budget
                        or padded > (1 + self.max_padding) * grown_real):
                batches.append(cur)
                cur, (r, c) = [], job.tensor
                grown_real = r * c
            cur.append(job)
            rows, cols, real = r, c, grown_real
        if cur:
            batches.append(cur)
        return batches

    @torch.inference_mode()
    def _run(self, batch: list[_Job], upsample: int) -> list[list[Detection]]:
        rows = max(j.tensor[0] for j in batch)
        cols = max(j.tensor[1] for j in batch)
        x = torch.zeros((len(batch), 3, rows, cols), dtype=torch.float32, device=self.device)
        start = 0
        while start < len(batch):  # images of identical size build their pyramids together
            end = start
            while end < len(batch) and batch[end].image.shape == batch[start].image.shape:
                end += 1
            self._fill_pyramids(x[start:end], batch[start:end], upsample)
            start = end
        valid = [(conv_output_size(j.tensor[0]), conv_output_size(j.tensor[1])) for j in batch]
        # TF32 would cost ~1e-3 in the scores on Ampere+ GPUs; dlib computes in full float32.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            scores = self.net(x.contiguous(memory_format=torch.channels_last), valid)
            scores = scores.float().cpu().numpy()
        o = self.options
        results = []
        for job, (h, w), s in zip(batch, valid, scores):
            dets = decode_detections(s[0, :h, :w], job.rects, o.window, self.cell)
            dets = nms(dets, o.nms_iou, o.nms_covered)
            results.append([Detection(*rect_down(r, upsample), score) for r, score in dets])
        return results

    def _fill_pyramids(self, x: torch.Tensor, jobs: list[_Job], upsample: int) -> None:
        """Write the tiled pyramids of same-sized images into x (N, 3, rows, cols), in place."""
        img = torch.from_numpy(np.stack([j.image for j in jobs])).to(self.device)
        planes = img.permute(0, 3, 1, 2).float()
        for _ in range(upsample):
            h, w = pyramid_up_size(planes.shape[2], planes.shape[3])
            planes = resize_like_dlib(planes, h, w, rgb_uint8=True)
        rects = jobs[0].rects
        l, t, r, b = rects[0]
        x[:, :, t:b + 1, l:r + 1] = (planes - self._mean) / 256
        for prev, cur in zip(rects, rects[1:]):
            src = x[:, :, prev[1]:prev[3] + 1, prev[0]:prev[2] + 1]
            x[:, :, cur[1]:cur[3] + 1, cur[0]:cur[2] + 1] = resize_like_dlib(
                src, cur[3] - cur[1] + 1, cur[2] - cur[0] + 1)
