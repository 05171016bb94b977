"""Where to put the reducer's quality floor (`--min-quality`): what each floor drops, by kind of face.

    facejob index ../shared/data/lfw/images --out /tmp/lfw_out
    facejob index ../shared/data/groups ../shared/data/no_face ../shared/data/labelled --out /tmp/small_out
    nice -n 5 python -m bench.quality_floor /tmp/lfw_out /tmp/small_out

Faces, by kind (the floor should drop few of the first two and many of the last two):
  LFW useful     LFW subject faces (nearest the image centre) of people with >= 2 images whose
                 nearest other photo of the same person is < 0.6 away: a match is possible
  hand-boxed     faces found on groups/dlib_faces that match a hand-drawn box (IoU >= 0.4), and
                 the faces of the labelled/ folders' photos (one person each, the largest face)
  LFW useless    LFW subject faces whose same-person photos are all >= 0.6 away
  false          faces found on no_face/ photos, and faces on groups/dlib_faces matching no
                 hand box (boxes marked ignore there are not counted either way)
  LFW bystander  the other faces on LFW photos (people behind the subject, cut-off faces): real
                 faces, often small or blurred, of no known identity
For each floor: the share of each kind below it (quality < floor), and the same for face size
alone and sharpness alone, so one can see which term does the work.
"""
from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np

from bench.boxes import iou, truth_boxes

COLUMNS = ("face_id", "uri", "left", "top", "right", "bottom", "quality", "sharpness", "det_score")


def _faces(out: str):
    from facejob.reduce.embeddings import read_faces
    from facejob.io.storage import LocalStore

    f = read_faces(LocalStore(out), COLUMNS)
    cols = {c: f.meta.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS}
    cols["side"] = np.minimum(cols["right"] - cols["left"], cols["bottom"] - cols["top"])
    return cols, f.embeddings


def lfw_kinds(out: str) -> dict[str, np.ndarray]:
    """Row masks over the LFW faces: useful / useless subject faces."""
    cols, emb = _faces(out)
    uri = cols["uri"]
    cx, cy = (cols["left"] + cols["right"]) / 2, (cols["top"] + cols["bottom"]) / 2
    subject: dict[str, int] = {}
    for r, u in enumerate(uri):      # LFW photos are 250 x 250: the subject is centred
        d = (cx[r] - 125) ** 2 + (cy[r] - 125) ** 2
        if u not in subject or d < (cx[subject[u]] - 125) ** 2 + (cy[subject[u]] - 125) ** 2:
            subject[u] = r
    rows = np.array(sorted(subject.values()))
    who = np.array([Path(uri[r]).parent.name for r in rows])
    count = collections.Counter(who)
    multi = np.array([count[w] >= 2 for w in who])
    rows, who = rows[multi], who[multi]
    x = emb[rows]
    nearest = np.full(len(rows), np.inf)
    for name in np.unique(who):
        idx = np.flatnonzero(who == name)
        d = np.sqrt(np.maximum(((x[idx, None] - x[None, idx]) ** 2).sum(-1), 0))
        np.fill_diagonal(d, np.inf)
        nearest[idx] = d.min(1)
    n = len(uri)
    useful, useless = np.zeros(n, bool), np.zeros(n, bool)
    useful[rows[nearest < 0.6]] = True
    useless[rows[nearest >= 0.6]] = True
    others = np.ones(n, bool)
    others[list(subject.values())] = False
    return {"cols": cols, "LFW useful": useful, "LFW useless": useless, "LFW bystander": others}


def small_kinds(out: str, data: Path) -> dict[str, np.ndarray]:
    cols, _ = _faces(out)
    uri = cols["uri"]
    n = len(uri)
    truth = truth_boxes(data / "groups" / "dlib_faces")
    ignored = {}
    import xml.etree.ElementTree as ET
    for xml in sorted((data / "groups" / "dlib_faces").glob("*.xml")):
        for image in ET.parse(xml).getroot().iter("image"):
            ignored[str(data / "groups" / "dlib_faces" / image.get("file"))] = [
                (int(b.get("left")), int(b.get("top")), int(b.get("left")) + int(b.get("width")),
                 int(b.get("top")) + int(b.get("height"))) for b in image.iter("box") if b.get("ignore") == "1"]
    boxed, false = np.zeros(n, bool), np.zeros(n, bool)
    largest: dict[str, int] = {}
    area = (cols["right"] - cols["left"]) * (cols["bottom"] - cols["top"])
    for r, u in enumerate(uri):
        box = (cols["left"][r], cols["top"][r], cols["right"][r], cols["bottom"][r])
        if "/no_face/" in u:
            false[r] = True
        elif u in truth:
            if any(iou(box, t) >= 0.4 for t in truth[u]):
                boxed[r] = True
            elif not any(iou(box, t) >= 0.4 for t in ignored.get(u, [])):
                false[r] = True
        elif "/labelled/" in u and (u not in largest or area[r] > area[largest[u]]):
            largest[u] = r
    boxed[list(largest.values())] = True
    return {"cols": cols, "hand-boxed": boxed, "false": false}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lfw_out")
    ap.add_argument("small_out")
    ap.add_argument("--data", default="../shared/data")
    args = ap.parse_args()
    sets = [lfw_kinds(args.lfw_out), small_kinds(args.small_out, Path(args.data))]
    kinds = [(name, s["cols"], m) for s in sets for name, m in s.items() if name != "cols"]
    print("faces: " + ", ".join(f"{name} {m.sum()}" for name, _, m in kinds))
    for term, key, floors in (("quality", "quality", (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)),
                              ("face side px", "side", (0, 10, 15, 20, 25, 30, 40)),
                              ("sharpness", "sharpness", (0, 2, 4, 6, 8, 10, 15))):
        print(f"\nshare below the floor, by {term}")
        print(f"{'floor':>8} " + " ".join(f"{name:>14}" for name, _, _ in kinds))
        for f in floors:
            print(f"{f:8g} " + " ".join(f"{np.mean(c[key][m] < f) if m.any() else float('nan'):14.4f}"
                                       for _, c, m in kinds))
    print("\nfalse faces: uri, side, sharpness, quality, det_score")
    for name, c, m in kinds:
        if name == "false":
            for r in np.flatnonzero(m):
                print(f"  {c['uri'][r]}  {c['side'][r]}  {c['sharpness'][r]:.1f}  {c['quality'][r]:.2f}  {c['det_score'][r]:.3f}")


if __name__ == "__main__":
    main()
