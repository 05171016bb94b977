"""The label step: the curator's labels (a CSV, a folder per person, names from the report's
corrections) stored in OUT/labels/, per-person SVMs trained on them, every face named →
OUT/predictions.parquet; and the metric head retrained when what it learns from changed.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facejob.config import EXTENSIONS, MIN_QUALITY, LabelParams
from facejob.contract.layout import CLUSTERS, LABEL_MODEL_JSON, LABELS_STORED, METRIC_JSON, PREDICTIONS
from facejob.contract.schema import EMBEDDING_DIM
from facejob.io.lock import writes_output
from facejob.io.storage import Store, open_store, read_parquet, write_parquet

from . import corrections as corr
from . import metric as lm
from . import saved
from . import svm as lb
from .clustering import above_floor
from .embeddings import META_COLUMNS, Faces, face_shas, read_faces
from .errors import LabelsError
from .follow import Followed, follow
from .labels_input import Labelled, read_csv, read_folder, too_few
from .linkage import _components
from .search_index import face_model

if TYPE_CHECKING:   # the Ray path, imported only when asked for (it imports Ray)
    from .ray_reduce import RayReducer

log = logging.getLogger("facejob.reduce")

PREDICTIONS_SCHEMA = pa.schema([
    ("face_id", pa.string()), ("label", pa.string()), ("probability", pa.float32()),
    ("labelled", pa.bool_()),             # named by the curator (label kept as given)
    ("uri", pa.string()), ("face_idx", pa.int32()),
    ("quality", pa.float32()),            # the face's quality (facejob.face.quality); null if unknown
])
LABELS_SCHEMA = pa.schema([
    ("name", pa.string()), ("face_id", pa.string()), ("source", pa.string()),
    ("embedding", pa.list_(pa.float32(), EMBEDDING_DIM)),
    # Where the face was when labelled: lets the label follow a moved or re-encoded photo
    # (facejob.reduce.follow). Null for faces of label photos that are not in the archive.
    ("uri", pa.string()), ("sha256", pa.string()),
    ("left", pa.int32()), ("top", pa.int32()), ("right", pa.int32()), ("bottom", pa.int32()),
])


@dataclass
class LabelSummary:
    people: int
    labelled: int
    background: int
    faces: int
    named: int
    unknown: int
    per_person: dict[str, int] = field(default_factory=dict)
    followed: int = 0        # labels moved to the new face id of a moved or re-encoded photo
    gone: list[dict] = field(default_factory=list)   # labels on deleted photos: still training examples
    low_quality: int = 0     # faces below the quality floor: named too, but they do not train the SVMs
    low_quality_named: int = 0


def read_labels(out: str | Store, labels: str | Path, faces: Faces | None = None) -> Labelled:
    """Resolve a labels CSV or a folder-per-person tree against OUT's faces (validates it)."""
    store = open_store(out)
    faces = faces if faces is not None else read_faces(store, ["face_id", "uri", "face_idx", "left", "top", "right", "bottom"])
    path = Path(labels)
    if path.is_dir():
        model, _ = face_model(store)
        shas = read_faces(store, ["face_id", "sha256"], embeddings=False).meta.column("sha256")
        # Every format facejob reads, not the last run's list (an older or narrower one would
        # silently skip the curator's AVIF or raw reference photos).
        return read_folder(path, faces, shas, _photo_embedder(model), EXTENSIONS)
    if not path.is_file():
        raise LabelsError(f"labels file not found: {labels}")
    return read_csv(path.read_text(encoding="utf-8-sig"), faces, source=path.name)


def _stored_labels(store: Store) -> pa.Table:
    if not store.exists(LABELS_STORED):
        return LABELS_SCHEMA.empty_table()
    t = read_parquet(store, LABELS_STORED)
    # Labels stored before the location columns existed: they get nulls (and cannot follow).
    return pa.table({f.name: t.column(f.name) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
                     for f in LABELS_SCHEMA}, schema=LABELS_SCHEMA)


def _combine(stored: pa.Table, new: Labelled, faces: Faces, shas: pa.Array) -> pa.Table:
    """Stored labels updated with the new ones (a face named again takes its new name)."""
    ids = faces.face_ids
    rows = new.row.tolist()
    new_ids = [ids[r].as_py() if r >= 0 else None for r in rows]

    def at(col: pa.Array | pa.ChunkedArray, typ: pa.DataType) -> pa.Array:
        return pa.array([col[r].as_py() if r >= 0 else None for r in rows], typ)

    m = faces.meta
    t = pa.table({"name": new.name, "face_id": pa.array(new_ids, pa.string()), "source": new.source,
                  "embedding": pa.FixedSizeListArray.from_arrays(pa.array(new.embedding.reshape(-1)), EMBEDDING_DIM),
                  "uri": at(m.column("uri"), pa.string()), "sha256": at(shas, pa.string()),
                  **{c: at(m.column(c), pa.int32()) for c in ("left", "top", "right", "bottom")}},
                 schema=LABELS_SCHEMA)
    if stored.num_rows:
        renamed = pc.is_in(stored.column("face_id"), value_set=pa.array([i for i in new_ids if i], pa.string()))
        keep = ~pc.fill_null(renamed, False).to_numpy(zero_copy_only=False) & ~_given_again(stored, new)
        t = pa.concat_tables([stored.filter(pa.array(keep)), t])
    return t


def _given_again(stored: pa.Table, new: Labelled) -> np.ndarray:
    """Per stored label: is it a photo outside the archive (no face id) that `new` gives again
    (the same descriptor, to float noise)? The nightly job passes the same labels folder every
    night; without this its reference photos would pile up as copies of themselves."""
    outside = stored.column("face_id").is_null().to_numpy(zero_copy_only=False)
    again = np.zeros(stored.num_rows, bool)
    mine = new.row < 0
    if not outside.any() or not mine.any():
        return again
    emb = _emb(stored.column("embedding"))
    for i in np.flatnonzero(outside):
        d = np.linalg.norm(new.embedding[mine] - emb[i], axis=1)
        again[i] = bool((d < 1e-3).any())
    return again


def saved_label_params(out: str | Store) -> LabelParams:
    """The label settings saved with the last models (labels/model.json), else the defaults."""
    store = open_store(out)
    if not store.exists(LABEL_MODEL_JSON):
        return LabelParams()
    return lb.load_model(store).params


@writes_output("label")
def label(out: str | Store, labels: str | Path | None = None, params: LabelParams | None = None,
          replace: bool = False, faces: Faces | None = None, min_quality: float = MIN_QUALITY,
          corrections: str | Path | None = None, metric: str = "learned",
          engine: RayReducer | None = None) -> LabelSummary:
    """Train per-person SVMs from the curator's labels and name every face → OUT/predictions.parquet.
    Faces below the quality floor are named too (with their quality) but are not background or
    extra positives; a labelled face below it still teaches its person.

    `labels` (CSV or folder tree) is added to the labels stored in OUT/labels/ (or replaces them
    with `replace`); without it the stored labels are used again (after new photos came in).
    `params` default to the ones saved with the last models (e.g. an earlier `--threshold`).
    `corrections` (a file the report page downloaded) is added to OUT/labels/corrections.json;
    the names stored there are labels too, and a face marked "not this person" is a negative
    for that person and never gets that name. The metric head is retrained first when the
    labels changed; with `metric` "learned" the SVMs work on its descriptors when there is one.
    An `engine` (facejob.reduce.ray_reduce.RayReducer) trains the per-person SVMs and makes
    the predictions in Ray tasks (the same models and predictions).
    """
    store = open_store(out)
    params = params if params is not None else saved_label_params(store)
    clf = lb.IdentityClassifier.from_params(params)     # checks the settings before anything is written
    every = faces if faces is not None else read_faces(store, (*META_COLUMNS, "quality"))
    shas = face_shas(store, every)
    if corrections is not None:
        corr.add(store, corrections)
    applied = corr.resolve(corr.followed(store, every, shas))
    stored, followed, table = _checked_labels(store, labels, replace, every, shas, applied)
    write_parquet(store, LABELS_STORED, stored)
    head = refresh_metric(store, every) if metric == "learned" else lm.head_for(store, metric)

    good = above_floor(every, min_quality)
    faces = every.take(np.flatnonzero(good)) if not good.all() else every   # what the SVMs learn from
    names = table.column("name").to_pylist()
    xl = _emb(table.column("embedding"))
    rows = pc.index_in(table.column("face_id"), faces.face_ids).fill_null(-1).to_numpy().astype(np.int64)
    clusters = _cluster_rows(store, faces)
    negatives = pc.index_in(pa.array(sorted(applied.not_faces), pa.string()), faces.face_ids)
    negatives = np.setdiff1d(negatives.drop_null().to_numpy().astype(np.int64), rows)
    learned = lm.MetricLearner.from_head(head).transform
    key = saved.digest("predictions", 1, asdict(params), min_quality, every.face_ids, every.meta.column("uri"),
                       every.meta.column("face_idx"), every.embeddings, good, clusters, table.column("face_id"),
                       table.column("name"), table.column("source"), xl,
                       sorted((f, sorted(n)) for f, n in applied.not_names.items()), sorted(applied.not_faces),
                       *([] if head is None else [head.arrays[n] for n in sorted(head.arrays)]))
    kept = _unchanged(store, key)
    if kept is not None:
        log.info("label: faces, labels, corrections and settings unchanged since the last run; its "
                 "predictions kept (%d of %d faces named)", kept.named, kept.faces)
        kept.followed, kept.gone = followed.moved + followed.reencoded, [
            {k: g[k] for k in ("name", "face_id", "uri", "source")} for g in followed.gone]
        return kept
    clf.fit_archive(learned(faces.embeddings), rows, learned(xl), names, clusters, negatives=negatives,
                    run=engine.fit_svms if engine is not None else None)
    clf.model_.info["metric"] = "learned" if head is not None else "plain"
    clf.model_.info["inputs"] = key
    lb.save_model(store, clf.model_)
    # Every face gets a prediction, below the quality floor too (its quality is shown beside it).
    not_ids = list(applied.not_names)
    at = pc.index_in(pa.array(not_ids, pa.string()), every.face_ids).to_pylist()
    forbidden = {r: applied.not_names[f] for f, r in zip(not_ids, at) if r is not None}
    pred, prob = (clf.predict(every.embeddings, forbidden, transform=learned) if engine is None
                  else engine.predict(clf, every.embeddings, forbidden, transform=learned))
    mine = pc.index_in(table.column("face_id"), every.face_ids).fill_null(-1).to_numpy().astype(np.int64)
    labelled = np.zeros(len(every), bool)
    labelled[mine[mine >= 0]] = True
    pred[mine[mine >= 0]] = np.array(names, object)[mine >= 0]
    prob[mine[mine >= 0]] = 1.0
    quality = (every.meta.column("quality") if "quality" in every.meta.column_names
               else pa.nulls(len(every), pa.float32()))
    predictions = pa.table({
        "face_id": every.face_ids, "label": pa.array(pred.tolist(), pa.string()), "probability": pa.array(prob),
        "labelled": pa.array(labelled), "uri": every.meta.column("uri"), "face_idx": every.meta.column("face_idx"),
        "quality": quality,
    }, schema=PREDICTIONS_SCHEMA)
    named = pred != lb.UNKNOWN
    per = dict(zip(*np.unique(pred[named].astype(str), return_counts=True))) if named.any() else {}
    low = ~good
    s = LabelSummary(people=len(clf.classes_), labelled=len(names), background=len(clf.pool_), faces=len(every),
                     named=int(named.sum()), unknown=int((~named).sum()), per_person={k: int(v) for k, v in per.items()},
                     followed=followed.moved + followed.reencoded,
                     gone=[{k: g[k] for k in ("name", "face_id", "uri", "source")} for g in followed.gone],
                     low_quality=int(low.sum()), low_quality_named=int((named & low).sum()))
    # The summary travels with the predictions: a rerun that keeps them reports it again.
    saved.write(store, PREDICTIONS, predictions.replace_schema_metadata({SUMMARY_KEY: json.dumps(asdict(s))}),
                key, saved.LOOKUP_ROWS, sort_by="face_id")
    if s.followed or s.gone:
        log.info("label: %d labels followed their photo (%d moved, %d re-encoded); %d on photos no longer in "
                 "the archive, kept as training examples", s.followed, followed.moved, followed.reencoded, len(s.gone))
    log.info("label: %d people from %d labelled faces (+%d background); %d of %d faces named (%d of the %d "
             "below quality %.2f, which do not train)", s.people, s.labelled, s.background, s.named, s.faces,
             s.low_quality_named, s.low_quality, min_quality)
    return s


def _checked_labels(store: Store, labels: str | Path | None, replace: bool, every: Faces, shas: pa.Array,
                    applied: corr.Applied) -> tuple[pa.Table, Followed, pa.Table]:
    """(the labels to store: the stored ones followed to tonight's faces plus `labels`, or only
    those with `replace`; how the stored ones were followed; the labels training uses, with the
    corrections' names), checked before anything is stored (LabelsError)."""
    stored, followed = follow(LABELS_SCHEMA.empty_table() if replace else _stored_labels(store), every, shas)
    if labels is not None:
        stored = _combine(stored, read_labels(store, labels, every), every, shas)
    table = _with_corrections(stored, applied, every, shas)
    if not table.num_rows:
        raise LabelsError(f"no labels stored in {store.root}/labels/; give some with --labels LABELS.csv "
                          f"or name people on the report page (--corrections)")
    # A whole cluster named on the page is a deliberate choice, even when it holds one face.
    src = table.column("source").to_pylist()
    given = [(n, w) for n, w in zip(table.column("name").to_pylist(), src) if w != corr.SOURCE]
    few = too_few([n for n, _ in given], [w for _, w in given])
    if few:
        raise LabelsError("labels: " + "; ".join(few))
    return stored, followed, table


@writes_output("label")
def add_labels(out: str | Store, labels: str | Path, faces: Faces | None = None) -> int:
    """Check `labels` (CSV or folder tree) against OUT's faces and add them to its stored labels
    (OUT/labels/labels.parquet) without training; how many labels are stored then. `reduce`
    stores the labels it is given first, so tonight's metric head and clusters use them too."""
    store = open_store(out)
    every = faces if faces is not None else read_faces(store, META_COLUMNS)
    shas = face_shas(store, every)
    stored, _, _ = _checked_labels(store, labels, False, every, shas,
                                   corr.resolve(corr.followed(store, every, shas)))
    write_parquet(store, LABELS_STORED, stored)
    return stored.num_rows


SUMMARY_KEY = "facejob.summary"


def _unchanged(store: Store, key: str) -> LabelSummary | None:
    """The last labelling's summary when its predictions and models were made from inputs with
    digest `key` (both say so: a crash between their writes leaves them disagreeing); else None."""
    if not store.exists(PREDICTIONS) or not store.exists(LABEL_MODEL_JSON):
        return None
    try:
        if json.loads(store.read_bytes(LABEL_MODEL_JSON)).get("inputs") != key:
            return None
        meta = saved.metadata(store, PREDICTIONS) or {}
        if meta.get(saved.KEY) != key.encode() or SUMMARY_KEY.encode() not in meta:
            return None
        return LabelSummary(**json.loads(meta[SUMMARY_KEY.encode()]))
    except (OSError, ValueError, TypeError):
        return None


def refresh_metric(out: str | Store, faces: Faces | None = None, params: lm.MetricParams | None = None
                   ) -> lm.Head | None:
    """Train (or keep) the metric head on the stored labels and corrections; None when OUT has
    too few named people or the head does not beat the plain descriptors (any old head is
    dropped then). Retrains only when what it learns from changed (its fingerprint)."""
    store = open_store(out)
    params = params or lm.MetricParams()
    faces = faces if faces is not None else read_faces(store, META_COLUMNS)
    x, people, cannot = _metric_examples(store, faces)
    fp = lm.fingerprint(x, people, cannot, params)
    if fp == lm.saved_fingerprint(store):
        return lm.load(store)
    learner = lm.MetricLearner(params).fit(x, people, cannot)
    head, check = learner.head_, learner.check_
    if head is None:
        lm.drop(store)
        # Remember the examples it was tried on, so the same labels are not tried again every night.
        store.write_bytes(METRIC_JSON, json.dumps({"format": lm.FORMAT, "kind": "none", "fingerprint": fp,
                                                   "check": check}, indent=2).encode())
        log.info("metric: no learned head (%s); the plain descriptors are used", check.get("why"))
        return None
    lm.save(store, head, fp)
    log.info("metric: learned head kept (held-out people: nearest-neighbour %.4f -> %.4f, pairs %.4f -> %.4f)",
             check["nn_plain"], check["nn_learned"], check["pairs_plain"], check["pairs_learned"])
    return head


def _metric_examples(store: Store, faces: Faces) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The head's training examples: every named face (stored labels and corrections' names;
    faces put together with "same person" are one person too) with a person id, and
    "not this person" faces (person -1) with cannot-link pairs to the faces of that name."""
    applied = corr.resolve(corr.followed(store, faces))
    table = _with_corrections(_stored_labels(store), applied, faces, face_shas(store, faces))
    names = table.column("name").to_pylist()
    x = _emb(table.column("embedding"))
    ids = table.column("face_id").to_pylist()
    row_of = {f: i for i, f in enumerate(ids) if f is not None}
    extra = sorted({f for p in applied.must for f in p} | set(applied.not_faces))
    frows = pc.index_in(pa.array(extra, pa.string()), faces.face_ids).fill_null(-1).to_numpy().astype(np.int64)
    more = []
    for f, r in zip(extra, frows.tolist()):
        if f not in row_of and r >= 0:
            row_of[f] = len(names)
            names.append(None)
            more.append(r)
    if more:     # one read: on Ray each read asks every shard
        x = np.concatenate([x, faces.embeddings[np.array(more, np.int64)]])
    # People: one per name; "same person" pairs join faces (and names) into one.
    n = len(names)
    by_name: dict[str, list[int]] = {}
    for i, nm in enumerate(names):
        if nm is not None:
            by_name.setdefault(nm, []).append(i)
    pairs = [(g[0], j) for g in by_name.values() for j in g[1:]]
    pairs += [(row_of[a], row_of[b]) for a, b in applied.must if a in row_of and b in row_of]
    comp = _components(np.array(pairs, np.int64).reshape(-1, 2), n) if n else np.empty(0, np.int64)
    size = np.bincount(comp, minlength=n) if n else np.empty(0, np.int64)
    people = np.where((size[comp] > 1) | np.array([nm is not None for nm in names], bool), comp, -1) if n else comp
    cannot = [(row_of[f], j) for f, bad in applied.not_names.items() if f in row_of
              for nm in bad for j in by_name.get(nm, [])]
    cannot += [(row_of[a], row_of[b]) for a, b in applied.cannot if a in row_of and b in row_of]
    return x.astype(np.float32), people.astype(np.int64), np.array(cannot, np.int64).reshape(-1, 2)


def _with_corrections(stored: pa.Table, applied: corr.Applied, faces: Faces, shas: pa.Array) -> pa.Table:
    """Stored labels plus the names from corrections (which win for the faces they name); a
    label a face was later said not to be ("not this person") is dropped."""
    if applied.not_names and stored.num_rows:
        keep_stored = [name not in applied.not_names.get(f, ()) for f, name in
                       zip(stored.column("face_id").to_pylist(), stored.column("name").to_pylist())]
        stored = stored.filter(pa.array(keep_stored))
    rows = pc.index_in(pa.array(list(applied.names), pa.string()), faces.face_ids).fill_null(-1).to_numpy()
    keep = rows >= 0
    if not keep.any():
        return stored
    r = rows[keep].astype(np.int64)
    named = Labelled(list(np.array(list(applied.names.values()), object)[keep]), r, faces.embeddings[r],
                     [corr.SOURCE] * len(r))
    return _combine(stored, named, faces, shas)


def _emb(col: pa.ChunkedArray) -> np.ndarray:
    from .embeddings import batch_embeddings

    return batch_embeddings(col) if len(col) else np.empty((0, EMBEDDING_DIM), np.float32)


def _cluster_rows(store: Store, faces: Faces) -> np.ndarray | None:
    """Cluster id per face from OUT/clusters.parquet (-1 for faces it does not know), or None."""
    if not store.exists(CLUSTERS):
        return None
    t = read_parquet(store, CLUSTERS, columns=["face_id", "cluster_id"])
    pos = pc.index_in(faces.face_ids, t.column("face_id")).fill_null(-1).to_numpy().astype(np.int64)
    cid = t.column("cluster_id").to_numpy()
    # Faces the clustering has not seen get unique negative ids, so they share no cluster.
    return np.where(pos >= 0, cid[np.maximum(pos, 0)] if len(cid) else 0, -1 - np.arange(len(faces)))


def _photo_embedder(model):
    """path -> [(face area, embedding)] with the archive's own FaceModel."""
    def embed(path: Path) -> list[tuple[float, np.ndarray]]:
        return [(f.area, f.embedding) for f in model.process_bytes(Path(path).read_bytes()).faces]
    return embed
