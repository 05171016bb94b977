"""The nightly job over S3, incrementally: add, change and delete photos between runs.

Every run is `python jobs/nightly.py --config ...` (index, then the reducer) in a fresh process
joining one Ray cluster (the session's), as `ray job submit` does. The cluster's workers inherit a
dead S3 endpoint; only the job's `endpoint_url` points at the moto server, so every successful read
also proves the setting reached the workers. Checked: run.json counts, retired faces, face ids,
embeddings and cluster ids of untouched photos, equality with a from-scratch run, a quiet
night in seconds, and curator labels fetched from S3.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.s3_server import assert_same_results, child_env, lfw_photos, make_client, rows_by_name, use_endpoint

REPO = Path(__file__).resolve().parents[1]
BUCKET = "incremental"


def nightly(tmp_path: Path, address: str, endpoint: str, output: str, reduce: bool = True, labels: str | None = None,
            status: int = 0, unnamed: tuple[str, ...] = (), report: bool = False, **extra) -> dict:
    """Run jobs/nightly.py on a config like jobs/nightly.yaml (without the `index:` keys in
    `unnamed`); return its summary line."""
    doc = yaml.safe_load((REPO / "jobs" / "nightly.yaml").read_text())
    doc.update(sources=[f"s3://{BUCKET}/photos/"], output=output, endpoint_url=endpoint,
               reduce={"enabled": reduce, "labels": labels}, report=report, log_format="json")
    doc["index"].update(detector="hog", embedder="dlib", workers=2, shard_size=3, address=address, **extra)
    for key in unnamed:
        doc["index"].pop(key, None)
    cfg = tmp_path / f"nightly-{abs(hash(output))}.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = child_env(endpoint)
    env.pop("AWS_ENDPOINT_URL")  # the config alone names the endpoint
    r = subprocess.run([sys.executable, "jobs/nightly.py", "--config", str(cfg)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == status, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["status"] == ("ok" if status == 0 else "failed")
    assert ("reduce" in summary) == (reduce and status == 0)
    assert ("report" in summary) == (report and reduce and status == 0)
    return summary


def cluster_ids(client, prefix: str) -> dict[str, int]:
    import io

    import pyarrow.parquet as pq

    body = client.get_object(Bucket=BUCKET, Key=f"{prefix}/clusters.parquet")["Body"].read()
    t = pq.read_table(io.BytesIO(body), columns=["face_id", "cluster_id"]).to_pydict()
    return dict(zip(t["face_id"], t["cluster_id"]))


def test_nightly_over_s3_processes_only_what_changed(ray_cluster, s3_endpoint, data_dir, tmp_path, monkeypatch):
    use_endpoint(monkeypatch, s3_endpoint.endpoint)  # this process reads the outputs from moto
    client = make_client(s3_endpoint.endpoint)
    client.create_bucket(Bucket=BUCKET)
    local = lfw_photos(data_dir, 10, tmp_path / "lfw")
    first, added = local[:8], local[8:]
    other = lfw_photos(data_dir, 1, tmp_path / "other", start=40)[0]

    def put(name: str, path: Path) -> None:
        client.put_object(Bucket=BUCKET, Key=f"photos/{name}", Body=path.read_bytes())

    for p in first:
        put(p.name, p)
    out = f"s3://{BUCKET}/out"

    run1 = nightly(tmp_path, ray_cluster, s3_endpoint.endpoint, out, report=True)
    assert run1["counts"]["new"] == 8 and run1["counts"]["processed"] == 8 and run1["counts"]["error"] == 0
    images1, faces1 = rows_by_name(out)
    clusters1 = cluster_ids(client, "out")
    assert run1["report"]["path"].startswith(f"{out}/report/") and run1["report"]["photos"] == 8
    client.head_object(Bucket=BUCKET, Key="out/report/index.html")
    assert set(clusters1) == {f["face_id"] for f in faces1.values()}

    changed, deleted = first[0].name, first[1].name
    put(changed, other)                     # same key, another person's photo: a new ETag
    client.delete_object(Bucket=BUCKET, Key=f"photos/{deleted}")
    for p in added:
        put(p.name, p)

    run2 = nightly(tmp_path, ray_cluster, s3_endpoint.endpoint, out)
    c = run2["counts"]
    assert (c["new"], c["changed"], c["deleted"], c["unchanged"]) == (2, 1, 1, 6)
    assert c["processed"] == 3 and c["error"] == 0
    run_json = json.loads(client.get_object(Bucket=BUCKET, Key="out/run.json")["Body"].read())
    assert run_json["counts"] == c and len(run_json["history"]) == 1

    images2, faces2 = rows_by_name(out)
    assert deleted not in images2 and all(name != deleted for name, _ in faces2)
    assert images2[changed]["sha256"] != images1[changed]["sha256"]
    # Untouched photos keep their rows, face ids, embeddings and cluster ids exactly; the faces
    # of the changed and the deleted photo are gone from the clusters too.
    clusters2 = cluster_ids(client, "out")
    assert set(clusters2) == {f["face_id"] for f in faces2.values()}
    for key, face in faces1.items():
        if key[0] not in (changed, deleted):
            assert faces2[key]["face_id"] == face["face_id"] and faces2[key]["embedding"] == face["embedding"]
            assert clusters2[face["face_id"]] == clusters1[face["face_id"]]
        else:
            assert face["face_id"] not in clusters2
    # ... and the result is what a first run over today's photos gives.
    scratch = f"s3://{BUCKET}/scratch"
    nightly(tmp_path, ray_cluster, s3_endpoint.endpoint, scratch, reduce=False)
    assert_same_results(out, scratch)

    # A night with nothing new, with curator labels from an s3:// CSV, and a config that names no
    # detector (the default is not this output's HOG): the output's own model is used; the index
    # part finishes in seconds; the labels reach the reducer, and a bad one fails the job (exit 1).
    some_face = next(iter(faces2.values()))["face_id"]
    client.put_object(Bucket=BUCKET, Key="labels.csv", Body=f"name,face_id\nAlice,{some_face}\n".encode())
    run3 = nightly(tmp_path, ray_cluster, s3_endpoint.endpoint, out, labels=f"s3://{BUCKET}/labels.csv", status=1,
                   unnamed=("detector", "embedder", "work_size"))
    model = json.loads(client.get_object(Bucket=BUCKET, Key="out/model.json")["Body"].read())
    assert model["detector"] == "hog" and model["embedder"] == "dlib"
    assert run3["counts"]["processed"] == 0 and run3["counts"]["unchanged"] == 9
    assert run3["index_s"] < 5, "a night with nothing new must finish in seconds"
    assert "'Alice' has only 1 labelled face" in run3["reduce_error"]
