"""Any file name: bytes that are not UTF-8, newlines, NFC and NFD twins, 240-byte names, "%41"
in a name, and a symlink loop; each photo indexed once, read back from its uri, rerun idle."""
from __future__ import annotations

import os
import random
import unicodedata
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pyarrow.dataset as ds
import pytest

import facejob
from facejob.indexing import plan as planning
from facejob.config import IndexConfig, RunConfig
from facejob.io.sources import ImageRef, list_images, path_to_uri, read_bytes, uri_to_path
from tests.photos import face_image

CONFIG = IndexConfig(run=RunConfig(workers=1))  # one worker process (torch + models, ~2 CPU s) is plenty here
ODD_NAMES = [
    b"caf\xe9.jpg",                                    # Latin-1 from an old Samba share
    b"new\nline.jpg",
    unicodedata.normalize("NFC", "Zoë.jpg").encode(),   # two names that look the same:
    unicodedata.normalize("NFD", "Zoë.jpg").encode(),   # different bytes, different files
    b"x" * 236 + b".jpg",                              # 240 bytes (most file systems allow 255)
    b"100%41.jpg",                                     # text that looks like an escape
    b"plain.jpg",
]


def test_uri_encoding_is_lossless_and_plain_for_ordinary_names():
    assert path_to_uri("/photos/2019/Zoë at the beach.jpg") == "/photos/2019/Zoë at the beach.jpg"
    assert path_to_uri(b"/p/caf\xe9.jpg") == "/p/caf%E9.jpg"
    assert path_to_uri(b"/p/100%41.jpg") == "/p/100%2541.jpg"
    assert path_to_uri(b"/p/100% real.jpg") == "/p/100% real.jpg"
    rng = random.Random(8)
    for _ in range(3000):
        raw = bytes(rng.choice(b"%4aF/\n\x80\xc3\xa9\xe2\x82\xac\xff\xf0\x9f\x98") for _ in range(rng.randint(1, 12)))
        uri = path_to_uri(raw)
        assert uri_to_path(uri) == unquote_to_bytes(uri) == raw, raw
        uri.encode("utf-8")  # always storable as a Parquet string
    # shard ids take any uri, even one that slipped through unencoded
    planning.shard_id([ImageRef("/p/\udce9.jpg", 1, 1.0)])


@pytest.fixture(scope="module")
def odd_folder(data_dir, tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("odd")
    (src / "sub").mkdir()
    os.symlink("..", src / "sub" / "loop")          # sub/loop/sub/loop/... would never end
    os.symlink(src / "sub", src / "again")          # a second way into one folder
    img = face_image(data_dir, 240)
    for name in ODD_NAMES:
        img.save(os.path.join(os.fsencode(src), name), "JPEG", quality=90)
    img.save(src / "sub" / "inner.jpg", "JPEG", quality=90)
    return src


def test_listing_walks_each_real_folder_once(odd_folder):
    uris = [r.uri for r in list_images([str(odd_folder)], RunConfig().extensions)]
    assert len(uris) == len(set(uris)) == len(ODD_NAMES) + 1
    assert sum(u.endswith("inner.jpg") for u in uris) == 1


def test_odd_names_indexed_once_each_and_read_back(ray_local, odd_folder, tmp_path):
    out = tmp_path / "out"
    summary = facejob.index([str(odd_folder)], str(out), CONFIG, progress=False)
    assert summary.ok and summary.counts["processed"] == len(ODD_NAMES) + 1
    rows = ds.dataset(out / "images").to_table().to_pylist()
    assert len(rows) == len(ODD_NAMES) + 1 == len({r["uri"] for r in rows})
    assert all(r["status"] == "ok" and r["n_faces"] == 1 for r in rows), [(r["uri"], r["error"]) for r in rows]
    by_path = {uri_to_path(r["uri"]): r for r in rows}
    for name in ODD_NAMES:
        path = os.path.join(os.fsencode(odd_folder), name)
        assert path in by_path, name
        assert read_bytes(by_path[path]["uri"]) == Path(os.fsdecode(path)).read_bytes()
    faces = ds.dataset(out / "faces").to_table(columns=["face_id", "uri"]).to_pylist()
    assert len(faces) == len({f["face_id"] for f in faces}) == len(rows)

    again = facejob.index([str(odd_folder)], str(out), CONFIG, progress=False)
    assert again.counts["processed"] == 0 and again.counts["unchanged"] == len(rows)
    assert again.counts["deleted"] == 0 and again.counts["new"] == 0
