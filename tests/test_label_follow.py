"""Labels and corrections survive photo changes: a moved photo's and a re-encoded photo's labels
and report-page corrections follow their faces to the new face ids; a deleted photo's label
stays a training example and is listed."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

import facejob
from facejob.config import IndexConfig, RunConfig
from facejob.reduce import labelling, pipeline
from facejob.io.storage import LocalStore, write_parquet

PEOPLE = ("John_Salley", "John_Shimkus")
CONFIG = IndexConfig(run=RunConfig(workers=1))  # one worker process (torch + models, ~2 CPU s) is plenty here


def faces_by_file(out: Path) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for r in pq.read_table(out / "faces", columns=["face_id", "uri", "face_idx"]).to_pylist():
        by.setdefault(Path(r["uri"]).name, []).append(r)
    return by


def indexed_archive(data_dir: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, list[dict]]]:
    """Two people's photos copied to src/ and indexed to out/; their faces by file name."""
    src, out = tmp_path / "src", tmp_path / "out"
    for person in PEOPLE:
        shutil.copytree(data_dir / "labelled/dlib_johns" / person, src / person)
    facejob.index([str(src)], str(out), CONFIG, progress=False)
    return src, out, faces_by_file(out)


def reencode(path: Path) -> None:
    """New bytes, same picture, same path."""
    buf = io.BytesIO()
    Image.open(path).save(buf, "JPEG", quality=70)
    path.write_bytes(buf.getvalue())


def test_labels_follow_moved_and_reencoded_photos(ray_local, data_dir, tmp_path, capsys):
    from facejob.cli import main

    src, out, before = indexed_archive(data_dir, tmp_path)
    salley = sorted(p.name for p in (src / "John_Salley").glob("*.jpg") if len(before[p.name]) == 1)[:3]
    shimkus = sorted(p.name for p in (src / "John_Shimkus").glob("*.jpg") if len(before[p.name]) == 1)[:3]
    labels = tmp_path / "labels.csv"
    labels.write_text("name,face_id\n" + "".join(f"{person},{before[n][0]['face_id']}\n"
                                                 for person, names in zip(PEOPLE, (salley, shimkus)) for n in names))
    first = labelling.label(str(out), str(labels))
    assert first.labelled == 6 and first.followed == 0 and not first.gone

    moved, reencoded, deleted = salley[0], shimkus[0], shimkus[1]
    (src / "John_Salley" / moved).rename(src / "John_Salley" / f"renamed-{moved}")
    reencode(src / "John_Shimkus" / reencoded)
    (src / "John_Shimkus" / deleted).unlink()
    s = facejob.index([str(src)], str(out), CONFIG, progress=False)
    assert (s.counts["new"], s.counts["changed"], s.counts["deleted"]) == (1, 1, 2)  # the move: 1 new + 1 gone
    after = faces_by_file(out)
    new_moved, new_reencoded = after[f"renamed-{moved}"][0]["face_id"], after[reencoded][0]["face_id"]
    assert new_moved != before[moved][0]["face_id"] and new_reencoded != before[reencoded][0]["face_id"]

    assert main(["label", str(out)]) == 0   # the command, in this process
    said = capsys.readouterr().out
    assert "2 labels followed their face" in said, said
    assert "1 labels are on photos no longer in the archive; kept as training examples" in said, said
    assert f"John_Shimkus: face {before[deleted][0]['face_id']} of {src / 'John_Shimkus' / deleted}" in said

    stored = {row["face_id"]: row for row in pq.read_table(out / "labels/labels.parquet").to_pylist()}
    assert len(stored) == 6
    assert stored[new_moved]["name"] == "John_Salley" and stored[new_moved]["uri"].endswith(f"renamed-{moved}")
    assert stored[new_reencoded]["name"] == "John_Shimkus"
    gone = stored[before[deleted][0]["face_id"]]
    assert gone["name"] == "John_Shimkus" and len(gone["embedding"]) == 128  # still a training example
    pred = {p["face_id"]: p for p in pq.read_table(out / "predictions.parquet").to_pylist()}
    assert pred[new_moved]["labelled"] and pred[new_moved]["label"] == "John_Salley"
    assert pred[new_reencoded]["labelled"] and pred[new_reencoded]["label"] == "John_Shimkus"


def test_corrections_follow_moved_and_reencoded_photos(ray_local, data_dir, tmp_path):
    src, out, before = indexed_archive(data_dir, tmp_path)
    # Photos with one face, and no identical copy (a correction would follow a face to its copy).
    digest = {f: hashlib.sha256(f.read_bytes()).digest() for f in src.rglob("*.jpg")}
    copies = Counter(digest.values())
    single = {p: sorted(f.name for f in (src / p).glob("*.jpg") if len(before[f.name]) == 1 and copies[digest[f]] == 1)
              for p in PEOPLE}
    salley, shimkus = single["John_Salley"][:3], single["John_Shimkus"][:4]
    fid = {n: before[n][0]["face_id"] for n in salley + shimkus}
    moved, reencoded = salley[0], shimkus[3]
    # What the report page downloads: two people named, and one face "not this person".
    page = tmp_path / "corrections.json"
    page.write_text(json.dumps({"facejob": "corrections", "version": 1, "corrections": [
        {"kind": "name", "name": "Salley", "face_ids": [fid[n] for n in salley]},
        {"kind": "name", "name": "Shimkus", "face_ids": [fid[n] for n in shimkus[:3]]},
        {"kind": "not_person", "face_id": fid[reencoded], "others": [fid[n] for n in shimkus[:3]],
         "name": "Shimkus"}]}))
    pipeline.reduce(str(out), corrections=page)

    (src / "John_Salley" / moved).rename(src / "John_Salley" / f"renamed-{moved}")
    reencode(src / "John_Shimkus" / reencoded)
    facejob.index([str(src)], str(out), CONFIG, progress=False)
    after = faces_by_file(out)
    new_moved, new_reencoded = after[f"renamed-{moved}"][0]["face_id"], after[reencoded][0]["face_id"]
    assert new_moved != fid[moved] and new_reencoded != fid[reencoded]

    pipeline.reduce(str(out))   # no new corrections: the stored ones follow their faces
    stored = json.loads((out / "labels/corrections.json").read_text())["corrections"]
    assert new_moved in stored[0]["face_ids"] and fid[moved] not in stored[0]["face_ids"]
    assert stored[2]["face_id"] == new_reencoded
    pred = {p["face_id"]: p for p in pq.read_table(out / "predictions.parquet").to_pylist()}
    assert pred[new_moved]["labelled"] and pred[new_moved]["label"] == "Salley"
    assert pred[new_reencoded]["label"] != "Shimkus"
    clusters = {r["face_id"]: r["cluster_id"]
                for r in pq.read_table(out / "clusters.parquet", columns=["face_id", "cluster_id"]).to_pylist()}
    assert all(clusters[new_reencoded] != clusters[fid[n]] for n in shimkus[:3])


def test_labels_stored_before_the_location_columns_still_load(tmp_path):
    store = LocalStore(tmp_path)
    old = pa.table({"name": ["a"], "face_id": ["f1"], "source": ["labels.csv:2"],
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array([0.0] * 128, pa.float32()), 128)})
    write_parquet(store, labelling.LABELS_STORED, old)
    t = labelling._stored_labels(store)
    assert t.schema == labelling.LABELS_SCHEMA and t.column("uri").to_pylist() == [None]
