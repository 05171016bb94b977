"""The shipped nightly job on an output `facejob index` made (issue 18's first morning):

A folder of JPEG, AVIF, JXL and HEIC photos is indexed with `facejob index` and its defaults
(RetinaFace), then the shipped jobs/nightly.yaml runs on it, all in child processes under umask
022 joining the session's Ray. Checked: a narrower extension list keeps the photos it leaves out
(CLI and nightly), the nightly job retires nothing and rebuilds the report, a model key that
clashes with the output's model.json is caught by `--check` with advice in YAML keys, `label
--labels FOLDER` works again once labels are stored (also from the nightly job), `cluster
--threshold` is kept for later runs, and every file and folder under OUT is readable by others.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tests.formats import encode

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = {"Tony_Blair": (".jpg", ".avif", ".jxl", ".heic"), "Colin_Powell": (".heic", ".jxl", ".avif", ".jpg")}
LABELLED = ("Tony_Blair", "Colin_Powell")   # reference photos, not in the archive


@pytest.fixture(scope="module")
def address(ray_cluster):
    """The session's Ray; its nodes and so its workers run under umask 022 (tests/ray_cluster.py),
    as the child processes here do (temp files used to come out 0600 whatever it said)."""
    return ray_cluster


@pytest.fixture(scope="module")
def folders(data_dir, tmp_path_factory):
    """src/: two people, four photos each in four formats; labels/: two other photos of each
    (a JPEG and an AVIF)."""
    import pillow_heif
    import pillow_jxl  # noqa: F401

    pillow_heif.register_heif_opener()
    root = tmp_path_factory.mktemp("nightly")
    src, labels = root / "src", root / "labels"
    src.mkdir()
    for person, exts in ARCHIVE.items():
        photos = sorted((data_dir / "lfw" / "images" / person).glob("*.jpg"))
        for photo, ext in zip(photos, exts):
            img = Image.open(photo).convert("RGB")
            fmt = {".jpg": "JPEG", ".avif": "AVIF", ".jxl": "JXL", ".heic": "HEIF"}[ext]
            (src / (photo.stem + ext)).write_bytes(encode(img, fmt, quality=90))
        (labels / person).mkdir(parents=True)
        shutil.copy(photos[10], labels / person / photos[10].name)
        (labels / person / (photos[11].stem + ".avif")).write_bytes(encode(Image.open(photos[11]), "AVIF"))
    return root, src, labels


def run(args: list[str], env: dict[str, str] | None = None, status: int = 0) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, **(env or {})}, preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == status, r.stderr[-3000:]
    return r


def rows(out: Path) -> dict[str, int]:
    t = pq.read_table(out / "images", columns=["uri", "n_faces"]).to_pydict()
    return {Path(u).name: n for u, n in zip(t["uri"], t["n_faces"])}


def nightly_env(src: Path, out: Path, address: str, **more: str) -> dict[str, str]:
    return {"FACEJOB_ARCHIVE": str(src), "FACEJOB_OUTPUT": str(out), "FACEJOB_WORKERS": "2",
            "RAY_ADDRESS": address, **more}


def test_shipped_nightly_job_on_an_output_facejob_index_made(folders, address):
    root, src, labels = folders
    out = root / "out"
    run(["-m", "facejob", "index", str(src), "--out", str(out), "--address", address, "--workers", "2", "-q"])
    indexed = rows(out)
    assert set(indexed) == {p.name for p in src.iterdir()} and all(n >= 1 for n in indexed.values())

    # `facejob index --extensions .jpg` on it: the other formats are not new work, and not deleted.
    r = run(["-m", "facejob", "index", str(src), "--out", str(out), "--address", address, "--workers", "2", "-q",
             "--extensions", ".jpg,.jpeg"])
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert (counts["deleted"], counts["kept_other_extension"], counts["unchanged"]) == (0, 6, 2), r.stdout
    assert "kept 6 indexed photos whose extension this run does not list" in r.stderr
    assert rows(out) == indexed
    # Reference photos not in the archive, one of each person's an AVIF, though the last run
    # listed only JPEGs: a labels folder is read whole.
    r = run(["-m", "facejob", "label", str(out), "--labels", str(labels)])
    assert "learned 2 people from 4 labelled faces" in r.stdout, r.stdout

    # The shipped config: --check passes and shows the output's own model (the default detector).
    env = nightly_env(src, out, address)
    r = run(["-m", "facejob", "nightly", "--config", "jobs/nightly.yaml", "--check"], env)
    assert json.loads(r.stdout)["index"]["detector"] == "retinaface"

    # A config naming another detector than the output's: --check and the job both refuse, in
    # the YAML keys this command takes (not `facejob index` flags), and nothing is touched.
    doc = yaml.safe_load((REPO / "jobs" / "nightly.yaml").read_text())
    doc["index"]["detector"] = "cnn"
    cnn = root / "cnn.yaml"
    cnn.write_text(yaml.safe_dump(doc))
    expected = (f"{out} was indexed with other settings: detector='cnn' (output has 'retinaface'); set "
                "index.force: true to redo every photo, leave the model keys out of `index:` (the output's own "
                "settings are then used), or use another output")
    r = run(["-m", "facejob", "nightly", "--config", str(cnn), "--check"], env, status=2)
    assert r.stderr == f"facejob nightly: config error: {expected}\n"
    r = run(["jobs/nightly.py", "--config", str(cnn)], env, status=2)
    assert expected in r.stderr and "--force" not in r.stderr and rows(out) == indexed

    # A nightly config with an old, shorter extension list keeps what it does not list.
    doc = yaml.safe_load((REPO / "jobs" / "nightly.yaml").read_text())
    doc["index"]["extensions"] = [".jpg", ".jpeg", ".png", ".heic"]
    doc["report"] = False
    old = root / "old.yaml"
    old.write_text(yaml.safe_dump(doc))
    r = run(["jobs/nightly.py", "--config", str(old)], env)
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["counts"]["deleted"] == 0 and summary["counts"]["kept_other_extension"] == 4
    assert "report" not in summary and not (out / "report").exists() and rows(out) == indexed

    # The shipped config itself: nothing retired, nothing redone, the reducer and the report run.
    r = run(["jobs/nightly.py", "--config", "jobs/nightly.yaml"], env)
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["status"] == "ok" and summary["counts"]["deleted"] == 0 and summary["counts"]["unchanged"] == 8
    assert summary["reduce"]["summary"]["label"]["people"] == 2 and (out / "report" / "index.html").is_file()
    assert rows(out) == indexed

    # The same folder again, now that labels are stored: no crash, and no copies of its photos.
    r = run(["-m", "facejob", "label", str(out), "--labels", str(labels)])
    assert "learned 2 people from 4 labelled faces" in r.stdout, r.stdout
    # ... and every night by the nightly job (FACEJOB_LABELS), with a cluster threshold given once.
    run(["-m", "facejob", "cluster", str(out), "--threshold", "0.45"])
    r = run(["jobs/nightly.py", "--config", "jobs/nightly.yaml"], nightly_env(src, out, address,
                                                                             FACEJOB_LABELS=str(labels)))
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["status"] == "ok" and summary["reduce"]["summary"]["label"]["people"] == 2
    assert json.loads((out / "clusters.json").read_text())["threshold"] == 0.45

    # Every file readable, every folder listable by others (umask 022).
    paths = [p for p in out.rglob("*")]
    assert len(paths) > 20
    private = [str(p.relative_to(out)) for p in paths
               if stat.S_IMODE(p.stat().st_mode) & (0o055 if p.is_dir() else 0o044) != (0o055 if p.is_dir() else 0o044)]
    assert not private, f"not readable by others under umask 022: {private[:10]}"


def test_reduce_flags_are_the_reduce_config_fields(tmp_path, capsys):
    """`facejob reduce`'s flags are generated from facejob.config.ReduceConfig (the nightly job's
    `reduce:` keys); a bad value is one line and exit 2 before the output is touched."""
    import dataclasses

    from facejob.cli import build_parser, main
    from facejob.config import ReduceConfig

    reduce_help = build_parser()._subparsers._group_actions[0].choices["reduce"]
    assert reduce_help.description and "clusters.parquet" in reduce_help.description
    flags = {s for a in reduce_help._actions for s in a.option_strings}
    assert {"--" + f.name.replace("_", "-") for f in dataclasses.fields(ReduceConfig)} <= flags
    out = tmp_path / "out"
    assert main(["reduce", str(out), "--cluster-threshold", "3"]) == 2
    assert capsys.readouterr().err == "facejob reduce: error: cluster_threshold must be a distance in (0, 2), got 3.0\n"
    assert not out.exists()
