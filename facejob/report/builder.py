"""`facejob report OUT`: the review site under OUT/report/ (static files; works from file://).

Layout (everything of one build lives under b/BUILD/, so a crashed build is never shown: the
page only reaches it through index.html, which is written last; older builds are removed then):

    report/index.html                 loads b/BUILD/app.js, style.css and data/meta.js
    report/b/BUILD/data/*.js          the data, as scripts calling FJ.put(key, {...}) (file:// forbids fetch)
        meta.js                       run summary, histogram, counts, chunk sizes
        people/K.js                   cards of persons K*PEOPLE_CHUNK ... (page order; a person is the
                                      clusters of one name, see facejob/report/model.py)
        index.js                      per person: faces, name, doubtful faces (to filter and sort)
        faces/K.js                    the faces of a run of persons (<= FACES_CHUNK faces) + their photos
        search.js, dups.js            loaded on first use
    report/b/BUILD/thumbs/K.jpg       sprite sheets of face thumbnails (page order)
    report/photos/SH/SHA256.jpg       small previews of the photos, by content: kept across builds
                                      (a rebuild writes only new ones, and removes unused ones last)
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import shutil
import time
import webbrowser
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from facejob.face.dlibport.chips import chip_details
from facejob.progress import Progress
from facejob.config import DEFAULT_MAX_PIXELS, ConfigError, load_run_config
from facejob.contract.layout import CLUSTERS_JSON, REPORT_DIR
from facejob.io.lock import writes_output
from facejob.reduce import deduping
from facejob.reduce import corrections as corr
from facejob.io.storage import Store, open_store

from . import model as m
from .thumbs import SPRITE_CELLS, SPRITE_COLS, THUMB, PhotoJob, SpriteWriter, default_workers, render_photos

log = logging.getLogger("facejob.report")

REPORT = REPORT_DIR
PEOPLE_CHUNK = 400       # cards per people/K.js
FACES_CHUNK = 2000       # faces per faces/K.js (a bigger person gets a file of its own)
ASSETS = ("app.js", "style.css")


@dataclass
class ReportSummary:
    path: str                    # OUT/report/index.html
    people: int
    faces: int
    photos: int
    previews: int                # photos with a preview (new or kept from an earlier build)
    sprites: int
    unreadable: int              # photos that could not be read again for thumbnails
    duplicate_groups: int
    files: int
    timings: dict[str, float] = field(default_factory=dict)


def js_payload(key: str, obj: Any) -> bytes:
    """A script that hands `obj` to the page: FJ.put("key", {...}).

    JSON is valid JavaScript; escaping <, > and & (and the two line separators JavaScript
    rejects) keeps `</script>` and `<!--` out of it, so the same text is safe inline too.
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(a, b)
    return f"FJ.put({json.dumps(key)},{text});\n".encode()


class _Writer:
    """Writes the report's files. Locally without fsync per file (thousands of small files):
    a build directory is new and only the final index.html makes it visible; shared files
    (previews, trusted by later builds when present) go through a temp name and a rename."""

    def __init__(self, store: Store, base: str, shared: bool = False):
        self.store, self.base, self.shared, self.files, self.bytes = store, base, shared, 0, 0
        self.local = store.local_path()

    def __call__(self, rel: str, data: bytes) -> None:
        path = f"{self.base}/{rel}"
        if self.local is not None:
            p = self.local / path
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp") if self.shared else p
            tmp.write_bytes(data)
            if self.shared:
                os.replace(tmp, p)
        else:
            self.store.write_bytes(path, data)
        self.files += 1
        self.bytes += len(data)


def _r(x: float, nd: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def _chips(lm: np.ndarray) -> list[list[float] | None]:
    """Per face: [centre x, centre y, image px per chip px, angle] of dlib's aligned chip (the
    page redraws the chip from the preview with this transform)."""
    out: list[list[float] | None] = []
    for pts in lm:
        try:
            d = chip_details(pts)
        except ValueError:
            out.append(None)
            continue
        out.append([round((d.left + d.right) / 2, 2), round((d.top + d.bottom) / 2, 2),
                    round((d.right - d.left + 1) / d.cols, 5), round(d.angle, 5)])
    return out


@writes_output("report")
def build(out: str, workers: int | None = None, progress: bool = True) -> ReportSummary:
    """Write the review site for the index output `out` (a folder or s3:// prefix), holding
    the output's writer lock (it writes OUT/report/ while reading what reduce wrote)."""
    t0 = time.perf_counter()
    store = open_store(out)
    people = m.read_people(store)
    faces = people.faces
    n = len(faces)
    t_read = time.perf_counter()

    uri = faces.meta.column("uri").to_pylist()
    fid = faces.face_ids.to_pylist()
    fidx = faces.meta.column("face_idx").to_pylist()
    box = np.stack([faces.meta.column(c).to_numpy() for c in ("left", "top", "right", "bottom")], 1).astype(np.int64) \
        if n else np.empty((0, 4), np.int64)
    lm = deduping._landmarks(faces.meta.column("landmarks")) if n else np.empty((0, 5, 2))
    cell = np.empty(n, np.int64)
    cell[people.order] = np.arange(n)          # page position = sprite cell

    # Photos in page order of their first face, then photos only known from duplicates.
    dups = m.duplicate_groups(store)
    photo_no: dict[str, int] = {}
    for r in people.order.tolist():
        photo_no.setdefault(uri[r], len(photo_no))
    for g in dups:
        for p in g["photos"]:
            photo_no.setdefault(p["uri"], len(photo_no))
    faces_of: list[list[int]] = [[] for _ in photo_no]
    for r in people.order.tolist():
        faces_of[photo_no[uri[r]]].append(r)
    info = m.photo_info(store)
    have = set(store.list(f"{REPORT}/photos/"))

    def preview_key(u: str) -> str | None:
        sha = info.get(u, (0, 0, ""))[2] or ""
        return f"{sha[:2]}/{sha}" if re.fullmatch(r"[0-9a-f]{64}", sha) else None

    keys = {u: preview_key(u) for u in photo_no}
    jobs = [PhotoJob(u, tuple(int(cell[r]) for r in faces_of[i]), tuple(tuple(box[r].tolist()) for r in faces_of[i]),
                     keys[u] is not None and f"{REPORT}/photos/{keys[u]}.jpg" not in have)
            for u, i in photo_no.items()]

    build_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    write = _Writer(store, f"{REPORT}/b/{build_id}")
    write_shared = _Writer(store, REPORT, shared=True)
    try:
        max_pixels = load_run_config(store).max_pixels
    except (ConfigError, FileNotFoundError, ValueError):   # a report still works without run.json
        max_pixels = DEFAULT_MAX_PIXELS
    sprites = SpriteWriter(n, lambda k, data: write(f"thumbs/{k}.jpg", data))
    previewed = {u for u, k in keys.items() if k is not None and f"{REPORT}/photos/{k}.jpg" in have}
    unreadable = 0
    bar = Progress("report", len(jobs), "photos", enabled=progress)
    for res in render_photos(jobs, max_pixels, workers or default_workers()):
        no = photo_no[res.uri]
        if res.error:
            unreadable += 1
            log.warning("report: cannot read %s again (%s); its faces show a grey square", res.uri, res.error)
            sprites.put_all(jobs[no].cells)
        else:
            for c, rgb in res.thumbs:
                sprites.put(c, rgb)
            if res.preview is not None:
                write_shared(f"photos/{keys[res.uri]}.jpg", res.preview)
                previewed.add(res.uri)
        bar.advance(1, faces=len(jobs[no].cells))
    bar.close()
    t_images = time.perf_counter()

    chips = _chips(lm)

    def photo_record(u: str) -> list:
        no = photo_no[u]
        w, h, _ = info.get(u, (0, 0, None))
        return [u, keys[u] if u in previewed else None, w, h,
                [[fid[r], *box[r].tolist(), [round(v, 1) for v in lm[r].reshape(-1).tolist()]] for r in faces_of[no]]]

    def face_record(r: int) -> list:
        lab = people.label[r]
        return [fid[r], photo_no[uri[r]], fidx[r], int(cell[r]), _r(people.doubt[r]), int(people.flagged[r]),
                lab, _r(people.prob[r]) if lab is not None else None, int(people.labelled[r]), chips[r],
                _r(people.near_same[r]), _r(people.near_other[r]), int(people.cluster_ids[people.cluster_of[r]])]

    def rows_of(c: int) -> np.ndarray:
        return people.order[people.starts[c]:people.starts[c] + people.sizes[c]]

    # faces/K.js: whole persons, in page order, up to FACES_CHUNK faces per file.
    n_clusters, n_persons = len(people.sizes), len(people.person_starts)
    person_faces = [int(people.sizes[list(people.clusters_of(p))].sum()) for p in range(n_persons)]
    face_chunk = np.zeros(n_persons, np.int64)
    k, filled = 0, 0
    for p in range(n_persons):
        if filled and filled + person_faces[p] > FACES_CHUNK:
            k, filled = k + 1, 0
        face_chunk[p] = k
        filled += person_faces[p]
    for k in range(int(face_chunk.max()) + 1 if n_persons else 0):
        persons, photos = {}, {}
        for p in np.flatnonzero(face_chunk == k).tolist():
            rows = np.concatenate([rows_of(c) for c in people.clusters_of(p)]).tolist()
            persons[p] = [face_record(r) for r in rows]
            for r in rows:
                photos.setdefault(photo_no[uri[r]], photo_record(uri[r]))
        write(f"data/faces/{k}.js", js_payload(f"faces/{k}", {"persons": persons, "photos": photos}))

    # people/K.js: the cards, one per person; index.js: what the page filters and sorts by.
    cards, index = [], []
    for p in range(n_persons):
        cs = list(people.clusters_of(p))
        per = [rows_of(c) for c in cs]
        rows = np.concatenate(per)
        # Card thumbnails: the most central faces of the largest cluster (page order is most
        # doubtful first), then of the next ones.
        central = np.concatenate([r[np.argsort(people.doubt[r], kind="stable")] for r in per])
        c0, n_photos, flagged = cs[0], len({uri[r] for r in rows.tolist()}), int(people.flagged[rows].sum())
        name = people.names[c0]
        cards.append([p, [int(people.cluster_ids[c]) for c in cs], len(rows), n_photos, name,
                      people.name_conf[c0], int(any(people.name_given[c] for c in cs)), flagged,
                      [int(cell[r]) for r in central[:m.CARD_THUMBS].tolist()], int(face_chunk[p])])
        index.append([len(rows), name, flagged])
    for k, lo in enumerate(range(0, n_persons, PEOPLE_CHUNK)):
        write(f"data/people/{k}.js", js_payload(f"people/{k}", cards[lo:lo + PEOPLE_CHUNK]))
    write("data/index.js", js_payload("index", index))

    # search.js: names -> persons; photos (once each, however many faces) -> their persons.
    person_of_row = people.person_of[people.cluster_of]
    persons_of_photo: dict[int, list[int]] = {}
    for r in people.order.tolist():
        ps = persons_of_photo.setdefault(photo_no[uri[r]], [])
        if int(person_of_row[r]) not in ps:
            ps.append(int(person_of_row[r]))
    by_no = {no: u for u, no in photo_no.items()}
    write("data/search.js", js_payload("search", {
        "names": [[p, people.names[int(people.person_starts[p])]] for p in range(n_persons)
                  if people.names[int(people.person_starts[p])]],
        "photos": sorted([m.file_name(by_no[no]), ps] for no, ps in persons_of_photo.items())}))
    write("data/dups.js", js_payload("dups", [
        {"group": g["group"], "kind": g["kind"],
         "photos": [[p["uri"], bool(p["keep"]), p["reason"], p["size"], p["width"], p["height"],
                     keys[p["uri"]] if p["uri"] in previewed else None] for p in g["photos"]]} for g in dups]))
    t_data = time.perf_counter()

    stored = corr.load(store)
    threshold = None
    if store.exists(CLUSTERS_JSON):
        threshold = json.loads(store.read_bytes(CLUSTERS_JSON)).get("threshold")
    timings = {"read_s": round(t_read - t0, 2), "images_s": round(t_images - t_read, 2),
               "data_s": round(t_data - t_images, 2)}
    meta = {
        "build": build_id, "out": store.root, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "people": n_persons, "clusters": n_clusters, "faces": n, "photos": len(photo_no),
        "people_chunk": PEOPLE_CHUNK, "thumb": THUMB, "sprite_cols": SPRITE_COLS,
        "sprite_cells": SPRITE_CELLS, "duplicate_groups": len(dups), "unreadable": unreadable,
        "corrections_stored": len(stored),
        # The page drops the corrections it holds that this build already contains.
        "corrections_applied": [e["id"] for e in stored if e.get("id")], "summary": m.run_summary(store),
        "histogram": m.histogram(people, threshold), "report_timings": timings,
    }
    write("data/meta.js", js_payload("meta", meta))
    pkg = resources.files("facejob.report") / "assets"
    for name in ASSETS:
        write(name, (pkg / name).read_bytes())
    html = (pkg / "index.html").read_text(encoding="utf-8").replace("{{BUILD}}", build_id)
    store.write_bytes(f"{REPORT}/index.html", html.encode())      # atomic: the build is now the report
    t_write = time.perf_counter()
    removed = _remove_old_builds(store, build_id)
    unused = have - {f"{REPORT}/photos/{keys[u]}.jpg" for u in previewed}
    for rel in unused:            # previews of photos gone from the archive
        store.delete(rel)
    timings.update(finish_s=round(t_write - t_data, 2), remove_old_s=round(time.perf_counter() - t_write, 2),
                   total_s=round(time.perf_counter() - t0, 2))
    s = ReportSummary(path=f"{store.root}/{REPORT}/index.html", people=n_persons, faces=n, photos=len(photo_no),
                      previews=len(previewed), sprites=sprites.written, unreadable=unreadable,
                      duplicate_groups=len(dups), files=write.files + write_shared.files + 1, timings=timings)
    log.info("report: %d people, %d faces, %d photos (%d unreadable) -> %s (%d files written, %.1f MB; %d previews "
             "kept from earlier builds, %d removed; %d old builds removed) in %.1f s", s.people, s.faces, s.photos,
             unreadable, s.path, s.files, (write.bytes + write_shared.bytes) / 1e6, len(have) - len(unused),
             len(unused), removed, timings["total_s"])
    return s


def _remove_old_builds(store: Store, keep: str) -> int:
    """Delete every other build under report/b/ (after index.html points at `keep`)."""
    local = store.local_path(f"{REPORT}/b")
    if local is not None:
        old = [d for d in local.iterdir() if d.is_dir() and d.name != keep]
        for d in old:
            shutil.rmtree(d, ignore_errors=True)
        return len(old)
    rels = [rel for rel in store.list(f"{REPORT}/b/") if not rel.startswith(f"{REPORT}/b/{keep}/")]
    for rel in rels:
        store.delete(rel)
    return len({rel.split("/")[2] for rel in rels})


def open_in_browser(path: str) -> bool:
    """Open the report's index.html in the default browser (local reports only)."""
    if path.startswith("s3://"):
        return False
    return webbrowser.open(Path(path).resolve().as_uri())
