"""Reducer tests: the `facejob reduce|cluster|search` commands end to end, on a local folder and
on an s3:// output served by a real S3 endpoint (moto over HTTP)."""
from __future__ import annotations

import json

import pyarrow.parquet as pq

from tests.test_reduce_data import make_out, person, photos


def test_reduce_then_search_through_the_facejob_command(tmp_path, data_dir, capsys):
    from facejob.cli import main

    out = tmp_path / "out"
    ps = photos(data_dir)
    make_out(out, ps)
    assert main(["reduce", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cluster:" in text and "dedup: 4 groups of copies" in text
    for rel in ("index/faces.hnsw", "index/ids.parquet", "index/params.json", "clusters.parquet",
                "clusters.json", "duplicates.parquet"):
        assert (out / rel).is_file(), rel
    params = json.loads((out / "index/params.json").read_text())
    from facejob.reduce.hnsw import IndexParams
    assert params["count"] == 95 and params["space"] == "l2" and params["M"] == IndexParams().M
    assert main(["search", str(out), str(ps[20]), "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("face 0 at") and len(lines) == 4
    assert lines[1].strip().startswith("0.000") and "cluster" in lines[1]   # the photo itself, in its cluster


def test_commands_on_an_output_without_faces_fail_clearly(tmp_path, capsys):
    from facejob.reduce.cli import main

    for cmd in ("reduce", "cluster", "dedup"):
        assert main([cmd, str(tmp_path / "nothing")]) == 3
        err = capsys.readouterr().err
        assert err.startswith(f"facejob {cmd}: error: no index output under") and err.count("\n") == 1


def test_search_needs_photo_or_face_id(tmp_path, capsys):
    from facejob.reduce.cli import main

    assert main(["search", str(tmp_path)]) == 2
    assert "give a PHOTO or --face-id" in capsys.readouterr().err


def test_reduce_on_s3(s3, tmp_path, data_dir):
    """The same reducer on an s3:// output: everything read and written through S3Store."""
    from facejob.reduce import cluster, dedup, label, reduce, search

    local = tmp_path / "local"
    ps = photos(data_dir, ("labelled/dlib_johns",))
    make_out(local, ps)
    for f in local.rglob("*"):
        if f.is_file():
            s3.put(f"archive/{f.relative_to(local).as_posix()}", f.read_bytes())
    out = s3.uri("archive")
    r = reduce(out)
    assert r.faces == 55 and r.cluster.clusters >= 5 and r.dedup.identical_groups == 1
    keys = set(s3.keys("archive/"))
    assert {"archive/index/faces.hnsw", "archive/index/ids.parquet", "archive/clusters.parquet",
            "archive/duplicates.parquet"} <= keys
    hits = search(out, str(ps[0]), k=2)[0].matches
    assert hits[0].distance < 1e-4 and person(hits[1].uri) == person(str(ps[0]))
    # Labels through S3 too; then a second cluster run keeps every id.
    rows = pq.read_table(local / "faces").to_pylist()
    csv = tmp_path / "labels.csv"
    csv.write_text("face_id,name\n" + "".join(f"{x['face_id']},{person(x['uri'])}\n" for x in rows[::5]))
    s = label(out, str(csv))
    assert s.people == 5 and "archive/predictions.parquet" in set(s3.keys("archive/"))
    before = s3.client.get_object(Bucket=s3.bucket, Key="archive/clusters.parquet")["Body"].read()
    assert cluster(out).merges == 0
    after = s3.client.get_object(Bucket=s3.bucket, Key="archive/clusters.parquet")["Body"].read()
    import io
    col = lambda b: pq.read_table(io.BytesIO(b), columns=["face_id", "cluster_id"]).to_pylist()
    assert col(before) == col(after)
    assert dedup(out).duplicates >= 1


def test_reduce_an_archive_without_faces(tmp_path, data_dir):
    """Photos with no face at all: every step runs and writes empty results."""
    import shutil

    from facejob.reduce import reduce

    ps = sorted(p for p in (data_dir / "no_face").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:3]
    copy = tmp_path / "copy.jpg"
    shutil.copy(ps[0], copy)
    out = tmp_path / "out"
    make_out(out, ps + ps[:1] + [copy])   # ps[0] listed twice (one photo), plus a real copy of it
    r = reduce(str(out))
    assert r.faces == 0 and r.cluster.clusters == 0 and r.label is None
    assert pq.read_table(out / "clusters.parquet").num_rows == 0
    assert r.dedup.groups == 1 and r.dedup.duplicates == 1
    rows = pq.read_table(out / "duplicates.parquet").to_pylist()
    assert sorted(x["uri"] for x in rows) == sorted([str(ps[0]), str(copy)])
