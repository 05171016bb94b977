"""The per-image work, pure and Ray-free: bytes → decode → detect → landmarks → chips → embed → rows.

`Pipeline` owns the loaded models (load once, reuse for every image). `process_shard` turns a list
of `ImageRef`s into the two Arrow tables of one output part; it never raises for a bad image:
every input comes back as exactly one images row, with status ok, no_face or error.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from facejob import decode, quality, schema
from facejob.align import Aligner, shape_points
from facejob.config import IndexConfig
from facejob.detect import Detection, make_detector
from facejob.embed import make_embedder
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


@dataclass
class ImageResult:
    status: str
    error: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    faces: list[FaceRecord] = field(default_factory=list)


def face_id(sha256: str, uri: str, box: Detection) -> str:
    """Stable id: the same photo (bytes and path) and the same box give the same id on every run."""
    key = f"{sha256}|{uri}|{box.left},{box.top},{box.right},{box.bottom}"
    return hashlib.blake2b(key.encode(), digest_size=10).hexdigest()


class Pipeline:
    """Models for one IndexConfig, loaded once; call `process_bytes` or `process_shard`."""

    def __init__(self, config: IndexConfig) -> None:
        self.config = config
        self.detector = make_detector(config)
        self.aligner = Aligner(config.landmarks)
        self.embedder = make_embedder(config)
        self.timings: Counter[str] = Counter()

    def _timed(self, stage: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.timings[stage] += t1 - t0
        return t1

    def _find_faces(self, images: list[np.ndarray]) -> list[tuple[list[FaceRecord], np.ndarray]]:
        """Detect (in one call for all images), landmark and cut chips. The records' embeddings
        are filled in later, in batches."""
        cfg = self.config
        t = time.perf_counter()
        found = self.detector.detect(images, cfg.upsample)
        t = self._timed("detect", t)
        out = []
        for image, boxes in zip(images, found):
            if cfg.min_face_size:
                boxes = [b for b in boxes if b.shorter_side >= cfg.min_face_size]
            shapes = self.aligner.landmarks(image, boxes)
            chips = self.aligner.chips(image, shapes)
            sharp = quality.sharpness(chips)
            qual = quality.quality([b.shorter_side for b in boxes], sharp)
            out.append(([FaceRecord(i, b, shape_points(s), None, float(sh), float(q))
                         for i, (b, s, sh, q) in enumerate(zip(boxes, shapes, sharp, qual))], chips))
        self._timed("landmarks", t)
        return out

    def _embed(self, chips: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = self.embedder.embed(chips)
        self._timed("embed", t)
        return out

    def _decode(self, data: bytes) -> tuple[ImageResult, np.ndarray | None]:
        """Status so far (error, or ok with size) and the pixels, if they could be decoded."""
        sha = hashlib.sha256(data).hexdigest()
        t = time.perf_counter()
        try:
            image = decode.decode_image(data, self.config.max_pixels)
        except decode.DecodeError as e:
            return ImageResult(schema.STATUS_ERROR, str(e), sha), None
        finally:
            self._timed("decode", t)
        h, w = image.shape[:2]
        return ImageResult(schema.STATUS_OK, None, sha, w, h), image

    def _load(self, ref: ImageRef) -> tuple[ImageResult, np.ndarray | None]:
        if ref.list_error:
            return ImageResult(schema.STATUS_ERROR, ref.list_error), None
        _crash_hook(ref.uri)
        t = time.perf_counter()
        try:
            data = read_bytes(ref.uri)
        except IsADirectoryError:
            return ImageResult(schema.STATUS_ERROR, f"{decode.UNSUPPORTED}: is a directory"), None
        except SourceUnavailable as e:
            return ImageResult(schema.STATUS_ERROR, f"{decode.UNAVAILABLE}: {e}"), None
        except Exception as e:  # this image fails, not the run
            return ImageResult(schema.STATUS_ERROR, f"{decode.UNREADABLE}: {e}"), None
        self._timed("read", t)
        return self._decode(data)

    def _process_one(self, loaded: tuple[ImageResult, np.ndarray | None]) -> ImageResult:
        result, image = loaded
        if image is not None:
            (result.faces, chips), = self._find_faces([image])
            if result.faces:
                for face, emb in zip(result.faces, self._embed(chips)):
                    face.embedding = emb
            else:
                result.status = schema.STATUS_NO_FACE
        return result

    def process_image(self, image: np.ndarray) -> list[FaceRecord]:
        """Faces of one decoded RGB image, embedded together in one batch."""
        return self._process_one((ImageResult(schema.STATUS_OK), image)).faces

    def process_bytes(self, data: bytes) -> ImageResult:
        """One photo's bytes → status and faces. Bad input becomes an error status, not an exception."""
        return self._process_one(self._decode(data))

    def process_ref(self, ref: ImageRef) -> ImageResult:
        """One listed photo → status and faces; unreadable files become an error status too."""
        return self._process_one(self._load(ref))

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
            for (result, _), (faces, chips) in zip(decoded, self._find_faces([im for _, im in decoded])):
                result.faces = faces
                if faces:
                    waiting.append((result, chips))
                else:
                    result.status = schema.STATUS_NO_FACE
            decoded.clear()

        def embed() -> None:
            if waiting:
                embeddings = iter(self._embed(np.concatenate([c for _, c in waiting])))
                for result, _ in waiting:
                    for face in result.faces:
                        face.embedding = next(embeddings)
            waiting.clear()

        for result, image in _prefetch(self._load, refs, depth=max(8, 2 * detect_batch)):
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
        "status": [x.status for x in results],
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


def _crash_hook(uri: str) -> None:
    """Test hook: FACEJOB_TEST_CRASH_ON=<substring> kills this worker process on matching images,
    to simulate a decoder that segfaults on a poisoned file."""
    needle = os.environ.get("FACEJOB_TEST_CRASH_ON")
    if needle and needle in uri:
        os._exit(139)
