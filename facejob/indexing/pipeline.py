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

from facejob.face import backends, quality
from facejob.image import decode, phash
from facejob.contract import schema
from facejob.face.align import CHIP_FACE_PX, Aligner
from facejob.config import DEFAULT_MAX_PIXELS, ModelConfig
from facejob.face.detect import Detection
from facejob.face.embed import embed_chips
from facejob.contract.schema import Reason, Status
from facejob.io.sources import ImageRef, SourceUnavailable, read_bytes


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
    phash: int | None = None
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


# Working copies up to this many pixels are detected in batches on a CPU (see process_shard).
BATCH_PIXELS = 640 * 640

# The smallest face dlib's detectors find without upsampling (their 80x80 px window), in pixels of
# the image they run on.
DETECTOR_WINDOW = 80


@dataclass
class Decoded:
    """A photo ready for detection: its working copy, and the photo to decode finer levels from
    (None for pixels handed in already decoded: those are all there is)."""

    work: decode.Level
    photo: decode.Photo | None = None


def working_scale(config: ModelConfig, width: int, height: int) -> float:
    """Scale of the working copy detection runs on (1.0 = the photo as it is).

    Photos up to twice `work_size` keep their full resolution: reducing them would save less
    than 4x detector time (and no JPEG decode time) while losing their smallest faces. Larger
    ones are reduced to `work_size`, unless `smallest_face` asks for more.
    """
    long_side = max(width, height)
    if config.work_size <= 0 or long_side <= 2 * config.work_size:
        return 1.0
    floor = DETECTOR_WINDOW / 2 ** config.upsample / config.smallest_face if config.smallest_face else 0.0
    return min(1.0, max(config.work_size / long_side, floor))


def _rescaled(box: Detection, fx, fy) -> Detection:
    """`box` with every x through `fx` and y through `fy`: its edges (dlib convention: right/bottom
    inclusive), and the detector's own predictor box and landmarks when it has them."""
    def edges(left, top, right, bottom):
        return round(fx(left)), round(fy(top)), round(fx(right + 1)) - 1, round(fy(bottom + 1)) - 1

    points = (tuple((fx if i % 2 == 0 else fy)(v) for i, v in enumerate(box.landmarks))
              if box.landmarks is not None else None)
    predictor_box = edges(*box.predictor_box) if box.predictor_box is not None else None
    return Detection(*edges(box.left, box.top, box.right, box.bottom), box.score, points, predictor_box)


def to_original(box: Detection, level: decode.Level) -> Detection:
    """A box found in `level` in original-photo pixels."""
    if level.sx == 1.0 and level.sy == 1.0:
        return box
    return _rescaled(box, lambda x: x / level.sx, lambda y: y / level.sy)


def to_level(box: Detection, level: decode.Level) -> Detection:
    """An original-pixel box in `level`'s pixels."""
    if level.sx == 1.0 and level.sy == 1.0:
        return box
    return _rescaled(box, lambda x: x * level.sx, lambda y: y * level.sy)


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

    def find_faces(self, images: list[Decoded]) -> list[tuple[list[FaceRecord], np.ndarray]]:
        """Per image: its faces (detected on the working copies in one call for all images, then
        landmarked) and their chips, from pixels where each face is large enough. Boxes and
        landmarks are in original pixels; the embeddings are filled in later, in batches."""
        cfg = self.config
        t = time.perf_counter()
        found = self.detector.detect([d.work.pixels for d in images], cfg.upsample)
        t = self._timed("detect", t)
        out = []
        for d, boxes in zip(images, found):
            boxes = [to_original(b, d.work) for b in boxes]
            if cfg.min_face_size:
                boxes = [b for b in boxes if b.shorter_side >= cfg.min_face_size]
            out.append(self._align(d, boxes))
        self._timed("landmarks", t)
        return out

    def _align(self, d: Decoded, boxes: list[Detection]) -> tuple[list[FaceRecord], np.ndarray]:
        """Landmarks and chips of each face (original-pixel boxes), each from the coarsest level
        where the face is at least CHIP_FACE_PX: the working copy, else a finer decode (one per
        scale needed, so a face's chip never depends on the other faces in the photo)."""
        if not boxes:
            return [], self.aligner.chips(d.work.pixels, [])
        levels = {d.work.scale: d.work}
        finest = d.photo.max_scale if d.photo is not None else d.work.scale
        records: list[FaceRecord | None] = [None] * len(boxes)
        chips: list[np.ndarray | None] = [None] * len(boxes)
        by_level: dict[float, list[int]] = {}
        for i, b in enumerate(boxes):
            need = min(finest, CHIP_FACE_PX / b.shorter_side)
            key = d.work.scale if need <= d.work.scale else _draft_step(need, finest)
            by_level.setdefault(key, []).append(i)
        for key, idx in sorted(by_level.items()):
            if key not in levels:
                t = time.perf_counter()
                levels[key] = d.photo.level(key)
                self._timed("decode_fine", t)
            level = levels[key]
            points = self.aligner.landmarks(level.pixels, [to_level(boxes[i], level) for i in idx])
            for i, p, chip in zip(idx, points, self.aligner.chips(level.pixels, points)):
                if level.sx != 1.0 or level.sy != 1.0:
                    p = np.rint(p / np.array([level.sx, level.sy])).astype(np.int32)
                records[i] = FaceRecord(i, boxes[i], p, None)
                chips[i] = chip
        stacked = np.stack(chips)
        sharp = quality.sharpness(stacked)
        for record, sh, q in zip(records, sharp, quality.quality([b.shorter_side for b in boxes], sharp)):
            record.sharpness, record.quality = float(sh), float(q)
        return records, stacked

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """(n, 128) descriptors of (n, 150, 150, 3) chips, with the configured TTA."""
        t = time.perf_counter()
        out = embed_chips(self.embedder, chips, self.config.tta)
        self._timed("embed", t)
        return out

    def decode(self, data: bytes) -> tuple[ImageResult, Decoded | None]:
        """Status so far (error, or ok with size and perceptual hash) and the working copy, if
        the photo could be decoded."""
        sha = hashlib.sha256(data).hexdigest()
        t = time.perf_counter()
        try:
            photo = decode.open_photo(data, self.max_pixels)
            work = photo.level(working_scale(self.config, photo.width, photo.height))
        except decode.DecodeError as e:
            return ImageResult(Status.ERROR, str(e), sha), None
        finally:
            self._timed("decode", t)
        return ImageResult(Status.OK, None, sha, photo.width, photo.height, phash.phash(work.pixels)), Decoded(work, photo)

    def load(self, ref: ImageRef) -> tuple[ImageResult, Decoded | None]:
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

    def _finish(self, loaded: tuple[ImageResult, Decoded | None]) -> ImageResult:
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

        A background thread reads and decodes the next photos while this one detects several
        photos per detector pass (as many as the detector takes: RetinaFace 8 on CPU, 32 on a
        GPU; on a CPU fewer rather than wait for the next decode) and embeds the faces found so
        far in full batches across photos (the embedder's batch size; the remainder waits for
        the next photos' faces).
        """
        on_gpu = getattr(getattr(self.detector, "device", None), "type", None) == "cuda"
        detect_batch = getattr(self.detector, "batch_size", 0) or (32 if on_gpu else 1)
        embed_batch = max(getattr(self.embedder, "batch_size", 0), 16)
        results: list[ImageResult] = []
        decoded: list[tuple[ImageResult, Decoded]] = []
        faces: list[FaceRecord] = []     # found, waiting for their descriptors
        chips: list[np.ndarray] = []     # their chips, one array per photo

        def detect() -> None:
            for (result, _), (found, c) in zip(decoded, self.find_faces([im for _, im in decoded])):
                result.faces = found
                if found:
                    faces.extend(found)
                    chips.append(c)
                else:
                    result.status = Status.NO_FACE
            decoded.clear()

        def embed(everything: bool) -> None:
            n = len(faces) if everything else len(faces) // embed_batch * embed_batch
            if n:
                stacked = np.concatenate(chips) if len(chips) > 1 else chips[0]
                for face, emb in zip(faces[:n], self.embed(stacked[:n])):
                    face.embedding = emb
                del faces[:n]
                chips[:] = [stacked[n:]] if faces else []

        # Two photos ahead of the batch being gathered (the next decode overlaps this detection).
        # On a CPU a large photo (over BATCH_PIXELS) is detected alone: batching gains nothing
        # there, and one decoded in full is held until aligned (300 MB at the 100 MP guard).
        depth = 2 * detect_batch if on_gpu else 2
        for (result, image), next_ready in _prefetch(self.load, refs, depth=depth):
            results.append(result)
            if image is None:
                continue
            alone = not on_gpu and image.work.pixels.shape[0] * image.work.pixels.shape[1] > BATCH_PIXELS
            if alone:
                detect()
            decoded.append((result, image))
            if alone or len(decoded) >= detect_batch or not (on_gpu or next_ready):
                detect()
                if len(faces) >= embed_batch:
                    embed(everything=False)
        detect()
        embed(everything=True)
        return shard_tables(refs, results, shard, self.detector.name, self.embedder.name)


def _draft_step(need: float, finest: float) -> float:
    """The scale to decode a face's finer level at: `need` rounded up to finest / 2**k, the
    steps JPEG decodes at directly (no resize), so the level depends only on the face itself."""
    step = finest
    while step / 2 >= need:
        step /= 2
    return step


def _prefetch(fn, items: list, depth: int):
    """Yield (fn(item), whether the next one is computed already) for each item in order,
    computing up to `depth` ahead on one background thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="facejob-prepare") as pool:
        futures: deque = deque()
        for item in items:
            futures.append(pool.submit(fn, item))
            if len(futures) > depth:
                value = futures.popleft().result()
                yield value, futures[0].done()
        while futures:
            value = futures.popleft().result()
            yield value, bool(futures) and futures[0].done()


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
        "phash": [x.phash for x in results],
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
