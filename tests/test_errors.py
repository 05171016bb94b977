"""Bad input and interruptions: one line on stderr naming what to do, the documented exit status,
no traceback, nothing lost (real commands in subprocesses, real Ray, the real moto S3 server)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ray_cluster import joined
from tests.s3_server import MotoServer, child_env

FACEJOB = [sys.executable, "-m", "facejob.cli"]
REPO = Path(__file__).resolve().parents[1]


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*FACEJOB, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


# --------------------------------------------------------------------------------- S3 access

def no_credentials_env(endpoint: str) -> dict[str, str]:
    """An environment where boto3's chain finds no credentials at all (no keys, no profile
    files, no instance metadata)."""
    return {k: v for k, v in child_env(endpoint).items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


def test_s3_without_credentials_is_one_line_not_transient(s3, tmp_path):
    s3.put("photos/a.jpg", b"x")
    r = run("index", s3.uri("photos"), "--out", s3.uri("out"), "-q", env=no_credentials_env(s3.endpoint))
    assert r.returncode == 2
    line = one_line(r)
    assert "no S3 credentials found" in line and "AWS_ACCESS_KEY_ID" in line and "--endpoint-url" in line, line
    assert "transient" not in line.lower() and "S3TransientError" not in r.stderr
    # A local output with S3 sources: the same line, and no output folder left behind.
    r = run("index", s3.uri("photos"), "--out", str(tmp_path / "o"), "-q", env=no_credentials_env(s3.endpoint))
    assert r.returncode == 2 and "no S3 credentials found" in one_line(r)
    assert not (tmp_path / "o").exists()


def test_s3_credentials_error_is_raised_at_once(s3, monkeypatch):
    """No request is retried: botocore never gets to send one without credentials."""
    from facejob.io import s3 as fs3

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    fs3.configure()
    sent: list[str] = []
    fs3.client().meta.events.register("before-send.s3", lambda request, **kw: sent.append(request.url))
    with pytest.raises(fs3.S3AccessError, match="no S3 credentials found"):
        list(fs3.list_images(s3.uri("photos"), (".jpg",), []))
    assert sent == []


@pytest.fixture(scope="module")
def s3_with_auth():
    """A moto server that checks credentials like AWS does, and an IAM user's key that may do
    nothing: (endpoint, access key id, secret). The user and key are its first two requests, the
    ones moto lets through unchecked."""
    import boto3

    with MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "2"}) as server:
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="x")
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        yield server.endpoint, key["AccessKeyId"], key["SecretAccessKey"]


@pytest.mark.parametrize("known_key, message", [
    (False, "S3 refused the credentials (InvalidAccessKeyId"),
    (True, "S3 denied these credentials access: use ones allowed to do this"),
])
def test_s3_refused_credentials_and_denied_access_are_one_line(s3_with_auth, known_key, message):
    endpoint, key_id, secret = s3_with_auth
    env = child_env(endpoint)
    env.update(AWS_ACCESS_KEY_ID=key_id if known_key else "AKIANOSUCHKEY0000000", AWS_SECRET_ACCESS_KEY=secret)
    r = run("index", "s3://bucket/photos", "--out", "s3://bucket/out", "-q", env=env)
    assert r.returncode == 2
    line = one_line(r)
    assert message in line and "AWS_PROFILE" in line, line


def test_s3_missing_bucket_is_one_line(s3, tmp_path):
    env = child_env(s3.endpoint)
    r = run("index", "s3://no-such-bucket-here/photos", "--out", str(tmp_path / "o"), "-q", env=env)
    assert r.returncode == 2 and "NoSuchBucket" in one_line(r)
    assert not (tmp_path / "o").exists()
    r = run("index", str(tmp_path), "--out", "s3://no-such-bucket-here/out", "-q", env=env)
    assert r.returncode == 2 and "NoSuchBucket" in one_line(r)


# --------------------------------------------------------------------------------- local outputs

def test_out_that_is_a_file(tmp_path):
    (tmp_path / "src").mkdir()
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    r = run("index", str(tmp_path / "src"), "--out", str(out), "-q")
    assert r.returncode == 2
    assert one_line(r) == f"facejob index: error: {out} is a file, not an output folder; give a new folder " \
                          f"or an earlier output"
    assert out.read_text() == "mine"


def test_missing_source_leaves_no_output_folder(tmp_path):
    r = run("index", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "-q")
    assert r.returncode == 2
    assert one_line(r) == f"facejob index: error: source not found: {tmp_path / 'nope'} (is its disk or share mounted?)"
    assert not (tmp_path / "o").exists()


def test_empty_source_then_reduce_and_report_say_the_same(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "o"
    r = run("index", str(tmp_path / "empty"), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert f"output: {out} holds no photos yet: `facejob index` found none under" in r.stdout
    for cmd in ("reduce", "report"):
        r = run(cmd, str(out))
        assert r.returncode == 3
        assert one_line(r) == (f"facejob {cmd}: error: {out} holds no photos yet: `facejob index` found none "
                               f"under its sources; index a folder with photos first")


# --------------------------------------------------------------------------------- Ctrl-C

def _as_foreground_job() -> None:
    """In the child, before exec: SIGINT as a terminal's foreground job has it. A test run started
    in the background of a script (`pytest &`) has SIGINT ignored, and every command it starts
    would inherit that and run on through the Ctrl-C, as a background job should."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def sigint_when(cmd: list[str], ready, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group and send the group SIGINT (what Ctrl-C in a terminal
    does) once `ready()` is true; the command must still be running then."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=_as_foreground_job)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert p.poll() is None, f"it ended first: {p.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.02)
        assert p.poll() is None, "it ended before Ctrl-C"
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def test_ctrl_c_during_index_then_rerun_finishes(data_dir, tmp_path, ray_cluster):
    src, out = data_dir / "groups", tmp_path / "o"
    # The interrupted command starts its own local Ray, as `facejob index` in a terminal does.
    cmd = [*FACEJOB, "index", str(src), "--out", str(out), "--shard-size", "3", "--workers", "1", "-q"]
    r = sigint_when(cmd, lambda: any((out / "images").glob("part-*.parquet")))
    assert r.returncode == 130, r.stderr
    *log, line = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and all(x.startswith("INFO ") for x in log), r.stderr  # nothing from Ray
    assert line.startswith("facejob index: interrupted: ") and line.endswith(
        " shards done; rerun the same command to finish"), line
    done, total = map(int, line.split("interrupted: ")[1].split(" shards")[0].split(" of "))
    assert 1 <= done < total
    # The rerun may use any Ray: the session's, rather than starting one of its own.
    again = run("index", str(src), "--out", str(out), "-q", env={**os.environ, "RAY_ADDRESS": ray_cluster})
    assert again.returncode == 0, again.stderr
    listed = json.loads((out / "run.json").read_text())["counts"]
    assert listed["unchanged"] >= 3 * done and listed["unchanged"] + listed["processed"] == listed["listed"]
    assert f"now holds {listed['listed']} photos" in again.stdout


def test_ctrl_c_during_nightly_is_one_line_of_its_log(data_dir, tmp_path):
    """jobs/nightly.py (as `facejob nightly`) ends on Ctrl-C as the index does: 130 and one line
    saying how far it got, in the job's log format; no summary, nothing from Ray."""
    out, cfg = tmp_path / "o", tmp_path / "nightly.yaml"
    cfg.write_text(f"sources: [{data_dir / 'groups'}]\noutput: {out}\nlog_format: json\n"
                   f"index: {{workers: 1, shard_size: 3}}\n")
    r = sigint_when([sys.executable, str(REPO / "jobs/nightly.py"), "--config", str(cfg)],
                    lambda: any((out / "images").glob("part-*.parquet")))
    assert r.returncode == 130 and r.stdout == "", r.stderr
    *log, last = [json.loads(line) for line in r.stderr.splitlines()]  # raises on a traceback, on Ray's chatter
    assert all(x["level"] == "INFO" for x in log), r.stderr
    assert last["level"] == "ERROR" and last["message"].startswith("interrupted: "), last
    assert last["message"].endswith(" shards done; rerun the same command to finish"), last


def test_ctrl_c_during_report(data_dir, tmp_path, ray_cluster):
    from facejob.cli import main

    out = tmp_path / "o"
    # The output to report on, made in this process on the session's Ray (one worker: one
    # process loading the models): only the report's Ctrl-C is under test here, in a command of its own.
    with joined(ray_cluster):
        assert main(["index", str(data_dir / "groups"), "--out", str(out), "--workers", "1", "-q"]) == 0
    assert main(["reduce", str(out), "-q"]) == 0
    r = sigint_when([*FACEJOB, "report", str(out), "-q"],
                    lambda: (out / "report").is_dir() and any((out / "report").rglob("*.*")))
    assert r.returncode == 130
    assert one_line(r) == "facejob report: interrupted; rerun the same command to finish"
    again = run("report", str(out), "-q")
    assert again.returncode == 0, again.stderr
    assert (out / "report" / "index.html").is_file()


# --------------------------------------------------------------------------------- Ray's chatter

def test_nightly_json_log_holds_only_json(data_dir, tmp_path):
    """Ray says nothing (its token-authentication notice included) on a local run, so every line
    the nightly job writes with log_format json is JSON."""
    src = tmp_path / "photos"
    src.mkdir()
    for p in sorted((data_dir / "labelled/faceapi_bbt/raj").iterdir())[:3]:
        (src / p.name).symlink_to(p)
    cfg = tmp_path / "nightly.yaml"
    cfg.write_text(f"sources: [{src}]\noutput: {tmp_path / 'o'}\nlog_format: json\nindex: {{workers: 1}}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    r = subprocess.run([sys.executable, str(REPO / "jobs/nightly.py"), "--config", str(cfg)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines() + r.stderr.splitlines()
    assert len(lines) >= 3
    for line in lines:
        json.loads(line)  # raises on any line that is not JSON
    assert json.loads(r.stdout.splitlines()[-1])["status"] == "ok"


# --------------------------------------------------------------------------------- verify

def test_verify_group_photo_lists_faces_and_picks_one(data_dir, capsys):
    from facejob.cli import main

    group = str(data_dir / "groups/faceapi_bbt/bbt1.jpg")
    raj = str(data_dir / "labelled/faceapi_bbt/raj/raj1.png")
    assert main(["verify", group, raj]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"facejob verify: error: {group}: ")
    assert "none clearly the main one; pick one with --face-a N (0 at (" in err and ", 1 at (" in err, err
    assert main(["verify", group, group, "--face-a", "1", "--face-b", "1"]) == 0
    assert capsys.readouterr().out.startswith("same person: distance 0.0000")
    assert main(["verify", raj, group, "--face-b", "99"]) == 2
    assert "--face-b 99 is not a face of it (0 at (" in capsys.readouterr().err


# --------------------------------------------------------------------------------- newcomer's path

def test_make_demo_runs_the_whole_morning():
    r = subprocess.run(["make", "-n", "demo"], capture_output=True, text=True, cwd=REPO, timeout=60)
    steps = [line for line in r.stdout.splitlines() if "facejob " in line and "echo" not in line]
    assert [s.split()[1] for s in steps][-3:] == ["index", "reduce", "report"], r.stdout
    assert "report/index.html" in r.stdout


def test_pyproject_license_is_an_spdx_string():
    import tomllib

    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert doc["project"]["license"] == "MIT"
    assert "setuptools>=77" in doc["build-system"]["requires"]  # the first setuptools that reads it
