"""Decoding: every awkward input either becomes upright RGB pixels or a clear reason code."""
from __future__ import annotations

import numpy as np
import pytest

from facejob.image import decode
from facejob.config import DEFAULT_MAX_PIXELS
from tests.photos import EXPECTED, make_awkward_folder, png_header_only

MAX = DEFAULT_MAX_PIXELS


@pytest.fixture(scope="module")
def awkward(data_dir, tmp_path_factory):
    return make_awkward_folder(data_dir, tmp_path_factory.mktemp("awkward"))


@pytest.mark.parametrize("name", [n for n, (s, r) in EXPECTED.items()
                                  if r in ("empty", "corrupt", "unsupported", "too_large")
                                  and n != "fifo.jpg"])
def test_bad_bytes_give_reason(awkward, name):
    with pytest.raises(decode.DecodeError) as e:
        decode.decode_image((awkward / name).read_bytes(), MAX)
    assert e.value.reason == EXPECTED[name][1]
    assert str(e.value).startswith(EXPECTED[name][1] + ": ")


@pytest.mark.parametrize("name", ["webp_named.jpg", "photo.heic", "rgba.png", "grey.jpg", "cmyk.jpg",
                                  "sixteen_bit.png", "animated.gif", "plain.jpg"])
def test_odd_formats_decode_to_rgb(awkward, name):
    rgb = decode.decode_image((awkward / name).read_bytes(), MAX)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert 40 < rgb.mean() < 220, "image decoded to (nearly) blank pixels"


def test_sixteen_bit_is_scaled_not_clipped(awkward):
    grey = decode.decode_image((awkward / "grey.jpg").read_bytes(), MAX)
    sixteen = decode.decode_image((awkward / "sixteen_bit.png").read_bytes(), MAX)
    # Same picture: 16-bit values scaled down, not clipped to white.
    assert abs(float(sixteen.mean()) - float(grey.mean())) < 3


def test_exif_orientation_applied(awkward):
    plain = decode.decode_image((awkward / "plain.jpg").read_bytes(), MAX)
    rotated = decode.decode_image((awkward / "rotated_exif.jpg").read_bytes(), MAX)
    assert rotated.shape == plain.shape  # turned back upright, not left on its side


def test_pixel_guard_reads_header_only():
    with pytest.raises(decode.DecodeError) as e:
        decode.decode_image(png_header_only(40_000, 30_000), MAX)
    assert e.value.reason == decode.TOO_LARGE and "1,200,000,000" in str(e.value)
