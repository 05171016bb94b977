"""LFW pairs files (View 1 pairsDevTrain/pairsDevTest, View 2 pairs.txt): which two photos, same
person or not. Read by `facejob eval` and `facejob audit`."""
from __future__ import annotations

from pathlib import Path


def read_lfw_pairs(path: str | Path) -> list[tuple[str, str, bool]]:
    """(relative path a, relative path b, same person) for each line of an LFW pairs file."""
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines()[1:], start=2):
        p = line.split()
        if len(p) == 3:
            pairs.append((f"{p[0]}/{p[0]}_{int(p[1]):04d}.jpg", f"{p[0]}/{p[0]}_{int(p[2]):04d}.jpg", True))
        elif len(p) == 4:
            pairs.append((f"{p[0]}/{p[0]}_{int(p[1]):04d}.jpg", f"{p[2]}/{p[2]}_{int(p[3]):04d}.jpg", False))
        elif p:
            raise ValueError(f"{path}:{n}: not an LFW pair line (name i j | name1 i name2 j): {line!r}")
    return pairs
