"""The per-image work, pure and Ray-free: bytes → decode → detect → landmarks → chips → embed → rows.

`FaceModel` is the one object that decides how a face is found and described: built once per
process from a `ModelConfig` (index workers, `search`, `verify`, `label --folder`), it turns
photos into `ImageResult`s and a shard of `ImageRef`s into the two Arrow tables of one output
part. It never raises for a bad image: every input comes back as exactly one images row, with
status ok, no_face or error.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from facejob import backends, decode, quality, schema
from facejob.align import Aligner
from facejob.config import DEFAULT_MAX_PIXELS, ModelConfig
from facejob.detect import Detection
from facejob.embed import embed_chips
from facejob.schema import Reason, Status
from facejob.sources import ImageRef, SourceUnavailable, read_bytes


@dataclass
class FaceRecord:
    face_idx: int
    box: Detection
    landmarks: np.ndarray  # (n, 2) int32
    embedding: np.ndarray | None  # (128,) float32; None until embedded
    sharpness: float = float("nan")
    quality: float = float("nan")

    @property
    def left(self) -> int:
        return self.box.left

    @property
    def top(self) -> int:
        return self.box.top

    @property
    def right(self) -> int:
        return self.box.right

    @property
    def bottom(self) -> int:
        return self.box.bottom

    @property
    def area(self) -> int:
        return (self.right - self.left) * (self.bottom - self.top)


@dataclass
class ImageResult:
    status: Status
    error: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    faces: list[FaceRecord] = field(default_factory=list)


def main_face(areas: Sequence[float]) -> int | None:
    """The one face a photo is "of" (a portrait, a labelled example, a verify query): the
    largest, if it is alone or at least twice the area of the next; else None (ambiguous)."""
    if not len(areas):
        return None
    order = sorted(range(len(areas)), key=lambda i: -areas[i])
    if len(order) > 1 and areas[order[0]] < 2 * areas[order[1]]:
        return None
    return order[0]


def setup_process(threads: int) -> None:
    """Per-process settings for a worker that runs a FaceModel; call before building it.

    OpenMP's default active spin-wait made a 2-thread torch on a busy machine (Ray workers,
    dlib, other jobs on the same cores) run 2-15x slower than 1 thread: a thread spins while
    its partner is descheduled. OpenMP reads OMP_WAIT_POLICY when torch loads, so this must run
    before any backend imports torch; an explicit setting wins. The torch thread count follows
    the CPUs the worker was given (one worker per core by default).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" not in sys.modules:  # torch reads it when a backend loads it
        os.environ["OMP_NUM_THREADS"] = str(threads)
    else:
        sys.modules["torch"].set_num_threads(threads)


def face_id(sha256: str, uri: str, box: Detection) -> str:
    """Stable id: the same photo (bytes and path) and the same box give the same id on every run."""
    key = f"{sha256}|{uri}|{box.left},{box.top},{box.right},{box.bottom}"
    return hashlib.blake2b(key.encode(), digest_size=10).hexdigest()


class FaceModel:
    """Detector, landmarks, chips and embedder for one ModelConfig, loaded once per process.

    `process_bytes` / `process_ref` do one photo, `process_shard` a list of them. `load` (read
    and decode one listed photo) is the seam tests override to make a worker die on a photo.
    """

    builds = 0  # FaceModels built in this process: an index worker builds exactly one

    def __init__(self, config: ModelConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.config = config
        self.max_pixels = max_pixels
        self.detector = backends.build(backends.DETECTORS, config.detector, config)
        self.aligner = Aligner(config.landmarks)
        self.embedder = backends.build(backends.EMBEDDERS, config.embedder, config)
        self.timings: Counter[str] = Counter()
        FaceModel.builds += 1

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def shared(config: ModelConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> "FaceModel":
        """This process's FaceModel for `config`, built on first use (search, verify, labels)."""
        return FaceModel(config, max_pixels)

    def _timed(self, stage: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.timings[stage] += t1 - t0
        return t1

    def find_faces(self, images: list[np.ndarray]) -> list[tuple[list[FaceRecord], np.ndarray]]:
        """Per image: its faces (detected in one call for all images, landmarked) and their
        chips. The records' embeddings are filled in later, in batches across photos."""
        cfg = self.config
        t = time.perf_counter()
        found = self.detector.detect(images, cfg.upsample)
        t = self._timed("detect", t)
        out = []
        for image, boxes in zip(images, found):
            if cfg.min_face_size:
                boxes = [b for b in boxes if b.shorter_side >= cfg.min_face_size]
            points = self.aligner.landmarks(image, boxes)
            chips = self.aligner.chips(image, points)
            sharp = quality.sharpness(chips)
            qual = quality.quality([b.shorter_side for b in boxes], sharp)
            out.append(([FaceRecord(i, b, p, None, float(sh), float(q))
                         for i, (b, p, sh, q) in enumerate(zip(boxes, points, sharp, qual))], chips))
        self._timed("landmarks", t)
        return out

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """(n, 128) descriptors of (n, 150, 150, 3) chips, with the configured TTA."""
        t = time.perf_counter()
        out = embed_chips(self.embedder, chips, self.config.tta)
        self._timed("embed", t)
        return out

    def decode(self, data: bytes) -> tuple[ImageResult, np.ndarray | None]:
        """Status so far (error, or ok with size) and the pixels, if they could be decoded."""
        sha = hashlib.sha256(data).hexdigest()
        t = time.perf_counter()
        try:
            image = decode.decode_image(data, self.max_pixels)
        except decode.DecodeError as e:
            return ImageResult(Status.ERROR, str(e), sha), None
        finally:
            self._timed("decode", t)
        h, w = image.shape[:2]
        return ImageResult(Status.OK, None, sha, w, h), image

    def load(self, ref: ImageRef) -> tuple[ImageResult, np.ndarray | None]:
        """Read and decode one listed photo; unreadable input becomes an error status."""
        if ref.list_error:
            return ImageResult(Status.ERROR, ref.list_error), None
        t = time.perf_counter()
        try:
            data = read_bytes(ref.uri)
        except IsADirectoryError:
            return ImageResult(Status.ERROR, Reason.UNSUPPORTED.error("is a directory")), None
        except SourceUnavailable as e:
            return ImageResult(Status.ERROR, Reason.UNAVAILABLE.error(str(e))), None
        except Exception as e:  # this image fails, not the run
            return ImageResult(Status.ERROR, Reason.UNREADABLE.error(str(e))), None
        self._timed("read", t)
        return self.decode(data)

    def _finish(self, loaded: tuple[ImageResult, np.ndarray | None]) -> ImageResult:
        result, image = loaded
        if image is not None:
            (result.faces, chips), = self.find_faces([image])
            if result.faces:
                for face, emb in zip(result.faces, self.embed(chips)):
                    face.embedding = emb
            else:
                result.status = Status.NO_FACE
        return result

    def process_bytes(self, data: bytes) -> ImageResult:
        """One photo's bytes → status and faces. Bad input becomes an error status, not an exception."""
        return self._finish(self.decode(data))

    def process_ref(self, ref: ImageRef) -> ImageResult:
        """One listed photo → status and faces; unreadable files become an error status too."""
        return self._finish(self.load(ref))

    def process_shard(self, refs: list[ImageRef], shard: str) -> tuple[pa.Table, pa.Table]:
        """The images and faces tables of one output part.

        A background thread reads and decodes the next photos while this one detects (several
        photos per call when the detector batches, e.g. the CNN on a GPU) and embeds the chips
        gathered so far in batches across photos (a GPU wants hundreds at a time).
        """
        device = getattr(self.detector, "device", None)
        detect_batch = 32 if device is not None and device.type == "cuda" else 1
        embed_batch = max(getattr(self.embedder, "batch_size", 0), 16)
        results: list[ImageResult] = []
        decoded: list[tuple[ImageResult, np.ndarray]] = []
        waiting: list[tuple[ImageResult, np.ndarray]] = []

        def detect() -> None:
            for (result, _), (faces, chips) in zip(decoded, self.find_faces([im for _, im in decoded])):
                result.faces = faces
                if faces:
                    waiting.append((result, chips))
                else:
                    result.status = Status.NO_FACE
            decoded.clear()

        def embed() -> None:
            if waiting:
                embeddings = iter(self.embed(np.concatenate([c for _, c in waiting])))
                for result, _ in waiting:
                    for face in result.faces:
                        face.embedding = next(embeddings)
            waiting.clear()

        for result, image in _prefetch(self.load, refs, depth=max(8, 2 * detect_batch)):
            results.append(result)
            if image is not None:
                decoded.append((result, image))
            if len(decoded) >= detect_batch:
                detect()
            if sum(len(c) for _, c in waiting) >= embed_batch:
                embed()
        detect()
        embed()
        return shard_tables(refs, results, shard, self.detector.name, self.embedder.name)


def _prefetch(fn, items: list, depth: int):
    """Yield fn(item) for each item in order, computing up to `depth` ahead on one background thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="facejob-prepare") as pool:
        futures: deque = deque()
        for item in items:
            futures.append(pool.submit(fn, item))
            if len(futures) > depth:
                yield futures.popleft().result()
        while futures:
            yield futures.popleft().result()


def shard_tables(refs: list[ImageRef], results: list[ImageResult], shard: str, detector: str,
                 embedder: str) -> tuple[pa.Table, pa.Table]:
    images = {
        "uri": [r.uri for r in refs],
        "size": [r.size for r in refs],
        "mtime": [r.mtime for r in refs],
        "etag": [r.etag for r in refs],
        "sha256": [x.sha256 for x in results],
        "width": [x.width for x in results],
        "height": [x.height for x in results],
        "status": [Status(x.status).value for x in results],
        "error": [x.error for x in results],
        "n_faces": [len(x.faces) for x in results],
        "shard": [shard] * len(refs),
    }
    faces: dict[str, list] = {name: [] for name in schema.FACES.names}
    for ref, res in zip(refs, results):
        for f in res.faces:
            faces["face_id"].append(face_id(res.sha256, ref.uri, f.box))
            faces["uri"].append(ref.uri)
            faces["sha256"].append(res.sha256)
            faces["face_idx"].append(f.face_idx)
            faces["left"].append(f.box.left)
            faces["top"].append(f.box.top)
            faces["right"].append(f.box.right)
            faces["bottom"].append(f.box.bottom)
            faces["det_score"].append(f.box.score)
            faces["landmarks"].append(f.landmarks.reshape(-1).tolist())
            faces["embedding"].append(f.embedding)
            faces["sharpness"].append(f.sharpness)
            faces["quality"].append(f.quality)
            faces["detector"].append(detector)
            faces["embedder"].append(embedder)
            faces["shard"].append(shard)
    emb = faces.pop("embedding")
    flat = np.asarray(emb, dtype=np.float32).reshape(-1)
    emb_array = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), schema.EMBEDDING_DIM)
    arrays = [emb_array if n == "embedding" else pa.array(faces[n], schema.FACES.field(n).type)
              for n in schema.FACES.names]
    return (pa.table(images, schema=schema.IMAGES), pa.Table.from_arrays(arrays, schema=schema.FACES))
