"""The curator's corrections from the report page, kept in OUT and applied on every run.

A corrections file (what the page downloads, `corrections.json`) is a list of entries, oldest first:

    {"facejob": "corrections", "version": 1, "corrections": [
      {"id": "…", "kind": "name", "name": "Amy", "cluster_id": 3, "face_ids": ["…", …]},
      {"id": "…", "kind": "not_person", "face_id": "…", "cluster_id": 3, "others": ["…", …], "name": "Amy"},
      {"id": "…", "kind": "same_person", "cluster_ids": [3, 7], "face_ids": [["…", …], ["…", …]]}]}

`id` (optional) is unique per entry, made by the page; the report lists the stored ids so the
page knows which of its corrections a build already contains. Entries name faces by `face_id`
(the members a cluster had on the page), never by cluster id alone: cluster ids are only kept
for the log, so a correction still means the same faces after later runs re-cluster.
`facejob reduce/label --corrections FILE` appends the file's new entries to
OUT/labels/corrections.json; every later run reads that file and turns it into:

- names → labels for the SVMs (a later name for a face replaces an earlier one);
- "same person" → must-link pairs for clustering (the two groups always end in one cluster);
- "not this person" → cannot-link pairs between the face and the group it was shown in, the
  face as a negative for that group's name, and never that name in predictions.

Corrections follow their faces as labels do (facejob.reduce.follow): a face id depends on the
photo's uri and bytes, so a moved or re-encoded photo's faces get new ids. Every run remembers
where each face a correction names was last seen (OUT/labels/corrections_faces.parquet), and
rewrites the entries of faces that moved to their new ids.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facejob.contract.layout import CORRECTION_FACES, CORRECTIONS
from facejob.contract.schema import EMBEDDING_DIM
from facejob.io.storage import Store, read_parquet, write_parquet

from .embeddings import Faces, face_shas, whole
from .errors import LabelsError
from .follow import BOX, follow

log = logging.getLogger("facejob.reduce")

STORED = CORRECTIONS
FORMAT, VERSION = "corrections", 1
KINDS = ("name", "not_person", "same_person")
SOURCE = "corrections"          # the labels' `source` for names that came from corrections


class CorrectionsError(LabelsError):
    """A corrections file that cannot be read; nothing is merged."""


def _ids(v) -> bool:
    return isinstance(v, list) and all(isinstance(i, str) and i for i in v)


def _check(e, i: int) -> str | None:
    """A problem with entry i, or None."""
    if not isinstance(e, dict):
        return f"entry {i}: not an object"
    if "id" in e and not (isinstance(e["id"], str) and e["id"]):
        return f"entry {i}: id must be a non-empty string"
    kind = e.get("kind")
    if kind == "name":
        if not isinstance(e.get("name"), str) or not e["name"].strip():
            return f"entry {i}: name is empty"
        if not _ids(e.get("face_ids")) or not e["face_ids"]:
            return f"entry {i}: name needs a non-empty face_ids list"
    elif kind == "not_person":
        if not isinstance(e.get("face_id"), str) or not e["face_id"]:
            return f"entry {i}: not_person needs a face_id"
        if not _ids(e.get("others")):
            return f"entry {i}: not_person needs an `others` list of face ids"
    elif kind == "same_person":
        groups = e.get("face_ids")
        if not (isinstance(groups, list) and len(groups) >= 2 and all(_ids(g) and g for g in groups)):
            return f"entry {i}: same_person needs face_ids: two or more non-empty lists"
    else:
        return f"entry {i}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})"
    return None


def parse(data: bytes | str, source: str = "corrections.json") -> list[dict]:
    """The entries of a corrections file, validated (every problem reported at once)."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise CorrectionsError(f"{source}: not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("facejob") != FORMAT or not isinstance(doc.get("corrections"), list):
        raise CorrectionsError(f'{source}: not a facejob corrections file (expected {{"facejob": "{FORMAT}", '
                               f'"version": {VERSION}, "corrections": [...]}})')
    if doc.get("version") != VERSION:
        raise CorrectionsError(f"{source}: unsupported version {doc.get('version')!r} (this facejob reads {VERSION})")
    entries = doc["corrections"]
    problems = [p for i, e in enumerate(entries) if (p := _check(e, i)) is not None]
    if problems:
        raise CorrectionsError(f"{source}: {len(problems)} problem(s): " + "; ".join(problems[:20]))
    if entries:
        # Names are stripped once here, so "Amy " and "Amy" are one person.
        entries = [{**e, "name": e["name"].strip()} if isinstance(e.get("name"), str) else e for e in entries]
    return entries


def dump(entries: list[dict]) -> bytes:
    return json.dumps({"facejob": FORMAT, "version": VERSION, "corrections": entries}, indent=1,
                      ensure_ascii=False).encode()


def load(store: Store) -> list[dict]:
    """The corrections stored in OUT (empty when there are none)."""
    return parse(store.read_bytes(STORED), f"{store.root}/{STORED}") if store.exists(STORED) else []


def _key(e: dict) -> str:
    return json.dumps({k: v for k, v in e.items() if k != "at"}, sort_keys=True)


def add(store: Store, path: str | Path) -> int:
    """Append the new entries of the corrections file `path` to OUT's; returns how many were new.

    Entries already stored (the page downloads everything it holds each time) are skipped: by
    their `id` (the page gives each one; a stored entry keeps it, so the next report build can
    tell the page which of its corrections are applied), or by content for entries without one.
    """
    p = Path(path)
    if not p.is_file():
        raise CorrectionsError(f"corrections file not found: {path}")
    new = parse(p.read_bytes(), p.name)
    old = load(store)
    seen = {e.get("id") or _key(e) for e in old}
    added = []
    for e in new:
        k = e.get("id") or _key(e)
        if k not in seen:
            seen.add(k)
            added.append({**e, "at": e.get("at") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if added:
        store.write_bytes(STORED, dump(old + added))
    log.info("corrections: %d new of %d in %s; %d stored in %s/%s", len(added), len(new), p.name,
             len(old) + len(added), store.root, STORED)
    return len(added)


# Where a corrected face was last seen: what facejob.reduce.follow needs to find it again.
FACES_SCHEMA = pa.schema([
    ("face_id", pa.string()), ("uri", pa.string()), ("sha256", pa.string()),
    *[(c, pa.int32()) for c in BOX], ("embedding", pa.list_(pa.float32(), EMBEDDING_DIM)),
])


def _named(entries: list[dict]) -> set[str]:
    """Every face id the entries name."""
    out: set[str] = set()
    for e in entries:
        if e["kind"] == "name":
            out.update(e["face_ids"])
        elif e["kind"] == "not_person":
            out.add(e["face_id"])
            out.update(e["others"])
        else:
            out.update(f for g in e["face_ids"] for f in g)
    return out


def _renamed(e: dict, new: dict[str, str]) -> dict:
    def ids(v):
        return [ids(x) for x in v] if isinstance(v, list) else new.get(v, v)
    return {k: ids(v) if k in ("face_ids", "face_id", "others") else v for k, v in e.items()}


def follow_faces(store: Store, entries: list[dict], faces: Faces, shas: pa.Array) -> list[dict]:
    """`entries` with each face id that is no longer in `faces` replaced by its face's new id,
    where the face is found again (moved: same bytes and box; re-encoded: nearest descriptor in
    the same photo). Stores the updated entries, and where every named face is now."""
    if not entries:
        return entries
    named = pa.array(sorted(_named(entries)), pa.string())
    seen = read_parquet(store, CORRECTION_FACES) if store.exists(CORRECTION_FACES) else FACES_SCHEMA.empty_table()
    lost = seen.filter(pc.invert(pc.is_in(seen.column("face_id"), value_set=faces.face_ids)))
    lost = lost.filter(pc.is_in(lost.column("face_id"), value_set=named))
    new: dict[str, str] = {}
    if lost.num_rows:
        found, report = follow(lost, faces, shas)
        new = {a: b for a, b in zip(lost.column("face_id").to_pylist(), found.column("face_id").to_pylist()) if a != b}
        if new:
            entries = [_renamed(e, new) for e in entries]
            store.write_bytes(STORED, dump(entries))
        log.info("corrections: %d faces followed their photo (%d moved, %d re-encoded); %d not found in the "
                 "archive now", len(new), report.moved, report.reencoded, len(report.gone))
    # Where each named face is now; faces not in the archive keep their last place.
    named = pa.array(sorted(_named(entries)), pa.string())
    rows = pc.index_in(named, value_set=faces.face_ids).drop_null() if len(faces) else pa.array([], pa.int32())
    here = pa.table({
        "face_id": pc.take(faces.face_ids, rows), "uri": pc.take(faces.meta.column("uri"), rows),
        "sha256": pc.take(shas, rows), **{c: pc.take(faces.meta.column(c), rows).cast(pa.int32()) for c in BOX},
        "embedding": pa.array(list(faces.embeddings[rows.to_numpy()]), FACES_SCHEMA.field("embedding").type),
    }, schema=FACES_SCHEMA)
    kept = seen.filter(pc.invert(pc.is_in(seen.column("face_id"), value_set=here.column("face_id"))))
    kept = kept.filter(pc.is_in(kept.column("face_id"), value_set=named))
    table = pa.concat_tables([kept, here]).sort_by("face_id")
    if not table.equals(seen.sort_by("face_id")):
        write_parquet(store, CORRECTION_FACES, table)
    return entries


def followed(store: Store, faces: Faces, shas: pa.Array | None = None) -> list[dict]:
    """The stored corrections, their faces followed to moved or re-encoded photos."""
    entries = load(store)
    return follow_faces(store, entries, faces, shas if shas is not None else face_shas(store, faces)) if entries else []


@dataclass
class Applied:
    """Corrections resolved against the current faces (rows of a Faces table)."""

    names: dict[str, str] = field(default_factory=dict)          # face_id -> name
    not_names: dict[str, set[str]] = field(default_factory=dict)  # face_id -> names it must not get
    must: list[tuple[str, str]] = field(default_factory=list)    # face_id pairs
    cannot: list[tuple[str, str]] = field(default_factory=list)
    not_faces: set[str] = field(default_factory=set)             # faces marked "not this person"


def resolve(entries: list[dict]) -> Applied:
    """What the entries mean now, applied in order (a later entry wins over an earlier one)."""
    a = Applied()
    for e in entries:
        kind = e["kind"]
        if kind == "name":
            for f in e["face_ids"]:
                if e["name"] in a.not_names.get(f, ()):
                    continue   # marked "not this person" for this name earlier
                a.names[f] = e["name"]
        elif kind == "not_person":
            f = e["face_id"]
            a.not_faces.add(f)
            group = [o for o in e["others"] if o != f]
            a.cannot += [(f, o) for o in group]
            shown = {e["name"]} if e.get("name") else set()
            shown |= {a.names[o] for o in group if o in a.names}
            a.not_names.setdefault(f, set()).update(shown)
            if a.names.get(f) in shown:
                del a.names[f]
        else:
            faces = [f for g in e["face_ids"] for f in g]
            a.must += [(faces[0], f) for f in faces[1:] if f != faces[0]]
    # A face taken out of a group is not pulled back into it by a "same person" of that group.
    a.must = [(x, y) for x, y in a.must if x not in a.not_faces and y not in a.not_faces]
    return a


def name_pairs(stored: dict[str, str], applied: Applied) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The curator's names as clustering constraints: (must, cannot) face_id pairs. `stored`:
    face_id -> name of the stored labels; the corrections' names win over them, and a label the
    face was said not to be is dropped (as for training). Faces given one name are one person
    (must-link, each to the name's first face); faces given different names are different
    people (cannot-link between the names' first faces: the must-links carry it to the rest)."""
    named = {f: n for f, n in stored.items() if n not in applied.not_names.get(f, ())}
    named.update(applied.names)
    by_name: dict[str, list[str]] = {}
    for f in sorted(named):
        by_name.setdefault(named[f], []).append(f)
    firsts = [fs[0] for _, fs in sorted(by_name.items())]
    must = [(fs[0], f) for fs in by_name.values() for f in fs[1:]]
    cannot = [(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1:]]
    return must, cannot


def rows_of(face_ids: pa.Array, pairs: list[tuple[str, str]]) -> np.ndarray:
    """face_id pairs → (m, 2) row pairs (an id's first row); pairs with a face no longer in the
    archive are dropped. Only the pairs' ids are hashed, not the archive's (10M faces: GBs)."""
    if not pairs:
        return np.empty((0, 2), np.int64)
    flat = pa.array([f for p in pairs for f in p], pa.string())
    wanted = flat.unique()
    at = pc.index_in(face_ids, value_set=wanted)            # per face: which wanted id it is
    rows = np.flatnonzero(at.is_valid().to_numpy(zero_copy_only=False))
    which, first = np.unique(at.take(pa.array(rows, pa.int64())).to_numpy(zero_copy_only=False), return_index=True)
    row_of = np.full(len(wanted), -1, np.int64)
    row_of[which] = rows[first]
    r = row_of[pc.index_in(flat, value_set=wanted).to_numpy(zero_copy_only=False)].reshape(-1, 2)
    return r[(r >= 0).all(1)]


def photo_codes(uris: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per face a code of its photo (same uri, same code), int64."""
    return whole(uris).dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)


def photo_pairs(uris: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    """(m, 2) row pairs of faces found in the same photo: they are never one person. Per photo its
    faces in row order, each with every later one (array operations: millions of photos).
    `uris`: each face's photo, or its `photo_codes`."""
    codes = uris if isinstance(uris, np.ndarray) else photo_codes(uris)
    order = np.argsort(codes, kind="stable")
    if len(order) == 0:
        return np.empty((0, 2), np.int64)
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    ends = np.repeat(np.r_[starts[1:], len(order)], np.diff(np.r_[starts, len(order)]))   # per place: its photo's end
    later = ends - np.arange(len(order)) - 1          # faces after this one in its photo
    i = np.repeat(np.arange(len(order)), later)
    j = i + 1 + np.arange(len(i)) - np.repeat(np.cumsum(later) - later, later)
    return np.stack([order[i], order[j]], 1) if len(i) else np.empty((0, 2), np.int64)
