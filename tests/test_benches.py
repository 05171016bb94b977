"""Every bench script runs, at a tiny size, so that a change elsewhere (a schema column, a renamed
function) cannot break one silently. The figures are not checked (benches print them for people);
that the script finishes, and that a --json line carries its keys, is.

Synthetic benches take seconds and run with the suite. The others read the shared photos and run
dlib, Ray or a browser: tens of seconds to minutes even at their smallest, so they are `slow`
(`pytest -m slow tests/test_benches.py`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# script: (arguments at a tiny size, keys its --json line must have or None). "{tmp}" is a scratch
# folder, "{data}" the shared photos (also FACEJOB_DATA).
FAST = {
    "dedup_scale": (["--photos", "200", "--nightly", "--json"], {"peak_rss_gib", "seconds", "candidates", "nightly_s"}),
    "catalog_scale": (["--photos", "2000", "--parts", "20", "--ratio-photos", "1000", "--ratio-parts", "20", "2",
                       "--repeats", "1", "--json"],
                      {"driver_peak_rss_gib", "plan_s", "parts_read", "parts_ratio", "parts_ratio_listed",
                       "parts_ratio_compacted"}),
    "merge_memory": (["--faces", "400", "--people", "40", "--graphs", "{tmp}/graphs", "--json"],
                     {"new_merge_s", "old_merge_s", "new_extra_bytes_per_face", "old_extra_bytes_per_face",
                      "same_labels"}),
    "reduce_scale": (["--faces", "200", "--people", "20", "--out", "{tmp}/out", "--json"],
                     {"peak_rss_gib", "recall_at_10", "pairwise_f", "cluster_s"}),
    "reduce_scale --ray": (["--faces", "300", "--people", "30", "--out", "{tmp}/out", "--ray", "--workers", "2",
                            "--shards", "3", "--label-people", "5", "--json"],
                           {"max_process_peak_rss_gib", "knn_recall_at_10", "agreement_f", "ray_knn_graph_s",
                            "ray_svm_train_s", "labels_equal"}),
    "reduce_scale --no-reference": (["--faces", "300", "--people", "30", "--out", "{tmp}/out", "--ray",
                                     "--no-reference", "--workers", "2", "--shards", "3", "--label-people", "0",
                                     "--spill-rows", "50", "--json"],
                                    {"max_process_peak_rss_gib", "ray_driver_peak_rss_gib", "ray_pairwise_f",
                                     "ray_knn_graph_s", "ray_merge_own_peak_gib"}),
    "reduce_scale --nightly --ray": (["--faces", "300", "--people", "30", "--out", "{tmp}/out", "--nightly", "--ray",
                                      "--workers", "2", "--shards", "2", "--json"],
                                     {"nightly_s", "first_steps_rss_gib", "nightly_steps_rss_gib", "search_cold_s",
                                      "first_own_rss_gib", "first_steps_own_rss_gib", "first_workers_rss_gib",
                                      "max_process_peak_rss_gib"}),
    "reduce_scale --service": (["--faces", "300", "--people", "30", "--out", "{tmp}/out", "--service", "--workers", "2",
                                "--repeats", "1", "--part-rows", "50", "--json"],
                               {"search_single_s", "service_cold_s", "service_warm_s", "service_query_ms",
                                "service_caller_rss_gib", "service_shard_rss_gib"}),
}
# Real photos and models: minutes on 2 shared cores even at these sizes.
SLOW = {
    "dedup_phash": (["--lfw", "5", "--originals", "10"], None),
    "s3_throughput": (["--photos", "20", "--add", "2", "--change", "1", "--delete", "1", "--rounds", "1",
                       "--workers", "1", "--shard-size", "10"], None),
    "backends": (["--chips", "4", "--repeats", "1", "--batch-sizes", "1,4", "--threads", "1"], None),
    "lfw_pairs": (["--limit", "10", "--workers", "1"], None),
    "retinaface_scores": (["--lfw", "10"], None),
    "port_equality": (["--limit", "3"], None),
    "fit_box_map": (["--lfw", "10", "--data", "{data}"], None),
    "detectors": (["--detectors", "hog:0"], None),
    "heic_decode": (["--repeats", "1"], None),
    "camera": (["--sources", "1", "--sweep", "1200", "--formats", "jpg", "--no-loop", "--no-memory",
                "--photos", "{tmp}/photos"], None),
    "fake_gpu": (["--rounds", "1", "--src", "{data}/labelled/dlib_johns"], None),
    "chips": (["--sample", "0", "--repeat", "1"], None),
    "mmod_equality": (["--upsample", "0", "--data", "{data}/groups/dlib_faces"], None),
    "backends_table": (["--folders", "groups/misc"], None),
    "index_acceptance": (["--out", "{tmp}/out"], None),
    "stages": (["--profile", "6", "--shard", "3", "--repeat", "1", "--floor", "8", "--no-side-by-side"], None),
    "gpu_check": (["--device", "cpu", "--limit", "4", "--variants", "fp32"], None),
    "detector_sweep": (["--lfw", "2"], None),
    "dlib_jitter": (["--limit", "12", "--jitters", "2", "--workers", "1", "--json"], {"one_pass", "jittered", "no_face"}),
}
# Not scripts, or not runnable without an archive indexed beforehand (hours on LFW).
NOT_RUN = {
    "boxes": "a module the detector benches import",
    "lfw_reduce": "needs `facejob index` of all of LFW",
    "metric_heads": "needs `facejob index` of the LFW photos its pairs file names (thousands)",
    "report_lfw": "needs `facejob index` + `reduce` of all of LFW",
    "report_screenshots": "indexes ~1,000 LFW photos and drives a browser",
    "quality_floor": "needs `facejob index` of all of LFW and of the small shared folders",
}


def test_every_bench_is_run_or_says_why_not():
    scripts = {p.stem for p in (REPO / "bench").glob("*.py") if p.stem != "__init__"}
    runs = {name.split()[0] for name in (*FAST, *SLOW)}   # "script --option": one more way a script is run
    assert scripts == runs | set(NOT_RUN), "list a new bench/ script in tests/test_benches.py"


def _run(name: str, args: list[str], keys: set[str] | None, tmp: Path, data: Path | None = None) -> dict | None:
    env = dict(os.environ)
    if data:
        env["FACEJOB_DATA"] = str(data)
    cmd = [sys.executable, "-m", f"bench.{name.split()[0]}",  # from the repository root, as README says
           *(a.replace("{tmp}", str(tmp)).replace("{data}", str(data)) for a in args)]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    if keys:
        line = json.loads(r.stdout.strip().splitlines()[-1])
        assert keys <= set(line), f"{name}: JSON line lacks {keys - set(line)}"
        return line
    return None


@pytest.mark.parametrize("name", sorted(FAST))
def test_synthetic_bench_runs_tiny(name, tmp_path):
    _run(name, *FAST[name], tmp_path)


def test_reduce_scale_ray_only_against_an_earlier_full_run(tmp_path):
    """--ray-only: the Ray path alone, against the single-process index and clusters a full run
    left in --out (how the 1M figures are taken: each path takes most of an hour there)."""
    args = FAST["reduce_scale"][0]
    full = _run("reduce_scale", args, {"pairwise_f"}, tmp_path)
    line = _run("reduce_scale --ray-only", [*args, "--ray-only", "--workers", "2", "--shards", "2",
                                            "--label-people", "0"],
                {"agreement_f", "knn_recall_at_10", "max_process_peak_rss_gib", "ray_knn_graph_s"}, tmp_path)
    assert line["faces"] == 200 and line["agreement_at_faces"] == 200
    # Clusters scored against the true people face by face (clusters.parquet is in face_id order,
    # not the faces'): read in file order, this came out ~0.09.
    assert full["pairwise_f"] > 0.8 and line["ray_pairwise_f"] > 0.8 and line["agreement_f"] > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_bench_runs_tiny(name, tmp_path, data_dir):
    _run(name, *SLOW[name], tmp_path, data_dir)
