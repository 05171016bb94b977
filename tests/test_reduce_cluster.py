"""Reducer tests: sparse average-linkage clustering and stable cluster ids across runs."""
from __future__ import annotations

import collections

import numpy as np
import pyarrow.parquet as pq
import pytest

from facejob.reduce.graph import canonical_edges
from facejob.reduce.linkage import agglomerate, representatives
from facejob.reduce.stable import assign_ids
from tests.test_reduce_data import make_out, person, photos


def _partition(labels) -> list[list[int]]:
    groups = collections.defaultdict(list)
    for i, c in enumerate(labels):
        groups[c].append(i)
    return sorted(groups.values())


@pytest.mark.parametrize("threshold", [0.45, 0.55, 0.6, 0.7])
def test_complete_graph_gives_exact_average_linkage(threshold, data_dir, tmp_path):
    """With every pair as an edge, the result equals scipy's UPGMA on squared distances."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    from facejob.reduce.embeddings import read_faces

    x = read_faces(make_out(tmp_path / "out", photos(data_dir))).embeddings
    i, j = np.triu_indices(len(x), 1)
    eu, ev = canonical_edges(i, j, len(x))
    ours, _ = agglomerate(x, eu, ev, threshold)
    ref = fcluster(linkage(pdist(x.astype(np.float64), "sqeuclidean"), "average"), threshold ** 2, "distance")
    assert _partition(ours) == _partition(ref)


def test_sparse_graph_matches_complete_graph_on_real_faces(data_dir, tmp_path):
    from facejob.reduce.embeddings import read_faces
    from facejob.reduce.graph import knn_graph
    from facejob.reduce.hnsw import IndexParams, update_index

    store = make_out(tmp_path / "out", photos(data_dir))
    faces = read_faces(store)
    fi = update_index(store, faces, IndexParams(), log=lambda m: None)
    eu, ev = knn_graph(fi, faces.embeddings, fi.rows_for(faces), k=5)
    assert len(eu) < len(faces) * 6
    sparse, _ = agglomerate(faces.embeddings, eu, ev, 0.6)
    i, j = np.triu_indices(len(faces), 1)
    cu, cv = canonical_edges(i, j, len(faces))
    full, _ = agglomerate(faces.embeddings, cu, cv, 0.6)
    assert _partition(sparse) == _partition(full)


def test_clusters_follow_people(data_dir, tmp_path):
    from facejob.reduce import cluster

    out = tmp_path / "out"
    make_out(out, photos(data_dir))
    s = cluster(str(out))
    rows = pq.read_table(out / "clusters.parquet").to_pylist()
    assert len(rows) == s.faces == 95
    by_cluster = collections.defaultdict(collections.Counter)
    for r in rows:
        by_cluster[r["cluster_id"]][person(r["uri"])] += 1
    # Every cluster is one person, and most of each person's photos are in one cluster.
    assert all(len(c) == 1 for c in by_cluster.values())
    total = collections.Counter(person(r["uri"]) for r in rows)
    biggest = collections.Counter()
    for c in by_cluster.values():
        (name, n), = c.items()
        biggest[name] = max(biggest[name], n)
    assert all(biggest[p] >= 0.6 * total[p] for p in total), (biggest, total)
    assert s.clusters <= 13 + 4
    # The representative is a member, and sizes agree with the rows.
    for r in rows:
        assert r["cluster_size"] == sum(by_cluster[r["cluster_id"]].values())
    members = collections.defaultdict(set)
    for r in rows:
        members[r["cluster_id"]].add(r["face_id"])
    assert all(r["representative"] in members[r["cluster_id"]] for r in rows)
    # First run: ids by size, largest first.
    sizes = {r["cluster_id"]: r["cluster_size"] for r in rows}
    assert [sizes[c] for c in sorted(sizes)] == sorted(sizes.values(), reverse=True)


def test_cluster_ids_survive_an_incremental_run(data_dir, tmp_path):
    """Run 1 sees most photos; run 2 adds the rest. Old faces keep their ids (or, where the new
    faces tie two clusters of one person together, the id of the cluster they merged into, as
    the recorded merge says), new faces join the clusters of their people, and nothing is
    renumbered."""
    from facejob.reduce import cluster

    ps = photos(data_dir)
    later = set(ps[5::6])
    out = tmp_path / "out"
    make_out(out, [p for p in ps if p not in later])
    cluster(str(out))
    first = {r["face_id"]: r["cluster_id"] for r in pq.read_table(out / "clusters.parquet").to_pylist()}
    make_out(out, sorted(later), first_shard=10)
    s = cluster(str(out))
    rows = pq.read_table(out / "clusters.parquet").to_pylist()
    assert len(rows) == 95 and s.splits == 0
    into = {o: e["cluster_id"] for e in pq.read_table(out / "cluster_events.parquet").to_pylist()
            if e["event"] == "merge" for o in e["other_ids"]}
    assert len(into) == s.merges <= 2
    second = {r["face_id"]: r["cluster_id"] for r in rows}
    assert all(second[f] == into.get(c, c) for f, c in first.items())
    person_of = {first[r["face_id"]]: person(r["uri"]) for r in rows if r["face_id"] in first}
    assert all(person_of[o] == person_of[c] for o, c in into.items())      # a merge joins parts of one person
    id_of_person = {}
    for r in rows:
        if r["face_id"] in first:
            id_of_person.setdefault(person(r["uri"]), set()).add(r["cluster_id"])
    new_rows = [r for r in rows if r["face_id"] not in first]
    assert new_rows
    joined = [r["cluster_id"] in id_of_person.get(person(r["uri"]), set()) for r in new_rows]
    assert sum(joined) >= len(joined) - 1      # at most one new face starts a cluster of its own


def test_merges_and_splits_are_recorded(tmp_path, data_dir):
    """Lowering the threshold splits clusters, raising it merges them; both are logged and old
    ids stay with the larger part."""
    from facejob.reduce import cluster

    out = tmp_path / "out"
    make_out(out, photos(data_dir))
    cluster(str(out), threshold=0.6)
    before = {r["face_id"]: r["cluster_id"] for r in pq.read_table(out / "clusters.parquet").to_pylist()}
    s = cluster(str(out), threshold=0.4)
    assert s.splits > 0
    ev = pq.read_table(out / "cluster_events.parquet").to_pylist()
    splits = [e for e in ev if e["event"] == "split"]
    assert len(splits) == s.splits and all(e["other_ids"] for e in splits)
    after = {r["face_id"]: r["cluster_id"] for r in pq.read_table(out / "clusters.parquet").to_pylist()}
    assert max(after.values()) > max(before.values())        # split-off parts get fresh ids
    s2 = cluster(str(out), threshold=0.6)
    assert s2.merges > 0
    ev = pq.read_table(out / "cluster_events.parquet").to_pylist()
    assert sum(e["event"] == "merge" for e in ev) == s2.merges


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_canonical_edges_by_ranges_equal_all_at_once(dtype):
    """Deduplicated a range of smaller ends at a time (chunks forced small): the same edges, in
    the same order, of the ends' own type, as all at once."""
    rng = np.random.default_rng(5)
    n = 500
    i = rng.integers(0, n, 20_000).astype(dtype)
    j = np.where(rng.random(20_000) < 0.05, i, rng.integers(0, n, 20_000)).astype(dtype)   # self-loops too
    i, j = np.concatenate([i, j[:5000]]), np.concatenate([j, i[:5000]])     # edges found both ways
    a, b = np.minimum(i, j), np.maximum(i, j)
    want_key = np.unique(a[a != b].astype(np.int64) * n + b[a != b])
    want = (want_key // n, want_key % n)
    for chunk in (len(i) * 2, 1000, 37, 1):
        got = canonical_edges(i, j, n, chunk=chunk)
        assert all(np.array_equal(g, w) and g.dtype == dtype for g, w in zip(got, want)), chunk
    assert len(want[0]) < (a != b).sum()      # duplicates were there to drop


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_neighbour_edges_equal_the_edges_made_as_pairs(dtype):
    """The kNN graph's edges made from each face's neighbours (one row a face, -1 where none), a
    range of smaller ends and a block of rows at a time: the edges canonical_edges gives of
    all pairs at once, in the same order and type."""
    from facejob.reduce.graph import neighbour_edges

    rng = np.random.default_rng(7)
    n, k = 700, 6
    nearest = rng.integers(0, n, (n, k)).astype(dtype)
    nearest[rng.random(nearest.shape) < 0.15] = -1
    nearest[nearest == np.arange(n)[:, None]] = -1          # no self-loops, as knn_graph leaves them
    i = np.repeat(np.arange(n), k)
    ok = nearest.reshape(-1) >= 0
    want = canonical_edges(i[ok].astype(dtype), nearest.reshape(-1)[ok], n)
    assert len(want[0]) < ok.sum()     # edges found both ways, to drop
    for chunk, block in ((nearest.size, 1 << 20), (500, 1 << 20), (500, 64), (37, 1), (1, 5)):
        got = neighbour_edges(nearest, chunk=chunk, block=block)
        assert all(np.array_equal(g, w) and g.dtype == dtype for g, w in zip(got, want)), (chunk, block)
    assert all(len(g) == 0 for g in neighbour_edges(np.full((5, 3), -1, dtype)))


def test_assign_ids_rules():
    prev = np.array([0, 0, 0, 1, 1, 2, 2, 2, -1, -1])
    # new clusters: {0,1,3,4} merges old 0 and 1; {2} splits off old 0; {5,6,7,8} keeps 2 and adds a new face; {9} new
    roots = np.array([0, 0, 2, 0, 0, 5, 5, 5, 5, 9])
    a = assign_ids(roots, prev, next_id=3)
    cid = a.cluster_id
    # Old 0 and old 1 each give 2 faces to the merged cluster: the tie goes to the smaller id.
    assert cid[0] == cid[1] == cid[3] == cid[4] == 0
    assert cid[5] == cid[6] == cid[7] == cid[8] == 2
    assert cid[2] >= 3 and cid[9] >= 3 and cid[2] != cid[9]
    assert {"event": "merge", "cluster_id": 0, "from": [1]} in a.events
    assert {"event": "split", "cluster_id": 0, "into": [int(cid[2])]} in a.events
    assert a.next_id == 5


def test_representative_is_nearest_the_mean():
    x = np.array([[0, 0], [1, 0], [0.4, 0], [5, 5], [5, 6]], np.float32)
    roots, size, rep = representatives(x, np.array([0, 0, 0, 3, 3]))
    assert list(roots) == [0, 3] and list(size) == [3, 2] and rep[0] == 2 and rep[1] in (3, 4)


def test_pair_margin_asks_more_of_two_single_faces_than_of_groups():
    """Two faces 0.5 apart join at threshold 0.53 alone, not with the 0.04 pair margin (limit
    0.49); two groups of four whose RMS distance is 0.5 still join (limit 0.53 - 0.04 / 4)."""
    from facejob.reduce.linkage import agglomerate

    pair = np.array([[0, 0], [0.5, 0]], np.float32)
    edge = np.array([0]), np.array([1])
    assert agglomerate(pair, *edge, 0.53)[0].tolist() == [0, 0]
    assert agglomerate(pair, *edge, 0.53, pair_margin=0.04)[0].tolist() == [0, 1]
    # two tight groups (must-linked, so they start whole) whose centres are ~0.5 apart
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.02, (4, 2)), rng.normal(0, 0.02, (4, 2)) + [0.5, 0]]).astype(np.float32)
    must = np.array([[0, 1], [0, 2], [0, 3], [4, 5], [4, 6], [4, 7]])
    roots, _ = agglomerate(x, np.array([0]), np.array([4]), 0.53, must_link=must, pair_margin=0.04)
    assert len(set(roots.tolist())) == 1


def test_link_weight_joins_groups_the_graph_ties_and_keeps_look_alikes_apart():
    """Two groups of five faces, RMS 0.52 apart (over the limit 0.50 - 0.04 / 5 on distance
    alone). Linked by one graph edge they stay apart (0.52 - 0.2 * 1/21); when every face of
    one has the other's faces among its neighbours they join (0.52 - 0.2 * 25/45)."""
    x = np.zeros((10, 128), np.float32)
    x[5:, 0] = 0.52
    inside = [(a, b) for g in (range(5), range(5, 10)) for a in g for b in g if a < b]
    one = np.array(inside + [(0, 5)]).T
    every = np.array(inside + [(a, b) for a in range(5) for b in range(5, 10)]).T
    for eu, ev in (one, every):
        assert len(set(agglomerate(x, eu, ev, 0.50, pair_margin=0.04)[0].tolist())) == 2
    assert len(set(agglomerate(x, *one, 0.50, pair_margin=0.04, link_weight=0.2)[0].tolist())) == 2
    assert len(set(agglomerate(x, *every, 0.50, pair_margin=0.04, link_weight=0.2)[0].tolist())) == 1
    # Edges count as clusters merge: a must-linked group keeps its members' edges.
    must = np.array([[0, i] for i in range(1, 5)] + [[5, i] for i in range(6, 10)])
    assert len(set(agglomerate(x, *every, 0.50, must_link=must, pair_margin=0.04,
                               link_weight=0.2)[0].tolist())) == 1


def test_stale_kept_threshold_is_not_reused(tmp_path):
    """A threshold kept by a clustering made before the link term bounded plain RMS: the
    default replaces it; one kept with the current link weight is reused."""
    import json

    from facejob.config import CLUSTER_LINK_WEIGHT, CLUSTER_THRESHOLD
    from facejob.reduce.clustering import saved_cluster_params

    (tmp_path / "clusters.json").write_text(json.dumps({"threshold": 0.53, "k": 12}))
    assert saved_cluster_params(str(tmp_path)) == (CLUSTER_THRESHOLD, 12)
    (tmp_path / "clusters.json").write_text(json.dumps({"threshold": 0.47, "k": 12,
                                                        "link_weight": CLUSTER_LINK_WEIGHT}))
    assert saved_cluster_params(str(tmp_path)) == (0.47, 12)


def test_stored_labels_shape_the_clusters(data_dir, tmp_path):
    """The curator's names are clustering constraints: two faces of one cluster given different
    names end in different clusters, and faces of two clusters given one name in one."""
    from facejob.reduce import cluster, label

    out = tmp_path / "out"
    make_out(out, photos(data_dir))
    cluster(str(out))
    rows = sorted(pq.read_table(out / "clusters.parquet").to_pylist(), key=lambda r: r["face_id"])
    by_cluster = collections.defaultdict(list)
    for r in rows:
        by_cluster[r["cluster_id"]].append(r["face_id"])
    big, b, c = sorted(by_cluster.values(), key=len, reverse=True)[:3]
    names = {big[0]: "Amy", big[1]: "Amy", big[2]: "Bea", big[3]: "Bea", b[0]: "Cat", c[0]: "Cat"}
    csv = tmp_path / "labels.csv"
    csv.write_text("face_id,name\n" + "".join(f"{f},{n}\n" for f, n in names.items()))
    label(str(out), str(csv))
    s = cluster(str(out))
    now = {r["face_id"]: r["cluster_id"] for r in pq.read_table(out / "clusters.parquet").to_pylist()}
    assert now[big[0]] == now[big[1]] != now[big[2]] == now[big[3]]
    assert now[b[0]] == now[c[0]]
    assert s.clusters == len({now[f] for f in now})


def test_labels_given_to_reduce_shape_that_nights_clusters(data_dir, tmp_path):
    """`reduce --labels` stores the labels before it clusters: the first night's clusters already
    hold the names as constraints, so the next night, nothing changed, keeps them as they are."""
    import json

    from facejob.reduce.pipeline import reduce

    out = tmp_path / "out"
    make_out(out, photos(data_dir))
    faces = pq.read_table(out / "faces", columns=["face_id", "uri"]).to_pylist()
    by = collections.defaultdict(list)
    for r in sorted(faces, key=lambda r: r["uri"]):
        by[person(r["uri"])].append(r["face_id"])
    named = [p for p in sorted(by) if len(by[p]) >= 3][:3]
    csv = tmp_path / "labels.csv"
    csv.write_text("face_id,name\n" + "".join(f"{f},{p}\n" for p in named for f in by[p][:3]))
    first = reduce(str(out), labels=str(csv))
    kept = json.loads((out / "clusters.json").read_text())
    assert first.label is not None and first.label.labelled == 9
    second = reduce(str(out))
    assert json.loads((out / "clusters.json").read_text()) == kept      # kept: the same inputs as the first night
    assert second.cluster.clusters == first.cluster.clusters
