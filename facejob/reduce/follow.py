"""Labels follow their faces across photo changes.

A face id is derived from the photo's bytes, its uri and the box, so a photo that moved or was
re-encoded gets new face ids, and a stored label would point at nothing. Before each `label`
run the stored labels are matched again:

- moved (or copied, then the old path deleted): the same bytes (sha256) hold a face with the
  very same box: that is the labelled face;
- re-encoded in place (same uri, new bytes): the photo's face whose descriptor is nearest the
  labelled one, if nearer than FOLLOW_MAX_DISTANCE (a re-encoded face moves ~0.01-0.1;
  two people in one photo are > 0.6 apart).

A label whose photo is gone keeps its old face id and its stored embedding: it still teaches
the SVMs (as an example that is no longer in the archive) and `facejob label` lists it as such.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .embeddings import Faces, rows_by

FOLLOW_MAX_DISTANCE = 0.3
BOX = ("left", "top", "right", "bottom")


@dataclass
class Followed:
    moved: int = 0                 # found again by sha256 + box
    reencoded: int = 0             # found again by descriptor in the same photo
    gone: list[dict] = field(default_factory=list)   # rows of labels whose photo is gone


def follow(labels: pa.Table, faces: Faces, sha256: pa.Array) -> tuple[pa.Table, Followed]:
    """`labels` (the stored labels table) with every label whose face id is no longer in
    `faces` moved to its face's new id (and uri, sha256, box, embedding) where it can be found.

    `sha256` is the faces' sha256 column (row i of faces). Labels without a face id (photos that
    were never in the archive) are left as they are.
    """
    report = Followed()
    if labels.num_rows == 0:
        return labels, report
    ids = faces.face_ids
    present = pc.fill_null(pc.is_in(labels.column("face_id"), value_set=ids), True).to_numpy(zero_copy_only=False)
    missing = [i for i in np.flatnonzero(~present) if labels.column("face_id")[i].as_py() is not None]
    if not missing:
        return labels, report
    rows = labels.to_pylist()
    uris = faces.meta.column("uri")
    by_sha = rows_by(sha256, {rows[i]["sha256"] for i in missing if rows[i]["sha256"]})
    by_uri = rows_by(uris, {rows[i]["uri"] for i in missing if rows[i]["uri"]})
    boxes = np.stack([faces.meta.column(c).to_numpy(zero_copy_only=False) for c in BOX], 1) if len(faces) else None
    for i in missing:
        r = rows[i]
        want = np.asarray(r["embedding"], np.float32)
        new = None
        if r["left"] is not None:
            box = np.array([r[c] for c in BOX])
            same = [j for j in by_sha.get(r["sha256"], []) if (boxes[j] == box).all()]
            if same:
                new = min(same, key=lambda j: float(np.linalg.norm(faces.embeddings[j] - want)))
                report.moved += 1
        if new is None and by_uri.get(r["uri"]):
            cand = by_uri[r["uri"]]
            dist = np.linalg.norm(faces.embeddings[cand] - want, axis=1)
            if dist.min() < FOLLOW_MAX_DISTANCE:
                new = cand[int(dist.argmin())]
                report.reencoded += 1
        if new is None:
            report.gone.append(r)
            continue
        r.update(face_id=ids[new].as_py(), uri=uris[new].as_py(), sha256=sha256[new].as_py(),
                 embedding=faces.embeddings[new].tolist(), **{c: int(boxes[new][k]) for k, c in enumerate(BOX)})
    return pa.Table.from_pylist(rows, schema=labels.schema), report
