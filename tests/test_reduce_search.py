"""Reducer tests: the hnswlib index under OUT/index/ and `search` by photo and by face_id."""
from __future__ import annotations

import json

import numpy as np
import pytest

from facejob.io.storage import LocalStore
from tests.test_reduce_data import make_out, person, photos


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, data_dir):
    """OUT holding all but the last photo of each person; the held-out photos are the queries."""
    by_person: dict[str, list] = {}
    for p in photos(data_dir):
        by_person.setdefault(p.parent.name, []).append(p)
    archive = [p for ps in by_person.values() for p in ps[:-1]]
    queries = [ps[-1] for ps in by_person.values()]
    out = tmp_path_factory.mktemp("search") / "out"
    make_out(out, archive)
    from facejob.reduce import index

    index(str(out))
    return out, queries


def test_held_out_photos_find_their_person_first(held_out):
    from facejob.reduce import search

    out, queries = held_out
    firsts = []
    for q in queries:
        res = search(str(out), str(q), k=5)
        assert len(res) == 1, q                     # one face per photo in these sets
        m = res[0].matches
        assert len(m) == 5 and all(a.distance <= b.distance for a, b in zip(m, m[1:]))
        firsts.append(person(m[0].uri) == q.parent.name)
        assert m[0].distance < 0.6                  # same units as dlib's threshold
    assert all(firsts), [q.name for q, ok in zip(queries, firsts) if not ok]


def test_search_by_face_id_excludes_the_face_itself(held_out):
    import pyarrow.parquet as pq

    from facejob.reduce import search_face

    out, _ = held_out
    ids = pq.read_table(out / "index/ids.parquet").to_pylist()
    target = ids[3]
    q = search_face(str(out), target["face_id"], k=4)
    assert len(q.matches) == 4 and target["face_id"] not in {m.face_id for m in q.matches}
    assert person(q.matches[0].uri) == person(target["uri"])


def test_distances_are_euclidean(held_out):
    from facejob.reduce import search
    from facejob.reduce.embeddings import read_faces

    out, queries = held_out
    faces = read_faces(LocalStore(out))
    res = search(str(out), str(queries[0]), k=3)[0]
    from tests.test_reduce_data import _embed
    q = _embed(str(queries[0]), queries[0].stat().st_mtime).faces[0].embedding
    row = faces.face_ids.to_pylist().index(res.matches[0].face_id)
    assert res.matches[0].distance == pytest.approx(float(np.linalg.norm(faces.embeddings[row] - q)), abs=1e-4)


def test_index_is_extended_not_rebuilt_and_drops_removed_faces(tmp_path, data_dir):
    from facejob.reduce import search_face
    from facejob.reduce.embeddings import read_faces
    from facejob.reduce.hnsw import load, update_index

    ps = photos(data_dir)
    store = make_out(tmp_path / "out", ps[:30], shard_size=30)
    fi = update_index(store, read_faces(store), log=lambda m: None)
    first = fi.ids.column("face_id").to_pylist()
    # Next run: one part gone (photos deleted), a new part added.
    (tmp_path / "out/faces/part-t0000.parquet").unlink()
    make_out(tmp_path / "out", ps[30:50], shard_size=30, first_shard=1)
    logs = []
    fi2 = update_index(store, read_faces(store), log=logs.append)
    assert "extended" in logs[0]
    assert fi2.ids.column("face_id").to_pylist()[:30] == first          # labels keep their meaning
    assert fi2.ids.column("deleted").to_pylist() == [True] * 30 + [False] * 20
    assert load(store).live == 20
    q = search_face(str(tmp_path / "out"), fi2.ids.column("face_id")[35].as_py(), k=25)
    assert len(q.matches) == 19 and not {m.face_id for m in q.matches} & set(first)


def test_search_needs_an_index(tmp_path, data_dir):
    from facejob.reduce import NotIndexedError, search

    make_out(tmp_path / "out", photos(data_dir)[:3])
    with pytest.raises(NotIndexedError, match="facejob reduce"):
        search(str(tmp_path / "out"), str(photos(data_dir)[0]))


def test_cli_search_json(held_out, capsys):
    from facejob.reduce.cli import main

    out, queries = held_out
    assert main(["search", str(out), str(queries[1]), "--k", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc) == 1 and doc[0]["face_idx"] == 0 and len(doc[0]["matches"]) == 2
    left, top, right, bottom = doc[0]["box"]                    # the query face, in the query photo
    assert 0 <= left < right and 0 <= top < bottom
    assert set(doc[0]["matches"][0]) >= {"face_id", "uri", "face_idx", "box", "distance", "cluster_id", "label"}
    assert person(doc[0]["matches"][0]["uri"]) == queries[1].parent.name


def test_cli_search_text_shows_face_ids_for_face_id(held_out, capsys):
    from facejob.reduce.cli import main

    out, queries = held_out
    assert main(["search", str(out), str(queries[0]), "--k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    face_id = lines[1].split()[1]                               # distance, face id, photo#face
    assert main(["search", str(out), "--face-id", face_id, "--k", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"face {face_id}: 1 nearest")


def test_cli_search_photo_without_face_exits_1_in_both_forms(held_out, data_dir, capsys):
    from facejob.reduce.cli import main

    out, _ = held_out
    photo = sorted((data_dir / "no_face/caltech_cup").iterdir())[0]
    assert main(["search", str(out), str(photo)]) == 1
    assert capsys.readouterr().out == f"no face found in {photo}\n"
    assert main(["search", str(out), str(photo), "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == []


def test_cli_errors_are_one_line(tmp_path, capsys, data_dir):
    from facejob.reduce.cli import main

    make_out(tmp_path / "out", photos(data_dir)[:2])
    assert main(["search", str(tmp_path / "out"), "--face-id", "nope"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("facejob search: error:") and "\n" not in err
