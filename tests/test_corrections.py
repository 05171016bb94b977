"""Corrections file format, constraints in the clustering, and the report's data escaping."""
from __future__ import annotations

import json

import numpy as np
import pytest

from facejob.reduce import corrections as corr
from facejob.reduce.graph import canonical_edges
from facejob.reduce.linkage import agglomerate
from facejob.io.storage import LocalStore


def _doc(*entries) -> str:
    return json.dumps({"facejob": "corrections", "version": 1, "corrections": list(entries)})


def test_parse_reports_every_problem_at_once():
    with pytest.raises(corr.CorrectionsError, match="not a facejob corrections file"):
        corr.parse('{"corrections": []}')
    with pytest.raises(corr.CorrectionsError, match="not JSON"):
        corr.parse("name,face_id\n")
    with pytest.raises(corr.CorrectionsError, match="3 problem") as e:
        corr.parse(_doc({"kind": "name", "name": " ", "face_ids": ["a"]},
                        {"kind": "not_person", "face_id": "a"},
                        {"kind": "merge", "face_ids": []}))
    assert "entry 0: name is empty" in str(e.value) and "unknown kind 'merge'" in str(e.value)
    assert corr.parse(_doc({"kind": "name", "name": " Amy ", "face_ids": ["a", "b"]}))[0]["name"] == "Amy"


def test_resolve_applies_entries_in_order():
    a = corr.resolve(corr.parse(_doc(
        {"kind": "name", "name": "Amy", "cluster_id": 1, "face_ids": ["a", "b", "c"]},
        {"kind": "not_person", "face_id": "c", "cluster_id": 1, "others": ["a", "b"], "name": "Amy"},
        {"kind": "name", "name": "Amy", "cluster_id": 1, "face_ids": ["a", "b", "c"]},   # c stays out
        {"kind": "same_person", "cluster_ids": [1, 2], "face_ids": [["a", "b", "c"], ["d"]]},
        {"kind": "name", "name": "Raj", "cluster_id": 3, "face_ids": ["e"]},
        {"kind": "name", "name": "Rajesh", "cluster_id": 3, "face_ids": ["e"]})))
    assert a.names == {"a": "Amy", "b": "Amy", "e": "Rajesh"}
    assert a.not_names == {"c": {"Amy"}} and a.not_faces == {"c"}
    assert sorted(a.cannot) == [("c", "a"), ("c", "b")]
    assert sorted(a.must) == [("a", "b"), ("a", "d")]    # c was taken out of that group


def test_add_keeps_new_entries_once(tmp_path):
    store = LocalStore(tmp_path / "out")
    f = tmp_path / "corrections.json"
    e1 = {"kind": "name", "name": "Amy", "cluster_id": 1, "face_ids": ["a", "b"], "at": "2026-01-01T00:00:00Z"}
    f.write_text(_doc(e1))
    assert corr.add(store, f) == 1
    e2 = {"kind": "not_person", "face_id": "b", "cluster_id": 1, "others": ["a"]}
    f.write_text(_doc({**e1, "at": "2026-02-02T00:00:00Z"}, e2))    # the page downloads everything again
    assert corr.add(store, f) == 1
    assert [e["kind"] for e in corr.load(store)] == ["name", "not_person"]
    with pytest.raises(corr.CorrectionsError, match="not found"):
        corr.add(store, tmp_path / "missing.json")
    f.write_text("{broken")
    with pytest.raises(corr.CorrectionsError):
        corr.add(store, f)
    assert len(corr.load(store)) == 2      # a bad file changes nothing


def test_add_skips_entries_by_id(tmp_path):
    """The page gives each entry an id: one already stored is skipped even when its faces were
    renamed since (followed to a moved photo); another id with the same content is kept, so the
    report can list every id it contains."""
    store = LocalStore(tmp_path / "out")
    f = tmp_path / "corrections.json"
    e1 = {"id": "k1", "kind": "name", "name": "Amy", "cluster_id": 1, "face_ids": ["a", "b"]}
    f.write_text(_doc(e1))
    assert corr.add(store, f) == 1
    f.write_text(_doc({**e1, "face_ids": ["a2", "b"]}, {**e1, "id": "k2"}))
    assert corr.add(store, f) == 1
    assert [(e["id"], e["face_ids"]) for e in corr.load(store)] == [("k1", ["a", "b"]), ("k2", ["a", "b"])]
    with pytest.raises(corr.CorrectionsError, match="entry 0: id must be a non-empty string"):
        corr.parse(_doc({**e1, "id": 7}))


def _blobs():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.05, (6, 8)), rng.normal(1, 0.05, (6, 8))]).astype(np.float32)
    i, j = np.triu_indices(len(x), 1)
    eu, ev = canonical_edges(i, j, len(x))
    return x, eu, ev


def test_cannot_link_keeps_faces_apart_and_must_link_joins():
    x, eu, ev = _blobs()
    free, _ = agglomerate(x, eu, ev, 0.5)
    assert len(set(free[:6])) == 1 and len(set(free[6:])) == 1 and free[0] != free[6]
    # Face 0 and face 1 are "one photo": never together; the rest of the blob still joins up.
    apart, _ = agglomerate(x, eu, ev, 0.5, cannot_link=np.array([[0, 1]]))
    assert apart[0] != apart[1] and len(set(apart[2:6]) | {apart[0], apart[1]}) == 2
    # Must-link joins the two blobs' faces 0 and 7 whatever the distance; cannot-link between
    # them is overruled (the curator's "same person" wins).
    joined, _ = agglomerate(x, eu, ev, 0.5, must_link=np.array([[0, 7]]), cannot_link=np.array([[0, 7]]))
    assert joined[0] == joined[7]
    # Without graph edges must-links still apply.
    alone, _ = agglomerate(x, eu[:0], ev[:0], 0.5, must_link=np.array([[2, 3], [3, 9]]))
    assert alone[2] == alone[3] == alone[9] and len(set(alone)) == len(x) - 2


def test_photo_pairs_are_all_pairs_within_a_photo():
    import pyarrow as pa

    pairs = corr.photo_pairs(pa.array(["a", "b", "a", "c", "a", "b"]))
    assert sorted(map(tuple, pairs.tolist())) == [(0, 2), (0, 4), (1, 5), (2, 4)]
    assert corr.photo_pairs(pa.array(["a", "b"])).shape == (0, 2)
    assert corr.photo_pairs(pa.array([], pa.string())).shape == (0, 2)
    # In the order the loop over photos gave before (photo by first sorted code, pairs by rows):
    # photos of 1 to 40 faces, with chunked input.
    rng = np.random.default_rng(0)
    uris = pa.chunked_array([[f"p{v}" for v in rng.integers(0, 300, 700)], [f"p{v}" for v in rng.integers(0, 300, 5)]])
    codes = uris.combine_chunks().dictionary_encode().indices.to_numpy().astype(np.int64)
    order = np.argsort(codes, kind="stable")
    want = []
    for c in np.unique(codes):
        g = order[codes[order] == c]
        i, j = np.triu_indices(len(g), 1)
        want += list(zip(g[i].tolist(), g[j].tolist()))
    assert list(map(tuple, corr.photo_pairs(uris).tolist())) == want


def test_rows_of_gives_each_ids_first_row_hashing_only_the_pairs():
    """rows_of looks the pairs' ids up in the archive's (a hash of the few ids asked, not of every
    face's): the same rows, in pair order, as index_in of the pairs over all ids, first rows for
    an id read twice, pairs with a gone face dropped."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(1)
    ids = pa.array([f"f{v}" for v in rng.integers(0, 400, 600)])      # repeats: an id's first row wins
    names = [f"f{v}" for v in rng.integers(0, 450, 120)]               # some gone (>= 400 or not drawn)
    pairs = list(zip(names[::2], names[1::2]))
    flat = pa.array([f for p in pairs for f in p])
    want = pc.index_in(flat, ids).fill_null(-1).to_numpy().astype(np.int64).reshape(-1, 2)
    want = want[(want >= 0).all(1)]
    got = corr.rows_of(ids, pairs)
    assert got.dtype == np.int64 and 0 < len(got) < len(pairs)
    assert got.tolist() == want.tolist()
    assert corr.rows_of(pa.chunked_array([ids[:300], ids[300:]]), pairs).tolist() == want.tolist()
    assert corr.rows_of(ids, []).shape == (0, 2)
    assert corr.rows_of(ids, [("gone", "f1")]).shape == (0, 2)


def test_js_payload_escapes_script_end_and_comments():
    from facejob.report.builder import js_payload

    obj = {"uri": "</script><!--<img src=x onerror=alert(1)>&\u2028", "n": [1, 2.5, None]}
    text = js_payload("k", obj).decode()
    for bad in ("</script", "<!--", "<img", "\u2028"):
        assert bad not in text
    assert text.startswith('FJ.put("k",') and text.endswith(");\n")
    assert json.loads(text[len('FJ.put("k",'):-3]) == obj


def test_a_fully_named_cluster_lends_no_extra_positives():
    from facejob.reduce.svm import LabelParams, cluster_positives

    rows, names = cluster_positives(np.array([0, 0, 1]), np.array([0, 1]), ["Amy", "Amy"], LabelParams())
    assert len(rows) == 0 and names == []
