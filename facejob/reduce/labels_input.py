"""Reading the curator's labels: a CSV (name + face_id, or name + uri [+ face_idx]) or a
folder-per-person tree of photos. Every problem is reported with its line, all at once."""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from facejob.indexing.pipeline import main_face

from .embeddings import Faces, rows_by
from .errors import LabelsError

log = logging.getLogger("facejob.reduce")
MIN_FACES_PER_PERSON = 2
MAX_REPORTED = 20


@dataclass
class Labelled:
    """Faces the curator named. `row` indexes the archive's faces, or is -1 for a face that is only
    in the labels folder (its embedding is then in `embedding`)."""

    name: list[str]
    row: np.ndarray          # int64
    embedding: np.ndarray    # (m, 128) float32
    source: list[str]        # "labels.csv:12" or the photo path

    def __len__(self) -> int:
        return len(self.name)


def _fail(problems: list[str], what: str) -> None:
    """Raise one LabelsError listing every problem (the first MAX_REPORTED), on one line."""
    if problems:
        more = f"; ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise LabelsError(f"{what}: {len(problems)} problem(s): " + "; ".join(problems[:MAX_REPORTED]) + more)


def read_csv(text: str, faces: Faces, source: str = "labels.csv") -> Labelled:
    """Rows `name,face_id` or `name,uri[,face_idx]` resolved against the archive's faces."""
    reader = csv.DictReader(io.StringIO(text))
    cols = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = cols
    if "name" not in cols or not ({"face_id", "uri"} & set(cols)):
        raise LabelsError(f"{source}: needs a header with `name` and `face_id` (or `uri` [+ `face_idx`]); got {cols}")
    recs = [(line, {k: (v or "").strip() for k, v in rec.items() if k is not None})
            for line, rec in enumerate(reader, start=2)]
    # Only the faces the rows name are looked up (a dict of every face would be ~0.5 KiB a face).
    by_id = {f: rows[0] for f, rows in rows_by(faces.face_ids, {r.get("face_id", "") for _, r in recs} - {""}).items()}
    by_uri = rows_by(faces.meta.column("uri"), {r.get("uri", "") for _, r in recs if not r.get("face_id")} - {""})
    idx_of = faces.meta.column("face_idx")
    problems: list[str] = []
    names, rows, where = [], [], []
    first_line: dict[int, int] = {}
    for line, rec in recs:
        name, fid, uri, fidx = rec.get("name", ""), rec.get("face_id", ""), rec.get("uri", ""), rec.get("face_idx", "")
        if not name:
            problems.append(f"line {line}: empty name")
            continue
        if fid:
            row = by_id.get(fid)
            if row is None:
                problems.append(f"line {line}: face_id {fid!r} is not in the archive (was it indexed?)")
                continue
        elif uri:
            cand = by_uri.get(uri, [])
            if not cand:
                problems.append(f"line {line}: no face of photo {uri!r} in the archive (not indexed, or no face found)")
                continue
            if fidx:
                try:
                    want = int(fidx)
                except ValueError:
                    problems.append(f"line {line}: face_idx {fidx!r} is not a number")
                    continue
                hit = [r for r in cand if idx_of[r].as_py() == want]
                if not hit:
                    problems.append(f"line {line}: photo {uri!r} has no face {want} (it has {len(cand)})")
                    continue
                row = hit[0]
            elif len(cand) > 1:
                problems.append(f"line {line}: photo {uri!r} has {len(cand)} faces; add a face_idx column to say which")
                continue
            else:
                row = cand[0]
        else:
            problems.append(f"line {line}: neither face_id nor uri given")
            continue
        if row in first_line:
            prev = first_line[row]
            other = names[rows.index(row)]
            what = "duplicate of" if other == name else f"conflicts with ({other!r} vs {name!r})"
            problems.append(f"line {line}: same face as line {prev}, {what}")
            continue
        first_line[row] = line
        names.append(name); rows.append(row); where.append(f"{source}:{line}")
    if not names and not problems:
        problems.append("no labelled rows")
    _fail(problems, source)
    row_arr = np.asarray(rows, np.int64)
    return Labelled(names, row_arr, faces.embeddings[row_arr], where)


def too_few(names: list[str], where: list[str]) -> list[str]:
    """Problems for people with fewer than MIN_FACES_PER_PERSON labelled faces."""
    counts: dict[str, list[str]] = {}
    for n, w in zip(names, where):
        counts.setdefault(n, []).append(w)
    return [f"{n!r} has only {len(ws)} labelled face ({', '.join(ws)}); label at least {MIN_FACES_PER_PERSON} "
            f"faces per person" for n, ws in sorted(counts.items()) if len(ws) < MIN_FACES_PER_PERSON]


def read_folder(root: Path, faces: Faces, sha256: pa.Array, embed_photo, extensions: tuple[str, ...]) -> Labelled:
    """A tree root/NAME/*.jpg: every photo names the main face in it.

    A photo already in the archive (same bytes) uses the archive's face; any other is embedded
    with `embed_photo(path) -> list[(area, embedding)]`. Photos with no face, or with several
    faces where none is clearly the main one (twice the area of the next), are skipped with a
    warning: they cannot say which face is the person.
    """
    import hashlib

    people = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not people:
        raise LabelsError(f"{root}: no person folders (expected {root}/NAME/photo.jpg)")
    photos = [(person, photo, hashlib.sha256(photo.read_bytes()).hexdigest()) for person in people
              for photo in sorted(p for p in person.rglob("*") if p.is_file() and p.suffix.lower() in extensions)]
    rows_by_sha = rows_by(sha256, {digest for _, _, digest in photos})
    names, rows, embs, where = [], [], [], []
    skipped: list[str] = []
    for person, photo, digest in photos:
        cand = rows_by_sha.get(digest)
        if cand:
            found = [(_area(faces, r), r) for r in cand]
        else:
            found = [(a, e) for a, e in embed_photo(photo)]
        i = main_face([a for a, _ in found])
        main = None if i is None else found[i][1]
        if main is None:
            skipped.append(f"{photo} ({'no face' if not found else f'{len(found)} faces, none clearly the main one'})")
            continue
        names.append(person.name)
        where.append(str(photo))
        if cand:
            rows.append(main); embs.append(faces.embeddings[main])
        else:
            rows.append(-1); embs.append(np.asarray(main, np.float32))
    for s in skipped:
        log.warning("labels: skipped %s", s)
    _fail(too_few(names, where), str(root))
    return Labelled(names, np.asarray(rows, np.int64), np.asarray(embs, np.float32).reshape(-1, 128), where)


def _area(faces: Faces, row: int) -> float:
    left, top, right, bottom = (float(faces.meta.column(c)[row].as_py()) for c in ("left", "top", "right", "bottom"))
    return (right - left) * (bottom - top)
