"""All settings of a facejob run, in one typed place. The CLI flags and jobs/*.yaml mirror these."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

DETECTORS = ("hog", "cnn")
EMBEDDERS = ("dlib", "torch")
LANDMARKS = (5, 68)
TTA = ("none", "flip")

# Images above this many pixels are refused before decoding (decompression-bomb guard).
# 100 MP covers every phone and most DSLR photos; panoramas above it get a `too_large` reason.
DEFAULT_MAX_PIXELS = 100_000_000

# Detection runs on a working copy with this long side. bench/camera.py's sweep (12 camera photos,
# 56 labelled faces): 800, 1024 and 1200 px all find the 56 faces the full-size loop finds (1600
# missed 2); 1200 is the smallest that keeps every photo up to 2400 px (2 x 1200: web images, the
# test suite's 2280 px group photo) at full resolution.
DEFAULT_WORK_SIZE = 1200

RAW_EXTENSIONS = (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".rw2",
                  ".orf", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".mef", ".mos", ".mrw", ".rwl")


class ConfigError(ValueError):
    """A setting has a value facejob cannot use; the message says which and why."""


@dataclass(frozen=True)
class IndexConfig:
    """How `facejob index` detects, aligns and embeds faces, and how it runs.

    detector: "hog" (dlib HOG + linear SVM, CPU) or "cnn" (dlib's MMOD CNN; slow on CPU).
    upsample: times the working copy is doubled before detection (finds faces down to ~40
        working-copy px at 1).
    work_size: detection runs on a working copy of the photo whose long side is this many pixels
        (JPEG: decoded straight at a reduced scale); photos smaller than that are used as they
        are. Landmarks and chips come from pixels where the face is at least 100 px (full
        resolution only for faces small in the working copy). Boxes and landmarks are always in
        original-photo pixels. 0 = detect on the full photo.
    smallest_face: make the working copy large enough to find faces down to this many pixels of
        the original photo (0 = no floor: the smallest face found is about
        80 / 2**upsample / (work_size / long side) original px: 200 px on a 6000 px photo).
    min_face_size: drop detections whose shorter side is below this many pixels (0 keeps all).
    landmarks: 5 or 68 point shape predictor used to align the 150x150 chip.
    embedder: "dlib" (reference, one face at a time) or "torch" (batched port of the same net).
    device: "auto" picks cuda when available for the torch backends, else cpu.
    batch_size: faces per torch forward pass (0 = pick per device).
    tta: "flip" averages the descriptor of the chip and of its mirror image.
    max_pixels: refuse images with more pixels than this (decompression-bomb guard).
    workers: parallel Ray tasks, each in a worker process that loads the models once
        (0 = one per CPU Ray sees, or one per GPU with gpus_per_worker).
    cpus_per_worker, gpus_per_worker: Ray resources each task asks for (GPU clusters: 1 GPU each).
    shard_size: images per Ray task and per output Parquet part (0 = about 4 shards per worker,
        10 to 500 images each).
    address: join this Ray cluster ("auto" or host:port); None starts a local Ray.
    force: redo images already in the output.
    """

    detector: Literal["hog", "cnn"] = "hog"
    upsample: int = 1
    min_face_size: int = 0
    landmarks: Literal[5, 68] = 5
    embedder: Literal["dlib", "torch"] = "dlib"
    device: str = "auto"
    batch_size: int = 0
    tta: Literal["none", "flip"] = "none"
    work_size: int = DEFAULT_WORK_SIZE
    smallest_face: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int = 0
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    shard_size: int = 0
    address: str | None = None
    force: bool = False
    extensions: tuple[str, ...] = field(
        default=(".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif",
                 ".jxl") + RAW_EXTENSIONS
    )

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(self.detector in DETECTORS, f"detector must be one of {DETECTORS}, got {self.detector!r}")
        need(self.embedder in EMBEDDERS, f"embedder must be one of {EMBEDDERS}, got {self.embedder!r}")
        need(self.landmarks in LANDMARKS, f"landmarks must be 5 or 68, got {self.landmarks!r}")
        need(self.tta in TTA, f"tta must be one of {TTA}, got {self.tta!r}")
        need(isinstance(self.upsample, int) and 0 <= self.upsample <= 4,
             f"upsample must be an integer 0..4, got {self.upsample!r}")
        need(isinstance(self.min_face_size, int) and self.min_face_size >= 0,
             f"min_face_size must be >= 0 pixels, got {self.min_face_size!r}")
        need(isinstance(self.work_size, int) and self.work_size >= 0,
             f"work_size must be >= 0 pixels (0 = full size), got {self.work_size!r}")
        need(isinstance(self.smallest_face, int) and self.smallest_face >= 0,
             f"smallest_face must be >= 0 pixels (0 = set by work_size), got {self.smallest_face!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 0,
             f"batch_size must be >= 0, got {self.batch_size!r}")
        need(isinstance(self.max_pixels, int) and self.max_pixels > 0,
             f"max_pixels must be > 0, got {self.max_pixels!r}")
        need(isinstance(self.workers, int) and self.workers >= 0,
             f"workers must be >= 0, got {self.workers!r}")
        need(self.cpus_per_worker > 0, f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        need(self.gpus_per_worker >= 0, f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        need(isinstance(self.shard_size, int) and self.shard_size >= 0,
             f"shard_size must be >= 0 (0 = auto), got {self.shard_size!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extensions"] = list(self.extensions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IndexConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        d = dict(d)
        if "extensions" in d:
            d["extensions"] = tuple(d["extensions"])
        return cls(**d)

    def model_fingerprint(self) -> dict[str, Any]:
        """The settings that change which faces and descriptors come out. (The embedder is not
        one of them: the torch port reproduces dlib's descriptors to 1e-6, so both can share
        an output.)"""
        return {k: getattr(self, k) for k in ("detector", "upsample", "min_face_size", "landmarks", "tta",
                                                   "work_size", "smallest_face")}
