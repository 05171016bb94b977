"""Every setting of `facejob index`, typed and validated, in two places by concern.

- `ModelConfig`: what a face row *is* (detector, upsample, min face size, landmarks, embedder,
  flip TTA) and how the model runs (device, batch size). Saved in OUT/model.json by `index`;
  `search`, `verify`, `label --folder` and jobs/nightly.py build their `FaceModel` from it.
- `RunConfig`: how a run goes (workers and their resources, shard size, Ray address, --force,
  input limits and extensions, how much a run may retire). Recorded in run.json, never needed
  to read an output.

- `ReduceConfig`: how `facejob reduce` (and the nightly job's `reduce:` section) turns faces
  into clusters and names (defaults: CLUSTER_THRESHOLD, CLUSTER_K, MIN_QUALITY, LabelParams). The cluster threshold and k are kept in OUT/clusters.json, the
  label threshold with the label models, so a value given once holds for later runs.

Command-line flags are generated from these fields (their `help` metadata; see `add_options()`),
and jobs/nightly.yaml (facejob/nightly.py) takes the same names as keys. Everything is checked
when the object is built, before Ray starts.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from facejob.face.backends import DETECTORS, EMBEDDERS
from facejob.contract.layout import MODEL_JSON, RUN_JSON

LANDMARKS = (5, 68)
TTA = ("none", "flip")
RUNTIMES = ("auto", "torch", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# Images above this many pixels are refused before decoding (decompression-bomb guard).
# 100 MP covers every phone and most DSLR photos; panoramas above it get a `too_large` reason.
DEFAULT_MAX_PIXELS = 100_000_000
# A run may retire (as deleted) up to max(RETIRE_FLOOR, max_retire_share x the photos indexed
# under a source) of that source's photos; more looks like an unmounted share or a failed
# listing, not like deletions, and is refused unless allow_retire is set.
DEFAULT_MAX_RETIRE_SHARE = 0.10
RETIRE_FLOOR = 10
RAW_EXTENSIONS = (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".rw2",
                  ".orf", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".mef", ".mos", ".mrw", ".rwl")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif",
              ".jxl") + RAW_EXTENSIONS

# Detection runs on a working copy with this long side. bench/camera.py's sweep (12 camera photos,
# 56 labelled faces): 800, 1024 and 1200 px all find the 56 faces the full-size loop finds (1600
# missed 2); 1200 is the smallest that keeps every photo up to 2400 px (2 x 1200: web images, the
# test suite's 2280 px group photo) at full resolution.
DEFAULT_WORK_SIZE = 1200

# Compaction: every run adds parts and planning and the reducer pay per part. Past this many the
# run ends by merging the small ones into parts of DEFAULT_PART_PHOTOS photos (bench/catalog_scale.py
# on 2 busy cores: a part costs planning ~1 ms, as much as ~100 catalogued photos; 100,000 photos make
# a faces part of ~100 MB at 1.5 faces per photo, which the merge holds in memory once).
DEFAULT_COMPACT_PARTS = 256
DEFAULT_PART_PHOTOS = 100_000


class ConfigError(ValueError):
    """A setting has a value facejob cannot use; the message says which and why."""


def setting(default: Any, help: str, *, choices: tuple | None = None, metavar: str | None = None,
            cli: bool = True) -> Any:
    """A dataclass field with what its command-line flag needs (`help`, `choices`, `metavar`)."""
    return field(default=default, metadata={"help": help, "choices": choices, "metavar": metavar, "cli": cli})


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Settings:
    """to_dict / from_dict shared by the config dataclasses (unknown keys are errors)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__} settings must be a mapping, got {type(d).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(map(str, unknown))} (allowed: {', '.join(known)})")
        return cls(**{k: tuple(v) if isinstance(known[k].default, tuple) and isinstance(v, list) else v
                      for k, v in d.items()})


@dataclass(frozen=True)
class ModelConfig(_Settings):
    """How faces are found and described: everything that decides what a faces row contains."""

    detector: str = setting("retinaface", "face detector: retinaface (RetinaFace-MobileNet0.25 in PyTorch: "
                                          "finds profiles, turned and small faces; the default), hog (dlib HOG, "
                                          "frontal faces, CPU), cnn (dlib's MMOD CNN, PyTorch port: wants a GPU), "
                                          "cnn-dlib (the same CNN computed by dlib, the reference)",
                            choices=tuple(DETECTORS))
    upsample: int = setting(1, "double the working copy this many times before detecting; 1 finds faces down to "
                               "~40 of its px (retinaface: works at 2^(N-1) x the working copy's size, so 1 = its "
                               "own size, faces down to ~24 px; 2: ~12 px)", metavar="N")
    work_size: int = setting(DEFAULT_WORK_SIZE, "detect on a working copy with this long side (JPEG: decoded "
                                                "straight at 1/2, 1/4, 1/8); photos up to twice as large are "
                                                "used as they are; landmarks and chips come from pixels where "
                                                "the face is >= 100 px; boxes stay in original pixels "
                                                "(0 = always full size)", metavar="PX")
    smallest_face: int = setting(0, "make the working copy large enough to find faces down to PX original "
                                    "pixels (0 = set by --work-size: about 80 / 2**upsample / (work_size / "
                                    "long side), 200 px on a 6000 px photo)", metavar="PX")
    min_face_size: int = setting(0, "drop faces whose shorter side is below PX pixels (0 keeps all)", metavar="PX")
    landmarks: int = setting(5, "landmark model used to align faces", choices=LANDMARKS)
    embedder: str = setting("torch", "torch: the batched PyTorch port of dlib's network (the same "
                                     "descriptors to 1e-6; 8-14x dlib's speed on a CPU core, batched on a GPU); "
                                     "dlib: the reference implementation",
                            choices=tuple(EMBEDDERS))
    tta: str = setting("none", "flip: average each face's descriptor with its mirror image's", choices=TTA)
    device: str = setting("auto", "torch device for the PyTorch backends: auto (cuda when the worker "
                                  "has a GPU, else cpu), cpu, cuda, cuda:N, mps")
    batch_size: int = setting(0, "faces per torch forward pass (0 = tuned per device)", metavar="N")
    runtime: str = setting("auto", "what runs RetinaFace and the torch embedder: auto (ONNX Runtime on a CPU, "
                                   "1.2x faster there; torch on a GPU), torch, onnxruntime (CPU); the same "
                                   "boxes and descriptors (to 1e-6) from each", choices=RUNTIMES)
    precision: str = setting("fp32", "the torch embedder's arithmetic (GPU): fp32, or fp16/bf16 autocast (faster; "
                                     "descriptors move by ~5e-4 / ~3e-3, so an output keeps one precision; "
                                     "detection stays fp32)", choices=PRECISIONS)
    compile: bool = setting(False, "torch.compile the torch networks (GPU; compiling takes a minute per worker, "
                                   "descriptors stay within 1e-5)")

    def __post_init__(self) -> None:
        _need(self.detector in DETECTORS, f"detector must be one of {tuple(DETECTORS)}, got {self.detector!r}")
        _need(self.embedder in EMBEDDERS, f"embedder must be one of {tuple(EMBEDDERS)}, got {self.embedder!r}")
        _need(self.landmarks in LANDMARKS, f"landmarks must be 5 or 68, got {self.landmarks!r}")
        _need(self.tta in TTA, f"tta must be one of {TTA}, got {self.tta!r}")
        _need(isinstance(self.device, str) and DEVICE.fullmatch(self.device) is not None,
              f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        _need(_is_int(self.upsample) and 0 <= self.upsample <= 4,
              f"upsample must be an integer 0..4, got {self.upsample!r}")
        _need(_is_int(self.min_face_size) and self.min_face_size >= 0,
              f"min_face_size must be >= 0 pixels, got {self.min_face_size!r}")
        _need(_is_int(self.work_size) and self.work_size >= 0,
              f"work_size must be >= 0 pixels (0 = full size), got {self.work_size!r}")
        _need(_is_int(self.smallest_face) and self.smallest_face >= 0,
              f"smallest_face must be >= 0 pixels (0 = set by work_size), got {self.smallest_face!r}")
        _need(_is_int(self.batch_size) and self.batch_size >= 0, f"batch_size must be >= 0, got {self.batch_size!r}")
        _need(self.runtime in RUNTIMES, f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        _need(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _need(isinstance(self.compile, bool), f"compile must be true or false, got {self.compile!r}")
        _need(self.precision == "fp32" or self.runtime != "onnxruntime",
              f"precision {self.precision} is torch autocast: it needs runtime auto or torch")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change which faces and descriptors come out. (Not the embedder: the
        torch port reproduces dlib's descriptors to 1e-6, so both can share an output; nor
        device, batch size, runtime or compile, which move descriptors by less than 1e-5; but
        precision: fp16/bf16 move them by ~5e-4 / ~3e-3.)"""
        return {k: getattr(self, k) for k in ("detector", "upsample", "min_face_size", "landmarks", "tta",
                                              "work_size", "smallest_face", "precision")}

    def save(self, store) -> None:
        """OUT/model.json: how this output's faces were made, for every later reader."""
        store.write_bytes(MODEL_JSON, json.dumps(self.to_dict(), indent=2).encode())

    @classmethod
    def load(cls, store) -> "ModelConfig":
        """The model config an output was indexed with: OUT/model.json, or for outputs written
        before it existed, the model fields of run.json's flat `config`."""
        if store.exists(MODEL_JSON):
            return cls.from_dict(json.loads(store.read_bytes(MODEL_JSON)))
        flat = _run_record(store).get("config")
        if not isinstance(flat, dict):
            raise ConfigError(f"{store.root}/{RUN_JSON} holds no model config")
        return IndexConfig.from_dict(flat).model


@dataclass(frozen=True)
class RunConfig(_Settings):
    """How one `facejob index` run is executed; changing these never changes a row."""

    workers: int = setting(0, "Ray actors, each builds the face model once and takes shard after shard "
                              "(0 = one per CPU the cluster has, or one per GPU with --gpus-per-worker)",
                           metavar="N")
    cpus_per_worker: float = setting(1.0, "Ray CPUs each worker asks for (also its torch thread count)",
                                     metavar="N")
    gpus_per_worker: float = setting(0.0, "Ray GPUs each worker asks for; 1 on GPU clusters", metavar="N")
    shard_size: int = setting(0, "images per shard and per output part (0 = about 4 shards per worker, "
                                 "10-500 images each)", metavar="N")
    address: str | None = setting(None, "join this Ray cluster (auto or host:port); default: start a local Ray")
    force: bool = setting(False, "redo photos already in the output (and allow other model settings)")
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "refuse images with more pixels than this, before "
                                                  "decoding them (decompression-bomb guard)", metavar="N")
    max_retire_share: float = setting(DEFAULT_MAX_RETIRE_SHARE,
                                      "refuse a run that would retire more than this share of a source's "
                                      f"indexed photos as deleted (at least {RETIRE_FLOOR} may always go)",
                                      metavar="SHARE")
    allow_retire: bool = setting(False, "retire whatever the listing says is gone, even a whole source "
                                        "(after real mass deletions; a missing source is still refused)")
    extensions: tuple[str, ...] = setting(EXTENSIONS, "file extensions listed in folders, comma-separated; "
                                                      "photos indexed before and still there are kept whatever "
                                                      "this says (unless --allow-retire)", metavar=".EXT,...")
    compact_parts: int = setting(DEFAULT_COMPACT_PARTS, "after the run, compact the output (as `facejob compact` "
                                                        "does) when it holds more parts than this (0 = never)",
                                 metavar="N")

    def __post_init__(self) -> None:
        _need(_is_int(self.workers) and self.workers >= 0, f"workers must be >= 0, got {self.workers!r}")
        _need(isinstance(self.cpus_per_worker, (int, float)) and self.cpus_per_worker > 0,
              f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        _need(isinstance(self.gpus_per_worker, (int, float)) and self.gpus_per_worker >= 0,
              f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        _need(_is_int(self.shard_size) and self.shard_size >= 0,
              f"shard_size must be >= 0 (0 = auto), got {self.shard_size!r}")
        _need(_is_int(self.max_pixels) and self.max_pixels > 0, f"max_pixels must be > 0, got {self.max_pixels!r}")
        _need(isinstance(self.max_retire_share, (int, float)) and not isinstance(self.max_retire_share, bool)
              and 0 <= self.max_retire_share <= 1,
              f"max_retire_share must be a share between 0 and 1, got {self.max_retire_share!r}")
        _need(isinstance(self.allow_retire, bool), f"allow_retire must be true or false, got {self.allow_retire!r}")
        _need(self.address is None or (isinstance(self.address, str) and self.address != ""),
              f"address must be auto or host:port, got {self.address!r}")
        _need(_is_int(self.compact_parts) and self.compact_parts >= 0,
              f"compact_parts must be >= 0 (0 = never), got {self.compact_parts!r}")
        _need(isinstance(self.extensions, tuple) and all(isinstance(e, str) and e.startswith(".")
                                                         for e in self.extensions),
              f"extensions must be a list like [.jpg, .png], got {self.extensions!r}")


@dataclass(frozen=True)
class CompactConfig(_Settings):
    """How `facejob compact` (and the index run's automatic compaction) merges parts."""

    part_photos: int = setting(DEFAULT_PART_PHOTOS, "merge parts with fewer photos than this into parts of at "
                                                    "least this many (larger parts are left as they are)",
                               metavar="N")

    def __post_init__(self) -> None:
        _need(_is_int(self.part_photos) and self.part_photos >= 2,
              f"part_photos must be an integer >= 2, got {self.part_photos!r}")


def _run_record(store) -> dict[str, Any]:
    if not store.exists(RUN_JSON):
        raise FileNotFoundError(f"{store.root}/{RUN_JSON} not found; run `facejob index` first")
    doc = json.loads(store.read_bytes(RUN_JSON))
    if not isinstance(doc, dict):
        raise ConfigError(f"{store.root}/{RUN_JSON} is not a facejob run record")
    return doc


def load_run_config(store) -> RunConfig:
    """The run config of an output's last run (run.json `run`, or older versions' flat `config`)."""
    doc = _run_record(store)
    if isinstance(doc.get("run"), dict):
        return RunConfig.from_dict(doc["run"])
    if isinstance(doc.get("config"), dict):
        return IndexConfig.from_dict(doc["config"]).run
    raise ConfigError(f"{store.root}/{RUN_JSON} holds no run config")


def split_flat(d: dict[str, Any]) -> tuple[ModelConfig, RunConfig]:
    """A flat mapping of both configs' names (old run.json `config`, jobs/*.yaml `index:`) split in two."""
    if not isinstance(d, dict):
        raise ConfigError(f"settings must be a mapping, got {type(d).__name__}")
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(d) - model_keys - run_keys)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(map(str, unknown))}")
    return (ModelConfig.from_dict({k: v for k, v in d.items() if k in model_keys}),
            RunConfig.from_dict({k: v for k, v in d.items() if k in run_keys}))


@dataclass(frozen=True)
class IndexConfig:
    """A whole `facejob index` configuration: the model and the run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "run": self.run.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IndexConfig":
        """{"model": {...}, "run": {...}}, or the flat form of both (older run.json, YAML)."""
        if isinstance(d, dict) and set(d) <= {"model", "run"} and d:
            return cls(ModelConfig.from_dict(d.get("model") or {}), RunConfig.from_dict(d.get("run") or {}))
        return cls(*split_flat(d))


class ModelMismatch(ConfigError):
    """The output holds faces made with other model settings (`diff`: name → (output's, given))."""

    def __init__(self, root: str, diff: dict[str, tuple[Any, Any]], advice: str):
        self.root, self.diff = root, diff
        what = ", ".join(f"{k}={b!r} (output has {a!r})" for k, (a, b) in diff.items())
        super().__init__(f"{root} was indexed with other settings: {what}; {advice}")


def model_differences(store, model: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """The fingerprint settings in which `model` differs from the faces already in `store`
    (empty for a new output, or one without a readable model record)."""
    from facejob.contract.layout import IMAGES_DIR

    if not store.list(IMAGES_DIR):
        return {}
    try:
        old = ModelConfig.load(store).fingerprint()
    except (FileNotFoundError, ValueError, TypeError):  # no or unreadable record: nothing to compare
        return {}
    new = model.fingerprint()
    return {k: (old[k], new[k]) for k in new if old.get(k) != new[k]}


# ------------------------------------------------------------------ the reducer's defaults
# Clustering defaults: two clusters join when D - CLUSTER_LINK_WEIGHT * L is at most
# CLUSTER_THRESHOLD - CLUSTER_PAIR_MARGIN / sqrt(n_a * n_b), D the RMS distance between their faces
# and L the share of their kNN-graph edges that join them (0..1, the mean over the two), looking
# only at clusters linked by one of each face's CLUSTER_K nearest neighbours (facejob/reduce/linkage.py).
# Two single faces join at D <= 0.46 + 0.2 L, large groups at up to D <= 0.50 + 0.2 L.
# Why L: where many people look alike (on LFW, East Asian politicians) different people lie
# 0.44-0.52 apart while parts of one person elsewhere are 0.52-0.57 apart, so no threshold on D
# alone fits both; parts of one person are each other's nearest neighbours, look-alikes are not.
# On all of LFW (RetinaFace + torch descriptors, bench/lfw_reduce.py; picked on the people of one
# half by name hash, checked on the other): D alone at 0.53 gave pairwise F 0.963 / BCubed F 0.935;
# weight 0.2 at 0.50 gives 0.978 / 0.947 (half A 0.988 / 0.956, half B 0.970 / 0.954). A plateau:
# weight 0.1 at 0.505-0.525, 0.2 at 0.49-0.51, 0.3 at 0.48-0.495 all give BCubed 0.941-0.948. The
# threshold is below dlib's 0.6 pair threshold because it bounds the RMS over all pairs of two groups.
CLUSTER_THRESHOLD = 0.50
CLUSTER_PAIR_MARGIN = 0.04
CLUSTER_LINK_WEIGHT = 0.2
CLUSTER_K = 10
CLUSTER_MAX_EDGE = 0.9   # longer kNN edges never lead to a merge at this threshold; dropped early

# Quality floor (facejob/face/quality.py): only faces with quality >= MIN_QUALITY seed clusters and
# train the SVMs; the others are still clustered (joined to the one cluster they are near) and
# named. From bench/quality_floor.py (all LFW + groups/, labelled/, no_face/, RetinaFace):
#   floor                          0.2     0.3     0.4     0.5
#   LFW subject faces (matchable)  0.03 %  0.15 %  0.46 %  0.96 %   dropped
#   hand-boxed / labelled faces    0.7 %   2.2 %   5.2 %   6.0 %
#   LFW bystander faces            15 %    18 %    21 %    24 %     (small, blurred, cut off)
#   false faces (no_face/, groups)  0 of 1 at any floor (a printed face on a mug, quality 1.0)
# The floor cannot catch false faces (the detector's thresholds do); it sorts out small and
# blurred ones. 0.3 keeps 99.85 % of LFW's matchable faces and 98 % of the group photos'
# hand-boxed ones while leaving out a fifth of the bystanders. Faces of outputs written before
# the quality column have unknown quality and seed.
MIN_QUALITY = 0.3


@dataclass(frozen=True)
class LabelParams:
    """Labelling settings; saved with the models (labels/model.json) and used again by the next
    `facejob label` / `facejob reduce` unless given anew."""

    threshold: float = 0.5        # lowest probability at which a face gets a name
    C: float = 1.0                # SVM regularisation
    pool_size: int = 20_000       # background faces sampled from the archive
    pool_exclude: float = 0.4     # pool skips faces this close (Euclidean) to any labelled face
    extra_per_person: int = 200   # cluster-mates of a person's labelled faces used as positives
    holdout: float = 0.2          # share of the faces held out to fit the sigmoid
    seed: int = 0


@dataclass(frozen=True)
class ReduceConfig(_Settings):
    """What `facejob reduce` does after indexing: search index, clusters, labels, duplicates."""

    cluster_threshold: float | None = setting(None, "largest RMS face distance (less the graph-link term, "
                                                    "see `facejob cluster --help`) at which clusters join; kept "
                                                    "in OUT/clusters.json for later runs (default: the kept one, "
                                                    f"else {CLUSTER_THRESHOLD})", metavar="D")
    cluster_k: int | None = setting(None, "neighbours per face in the clustering graph; kept like the "
                                          f"threshold (default: the kept one, else {CLUSTER_K})", metavar="N")
    label_threshold: float | None = setting(None, "lowest probability that names a face, else `unknown`; saved "
                                                  "with the label models (default: the saved one, else "
                                                  f"{LabelParams().threshold})", metavar="P")
    min_quality: float = setting(MIN_QUALITY, "only faces of quality >= Q (0..1, from face size and chip "
                                              "sharpness) seed clusters and train the SVMs; the others are "
                                              "still clustered and named (0 = all seed)", metavar="Q")
    metric: str = setting("learned", "learned: compare faces through the metric head trained on the curator's "
                                     "labels when OUT has one (labels/metric.npz, kept only when it beats the "
                                     "plain descriptors on held-out people); plain: the descriptors as indexed",
                          choices=("learned", "plain"))
    rebuild_index: bool = setting(False, "build the face search index from scratch instead of extending it")
    labels: str | None = setting(None, "new labels (CSV, folder per person, or an s3:// CSV) added to the ones "
                                       "stored in OUT; none: the stored ones", metavar="LABELS")
    corrections: str | None = setting(None, "corrections.json downloaded from the report page (or an s3:// "
                                            "key): added to OUT/labels/corrections.json, which every later "
                                            "run applies", metavar="FILE")
    # The reducer on Ray (facejob/reduce/ray_reduce.py): given an address or workers, the kNN
    # graph, clustering and predictions run as Ray tasks and actors; else in this one process.
    address: str | None = setting(None, "run the heavy steps on this Ray cluster (auto or host:port; the nightly "
                                        "job passes its own); default: in this process, unless --workers")
    workers: int = setting(0, "Ray tasks at a time for clustering (0 = one per CPU of the cluster); > 0 without "
                              "--address starts a local Ray of that many CPUs", metavar="N")
    shards: int = setting(0, "search shards (Ray actors) the kNN graph is built from (0 = one per worker)",
                          metavar="N")

    def __post_init__(self) -> None:
        _need(self.address is None or (isinstance(self.address, str) and self.address != ""),
              f"address must be auto or host:port, got {self.address!r}")
        for k in ("workers", "shards"):
            _need(_is_int(getattr(self, k)) and getattr(self, k) >= 0,
                  f"{k} must be an integer >= 0, got {getattr(self, k)!r}")
        _need(self.cluster_threshold is None or (_is_num(self.cluster_threshold) and 0 < self.cluster_threshold < 2),
              f"cluster_threshold must be a distance in (0, 2), got {self.cluster_threshold!r}")
        _need(self.cluster_k is None or (_is_int(self.cluster_k) and self.cluster_k >= 1),
              f"cluster_k must be an integer >= 1, got {self.cluster_k!r}")
        _need(self.label_threshold is None or (_is_num(self.label_threshold) and 0 <= self.label_threshold <= 1),
              f"label_threshold must be a probability in [0, 1], got {self.label_threshold!r}")
        _need(_is_num(self.min_quality) and 0 <= self.min_quality <= 1,
              f"min_quality must be in [0, 1], got {self.min_quality!r}")
        _need(isinstance(self.rebuild_index, bool), f"rebuild_index must be true or false, got {self.rebuild_index!r}")
        for k in ("labels", "corrections"):
            _need(getattr(self, k) is None or isinstance(getattr(self, k), str),
                  f"{k} must be a path or an s3:// uri, got {getattr(self, k)!r}")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def options(cls) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are command-line flags, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def _flag_type(f: dataclasses.Field):
    t = str(f.type).removesuffix(" | None")
    if t.startswith("tuple["):
        return lambda s: tuple(x.strip() for x in s.split(",") if x.strip())
    return {"int": int, "float": float}.get(t, str)


def add_options(p, cls, title: str) -> None:
    """One flag per field of a config dataclass (an argparse parser), with the field's help text."""
    g = p.add_argument_group(title)
    defaults = cls()
    for f in options(cls):
        flag, default, meta = "--" + f.name.replace("_", "-"), getattr(defaults, f.name), f.metadata
        if str(f.type) == "bool":
            g.add_argument(flag, action="store_true", default=None, help=meta["help"])
            continue
        kind = _flag_type(f)
        shown = ",".join(default) if isinstance(default, tuple) else default
        g.add_argument(flag, type=kind, default=None, metavar=meta["metavar"],
                       choices=[kind(c) for c in meta["choices"]] if meta["choices"] else None,
                       help=meta["help"] if default is None else f"{meta['help']} (default: {shown})")


def from_args(cls, args, base: Any = None):
    """The config dataclass from the flags given (the others from `base`, else the defaults)."""
    given = {f.name: getattr(args, f.name) for f in options(cls) if getattr(args, f.name, None) is not None}
    return dataclasses.replace(base if base is not None else cls(), **given)
