"""Read dlib's serialized DNN files (``.dat``) with numpy only: no dlib import.

Format (dlib/serialize.h, dlib/cuda/tensor.h, dlib/dnn/core.h, layers.h, input.h, loss.h):

* int: one control byte (low 4 bits = number of little-endian magnitude bytes that follow,
  bit 0x80 = negative), then the bytes. Version tags are ints.
* string: int length, then raw bytes. bool: ASCII ``'1'``/``'0'``. uint8: one raw byte.
* float/double (metadata only): int mantissa, then int exponent; value = m * 2**e
  (exponents 32000/32001/32002 = +inf/-inf/nan).
* tensor: int version 2, ints n, k, nr, nc, then n*k*nr*nc raw little-endian float32.
  alias_tensor: int version 1, ints n, k, nr, nc (a view: no data).
* network: the loss wrapper writes version 1, the loss details, then its subnet. Each
  ``add_layer`` writes version 2, **its subnet first**, then its details, 3 bools and 3
  tensors (training caches, normally empty). The ``add_layer`` on the input writes version 3,
  the input layer, its details, 3 bools, 3 tensors and the sample expansion factor.
  Tag and skip layers write version 1 and their subnet -- nothing else: neither their id nor
  whether they are a tag or a skip is in the file (dlib recovers both from the C++ network
  type), so they are reported as ``tag_or_skip`` markers and a port must know its
  architecture to wire residual connections.
* So the stream holds the version headers output->input, then the layer details
  input->output. ``read_dat`` returns layers in input->output order.

Layer details (the first string is dlib's serialization name, e.g. ``con_4``):

========================  ===============================================================
``con_4/5/6``             params tensor, num_filters, nr, nc, stride y/x, pad y/x, filter and
                          bias aliases, 4 doubles (lr/decay multipliers), con_5+: use_bias,
                          con_6: use_relu
``fc_2/3``                num_outputs, num_inputs, params [in(+1), out], 2 aliases,
                          int bias_mode (1 = no bias), 4 doubles, fc_3: use_bias
``affine_``               params (gamma then beta), 2 aliases, int mode (0 conv, 1 fc)
``bn_con2/bn_fc2``        params, 2 aliases, batch means, invstds, running means, running
                          variances, num_updates, window size, 4 doubles, eps
``max_pool_2/avg_pool_2`` nr, nc, stride y/x, pad y/x (nr = nc = 0: global pool)
``relu_/add_prev_``       nothing
``input_rgb_image_sized`` 3 float means, nr, nc
``input_rgb_image_pyramid(2)``  3 float means, (v2:) pyramid padding, outer padding
``loss_metric(_2)``       margin, distance threshold (v2)
``loss_mmod_``            mmod_options (version 1-4: detector windows, losses, overlap testers,
                          assume_image_pyramid, bounding box regression)
========================  ===============================================================

Arrays in ``LayerRecord.params`` are already in PyTorch layouts: conv weight (O, I, H, W),
bias (O,), fc weight (out, in), per-channel vectors (C,).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DatFormatError", "LayerRecord", "DatNetwork", "read_dat", "TAG_OR_SKIP"]

TAG_OR_SKIP = "tag_or_skip"

_INF_EXP, _NINF_EXP, _NAN_EXP = 32000, 32001, 32002
_CONV_MODE, _FC_MODE = 0, 1


class DatFormatError(ValueError):
    """The bytes are not a dlib network this reader understands."""

    def __init__(self, offset: int, expected: str, found: str = "") -> None:
        self.offset = offset
        msg = f"at byte {offset}: expected {expected}"
        super().__init__(msg + (f", found {found}" if found else ""))


@dataclass
class LayerRecord:
    """One layer: dlib's serialization name and its numbers/arrays (PyTorch layouts)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        """Learned float count, as dlib counts it (size of the layer's params tensor)."""
        return int(self.params.get("num_params", 0))


@dataclass
class DatNetwork:
    """A whole network: the loss layer and the other layers in input->output order."""

    loss: LayerRecord
    layers: list[LayerRecord]

    @property
    def input(self) -> LayerRecord:
        return self.layers[0]

    @property
    def num_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)

    def count(self) -> dict[str, int]:
        """How many layers of each name, e.g. {"con_4": 29, ...}."""
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.name] = out.get(layer.name, 0) + 1
        return out


class _Reader:
    """Cursor over the file bytes; every read checks bounds and says what it wanted."""

    def __init__(self, data: bytes) -> None:
        self.buf = memoryview(data)
        self.pos = 0

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise DatFormatError(self.pos, f"{n} bytes of {what}",
                                 f"{len(self.buf) - self.pos} bytes left (file truncated?)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, what: str = "int") -> int:
        start = self.pos
        ctrl = self._take(1, what)[0]
        size = ctrl & 0x0F
        if size > 8 or ctrl & 0x70:
            raise DatFormatError(start, f"{what} (dlib int: control byte with <= 8 bytes)",
                                 f"control byte 0x{ctrl:02x}")
        value = int.from_bytes(self._take(size, what), "little")
        return -value if ctrl & 0x80 else value

    def peek_int(self) -> int:
        pos = self.pos
        try:
            return self.int()
        finally:
            self.pos = pos

    def uint(self, what: str) -> int:
        start = self.pos
        value = self.int(what)
        if value < 0:
            raise DatFormatError(start, f"{what} (non-negative)", str(value))
        return value

    def bool(self, what: str = "bool") -> bool:
        start = self.pos
        b = bytes(self._take(1, what))
        if b not in (b"0", b"1"):
            raise DatFormatError(start, f"{what} (bool '0' or '1')", repr(b))
        return b == b"1"

    def byte(self, what: str) -> int:
        return self._take(1, what)[0]

    def string(self, what: str = "string") -> str:
        start = self.pos
        n = self.uint(f"length of {what}")
        if n > 1 << 20:
            raise DatFormatError(start, f"{what} (a short string)", f"length {n}")
        raw = bytes(self._take(n, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise DatFormatError(start, f"{what} (ASCII string)", repr(raw[:40])) from None

    def float(self, what: str = "float") -> float:
        mantissa = self.int(f"mantissa of {what}")
        start = self.pos
        exponent = self.int(f"exponent of {what}")
        if exponent == _INF_EXP:
            return float("inf")
        if exponent == _NINF_EXP:
            return float("-inf")
        if exponent == _NAN_EXP:
            return float("nan")
        if not -32768 <= exponent <= 32767:
            raise DatFormatError(start, f"exponent of {what} (int16)", str(exponent))
        return float(mantissa) * 2.0 ** exponent if mantissa else 0.0

    def version(self, what: str, allowed: tuple[int, ...]) -> int:
        start = self.pos
        v = self.int(f"version of {what}")
        if v not in allowed:
            raise DatFormatError(start, f"version {allowed} of {what}", str(v))
        return v

    def tensor(self, what: str) -> np.ndarray:
        """A resizable_tensor as a float32 array of shape (n, k, nr, nc)."""
        start = self.pos
        self.version(what, (2,))
        shape = tuple(self.uint(f"dimension of {what}") for _ in range(4))
        count = int(np.prod(shape, dtype=np.int64))
        if count * 4 > len(self.buf) - self.pos:
            raise DatFormatError(start, f"tensor {what} of shape {shape}",
                                 f"only {len(self.buf) - self.pos} bytes left (file truncated?)")
        raw = self._take(count * 4, what)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        self.version(what, (1,))
        return tuple(self.uint(f"dimension of {what}") for _ in range(4))  # type: ignore[return-value]

    def expect_end(self) -> None:
        if self.pos != len(self.buf):
            raise DatFormatError(self.pos, "end of file",
                                 f"{len(self.buf) - self.pos} bytes left over")


def _split(params: np.ndarray, aliases: list[tuple[int, ...]], at: int, what: str) -> list[np.ndarray]:
    """Cut a flat params tensor into the alias_tensor views dlib defines over it."""
    flat = params.reshape(-1)
    out, offset = [], 0
    for shape in aliases:
        n = int(np.prod(shape))
        out.append(flat[offset:offset + n].reshape(shape))
        offset += n
    if offset != flat.size:
        raise DatFormatError(at, f"{what} params of {offset} floats (sum of its aliases)",
                             f"{flat.size} floats")
    return out


def _multipliers(r: _Reader, what: str, names: tuple[str, ...]) -> dict[str, float]:
    return {n: r.float(f"{n} of {what}") for n in names}


_LR_DECAY = ("learning_rate_multiplier", "weight_decay_multiplier",
             "bias_learning_rate_multiplier", "bias_weight_decay_multiplier")


def _con(r: _Reader, name: str, at: int) -> dict[str, Any]:
    params = r.tensor("con params")
    num_filters = r.uint("num_filters")
    nr, nc = r.uint("filter rows"), r.uint("filter cols")
    stride = (r.int("stride_y"), r.int("stride_x"))
    padding = (r.int("padding_y"), r.int("padding_x"))
    filt = r.alias("con filters alias")
    bias = r.alias("con biases alias")
    out: dict[str, Any] = _multipliers(r, name, _LR_DECAY)
    use_bias = r.bool("con use_bias") if name in ("con_5", "con_6") else True
    use_relu = r.bool("con use_relu") if name == "con_6" else False
    # The filters alias is (num_filters, k, nr, nc): already PyTorch's (O, I, H, W).
    aliases = [filt] + ([bias] if use_bias else [])
    parts = _split(params, aliases, at, name)
    if filt[0] != num_filters or filt[2:] != (nr, nc):
        raise DatFormatError(at, f"{name} filters alias ({num_filters}, k, {nr}, {nc})", str(filt))
    out.update(weight=parts[0], bias=parts[1].reshape(-1) if use_bias else None,
               num_filters=num_filters, kernel=(nr, nc), stride=stride, padding=padding,
               use_bias=use_bias, use_relu=use_relu, num_params=params.size)
    return out


def _fc(r: _Reader, name: str, at: int) -> dict[str, Any]:
    num_outputs, num_inputs = r.uint("fc num_outputs"), r.uint("fc num_inputs")
    params = r.tensor("fc params")
    w_alias, b_alias = r.alias("fc weights alias"), r.alias("fc biases alias")
    bias_mode = r.int("fc bias_mode")
    out: dict[str, Any] = _multipliers(r, name, _LR_DECAY)
    use_bias = r.bool("fc use_bias") if name == "fc_3" else True
    has_bias = bias_mode == 0 and use_bias
    parts = _split(params, [w_alias] + ([b_alias] if has_bias else []), at, name)
    if w_alias[:2] != (num_inputs, num_outputs):
        raise DatFormatError(at, f"{name} weights alias ({num_inputs}, {num_outputs}, 1, 1)",
                             str(w_alias))
    # dlib computes x @ W with W stored [in, out]; torch's Linear wants (out, in).
    weight = np.ascontiguousarray(parts[0].reshape(num_inputs, num_outputs).T)
    out.update(weight=weight, bias=parts[1].reshape(-1) if has_bias else None,
               num_outputs=num_outputs, num_inputs=num_inputs, bias_mode=bias_mode,
               use_bias=has_bias, num_params=params.size)
    return out


def _affine(r: _Reader, name: str, at: int) -> dict[str, Any]:
    params = r.tensor("affine params")
    g_alias, b_alias = r.alias("affine gamma alias"), r.alias("affine beta alias")
    mode = r.int("affine mode")
    gamma, beta = _split(params, [g_alias, b_alias], at, name)
    return dict(gamma=gamma.reshape(-1), beta=beta.reshape(-1),
                mode="conv" if mode == _CONV_MODE else "fc", num_params=params.size)


def _bn(r: _Reader, name: str, at: int) -> dict[str, Any]:
    params = r.tensor("bn params")
    g_alias, b_alias = r.alias("bn gamma alias"), r.alias("bn beta alias")
    r.tensor("bn batch means")  # statistics of the last training batch: unused at inference
    r.tensor("bn batch invstds")
    running_mean = r.tensor("bn running means")
    running_var = r.tensor("bn running variances")
    num_updates = r.uint("bn num_updates")
    window = r.uint("bn running_stats_window_size")
    out: dict[str, Any] = _multipliers(r, name, _LR_DECAY)
    eps = r.float("bn eps")
    gamma, beta = _split(params, [g_alias, b_alias], at, name)
    out.update(gamma=gamma.reshape(-1), beta=beta.reshape(-1),
               running_mean=running_mean.reshape(-1), running_var=running_var.reshape(-1),
               eps=eps, num_updates=num_updates, running_stats_window_size=window,
               mode="conv" if name == "bn_con2" else "fc", num_params=params.size)
    return out


def _pool(r: _Reader, name: str, at: int) -> dict[str, Any]:
    nr, nc = r.uint("pool rows"), r.uint("pool cols")
    stride = (r.int("pool stride_y"), r.int("pool stride_x"))
    padding = (r.int("pool padding_y"), r.int("pool padding_x"))
    # nr = nc = 0 means "pool over everything" (avg_pool_everything / max_pool_everything).
    return dict(kernel=(nr, nc), stride=stride, padding=padding, is_global=nr == 0 and nc == 0)


def _nothing(r: _Reader, name: str, at: int) -> dict[str, Any]:
    return {}


def _means(r: _Reader) -> np.ndarray:
    return np.array([r.float("avg_red"), r.float("avg_green"), r.float("avg_blue")], np.float32)


def _input_sized(r: _Reader, name: str, at: int) -> dict[str, Any]:
    mean = _means(r)
    return dict(mean=mean, nr=r.uint("input rows"), nc=r.uint("input cols"))


def _input_pyramid(r: _Reader, name: str, at: int) -> dict[str, Any]:
    mean = _means(r)
    if name == "input_rgb_image_pyramid2":
        return dict(mean=mean, pyramid_padding=r.uint("pyramid_padding"),
                    pyramid_outer_padding=r.uint("pyramid_outer_padding"))
    # Version 1 predates the settings and dlib fills in its defaults.
    return dict(mean=mean, pyramid_padding=10, pyramid_outer_padding=11)


def _input_rgb(r: _Reader, name: str, at: int) -> dict[str, Any]:
    return dict(mean=_means(r))


LAYER_READERS = {
    "con_4": _con, "con_5": _con, "con_6": _con,
    "fc_2": _fc, "fc_3": _fc,
    "affine_": _affine,
    "bn_con2": _bn, "bn_fc2": _bn,
    "max_pool_2": _pool, "avg_pool_2": _pool,
    "relu_": _nothing, "add_prev_": _nothing,
}

INPUT_READERS = {
    "input_rgb_image_sized": _input_sized,
    "input_rgb_image_pyramid": _input_pyramid,
    "input_rgb_image_pyramid2": _input_pyramid,
    "input_rgb_image": _input_rgb,
}


def _details(r: _Reader, table: dict, kind: str) -> LayerRecord:
    at = r.pos
    name = r.string(f"{kind} name")
    if name not in table:
        raise DatFormatError(at, f"a known {kind} name ({', '.join(sorted(table))})", repr(name))
    return LayerRecord(name, table[name](r, name, at))


def _add_layer_trailer(r: _Reader) -> None:
    # Training state: setup flag, stale flag, outputs-disabled flag, then x_grad,
    # cached_output and grad_final tensors (empty in saved nets; read them whatever their size).
    for what in ("this_layer_setup_called", "gradient_input_is_stale",
                 "get_output_and_gradient_input_disabled"):
        r.bool(what)
    for what in ("x_grad", "cached_output", "grad_final"):
        r.tensor(what)


def _test_box_overlap(r: _Reader, what: str) -> dict[str, float]:
    return dict(iou_thresh=r.float(f"{what} iou_thresh"),
                percent_covered_thresh=r.float(f"{what} percent_covered_thresh"))


def _mmod_options(r: _Reader) -> dict[str, Any]:
    version = r.version("mmod_options", (1, 2, 3, 4))
    if version == 1:
        windows = [dict(width=r.uint("detector_width"), height=r.uint("detector_height"), label="")]
    else:
        windows = []
        for _ in range(r.uint("number of detector windows")):
            v = r.version("detector_window_details", (1, 2))
            w = dict(width=r.uint("window width"), height=r.uint("window height"))
            w["label"] = r.string("window label") if v == 2 else ""
            windows.append(w)
    opts: dict[str, Any] = dict(
        version=version, detector_windows=windows,
        loss_per_false_alarm=r.float("loss_per_false_alarm"),
        loss_per_missed_target=r.float("loss_per_missed_target"),
        truth_match_iou_threshold=r.float("truth_match_iou_threshold"),
        overlaps_nms=_test_box_overlap(r, "overlaps_nms"),
        overlaps_ignore=_test_box_overlap(r, "overlaps_ignore"),
        assume_image_pyramid=True, use_bounding_box_regression=False, bbr_lambda=100.0)
    if version >= 3:
        opts["assume_image_pyramid"] = bool(r.byte("assume_image_pyramid"))
    if version >= 4:
        opts["use_bounding_box_regression"] = r.bool("use_bounding_box_regression")
        opts["bbr_lambda"] = r.float("bbr_lambda")
    return opts


def _loss(r: _Reader) -> LayerRecord:
    at = r.pos
    name = r.string("loss layer name")
    if name in ("loss_metric_", "loss_metric_2"):
        params = dict(margin=r.float("loss_metric margin"))
        if name == "loss_metric_2":
            params["distance_threshold"] = r.float("loss_metric distance threshold")
        return LayerRecord(name, params)
    if name in ("loss_mmod_", "loss_mmod_2"):
        return LayerRecord(name, _mmod_options(r))
    raise DatFormatError(at, "a known loss layer name (loss_metric_2, loss_mmod_)", repr(name))


def _parse(r: _Reader) -> DatNetwork:
    r.version("add_loss_layer", (1,))
    loss = _loss(r)

    # Headers come output->input: 2 = add_layer, 1 = tag/skip, 3 = add_layer on the input.
    # Old (version 2) input add_layers look like plain ones, but are followed by the input
    # layer's name (a string, length >= 4) instead of another small version number.
    stack: list[str] = []
    while True:
        at = r.pos
        v = r.int("layer version")
        if v == 3 or (v == 2 and r.peek_int() > 3):
            input_version = v
            break
        if v == 2:
            stack.append("add_layer")
        elif v == 1:
            stack.append(TAG_OR_SKIP)
        else:
            raise DatFormatError(at, "a layer version (1 tag/skip, 2 add_layer, 3 input add_layer)",
                                 str(v))
        if len(stack) > 100_000:
            raise DatFormatError(at, "a network of sane depth", "more than 100000 layers")

    layers = [_details(r, INPUT_READERS, "input layer"), _details(r, LAYER_READERS, "layer")]
    _add_layer_trailer(r)
    if input_version == 3:
        layers[0].params["sample_expansion_factor"] = r.uint("sample_expansion_factor")
    for kind in reversed(stack):
        if kind == TAG_OR_SKIP:
            layers.append(LayerRecord(TAG_OR_SKIP, {}))
        else:
            layers.append(_details(r, LAYER_READERS, "layer"))
            _add_layer_trailer(r)
    r.expect_end()
    return DatNetwork(loss=loss, layers=layers)


def read_dat(path: str | Path) -> DatNetwork:
    """Parse a dlib DNN ``.dat`` file. Raises DatFormatError on anything unexpected,
    including bytes left over after the network."""
    return _parse(_Reader(Path(path).read_bytes()))
