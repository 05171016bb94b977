"""S3 (and S3-compatible stores: MinIO, Ceph) through boto3: listing, reading, and an output Store.

Credentials come from the standard AWS chain (env vars, ~/.aws, instance/pod roles). The endpoint
comes from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, which boto3 reads itself; `configure()`
sets the former, so an `--endpoint-url` given to the driver also reaches every Ray worker that
inherits the driver's environment (local Ray), and `worker_env()` lists what to hand to workers
on a cluster through Ray's runtime_env.

Errors are split the way the pipeline needs them: a permanent failure on one object (missing,
forbidden, archived) raises an `OSError` subclass, like a local file would (the image gets an
`unreadable` error); a transient failure that outlived botocore's retries raises
`S3TransientError`, a `SourceUnavailable` and not an OSError (the image gets `unavailable` and
is tried again by the next run; a failed write fails the shard, which Ray retries). Missing or
refused credentials and denied access raise `S3AccessError` (a PermissionError) at once,
saying how to give credentials: no retry can fix them.

URIs are `s3://bucket/key` with the key verbatim: spaces, unicode, `..` segments and a leading
`/` are part of the key and are never normalised, so every listed key reads back as itself.
"""
from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import PurePosixPath

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from facejob.io.base import ImageRef, SourceUnavailable, digest, safe_rel

ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"
# Environment that decides where and how workers talk to S3. Credentials are deliberately not
# shipped: on a cluster each node gets them from its own instance or pod role.
WORKER_ENV_VARS = (ENDPOINT_ENV, "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "FACEJOB_S3_MAX_ATTEMPTS")

# Bounded retries with client-side rate limiting: "adaptive" backs off on throttling (SlowDown).
# botocore waits rand(0,1) * min(0.05 s * 2**i, 20 s) before retry i after a connection error or
# 5xx (1 s base when throttled): 12 attempts wait ~33 s in all on average (at most ~65 s), enough
# for a blip or a restart; past that, S3TransientError. FACEJOB_S3_MAX_ATTEMPTS overrides.
MAX_ATTEMPTS = 12
ATTEMPTS_ENV = "FACEJOB_S3_MAX_ATTEMPTS"
# Keys per listing request (S3's maximum); one page is all a listing holds in memory.
PAGE_SIZE = 1000
# A body whose stream breaks mid-read is resumed with ranged GETs this many times.
BODY_ATTEMPTS = 5
# Parquet parts below this go up in one PUT; larger ones as a multipart upload that only becomes
# visible when completed (and is aborted on failure), so readers never see a partial part.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024


class S3TransientError(SourceUnavailable):
    """S3 kept failing after all retries (endpoint down, 5xx, throttling): worth trying again later."""


class S3AccessError(PermissionError):
    """No S3 credentials, credentials S3 does not know, or access they do not grant: no retry
    fixes it, so it is not retried (the command says what to give instead)."""


HOW_TO_GIVE_CREDENTIALS = ("give them with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE "
                           "(~/.aws/credentials), or an instance or pod role; for MinIO or Ceph also "
                           "--endpoint-url (or AWS_ENDPOINT_URL)")
# S3's answers to a key id it does not know or a secret that does not match it.
_BAD_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId")


_lock = threading.Lock()
_client = None
_client_pid: int | None = None


def configure(endpoint_url: str | None = None, max_attempts: int | None = None) -> None:
    """Point every S3 call of this process, and of Ray workers started from it, at `endpoint_url`.

    Both settings travel as environment variables: call this before `ray.init()` and locally
    started workers inherit them; on a cluster pass `worker_env()` in the runtime_env. None
    keeps what the environment says. Always drops the cached client.
    """
    global _client
    if endpoint_url:
        os.environ[ENDPOINT_ENV] = endpoint_url
    if max_attempts is not None:
        os.environ[ATTEMPTS_ENV] = str(int(max_attempts))
    with _lock:
        _client = None


def worker_env() -> dict[str, str]:
    """The S3 settings of this process, for `ray.init(runtime_env={"env_vars": ...})` on a cluster."""
    return {k: os.environ[k] for k in WORKER_ENV_VARS if os.environ.get(k)}


def client():
    """This process's S3 client (boto3 clients are thread-safe; sessions are not, so one each)."""
    global _client, _client_pid
    with _lock:
        if _client is None or _client_pid != os.getpid():
            config = Config(
                retries={"mode": "adaptive", "total_max_attempts": int(os.environ.get(ATTEMPTS_ENV, MAX_ATTEMPTS))},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=32,
            )
            # The endpoint (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) and credentials: boto3's own chain.
            _client = boto3.session.Session().client("s3", config=config)
            _client_pid = os.getpid()
        return _client


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/any/key` → ("bucket", "any/key"), the key kept byte for byte."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _is_transient(e: ClientError) -> bool:
    return _status(e) >= 500 or _status(e) == 429 or _code(e) in ("SlowDown", "Throttling", "RequestTimeout")


def _raise_for(e: Exception, what: str) -> None:
    """Re-raise a boto error as S3AccessError, OSError (permanent, per object) or S3TransientError."""
    if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        raise S3AccessError(f"{what}: no S3 credentials found ({e}); {HOW_TO_GIVE_CREDENTIALS}") from None
    if isinstance(e, ClientError) and _code(e) in _BAD_CREDENTIALS:
        raise S3AccessError(f"{what}: S3 refused the credentials ({_code(e)}: "
                                 f"{e.response.get('Error', {}).get('Message', '')}); check them: "
                                 f"{HOW_TO_GIVE_CREDENTIALS}") from None
    if isinstance(e, ClientError) and not _is_transient(e):
        code, status = _code(e), _status(e)
        msg = f"{what}: {code or status} {e.response.get('Error', {}).get('Message', '')}".strip()
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound") or status == 404:
            raise FileNotFoundError(msg) from e
        if code in ("AccessDenied", "403", "Forbidden") or status == 403:
            raise S3AccessError(f"{msg}; S3 denied these credentials access: use ones allowed to do this "
                                f"(AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or ask for "
                                f"access to the bucket") from e
        raise OSError(msg) from e
    raise S3TransientError(f"{what}: {e}") from e


def _is_object(bucket: str, key: str) -> ImageRef | None:
    try:
        head = client().head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if _status(e) in (403, 404):  # 403: a missing key without s3:ListBucket permission
            return None
        _raise_for(e, f"s3://{bucket}/{key}")
    except BotoCoreError as e:
        _raise_for(e, f"s3://{bucket}/{key}")
    return ImageRef(f"s3://{bucket}/{key}", int(head["ContentLength"]), etag=head["ETag"].strip('"'))


def _pages(bucket: str, prefix: str) -> Iterator[dict]:
    """Objects under `prefix`, one listing page (≤1000 keys) in memory at a time, in key order."""
    paginator = client().get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": PAGE_SIZE}):
            yield from page.get("Contents", [])
    except (ClientError, BotoCoreError) as e:
        _raise_for(e, f"listing s3://{bucket}/{prefix}")


def list_images(src: str, extensions: tuple[str, ...], skipped: list[str]) -> Iterator[ImageRef]:
    """Stream the photos under an s3:// prefix, in S3's key order (the same on every run).

    `s3://b/photos` means the object `photos` if there is one, and everything under `photos/`
    (not `photos2/`). An object named exactly is listed whatever its extension, like a local
    file named explicitly; under a prefix, keys whose extension is not in `extensions` are
    appended to `skipped` and folder markers (keys ending in '/') are ignored. A prefix with
    nothing under it raises FileNotFoundError, like a missing local folder: a mistyped prefix
    must not look like an archive whose photos were all deleted.
    """
    bucket, prefix = split_uri(src)
    found = False
    if prefix and not prefix.endswith("/"):
        exact = _is_object(bucket, prefix)
        if exact is not None:
            found = True
            yield exact
        prefix += "/"
    for obj in _pages(bucket, prefix):
        found = True
        key = obj["Key"]
        if key.endswith("/"):
            continue
        uri = f"s3://{bucket}/{key}"
        if PurePosixPath(key).suffix.lower() not in extensions:
            skipped.append(uri)
            continue
        yield ImageRef(uri, int(obj["Size"]), etag=obj["ETag"].strip('"'))
    if not found:
        raise FileNotFoundError(f"source not found: nothing under {src}")


# Errors of a body stream that broke after the GET succeeded; botocore does not retry these.
_STREAM_ERRORS = (BotoCoreError, ConnectionError, TimeoutError)


def _get(bucket: str, key: str) -> bytes:
    what = f"s3://{bucket}/{key}"
    try:
        resp = client().get_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as e:
        _raise_for(e, what)
    size, etag = int(resp["ContentLength"]), resp["ETag"]
    buf = bytearray()
    for attempt in range(BODY_ATTEMPTS):
        try:
            for chunk in resp["Body"].iter_chunks(1 << 20):
                buf += chunk
            break
        except _STREAM_ERRORS as e:
            if attempt == BODY_ATTEMPTS - 1:
                raise S3TransientError(f"{what}: body kept breaking after {len(buf)} bytes: {e}") from e
        # Resume where the stream broke; If-Match makes sure the rest is the same object version.
        try:
            resp = client().get_object(Bucket=bucket, Key=key, Range=f"bytes={len(buf)}-", IfMatch=etag)
        except (ClientError, BotoCoreError) as e:
            if isinstance(e, ClientError) and _status(e) == 412:
                raise S3TransientError(f"{what}: object changed while it was being read") from e
            _raise_for(e, what)
    if len(buf) != size:
        raise S3TransientError(f"{what}: read {len(buf)} of {size} bytes")
    return bytes(buf)


def read_bytes(uri: str) -> bytes:
    """All bytes of one object; OSError if it is missing or forbidden, S3TransientError if S3 is down."""
    return _get(*split_uri(uri))


def _precondition_failed(e: ClientError) -> bool:
    # 412: the condition did not hold; 409: AWS's answer to a concurrent conditional write.
    return _status(e) in (409, 412) or _code(e) in ("PreconditionFailed", "ConditionalRequestConflict")


def put_conditional(uri: str, data: bytes, if_match: str | None = None) -> str | None:
    """PUT `data` only if the object does not exist (if_match None) or still has ETag `if_match`.

    Returns the new ETag, or None when the condition did not hold (S3 decides atomically, so
    of two writers racing for one key exactly one wins).
    """
    bucket, key = split_uri(uri)
    cond = {"IfMatch": f'"{if_match}"'} if if_match else {"IfNoneMatch": "*"}
    try:
        return client().put_object(Bucket=bucket, Key=key, Body=data, **cond)["ETag"].strip('"')
    except ClientError as e:
        if _precondition_failed(e) or (if_match and _status(e) == 404):
            return None
        _raise_for(e, uri)
    except BotoCoreError as e:
        _raise_for(e, uri)
    return None  # unreachable: _raise_for always raises


def get_versioned(uri: str) -> tuple[bytes, str, float, float] | None:
    """(body, ETag, last-modified, the server's clock now) of a small object, or None if missing.

    Both times come from the S3 server, so comparing them needs no trust in local clocks.
    """
    from email.utils import parsedate_to_datetime

    bucket, key = split_uri(uri)
    try:
        resp = client().get_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if _status(e) == 404:
            return None
        _raise_for(e, uri)
    except BotoCoreError as e:
        _raise_for(e, uri)
    date = resp["ResponseMetadata"]["HTTPHeaders"].get("date")
    now = parsedate_to_datetime(date).timestamp() if date else resp["LastModified"].timestamp()
    return resp["Body"].read(), resp["ETag"].strip('"'), resp["LastModified"].timestamp(), now


def delete_conditional(uri: str, if_match: str) -> bool:
    """Delete the object only if it still has ETag `if_match`; False if it changed or is gone."""
    bucket, key = split_uri(uri)
    try:
        client().delete_object(Bucket=bucket, Key=key, IfMatch=f'"{if_match}"')
        return True
    except ClientError as e:
        if _precondition_failed(e) or _status(e) == 404:
            return False
        _raise_for(e, uri)
    except BotoCoreError as e:
        _raise_for(e, uri)
    return False  # unreachable


class S3Store:
    """The `Store` of facejob.io.storage for an output under s3://bucket/prefix.

    Relative paths pass `safe_rel`, so nothing is ever written outside the prefix.
    """

    def __init__(self, uri: str, multipart_threshold: int = MULTIPART_THRESHOLD, part_size: int = PART_SIZE):
        self.bucket, prefix = split_uri(uri.rstrip("/"))
        self.prefix = f"{prefix}/" if prefix else ""
        self.root = f"s3://{self.bucket}/{prefix}".rstrip("/")
        self._transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=part_size)

    def _key(self, rel: str) -> str:
        return self.prefix + safe_rel(rel)

    def exists(self, rel: str) -> bool:
        try:
            client().head_object(Bucket=self.bucket, Key=self._key(rel))
            return True
        except ClientError as e:
            if _status(e) == 404:
                return False
            _raise_for(e, f"{self.root}/{rel}")
        except BotoCoreError as e:
            _raise_for(e, f"{self.root}/{rel}")
        return False  # unreachable: _raise_for always raises

    def read_bytes(self, rel: str) -> bytes:
        return _get(self.bucket, self._key(rel))

    def read_tail(self, rel: str, n: int) -> bytes:
        """The last `n` bytes (fewer if the object is smaller), in one ranged GET."""
        try:
            return client().get_object(Bucket=self.bucket, Key=self._key(rel), Range=f"bytes=-{n}")["Body"].read()
        except (ClientError, BotoCoreError) as e:
            _raise_for(e, f"{self.root}/{rel}")
        return b""  # unreachable: _raise_for always raises

    def write_bytes(self, rel: str, data: bytes | memoryview) -> None:
        key = self._key(rel)
        try:
            if len(data) < self._transfer.multipart_threshold:     # botocore takes bytes, not a view
                client().put_object(Bucket=self.bucket, Key=key, Body=bytes(data))
            else:
                # s3transfer completes the upload only after every part is in, and aborts it on error.
                client().upload_fileobj(io.BytesIO(data), self.bucket, key, Config=self._transfer)
        except (ClientError, BotoCoreError) as e:
            _raise_for(e, f"{self.root}/{rel}")
        except S3UploadFailedError as e:  # s3transfer's wrapper; the multipart upload was aborted
            raise S3TransientError(f"{self.root}/{rel}: {e}") from e

    def list(self, prefix: str) -> list[str]:
        """Relative paths of the objects under `prefix` (a folder, like LocalStore), sorted."""
        return sorted(self._objects(prefix))

    def list_versions(self, prefix: str) -> dict[str, str]:
        """Like `list`, each path with its version (ETag, size and time of the last write, all from
        the listing itself: no request per object)."""
        return dict(sorted(self._objects(prefix).items()))

    def _objects(self, prefix: str) -> dict[str, str]:
        base = self.prefix + safe_rel(prefix) + "/"
        rels = {}
        for obj in _pages(self.bucket, base):
            rel = obj["Key"][len(self.prefix):]
            if rel.endswith("/") or PurePosixPath(rel).name.startswith("."):
                continue
            try:
                ok = safe_rel(rel) == rel
            except ValueError:
                ok = False
            if ok:  # else a key written by something else (e.g. 'a//b', '../x') that no Store path names
                rels[rel] = digest(obj.get("ETag"), obj.get("Size"), str(obj.get("LastModified")))
        return rels

    def folder_version(self, prefix: str) -> None:
        """None: S3 has no folder whose version would tell that none of its keys changed."""
        return None

    def local_path(self, rel: str = "") -> None:
        return None

    def delete(self, rel: str) -> None:
        try:
            client().delete_object(Bucket=self.bucket, Key=self._key(rel))
        except (ClientError, BotoCoreError) as e:
            _raise_for(e, f"{self.root}/{rel}")
