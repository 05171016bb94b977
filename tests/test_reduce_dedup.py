"""Reducer tests: byte-identical and near-duplicate photos."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
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


def _brute_force_candidates(sha, hashes, faceless, max_bits, query=None):
    """The quadratic search phash_candidates replaced (every faceless hash against every hash),
    kept as the reference it must equal pair for pair; with `query`, the pairs with a photo in it."""
    h = np.asarray(hashes, np.int64).view(np.uint64)
    query = np.ones(len(h), bool) if query is None else query
    out = set()
    for r in np.flatnonzero(faceless):
        for c in np.flatnonzero(np.bitwise_count(h[r] ^ h) <= max_bits):
            a, b = sha[r], sha[c]
            if a != b and (query[r] or query[c]):
                out.add((a, b) if a < b else (b, a))
    return sorted(out)


def _synthetic_hashes(rng, n):
    """Random hashes with the cases the search must get right: near copies at every distance
    around the threshold, identical files (same sha, same hash), a content hashed two ways."""
    h = rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64, endpoint=True)
    sha = [f"{rng.integers(2 ** 62):016x}" for _ in range(n)]
    for r in rng.choice(n, n // 5, replace=False):          # near copies, 0-20 bits apart
        src = int(rng.integers(n))
        flip = rng.choice(64, int(rng.integers(21)), replace=False)
        h[r] = (h[src].view(np.uint64) ^ np.uint64(sum(1 << int(b) for b in flip))).view(np.int64)
    for r in rng.choice(n, n // 20, replace=False):         # identical files
        src = int(rng.integers(n))
        h[r], sha[r] = h[src], sha[src]
    for r in rng.choice(n, n // 50, replace=False):         # same bytes, another hash
        sha[r] = sha[int(rng.integers(n))]
    return sha, h


@pytest.mark.parametrize("seed,max_bits,width", [(0, 16, None), (1, 16, 16), (2, 0, 8), (3, 8, 11), (4, 24, 6),
                                              (5, 16, 4), (6, 3, 16), (7, 16, 13)])
def test_phash_candidates_equal_the_brute_force_on_random_hashes(seed, max_bits, width, monkeypatch):
    """Multi-index search with blocks of several widths (16: sparse buckets at this size, 4: sixteen
    blocks, 13: five; None: the cheapest), thresholds from 0 (blocks not searched) to 24
    bits, and small steps (ragged padding)."""
    from facejob.reduce import duplicates as dd

    monkeypatch.setattr(dd, "PHASH_BATCH", 5000)
    rng = np.random.default_rng(seed)
    sha, h = _synthetic_hashes(rng, 1500)
    faceless = rng.random(len(h)) < [0.5, 0.9, 0.1, 0.5, 0.02, 1.0, 0.3, 0.5][seed]
    want = _brute_force_candidates(sha, h, faceless, max_bits)
    got = dd.phash_candidates(sha, h, faceless, max_bits, workers=3, width=width)
    assert list(got) == want and len(got) == len(want) and len(want) > 2
    assert list(dd.phash_candidates(sha, h, np.zeros(len(h), bool), max_bits, width=width)) == []
    query = rng.random(len(h)) < 0.1          # a nightly run: the pairs with a new photo
    want = _brute_force_candidates(sha, h, faceless, max_bits, query)
    assert list(dd.phash_candidates(sha, h, faceless, max_bits, workers=2, width=width, query=query)) == want
    assert 0 < len(want) < len(got)
    coded = dd.content_codes(sha)     # the caller's own coding of the same sha256s (dedup's)
    assert list(dd.phash_candidates(sha, h, faceless, max_bits, width=width, query=query, coded=coded)) == want


def test_block_plan_covers_every_pair_within_max_bits():
    """The pigeonhole the search rests on: the blocks tile the 64 bits, and their thresholds
    sum(t + 1) = max_bits + 1, so a pair within max_bits is within t of some block."""
    from facejob.reduce import duplicates as dd

    for width in range(4, 17):
        for max_bits in (0, 1, 7, 16, 40, 64):
            plan = dd.block_plan(width, max_bits)
            assert [b.shift for b in plan] == np.cumsum([0] + [b.bits for b in plan[:-1]]).tolist()
            assert sum(b.bits for b in plan) == 64 and max(b.bits for b in plan) <= width
            assert sum(b.t + 1 for b in plan) == max_bits + 1 and min(b.t for b in plan) >= -1
    assert [(b.bits, b.t) for b in dd.block_plan(16, 16)] == [(16, 4), (16, 3), (16, 3), (16, 3)]


def test_phash_candidates_equal_the_brute_force_on_real_hashes(deduped_faceless):
    """The real no_face photos and copies (look-alike Caltech objects within the threshold),
    as they are and with every photo counted faceless, then every other."""
    from facejob.reduce import duplicates as dd

    out, _, _ = deduped_faceless
    t = pq.read_table(out / "images")
    sha, h = t.column("sha256").to_pylist(), t.column("phash").to_numpy()
    for faceless in (np.array(t.column("status").to_pylist()) == "no_face", np.ones(len(h), bool),
                     np.arange(len(h)) % 2 == 0):
        want = _brute_force_candidates(sha, h, faceless, dd.PHASH_MAX)
        assert list(dd.phash_candidates(sha, h, faceless)) == want and len(want) > 12


def _reencoded(src: Path, folder: Path) -> tuple[Path, Path]:
    """Two re-encoded copies of the photo `src` (JPEG quality 60 and 80) in a new `folder`."""
    img = Image.open(src).convert("RGB")
    folder.mkdir()
    copies = folder / "q60.jpg", folder / "q80.jpg"
    for path, quality in zip(copies, (60, 80)):
        img.save(path, quality=quality)
    return copies


def _grouped_uris(out: Path) -> set[str]:
    return {r["uri"] for g in _groups(out).values() for r in g}


def test_an_unreadable_photo_is_not_tried_again_until_its_content_changes(tmp_path, data_dir, caplog):
    """A photo damaged after indexing is tried once and its verdict kept (OUT/dedup/unreadable.parquet):
    the next run does not try it again, even once the file is readable again, while the index holds
    the same content for that path; when the path holds new content (re-indexed: a new sha256), it
    is tried again."""
    from facejob.reduce import dedup

    src = data_dir / FACELESS[0]
    img = Image.open(src).convert("RGB")
    copy, other = _reencoded(src, tmp_path / "photos")
    out = tmp_path / "out"
    make_out(out, [src, copy, other])
    good = copy.read_bytes()

    copy.write_bytes(b"not a photo any more")
    s = dedup(str(out))
    assert (s.unreadable, s.unreadable_known) == (1, 0) and _grouped_uris(out) == {str(src), str(other)}
    kept = pq.read_table(out / "dedup" / "unreadable.parquet").to_pylist()
    assert [r["uri"] for r in kept] == [str(copy)] and "q60.jpg" in caplog.text

    copy.write_bytes(good)               # readable again, the content the index holds: not tried
    caplog.clear()
    s = dedup(str(out))
    assert (s.unreadable, s.unreadable_known) == (1, 1) and _grouped_uris(out) == {str(src), str(other)}
    assert "cannot read" not in caplog.text

    img.save(copy, quality=70)           # new content at that path, indexed again: tried, and a copy
    make_out(out, [src, copy, other])
    s = dedup(str(out))
    assert (s.unreadable, s.unreadable_known) == (0, 0) and _grouped_uris(out) == {str(src), str(copy), str(other)}
    assert pq.read_table(out / "dedup" / "unreadable.parquet").num_rows == 0


def test_a_photo_that_cannot_be_read_tonight_is_tried_again(tmp_path, data_dir):
    """A failure to read the bytes (the file is gone: a mount that failed, a disk away) says
    nothing about the content: it is skipped tonight, not remembered, and grouped the night the
    file is back."""
    from facejob.reduce import dedup

    a, b = _reencoded(data_dir / FACELESS[0], tmp_path / "photos")
    out = tmp_path / "out"
    make_out(out, [a, b])
    a.rename(tmp_path / "away.jpg")
    s = dedup(str(out))
    assert (s.unreadable, s.unreadable_known, s.groups) == (1, 0, 0)
    assert pq.read_table(out / "dedup" / "unreadable.parquet").num_rows == 0
    (tmp_path / "away.jpg").rename(a)
    s = dedup(str(out))
    assert (s.unreadable, s.groups) == (0, 1)
    assert _grouped_uris(out) == {str(a), str(b)}


@pytest.mark.parametrize("sha256", [False, True])
def test_nightly_phash_search_equals_a_full_one(tmp_path, sha256):
    """With OUT/dedup/phash.parquet from the last run, only the contents new or changed since (a
    new hash, a faceless flag that changed) are searched, and the pairs equal a full search's:
    pairs of removed contents go, pairs of unchanged ones stay. (With real sha256 strings the
    saved contents are found by binary search over their bytes, else by a hash table.)"""
    import hashlib

    import pyarrow as pa

    from facejob.io.storage import LocalStore
    from facejob.reduce import deduping

    rng = np.random.default_rng(7)
    sha, h = _synthetic_hashes(rng, 3000)
    if sha256:
        sha = [hashlib.sha256(s.encode()).hexdigest() for s in sha]
    status = np.where(rng.random(len(h)) < 0.5, "no_face", "ok")

    def images(keep):
        return pa.table({"sha256": pa.array([sha[r] for r in keep]), "status": pa.array(status[keep]),
                         "phash": pa.array(h[keep])})

    def pairs(found):
        return list(found[0]), found[1]

    store = LocalStore(tmp_path / "out")
    first = np.arange(2500)
    full, searched = pairs(deduping._faceless_candidates(images(first), store))
    assert full == pairs(deduping._faceless_candidates(images(first)))[0] and len(full) > 50
    assert searched == len(set(sha[r] for r in first))
    assert pairs(deduping._faceless_candidates(images(first), store)) == (full, 0)     # nothing changed

    gone = rng.choice(2500, 100, replace=False)
    status[rng.choice(2500, 30, replace=False)] = "ok"          # faceless no more (or still not)
    h[rng.choice(2500, 30, replace=False)] ^= 1 << 40           # a new hash for the same content
    night = np.r_[np.setdiff1d(first, gone), np.arange(2500, 3000)]
    got, searched = pairs(deduping._faceless_candidates(images(night), store))
    want, everything = pairs(deduping._faceless_candidates(images(night)))
    assert got == want and 500 <= searched < everything / 2
    assert pairs(deduping._faceless_candidates(images(night), store)) == (want, 0)


@pytest.mark.parametrize("seed", range(6))
def test_groups_table_sets_aside_photos_in_no_group_and_equals_the_whole_archive_walk(seed):
    """groups_table picks the grouped photos by array operations, then words their rows: the
    same table as the per-photo walk over every photo (`_groups_of` on the whole archive), with
    paths listed twice, photos without a sha256, identical files and near pairs chaining
    contents (or naming contents not in the archive)."""
    import pyarrow as pa

    from facejob.reduce import duplicates as dd

    rng = np.random.default_rng(seed)
    n = 400
    shas = [f"{v:064x}" for v in rng.integers(0, 10**6, 300)]
    sha = [shas[i] if rng.random() > 0.05 else None for i in rng.integers(0, len(shas), n)]
    uri = [f"/photos/{i}.jpg" for i in rng.integers(0, 350, n)]      # some paths listed twice
    images = pa.table({"uri": uri, "sha256": sha,
                       "width": pa.array(rng.integers(100, 400, n), pa.int32()),
                       "height": pa.array(rng.integers(100, 400, n), pa.int32()),
                       "size": pa.array(rng.integers(1000, 1200, n), pa.int64())})
    names = sorted(set(shas)) + ["f" * 64]             # the last one is in no photo
    near = [(names[a], names[b], float(rng.random()), float(rng.random()))
            for a, b in rng.integers(0, len(names), (40, 2)) if a != b]
    got, want = dd.groups_table(images, near), dd._groups_of(images, near)
    assert want.num_rows > 50 and set(want.column("kind").to_pylist()) == {"identical", "near"}
    assert got.equals(want)
    assert dd.groups_table(images.slice(0, 0), near).num_rows == 0
    assert dd.groups_table(images, []).equals(dd._groups_of(images, []))


def test_positions_in_finds_sha256_strings_as_a_hash_table_does():
    """duplicates.positions_in: the position of each value in sorted distinct names, -1 where
    absent, as pc.index_in gives it: by binary search over sha256 strings' bytes (sliced and
    chunked arrays too), by pc.index_in itself for any other strings."""
    import hashlib

    import pyarrow as pa
    import pyarrow.compute as pc

    from facejob.reduce.duplicates import positions_in

    def index_in(values, names):
        at = pc.index_in(values, names).to_numpy(zero_copy_only=False)
        return np.where(np.isnan(at), -1, at).astype(np.int64)

    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3000)]
    names = pa.array(sorted(digests[:2000]))
    rng = np.random.default_rng(0)
    values = pa.array([digests[i] for i in rng.integers(0, 3000, 5000)])      # a third absent
    for v in (values, values.slice(17, 3000), pa.chunked_array([values.slice(0, 10), values.slice(10)])):
        want = index_in(v, names)
        assert np.array_equal(positions_in(v, names), want) and (want == -1).any() and (want >= 0).any()
    assert np.array_equal(positions_in(values, names.slice(5, 100)), index_in(values, names.slice(5, 100)))
    assert np.array_equal(positions_in(values, names[:0]), np.full(5000, -1))
    others = pa.array(sorted(digests[:2000] + ["not a sha256"]))
    assert np.array_equal(positions_in(values, others), index_in(values, others))
    assert positions_in(values[:0], names).shape == (0,)


def test_content_codes_of_sha256_strings_equal_the_hash_table_coding():
    """duplicates.content_codes codes sha256 hex strings by sorting their first 64 bits where
    they lie; the codes and names equal a dictionary encoding's, for sliced and chunked arrays,
    and strings it cannot code that way (two contents alike in their first 16 digits, capitals,
    other strings) are coded by the hash table."""
    import hashlib

    import pyarrow as pa
    import pyarrow.compute as pc

    from facejob.reduce import duplicates as dd

    def by_hash_table(values):
        enc = pc.dictionary_encode(dd.whole(values))
        order = pc.array_sort_indices(enc.dictionary).to_numpy()
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        return rank[enc.indices.to_numpy().astype(np.int64)], enc.dictionary.take(order)

    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]
    rng = np.random.default_rng(1)
    some = pa.array([digests[i] for i in rng.integers(0, 600, 3000)])      # most contents many times
    alike = digests[0][:16] + digests[1][16:]                                 # digests[0]'s first 64 bits
    for values, sorted_in_place in ((some, True), (some.slice(11, 2000), True),
                                    (pa.chunked_array([some.slice(0, 5), some.slice(5), pa.array(digests[900:])]), True),
                                    (pa.chunked_array([], pa.string()), True),
                                    (pa.chunked_array([some, pa.array([alike])]), False),
                                    (pa.array(digests[:50] + [digests[3].upper()]), False),
                                    (pa.array(["b", "a", "b"]), False)):
        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        assert (dd._sha_codes(chunks) is not None) == sorted_in_place
        code, names = dd.content_codes(values)
        want_code, want_names = by_hash_table(values)
        assert np.array_equal(code, want_code) and names.equals(want_names)
