"""dlib's one rounding rule for rectangles, shared by every port.

dlib 20 converts a drectangle to a rectangle with std::round: halves away from zero
(−4.5 → −5, 4.5 → 5; checked with ``dlib.rectangle(dlib.drectangle(...))``). Boxes near the
image's top-left edge have negative coordinates, so floor(v + 0.5) is not the same rule.
"""
from __future__ import annotations

import math


def round_half_away(v: float) -> int:
    """std::round: the nearest integer, halves away from zero."""
    a = abs(v)
    r = math.floor(a)
    if a - r >= 0.5:
        r += 1
    return int(math.copysign(r, v)) if r else 0


def round_rect(l: float, t: float, r: float, b: float) -> tuple[int, int, int, int]:
    """drectangle → rectangle."""
    return round_half_away(l), round_half_away(t), round_half_away(r), round_half_away(b)
