"""Reducer tests: byte-identical and near-duplicate photos."""
from __future__ import annotations

import collections

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.test_reduce_data import make_out, person, photos

# A two-face group photo (the arrangement check) and a portrait.
ORIGINALS = ["groups/faceapi_bbt/bbt2.jpg", "labelled/five_celebrity/val/jerry_seinfeld/3.jpg"]


def _originals(data_dir):
    return [data_dir / rel for rel in ORIGINALS]


@pytest.fixture(scope="module")
def deduped(tmp_path_factory, data_dir):
    """The Johns (a real byte-identical pair inside) plus, for two larger photos, three copies
    each: re-encoded at quality 60, resized to 70 %, and cropped by 8 % on every side."""
    tmp = tmp_path_factory.mktemp("dedup")
    copies = {}
    for n, src in enumerate(_originals(data_dir)):
        img = Image.open(src).convert("RGB")
        w, h = img.size
        d = tmp / f"copies{n}"
        d.mkdir()
        img.save(d / "q60.jpg", quality=60)
        img.resize((int(w * 0.7), int(h * 0.7)), Image.LANCZOS).save(d / "small.jpg", quality=90)
        img.crop((w * 8 // 100, h * 8 // 100, w - w * 8 // 100, h - h * 8 // 100)).save(d / "crop.png")
        copies[src] = sorted(d.iterdir())
    paths = photos(data_dir, ("labelled/dlib_johns",)) + list(copies) + [c for cs in copies.values() for c in cs]
    out = tmp / "out"
    make_out(out, paths)
    from facejob.reduce import dedup

    summary = dedup(str(out))
    return out, summary, copies


def _groups(out):
    rows = pq.read_table(out / "duplicates.parquet").to_pylist()
    g = collections.defaultdict(list)
    for r in rows:
        g[r["group"]].append(r)
    return g


def test_the_byte_identical_johns_are_found(deduped):
    out, s, _ = deduped
    ident = [g for g in _groups(out).values() if g[0]["kind"] == "identical"]
    assert len(ident) == 1 and s.identical_groups == 1
    (a, b) = sorted(ident[0], key=lambda r: r["uri"])
    assert a["sha256"] == b["sha256"] and "John_Shimkus" in a["uri"] and "John_Shimkus" in b["uri"]
    assert a["keep"] and not b["keep"]                      # same bytes: the first path is kept
    assert "identical bytes to " + a["uri"] == b["reason"]


def test_copies_are_grouped_with_their_original_and_the_largest_is_kept(deduped):
    out, _, copies = deduped
    groups = _groups(out).values()
    for src, cs in copies.items():
        g = [g for g in groups if any(r["uri"] == str(src) for r in g)]
        assert len(g) == 1, f"{src.name} not in a group"
        members = {r["uri"] for r in g[0]}
        assert members == {str(src), *map(str, cs)}
        kept = [r for r in g[0] if r["keep"]]
        assert len(kept) == 1 and kept[0]["uri"] in (str(src), str(cs[0].parent / "crop.png"))
        assert max((r["width"] * r["height"], r["size"]) for r in g[0]) == (kept[0]["width"] * kept[0]["height"], kept[0]["size"])
        for r in g[0]:
            if not r["keep"]:
                assert r["kind"] == "near" and r["reason"].startswith("near-duplicate of ")
                assert r["pixel_corr"] >= 0.8 and r["face_distance"] < 0.4


def test_different_shots_of_one_person_are_not_duplicates(deduped):
    """Every near group holds copies of one photo; in particular two different John Schneider
    portraits (aligned close-ups whose plain pixels correlate at 0.91) stay apart."""
    out, _, _ = deduped
    grouped = {r["uri"] for g in _groups(out).values() for r in g}
    assert not any("000331_00926012" in u for u in grouped)
    for g in _groups(out).values():
        johns = [r for r in g if "dlib_johns" in r["uri"]]
        assert len({person(r["uri"]) for r in johns}) <= 1


def test_cli_dedup(deduped, capsys):
    from facejob.reduce.cli import main

    out, s, _ = deduped
    assert main(["dedup", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert f"{s.groups} groups of copies ({s.identical_groups} byte-identical" in line


# Photos without faces: matched by perceptual hash, confirmed by pixels.
FACELESS = ["no_face/park.jpg", "no_face/dogs.jpg"]


@pytest.fixture(scope="module")
def deduped_faceless(tmp_path_factory, data_dir):
    """Every no_face photo (animals, cars, a park, 5 Caltech-101 classes of look-alike objects
    on white) plus, for two of them, a copy re-encoded at q60, one resized to 60 % and one
    cropped by 3 % on every side."""
    tmp = tmp_path_factory.mktemp("dedup_faceless")
    copies = {}
    for n, rel in enumerate(FACELESS):
        img = Image.open(data_dir / rel).convert("RGB")
        w, h = img.size
        d = tmp / f"copies{n}"
        d.mkdir()
        img.save(d / "q60.jpg", quality=60)
        img.resize((int(w * 0.6), int(h * 0.6)), Image.LANCZOS).save(d / "small.jpg", quality=90)
        img.crop((w * 3 // 100, h * 3 // 100, w - w * 3 // 100, h - h * 3 // 100)).save(d / "crop.jpg", quality=90)
        copies[data_dir / rel] = sorted(d.iterdir())
    originals = sorted(p for p in (data_dir / "no_face").rglob("*") if p.is_file())
    out = tmp / "out"
    make_out(out, originals + [c for cs in copies.values() for c in cs])
    from facejob.reduce import dedup

    return out, dedup(str(out)), copies


def test_faceless_copies_grouped_and_no_false_merges(deduped_faceless):
    out, summary, copies = deduped_faceless
    groups = list(_groups(out).values())
    for src, cs in copies.items():
        g = [g for g in groups if any(r["uri"] == str(src) for r in g)]
        assert len(g) == 1 and {r["uri"] for r in g[0]} == {str(src), *map(str, cs)}, src.name
        assert [r["uri"] for r in g[0] if r["keep"]] == [str(src)]
        assert all("no faces, similar perceptual hash" in r["reason"] for r in g[0] if not r["keep"])
    # Apart from those, only the byte-identical Caltech cup pair is a group: no two different
    # photos were merged, although the Caltech look-alikes are within the hash threshold.
    others = [g for g in groups if not any(r["uri"] in map(str, copies) for r in g)]
    assert len(others) == 1 and others[0][0]["kind"] == "identical"
    assert summary.faceless_candidates > 2 * len(copies) * 6   # look-alikes were compared, and refused


def test_old_outputs_without_phash_still_dedup(deduped_faceless, tmp_path):
    """An output indexed before images.phash existed reads as before: no faceless near groups."""
    import shutil

    import pyarrow.parquet as pq_

    out, _, _ = deduped_faceless
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for part in (old / "images").glob("*.parquet"):
        pq_.write_table(pq_.read_table(part).drop_columns(["phash"]), part)
    from facejob.reduce import dedup

    s = dedup(str(old))
    assert s.faceless_candidates == 0 and s.groups == s.identical_groups == 1
