"""Hand-labelled face boxes of groups/dlib_faces and their overlap with found boxes (benchmarks)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def truth_boxes(folder: Path) -> dict[str, list[tuple[int, int, int, int]]]:
    """Per photo path: hand-drawn boxes (left, top, right, bottom; right/bottom exclusive) from
    the folder's imglab XML files; boxes marked ignore='1' do not count."""
    out: dict[str, list] = {}
    for xml in sorted(Path(folder).glob("*.xml")):
        for image in ET.parse(xml).getroot().iter("image"):
            out[str(Path(folder) / image.get("file"))] = [
                (int(b.get("left")), int(b.get("top")), int(b.get("left")) + int(b.get("width")),
                 int(b.get("top")) + int(b.get("height")))
                for b in image.iter("box") if b.get("ignore") != "1"]
    return out


def iou(a, b) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes, right/bottom exclusive."""
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
