"""facejob.io.s3 against a real S3 HTTP endpoint (moto's server on 127.0.0.1), no in-process patching."""
from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest

from facejob.io import s3 as fs3
from facejob.contract import schema
from facejob.io import sources, storage
from tests.s3_server import TcpProxy, use_endpoint

EXTS = (".jpg", ".jpeg", ".png")

# Keys a real archive has: each must list, read back as itself, and never be normalised.
ODD_KEYS = [
    "odd/with space.jpg",
    "odd/Zoë 東京 🙂.jpg",
    "odd/../up.jpg",
    "odd/./dot.jpg",
    "/leading.jpg",
    "odd//double.jpg",
    "odd/plus+percent%20amp&.jpg",
]


def count_calls(op: str) -> list[dict]:
    """Record every `op` request facejob's client sends (botocore's event hooks, not a patch)."""
    calls: list[dict] = []
    fs3.client().meta.events.register(f"provide-client-params.s3.{op}", lambda params, **kw: calls.append(params))
    return calls


def test_client_uses_env_endpoint_and_configure_overrides(s3, monkeypatch):
    # boto3 itself reads AWS_ENDPOINT_URL (the fixture sets only that).
    assert fs3.client().meta.endpoint_url == s3.endpoint
    assert fs3.client() is fs3.client()  # cached per process
    assert fs3.client().meta.config.retries["mode"] == "adaptive"
    assert fs3.client().meta.config.retries["total_max_attempts"] == fs3.MAX_ATTEMPTS

    fs3.configure(endpoint_url="http://127.0.0.1:1", max_attempts=3)
    assert fs3.client().meta.endpoint_url == "http://127.0.0.1:1"
    assert fs3.client().meta.config.retries["total_max_attempts"] == 3
    assert fs3.worker_env()[fs3.ENDPOINT_ENV] == "http://127.0.0.1:1"
    assert fs3.worker_env()[fs3.ATTEMPTS_ENV] == "3"
    assert "AWS_SECRET_ACCESS_KEY" not in fs3.worker_env()


def test_client_is_shared_by_threads(s3):
    s3.put("a.jpg", b"x")
    seen, errors = [], []

    def work():
        try:
            seen.append(fs3.client())
            assert fs3.read_bytes(s3.uri("a.jpg")) == b"x"
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    fs3.configure()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({id(c) for c in seen}) == 1


def test_listing_is_paginated_streamed_filtered_and_ordered(s3, monkeypatch):
    keys = [f"photos/p{i:02d}/img_{j}.jpg" for i in range(12) for j in range(2)]
    for k in keys:
        s3.put(k, k.encode())
    s3.put("photos/notes.txt", b"not a photo")
    s3.put("photos/sub/", b"")  # a folder marker some tools create
    s3.put("photos/p00/UPPER.JPG", b"upper")
    s3.put("photos2/elsewhere.jpg", b"not under photos/")
    monkeypatch.setattr(fs3, "PAGE_SIZE", 5)
    calls = count_calls("ListObjectsV2")

    skipped: list[str] = []
    it = fs3.list_images(s3.uri("photos"), EXTS, skipped)
    first = next(it)
    assert len(calls) == 1, "the first photo must come before the whole listing is fetched"
    refs = [first, *it]
    assert len(calls) == 6  # 27 keys, 5 per page

    expected = sorted(keys + ["photos/p00/UPPER.JPG"])
    assert [r.uri for r in refs] == [s3.uri(k) for k in expected]
    assert skipped == [s3.uri("photos/notes.txt")]
    by_uri = {r.uri: r for r in refs}
    head = s3.client.head_object(Bucket=s3.bucket, Key=keys[0])
    ref = by_uri[s3.uri(keys[0])]
    assert ref.etag == head["ETag"].strip('"') and ref.size == len(keys[0]) and ref.mtime is None
    # Same order on a second listing, and through facejob.io.sources for a mixed source list.
    assert [r.uri for r in sources.list_images([s3.uri("photos/")], EXTS)] == [r.uri for r in refs]


def test_named_object_listed_whatever_its_extension(s3):
    s3.put("raw/scan.dat", b"123")
    s3.put("raw/scan.dat/inner.jpg", b"45")  # a key and a 'folder' of the same name
    refs = list(fs3.list_images(s3.uri("raw/scan.dat"), EXTS, []))
    assert [(r.uri, r.size) for r in refs] == [(s3.uri("raw/scan.dat"), 3), (s3.uri("raw/scan.dat/inner.jpg"), 2)]


def test_missing_prefix_or_bucket_is_an_error_not_an_empty_archive(s3):
    s3.put("photos/a.jpg", b"a")
    with pytest.raises(FileNotFoundError):
        list(fs3.list_images(s3.uri("phtoos"), EXTS, []))
    with pytest.raises(FileNotFoundError):
        list(sources.list_images([f"s3://no-such-bucket-{s3.bucket}/x"], EXTS))


def test_odd_keys_list_and_read_back_verbatim(s3):
    for i, k in enumerate(ODD_KEYS):
        s3.put(k, f"photo {i}".encode())
    refs = list(fs3.list_images(s3.uri(), EXTS, []))
    assert sorted(r.uri for r in refs) == sorted(s3.uri(k) for k in ODD_KEYS)
    for r in refs:
        i = ODD_KEYS.index(r.uri[len(s3.uri()):])
        assert sources.read_bytes(r.uri) == f"photo {i}".encode()
    assert fs3.split_uri(s3.uri("/leading.jpg")) == (s3.bucket, "/leading.jpg")


def test_permanent_errors_are_oserrors(s3):
    with pytest.raises(FileNotFoundError):
        fs3.read_bytes(s3.uri("missing.jpg"))
    with pytest.raises(FileNotFoundError):
        fs3.read_bytes(f"s3://no-such-bucket-{s3.bucket}/a.jpg")
    # The pipeline records an OSError as `unreadable` and SourceUnavailable as `unavailable` (retried next run).
    assert not issubclass(fs3.S3TransientError, OSError)
    assert issubclass(fs3.S3TransientError, sources.SourceUnavailable)


def test_store_roundtrip_and_atomic_parts(s3):
    store = storage.open_store(s3.uri("out/run1/"))
    assert isinstance(store, fs3.S3Store) and store.root == s3.uri("out/run1")
    assert store.list("faces") == [] and not store.exists("run.json")
    store.write_bytes("run.json", b"{}")
    table = pa.table({"uri": ["s3://b/x.jpg"], "n_faces": pa.array([2], pa.int32())})
    storage.write_parquet(store, "images/part-b.parquet", table)
    storage.write_parquet(store, "images/part-a.parquet", table)
    s3.put("out/run1/images/.hidden", b"ignored like a local dotfile")
    s3.put("out/run1/images//odd.parquet", b"no Store path names this key")
    s3.put("out/run10/images/part-z.parquet", b"another run's part")

    assert store.exists("run.json") and store.read_bytes("run.json") == b"{}"
    assert store.list("images/") == ["images/part-a.parquet", "images/part-b.parquet"]
    got = storage.read_parts(store, "images/", pa.schema([("uri", pa.string()), ("n_faces", pa.int32())]))
    assert got.num_rows == 2 and got.column("n_faces").to_pylist() == [2, 2]
    empty = storage.read_parts(store, "faces/", schema.FACES)
    assert empty.num_rows == 0 and empty.schema == schema.FACES
    store.delete("images/part-b.parquet")
    store.delete("images/part-b.parquet")  # idempotent, like LocalStore
    assert store.list("images") == ["images/part-a.parquet"]
    with pytest.raises(FileNotFoundError):
        store.read_bytes("images/part-b.parquet")


def test_callers_ask_a_store_where_it_is(s3, tmp_path):
    """`local_path` tells readers whether a store is a folder on this machine (hnswlib, report
    builds use the path); `open_store` takes a uri, a path or a Store."""
    remote = storage.open_store(s3.uri("out"))
    assert remote.local_path() is None and remote.local_path("index/faces.hnsw") is None
    local = storage.open_store(tmp_path / "out")
    assert local.local_path() == tmp_path / "out"
    assert local.local_path("index/faces.hnsw") == tmp_path / "out" / "index" / "faces.hnsw"
    with pytest.raises(ValueError, match="outside the output root"):
        local.local_path("../x")
    assert storage.open_store(local) is local and storage.open_store(remote) is remote


@pytest.mark.parametrize("rel", ["../escape.parquet", "/abs.parquet", "faces/../../x", "", "a/../../b"])
def test_store_never_writes_outside_its_prefix(s3, rel):
    store = fs3.S3Store(s3.uri("out"))
    with pytest.raises(ValueError):
        store.write_bytes(rel, b"x")
    assert s3.keys() == []


def test_large_part_is_one_completed_multipart_upload(s3):
    mib = 1024 * 1024
    store = fs3.S3Store(s3.uri("out"), multipart_threshold=6 * mib, part_size=5 * mib)
    body = bytes(range(256)) * (11 * mib // 256)
    store.write_bytes("faces/part-big.parquet", body)
    head = s3.client.head_object(Bucket=s3.bucket, Key="out/faces/part-big.parquet")
    assert head["ETag"].strip('"').endswith("-3")  # S3's ETag of a 3-part multipart upload
    assert store.read_bytes("faces/part-big.parquet") == body
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    store.write_bytes("small.bin", b"small")
    assert "-" not in s3.client.head_object(Bucket=s3.bucket, Key="out/small.bin")["ETag"]


def test_endpoint_outage_is_retried(s3, s3_endpoint, monkeypatch):
    s3.put("a.jpg", b"survives an outage")
    with TcpProxy(s3_endpoint.port) as proxy:
        use_endpoint(monkeypatch, proxy.endpoint)
        fs3.configure(max_attempts=20)  # jittered backoff: 20 attempts never all fit in 1.5 s
        assert fs3.read_bytes(s3.uri("a.jpg")) == b"survives an outage"
        proxy.stop()
        restart = threading.Timer(1.5, proxy.start)
        restart.start()
        t0 = time.monotonic()
        try:
            assert fs3.read_bytes(s3.uri("a.jpg")) == b"survives an outage"
        finally:
            restart.join()
        assert time.monotonic() - t0 >= 1.4  # it really waited for the endpoint to return


def test_endpoint_down_past_retries_is_transient_not_oserror(s3, s3_endpoint, monkeypatch):
    s3.put("a.jpg", b"x")
    proxy = TcpProxy(s3_endpoint.port)  # never started: its port is held, connections are refused
    use_endpoint(monkeypatch, proxy.endpoint)
    try:
        _endpoint_down_checks(s3)
    finally:
        proxy.close()


def _endpoint_down_checks(s3) -> None:
    fs3.configure(max_attempts=2)
    with pytest.raises(fs3.S3TransientError) as err:
        fs3.read_bytes(s3.uri("a.jpg"))
    assert not isinstance(err.value, OSError)
    with pytest.raises(fs3.S3TransientError):
        list(fs3.list_images(s3.uri(), EXTS, []))
    with pytest.raises(fs3.S3TransientError):
        list(fs3.list_images(s3.uri("a.jpg"), EXTS, []))  # a named object: a HEAD first
    store = fs3.S3Store(s3.uri("out"), multipart_threshold=5 * 1024 * 1024)
    for body in (b"x", b"\0" * 6 * 1024 * 1024):  # one PUT; a multipart upload
        with pytest.raises(fs3.S3TransientError):
            store.write_bytes("x.parquet", body)
    with pytest.raises(fs3.S3TransientError):
        store.exists("x.parquet")


def test_body_cut_mid_stream_is_resumed_with_a_ranged_get(s3, s3_endpoint, monkeypatch):
    body = bytes(range(256)) * 4096  # 1 MiB
    s3.put("big.jpg", body)
    with TcpProxy(s3_endpoint.port) as proxy:
        use_endpoint(monkeypatch, proxy.endpoint)
        calls = count_calls("GetObject")
        proxy.cut_responses(300_000, times=2)  # headers plus part of the body, twice
        assert fs3.read_bytes(s3.uri("big.jpg")) == body
    ranges = [c.get("Range") for c in calls]
    assert ranges[0] is None and len(ranges) == 3
    assert all(r and r.startswith("bytes=") for r in ranges[1:])
    assert all(c.get("IfMatch") for c in calls[1:])
