"""The search service (facejob/reduce/search_service.py) on the session's real local Ray: the same
answers as the single-process search of OUT/index/, actors that stay between calls (also across
processes), answers that follow OUT/faces/ as index runs add, rewrite and remove parts, and
`--stop`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from facejob.io.storage import LocalStore, write_parquet
from tests.test_reduce_data import make_out, photos

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, data_dir):
    """OUT of all but the last 2 photos of each person in 8 parts, with OUT/index/; the held-out
    photos (the queries) and the photos of a later index run."""
    by_person: dict[str, list] = {}
    for p in photos(data_dir):
        by_person.setdefault(p.parent.name, []).append(p)
    first = [p for ps in by_person.values() for p in ps[:-2]]
    later = [ps[-2] for ps in by_person.values()]
    queries = [ps[-1] for ps in by_person.values()]
    out = tmp_path_factory.mktemp("service") / "out"
    make_out(out, first, shard_size=10)
    from facejob.reduce import index

    index(str(out))
    return out, queries, later


@pytest.fixture
def fresh(archive, tmp_path, ray_local):
    """A copy of the archive (its own root: its own service), its service stopped afterwards."""
    from facejob.reduce.search_index import stop_service

    out = tmp_path / "out"
    shutil.copytree(archive[0], out)
    yield out
    stop_service(str(out), ray_local)


def _same(a, b) -> None:
    """Two searches' matches: the same faces in the same order, distances within float tolerance."""
    assert [m.face_id for m in a.matches] == [m.face_id for m in b.matches]
    assert [(m.uri, m.face_idx, m.box, m.cluster_id, m.label) for m in a.matches] == \
           [(m.uri, m.face_idx, m.box, m.cluster_id, m.label) for m in b.matches]
    np.testing.assert_allclose([m.distance for m in a.matches], [m.distance for m in b.matches], atol=1e-5)


def _ids(out: Path) -> list[str]:
    return pq.read_table(out / "faces", columns=["face_id"]).column(0).to_pylist()


def test_service_answers_as_the_single_process_search(archive, ray_local):
    from facejob.reduce import metric as lm
    from facejob.reduce.search_index import search, search_face, stop_service
    from facejob.reduce.search_service import SearchService

    out, queries, _ = archive
    try:
        for q in queries[::3]:
            one, svc = search(str(out), str(q), k=6), search(str(out), str(q), k=6, address=ray_local, shards=3)
            assert len(one) == len(svc) == 1 and len(one[0].matches) == 6
            assert one[0].box == svc[0].box
            _same(one[0], svc[0])
        for face_id in _ids(out)[::7]:
            _same(search_face(str(out), face_id, k=5), search_face(str(out), face_id, k=5, address=ray_local))
        # Every shard holds a share, none holds every face.
        held = [i["live"] for i in SearchService(str(out), ray_local).info()]
        assert len(held) == 3 and sum(held) == len(_ids(out)) and max(held) < len(_ids(out))

        # A learned metric head re-ranks the service's candidates as it re-ranks the index's.
        store = LocalStore(out)
        rng = np.random.default_rng(0)
        head = lm.Head({"A": rng.standard_normal((128, 128)).astype(np.float32) * 0.15,
                        "c": np.zeros(128, np.float32)}, lm.MetricParams(), {})
        lm.save(store, head, "test")
        changed = 0
        for face_id in _ids(out)[::7]:
            a = search_face(str(out), face_id, k=5)
            _same(a, search_face(str(out), face_id, k=5, address=ray_local))
            changed += [m.face_id for m in a.matches] != \
                       [m.face_id for m in search_face(str(out), face_id, k=5, metric="plain").matches]
        assert changed, "the head changed no ranking: it was not exercised"
    finally:
        lm.drop(LocalStore(out))
        stop_service(str(out), ray_local)


def test_a_second_search_process_reuses_the_actors(fresh, ray_local):
    import ray

    from facejob.reduce.search_index import search_face
    from facejob.reduce.search_service import NAMESPACE, SearchService, _running

    face_id = _ids(fresh)[4]
    first = search_face(str(fresh), face_id, k=4, address=ray_local, shards=2)
    svc = SearchService(str(fresh), ray_local)
    before = svc.info()
    handles = [ray.get_actor(n, namespace=NAMESPACE)._actor_id for n in _running(svc.store)]
    assert len(before) == 2 and sum(i["reads"] for i in before) == len(list((fresh / "faces").iterdir()))  # each part once

    r = subprocess.run([sys.executable, "-m", "facejob.cli", "search", str(fresh), "--face-id", face_id, "--k", "4",
                        "--address", ray_local, "--json"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m["face_id"] for m in json.loads(r.stdout)[0]["matches"]] == [m.face_id for m in first.matches]
    after = SearchService(str(fresh), ray_local).info()
    assert [(i["pid"], i["reads"]) for i in after] == [(i["pid"], i["reads"]) for i in before]   # nothing rebuilt
    assert [ray.get_actor(n, namespace=NAMESPACE)._actor_id for n in _running(svc.store)] == handles


def test_answers_follow_index_runs(fresh, archive, ray_local):
    """New parts are searched, rewritten parts (retirement) and removed parts are not: each answer
    equals the single-process search of an index brought up to date with OUT/faces/."""
    from facejob.reduce import ReduceError, index
    from facejob.reduce.search_index import search_face

    out, (_, _, later) = fresh, archive
    old_ids = _ids(out)
    query = old_ids[0]
    search_face(str(out), query, k=3, address=ray_local, shards=2)          # the service, over the first run

    def check() -> None:
        index(str(out))
        for face_id in _ids(out)[::5]:
            a = search_face(str(out), face_id, k=8)
            _same(a, search_face(str(out), face_id, k=8, address=ray_local))

    make_out(out, later, shard_size=10, first_shard=20)                  # an index run adds photos
    new_ids = sorted(set(_ids(out)) - set(old_ids))
    assert new_ids
    got = search_face(str(out), new_ids[0], k=len(_ids(out)), address=ray_local)
    assert set(new_ids) - {new_ids[0]} <= {m.face_id for m in got.matches}
    check()

    # Retirement rewrites a part in place without some of its rows; removal deletes a shard.
    part = out / "faces/part-t0001.parquet"
    t = pq.read_table(part)
    gone = t.column("face_id")[0].as_py()
    write_parquet(LocalStore(out), "faces/part-t0001.parquet", t.slice(1))
    (out / "faces/part-t0002.parquet").unlink()
    (out / "images/part-t0002.parquet").unlink()
    removed = pq.read_table(archive[0] / "faces/part-t0002.parquet", columns=["face_id"]).column(0).to_pylist()
    with pytest.raises(ReduceError, match="not in OUT/faces/"):
        search_face(str(out), gone, k=3, address=ray_local)
    every = search_face(str(out), query, k=len(old_ids) + len(new_ids), address=ray_local).matches
    assert not {m.face_id for m in every} & {gone, *removed}
    assert len(every) == len(_ids(out)) - 1
    check()


def test_cli_stop_ends_the_service(fresh, ray_local, capsys):
    import ray

    from facejob.reduce.cli import main
    from facejob.reduce.search_service import NAMESPACE, _running

    face_id = _ids(fresh)[2]
    assert main(["search", str(fresh), "--face-id", face_id, "--address", ray_local, "--shards", "2"]) == 0
    names = _running(LocalStore(fresh))
    assert len(names) == 2
    handles = [ray.get_actor(n, namespace=NAMESPACE) for n in names]
    capsys.readouterr()
    assert main(["search", str(fresh), "--address", ray_local, "--stop"]) == 0
    assert capsys.readouterr().out == f"stopped the search service of {fresh}: 2 shard actor(s)\n"
    assert _running(LocalStore(fresh)) == []
    for h in handles:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(h.info.remote(), timeout=60)
    assert main(["search", str(fresh), "--address", ray_local, "--stop"]) == 0
    assert capsys.readouterr().out == f"no search service of {fresh} was running\n"
    assert main(["search", str(fresh), "--stop"]) == 2                    # --stop needs --address
    assert "--stop needs --address" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["local", "s3"])
def test_store_versions_tell_a_rewritten_part(where, tmp_path, request):
    """Store.list_versions: the files of `list`, each with a token that changes when the file is rewritten."""
    from facejob.io.storage import open_store

    store = open_store(request.getfixturevalue("s3").uri("out/v") if where == "s3" else tmp_path / "out")
    store.write_bytes("faces/part-a.parquet", b"one")
    store.write_bytes("faces/part-b.parquet", b"two")
    before = store.list_versions("faces")
    assert sorted(before) == store.list("faces") == ["faces/part-a.parquet", "faces/part-b.parquet"]
    store.write_bytes("faces/part-a.parquet", b"one, rewritten")
    after = store.list_versions("faces")
    assert after["faces/part-a.parquet"] != before["faces/part-a.parquet"]
    assert after["faces/part-b.parquet"] == before["faces/part-b.parquet"]
