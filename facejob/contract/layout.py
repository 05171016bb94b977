"""Every file name facejob writes under OUT, in one place (paths relative to the output root).

    model.json                       the ModelConfig the faces were made with (search/verify/label use it)
    run.json                         last run: model and run config, versions, counts, timings
    images/part-<shard>.parquet      one row per input photo (written last: the shard's commit)
    faces/part-<shard>.parquet       one row per face
    images|faces/part-merged-<id>.parquet   `facejob compact`: small parts merged (facejob.indexing.compact)
    catalog.parquet                  the catalog checkpoint: the images parts' planning columns, and which
                                     part versions they come from (facejob.indexing.checkpoint)
    index/faces.hnsw, ids.parquet, params.json     the reducer's search index (single-process reduce)
    index/shards.json, index/shard-<build>-<i>.hnsw, index/shard-<build>-<i>.ids.parquet
                                     or, from the reducer on Ray, the same index sharded by cell
                                     (facejob.reduce.shard_index); only one of the two is kept
    clusters.parquet, clusters.json, cluster_events.parquet
    labels/labels.parquet, labels/model.npz, labels/model.json
    labels/corrections.json          the curator's corrections from the report page
    labels/corrections_faces.parquet where each face a correction names was last seen (to follow it)
    labels/metric.npz, labels/metric.json   the learned metric head (facejob.reduce.metric), when it helps
    predictions.parquet, duplicates.parquet
    dedup/near_faces.parquet, dedup/checked.parquet,  dedup's saved work (near faces of each face, pixel verdicts,
      dedup/unreadable.parquet, dedup/phash.parquet    photos whose bytes do not decode, perceptual-hash pairs)
    report/                          `facejob report`: the review site (index.html, b/BUILD/, photos/)
    quarantine/<time>/images|faces/  damaged parts moved aside (facejob.indexing.plan.quarantine)
    .facejob.lock                    the writer lock or S3 lease (facejob.io.lock)
"""
from __future__ import annotations

RUN_JSON, MODEL_JSON = "run.json", "model.json"
IMAGES_DIR, FACES_DIR, QUARANTINE_DIR = "images/", "faces/", "quarantine/"
CATALOG = "catalog.parquet"
LOCK = ".facejob.lock"   # a dot name: store listings and Parquet datasets skip it

INDEX_DIR = "index/"
INDEX_FILE, IDS_FILE, PARAMS_FILE = "index/faces.hnsw", "index/ids.parquet", "index/params.json"
SHARDS_MANIFEST = "index/shards.json"   # the sharded index's manifest, written after its shards' files
CLUSTERS, CLUSTERS_JSON, EVENTS = "clusters.parquet", "clusters.json", "cluster_events.parquet"
LABELS_STORED, LABEL_MODEL_NPZ, LABEL_MODEL_JSON = "labels/labels.parquet", "labels/model.npz", "labels/model.json"
PREDICTIONS, DUPLICATES = "predictions.parquet", "duplicates.parquet"
DEDUP_NEAR, DEDUP_CHECKED = "dedup/near_faces.parquet", "dedup/checked.parquet"
DEDUP_UNREADABLE = "dedup/unreadable.parquet"   # photos whose bytes dedup could not decode, by content and path
DEDUP_PHASH = "dedup/phash.parquet"             # perceptual-hash pairs found, each content's hashes digested
CORRECTIONS, CORRECTION_FACES = "labels/corrections.json", "labels/corrections_faces.parquet"
METRIC_NPZ, METRIC_JSON = "labels/metric.npz", "labels/metric.json"
REPORT_DIR = "report"

MERGED = "merged-"              # shard ids of compacted parts start with this (index shards are hex)
SUPERSEDES = b"facejob.supersedes"   # a merged images part's footer key: the shards it replaces (JSON list)
CATALOG_PARTS = b"facejob.catalog"   # catalog.parquet's footer key: JSON {format, shards, versions, folders}


def part_name(shard: str) -> str:
    """File name of one shard's part, the same under images/ and faces/."""
    return f"part-{shard}.parquet"


def images_part(shard: str) -> str:
    return IMAGES_DIR + part_name(shard)


def faces_part(shard: str) -> str:
    return FACES_DIR + part_name(shard)


def index_shard_files(build: str, i: int) -> tuple[str, str]:
    """The hnswlib graph and the label table of shard `i` of the sharded index written by `build`."""
    return f"{INDEX_DIR}shard-{build}-{i:03d}.hnsw", f"{INDEX_DIR}shard-{build}-{i:03d}.ids.parquet"


def shard_of(rel: str) -> str:
    """The shard id of a part's path (inverse of part_name)."""
    return rel.rsplit("/", 1)[-1].removeprefix("part-").removesuffix(".parquet")
