"""Camera originals: the working copy (JPEG DCT scaling), boxes mapped back to original pixels,
bounded memory, and every camera format (AVIF, JPEG XL, DNG raw, 10-bit HEIC, motion photos,
16-bit, Display P3) made at test time from a real face photo."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import dlib
import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

import facejob
from facejob.image import decode
from facejob.config import DEFAULT_MAX_PIXELS, EXTENSIONS, IndexConfig, ModelConfig, RunConfig
from facejob.indexing.pipeline import FaceModel, working_scale
from tests.formats import write_all
from tests.photos import face_image
from tests.ray_cluster import joined

REPO = Path(__file__).resolve().parents[1]
CANVAS = (6000, 4000)          # a 24 MP camera photo
OFFSET = (3517, 1283)          # where the face photo is pasted (odd, so no scale divides it)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def face(data_dir) -> Image.Image:
    return face_image(data_dir, 960)   # a face of ~260 px: ~50 px in the 1200 px working copy


@pytest.fixture(scope="module")
def canvas_jpeg(data_dir, face) -> bytes:
    """A 24 MP photo of a park (upscaled) with the face photo pasted at OFFSET."""
    park = Image.open(data_dir / "no_face/park.jpg").convert("RGB").resize(CANVAS, Image.BILINEAR)
    park.paste(face, OFFSET)
    return _jpeg(park)


def test_24mp_jpeg_decoded_at_reduced_scale(canvas_jpeg):
    photo = decode.open_photo(canvas_jpeg, DEFAULT_MAX_PIXELS)
    assert (photo.width, photo.height) == CANVAS
    scale = working_scale(ModelConfig(), photo.width, photo.height)
    work = photo.level(scale)
    assert work.pixels.shape == (800, 1200, 3) and abs(work.sx - 1200 / 6000) < 1e-9
    # libjpeg's DCT scaling decoded it at 1/4 (1500x1000, 4.5 MB), never at full size (72 MB):
    # a fresh process's peak memory grows by far less than one full-size copy.
    # decode.py alone (numpy + Pillow), not the facejob package, whose imports peak higher. Peak
    # memory is the kernel's VmHWM of the new process image (ru_maxrss would start at pytest's).
    code = ("import importlib.util, resource, sys; spec = importlib.util.spec_from_file_location('d', sys.argv[3]); "
            "decode = sys.modules['d'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(decode); "
            "data = open(sys.argv[1], 'rb').read(); "
            "hwm = lambda: int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]); "
            "p = decode.open_photo(data, 10**9); before = hwm(); p.level(float(sys.argv[2])); print(hwm() - before)")
    path = REPO / ".pytest_cache" / "canvas.jpg"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(canvas_jpeg)
    grew = {s: int(subprocess.run([sys.executable, "-c", code, str(path), str(s), str(REPO / "facejob/image/decode.py")],
                                  capture_output=True, text=True, check=True, cwd=REPO).stdout) / 1024
            for s in (scale, 1.0)}
    path.unlink()
    assert grew[1.0] > 60 and grew[scale] < 35, grew   # MiB


def test_boxes_and_landmarks_map_back_to_original_pixels(canvas_jpeg, face):
    """The face is found where it was pasted, in original pixels, as dlib finds it in the face
    photo alone (full resolution, upsample 1) shifted by the paste offset."""
    buf = io.BytesIO()
    face.save(buf, "PNG")
    model = FaceModel(ModelConfig())
    alone = model.process_bytes(buf.getvalue()).faces
    assert len(alone) == 1
    result = model.process_bytes(canvas_jpeg)
    assert (result.width, result.height) == CANVAS and len(result.faces) == 1
    got, want = result.faces[0], alone[0]
    size = want.right - want.left
    ox, oy = OFFSET
    # The box comes from a 3.75x smaller working copy, whose HOG pyramid has coarser steps.
    for g, w in ((got.left, want.left + ox), (got.right, want.right + ox), (got.top, want.top + oy),
                 (got.bottom, want.bottom + oy)):
        assert abs(g - w) <= 0.08 * size, (got.box, want.box, OFFSET)
    # Landmarks come from a finer decode (the face is small in the working copy): a few px.
    err = np.abs(got.landmarks - (want.landmarks + np.array(OFFSET))).max()
    assert err <= 4, (got.landmarks, want.landmarks)
    assert np.linalg.norm(got.embedding - want.embedding) < 0.1   # the same face


def test_lfw_size_photos_keep_full_resolution():
    cfg = ModelConfig()
    assert working_scale(cfg, 250, 250) == 1.0 == working_scale(cfg, 2 * cfg.work_size, 1000)
    assert working_scale(cfg, 4 * cfg.work_size, 100) == 0.25
    assert working_scale(ModelConfig(smallest_face=80), 4 * cfg.work_size, 100) == 0.5   # 40 px at upsample 1
    assert working_scale(ModelConfig(work_size=0), 10_000, 10_000) == 1.0


def test_peak_memory_of_a_50mp_photo_is_bounded(tmp_path, data_dir, face):
    """A worker's peak RSS on a 50 MP camera JPEG with a face stays under the documented 1.5 GB
    (models included)."""
    big = Image.open(data_dir / "no_face/park.jpg").convert("RGB").resize((8660, 5773), Image.BILINEAR)
    big.paste(face.resize((960, 1200)), (5000, 2000))
    path = tmp_path / "50mp.jpg"
    big.save(path, quality=90)
    del big
    code = ("import resource, sys; from facejob.config import ModelConfig; from facejob.indexing.pipeline import FaceModel; "
            "r = FaceModel(ModelConfig()).process_bytes(open(sys.argv[1], 'rb').read()); "
            "print(r.status.value, len(r.faces), r.width * r.height, int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout.split()
    status, n, pixels, rss_kib = out[0], int(out[1]), int(out[2]), int(out[3])
    assert status == "ok" and n == 1 and pixels == 8660 * 5773
    assert rss_kib / 1024 < 1536, f"peak RSS {rss_kib / 1024:.0f} MiB"


# ------------------------------------------------------------------------------- formats

@pytest.fixture(scope="module")
def formats(data_dir, tmp_path_factory):
    face = face_image(data_dir, 400).crop((0, 40, 320, 440))   # 320x400, the face right of centre
    return face, write_all(data_dir, tmp_path_factory.mktemp("formats"), face)


@pytest.fixture(scope="module")
def formats_indexed(formats, ray_cluster, tmp_path_factory):
    face, files = formats
    out = tmp_path_factory.mktemp("formats_out")
    with joined(ray_cluster):
        summary = facejob.index([str(next(iter(files.values())).parent)], str(out), IndexConfig(run=RunConfig(workers=1)),
                                progress=False)
    return summary, out


def test_each_format_gives_one_ok_row_with_its_face(formats, formats_indexed):
    face, files = formats
    summary, out = formats_indexed
    images = {Path(r["uri"]).name: r for r in ds.dataset(out / "images").to_table().to_pylist()}
    faces = {Path(r["uri"]).name: r for r in ds.dataset(out / "faces").to_table().to_pylist()}
    assert sorted(images) == sorted(files) and summary.counts["skipped_by_extension"] == 0
    for name, row in images.items():
        assert (row["status"], row["n_faces"], row["width"], row["height"]) == ("ok", 1, 320, 400), (name, row)
        assert row["phash"] is not None
    # The face is where it is in the photo; in the DNG whose preview is mirrored, mirrored: the
    # preview was used, not the raw data.
    centre = {n: (f["left"] + f["right"]) / 2 for n, f in faces.items()}
    plain = centre["face.avif"]
    for name, x in centre.items():
        expect = 320 - 1 - plain if name == "face_preview.dng" else plain
        assert abs(x - expect) < 12, (name, x, expect)
    assert abs(plain - (320 - 1 - plain)) > 60   # the face is off-centre, so mirroring shows
    run = json.loads((out / "run.json").read_text())
    assert run["megapixels"] > 0 and run["worker_peak_rss_mb"] > 0 and run["timings"]["detect_worker_s"] > 0


@pytest.mark.parametrize("name", ["face.avif", "face.jxl", "face_10bit.heic", "motion.jpg", "motion.heic",
                                  "face_48bit.png", "face_p3.jpg", "face_hdr_pq.heic"])
def test_formats_decode_to_the_same_srgb_pixels(formats, name):
    face, files = formats
    rgb = decode.decode_image(files[name].read_bytes(), DEFAULT_MAX_PIXELS)
    assert rgb.shape == (400, 320, 3)
    assert np.abs(rgb.astype(float) - np.asarray(face, float)).mean() < 3.5, "colours or levels are off"


def test_display_p3_is_converted_not_shown_as_is(formats):
    """P3's red primary is more saturated: the stored numbers of a skin tone have less red than
    sRGB's; converted through the ICC profile they match the sRGB photo again."""
    face, files = formats
    as_stored = np.asarray(Image.open(files["face_p3.jpg"]).convert("RGB"), float)
    ours = decode.decode_image(files["face_p3.jpg"].read_bytes(), DEFAULT_MAX_PIXELS).astype(float)
    red = lambda a: float((a - np.asarray(face, float))[..., 0].mean())  # noqa: E731
    assert red(as_stored) < -2 and abs(red(ours)) < 0.5, (red(as_stored), red(ours))


def test_hdr_is_tone_mapped_not_shown_as_code_values(formats):
    """PQ code values shown as they are make a washed-out grey picture; mapped to sRGB (reference
    white to SDR white) they are the photo again (test_formats_decode_to_the_same_srgb_pixels)."""
    face, files = formats
    as_coded = np.asarray(Image.open(files["face_hdr_pq.heic"]).convert("RGB"), float)
    assert np.abs(as_coded - np.asarray(face, float)).mean() > 20


def test_raw_preview_used_when_large_enough_else_half_size_demosaic(formats):
    face, files = formats
    read = lambda n: decode.open_photo(files[n].read_bytes(), DEFAULT_MAX_PIXELS)  # noqa: E731
    with_preview, thumb_only, bare = read("face_preview.dng"), read("face_thumb_only.dng"), read("face_raw.dng")
    for p in (with_preview, thumb_only, bare):
        assert (p.format, p.width, p.height) == ("RAW", 320, 400)
    mirrored = np.asarray(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), float)
    assert np.abs(with_preview.level(1.0).pixels - mirrored).mean() < 3.5
    for p in (thumb_only, bare):   # an 80 px thumbnail is not enough: the raw data is demosaiced
        level = p.level(1.0)
        assert level.pixels.shape == (200, 160, 3) and level.sx == 0.5
        small = np.asarray(face.resize((160, 200), Image.BOX), float)
        assert np.abs(level.pixels - small).mean() < 12   # sRGB, white-balanced: the same picture


def test_new_extensions_are_listed_by_default():
    ext = EXTENSIONS
    for e in (".avif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".rw2", ".orf", ".heic"):
        assert e in ext


def test_damaged_raw_is_a_corrupt_status(formats):
    _, files = formats
    data = files["face_raw.dng"].read_bytes()
    with pytest.raises(decode.DecodeError) as e:
        decode.open_photo(data[:2000], DEFAULT_MAX_PIXELS).level(0.5)
    assert e.value.reason in (decode.CORRUPT, decode.UNSUPPORTED)


def test_pillow_global_limit_never_changes(formats, data_dir):
    """decode reads sizes with its own per-call limit: Pillow's process-wide MAX_IMAGE_PIXELS,
    which other threads' decoders rely on, stays what it was, even for a photo above it."""
    before = Image.MAX_IMAGE_PIXELS
    big = Image.new("L", (12_000, 8_000))   # 96 MP: over Pillow's warning limit of 89 MP
    buf = io.BytesIO()
    big.save(buf, "PNG")
    photo = decode.open_photo(buf.getvalue(), 100_000_000)
    assert (photo.width, photo.height) == (12_000, 8_000) and Image.MAX_IMAGE_PIXELS == before
    with pytest.raises(decode.DecodeError) as e:
        decode.open_photo(buf.getvalue(), 50_000_000)
    assert e.value.reason == decode.TOO_LARGE and Image.MAX_IMAGE_PIXELS == before
