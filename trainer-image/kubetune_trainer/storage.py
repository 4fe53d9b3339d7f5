"""Reading inputs and writing artefacts: s3:// through boto3's transfer manager, local paths directly.

`Storage` resolves and fetches input URIs; `ArtifactStore` writes below one root (the job's artefact prefix)
and refuses any path outside it. S3 errors become typed errors that name the URI and what to fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import AccessDenied, ConfigError, NotFound, Transient

DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AllAccessDisabled",
                "InvalidToken", "ExpiredToken"}
MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}


@dataclass(frozen=True)
class FileInfo:
    """One input file: its URI, where it lies locally once fetched, and its identity for the manifest."""

    uri: str
    size: int
    etag: str | None = None
    sha256: str | None = None


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


@contextlib.contextmanager
def s3_errors(uri: str, endpoint: str | None) -> Iterator[None]:
    """Translate botocore failures into typed errors naming `uri`."""
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    where = endpoint or "AWS S3"
    try:
        yield
    except NoCredentialsError:
        raise AccessDenied(f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                           "(storage.s3.secretRef in a cluster)") from None
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = str(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        raise _typed(uri, code or status, where, str(err)) from None
    except (S3UploadFailedError, S3TransferFailedError) as err:
        # boto3 folds the ClientError into the message: "... An error occurred (InternalError) when ...".
        found = re.search(r"An error occurred \((\w+)\)", str(err))
        raise _typed(uri, found.group(1) if found else "", where, str(err)) from None
    except BotoCoreError as err:
        raise Transient(f"cannot reach S3 at {where} for {uri}: {err}") from None


def _typed(uri: str, code: str, where: str, detail: str):
    shown = f"HTTP {code}" if code.isdigit() else code
    if code in DENIED_CODES:
        return AccessDenied(f"S3 denied access to {uri} ({shown}) at {where}: check AWS_ACCESS_KEY_ID / "
                            "AWS_SECRET_ACCESS_KEY (storage.s3.secretRef) and the bucket policy")
    if code in MISSING_CODES:
        return NotFound(f"{uri} does not exist ({shown}) at {where}")
    if not code or code.startswith("5") or code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
        return Transient(f"S3 at {where} failed for {uri}: {detail}")
    return AccessDenied(f"S3 refused {uri} at {where}: {detail}")


def s3_attempts() -> int:
    """Attempts per S3 request: botocore's standard retry mode (5xx, throttling, timeouts and refused
    connections, with jittered exponential backoff capped at 20 s), 10 attempts by default: about a minute
    of S3 outage is ridden out; past it the run fails as Transient and the operator retries the attempt.
    AWS_MAX_ATTEMPTS (the AWS SDKs' own variable) overrides it."""
    try:
        return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", "10")))
    except ValueError:
        return 10


def s3_read_timeout() -> float:
    """Seconds an S3 request may wait for the server's answer before it is retried (botocore's default, 60);
    KUBETUNE_S3_READ_TIMEOUT_SECONDS overrides it (a slow gateway, or a test)."""
    try:
        return max(0.1, float(os.environ.get("KUBETUNE_S3_READ_TIMEOUT_SECONDS", "60")))
    except ValueError:
        return 60.0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Storage:
    """Input URIs: s3://, file://, absolute paths, and paths relative to the manifest (local runs)."""

    def __init__(self, s3_spec, manifest_dir: Path | None = None):
        self.s3_spec = s3_spec
        self.manifest_dir = manifest_dir
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            spec = self.s3_spec
            # A fresh session reads the credentials from the environment now (the default one caches them).
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=spec.endpoint, region_name=spec.region,
                config=Config(s3={"addressing_style": spec.addressing_style},
                              retries={"mode": "standard", "max_attempts": s3_attempts()},
                              connect_timeout=10, read_timeout=s3_read_timeout()),
            )
        return self._client

    @staticmethod
    def transfer_config():
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=8)

    def errors(self, uri: str):
        return s3_errors(uri, self.s3_spec.endpoint)

    def resolve(self, uri: str) -> str:
        """s3:// URIs unchanged; everything else as an absolute local path."""
        if uri.startswith("s3://"):
            return uri
        if uri.startswith("file://"):
            return uri.removeprefix("file://")
        if uri.startswith(("./", "../")):
            if self.manifest_dir is None:
                raise ConfigError(f"relative path {uri!r} is only allowed in local runs (kubetune run); "
                                  "use s3://, file:// or an absolute path on a mounted volume")
            return str((self.manifest_dir / uri).resolve())
        return uri

    def list_files(self, uri: str) -> list[FileInfo]:
        """The file at `uri`, or every file below it when it is a folder or a prefix."""
        where = self.resolve(uri)
        if where.startswith("s3://"):
            return self._list_s3(where)
        path = Path(where)
        if path.is_file():
            return [FileInfo(uri=str(path), size=path.stat().st_size)]
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            if files:
                return [FileInfo(uri=str(p), size=p.stat().st_size) for p in files]
        raise NotFound(f"{uri} does not exist" + (f" (resolved to {path})" if str(path) != uri else ""))

    def _list_s3(self, uri: str) -> list[FileInfo]:
        bucket, key = split_s3(uri)
        with self.errors(uri):
            if key and not key.endswith("/"):
                try:
                    head = self.client.head_object(Bucket=bucket, Key=key)
                    return [FileInfo(uri=uri, size=head["ContentLength"], etag=head["ETag"].strip('"'))]
                except self.client.exceptions.ClientError as err:
                    if str(err.response.get("Error", {}).get("Code")) not in MISSING_CODES:
                        raise
            prefix = key.rstrip("/") + "/" if key else ""
            found = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        found.append(FileInfo(uri=f"s3://{bucket}/{obj['Key']}", size=obj["Size"],
                                              etag=obj["ETag"].strip('"')))
        if not found:
            raise NotFound(f"{uri} does not exist (no object and no objects below it)")
        return found

    def fetch(self, info: FileInfo, dest: Path) -> tuple[Path, FileInfo]:
        """A local copy of the file (downloaded when it is in S3) and its info with a checksum."""
        if not info.uri.startswith("s3://"):
            path = Path(info.uri)
            return path, FileInfo(uri=info.uri, size=info.size, sha256=sha256_of(path))
        bucket, key = split_s3(info.uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.errors(info.uri):
            self.client.download_file(bucket, key, str(dest), Config=self.transfer_config())
        return dest, info

    def fetch_tree(self, uri: str, dest: Path) -> Path:
        """Mirror a folder or prefix into `dest`, skipping files already there with the same ETag."""
        where = self.resolve(uri)
        if not where.startswith("s3://"):
            return Path(where)
        files = self.list_files(where)
        prefix = split_s3(where)[1].rstrip("/") + "/"
        for info in files:
            rel = split_s3(info.uri)[1].removeprefix(prefix)
            target = dest / rel
            stamp = target.with_name(f".{target.name}.etag")
            if target.exists() and stamp.exists() and stamp.read_text() == info.etag:
                continue
            self.fetch(info, target)
            stamp.write_text(info.etag or "")
        return dest


class ArtifactStore:
    """Writes below one root (`s3://bucket/prefix/` or a local folder) and nowhere else."""

    def __init__(self, root: str, storage: Storage):
        self.storage = storage
        self.root = storage.resolve(root).rstrip("/") + "/"
        self.is_s3 = self.root.startswith("s3://")

    def uri(self, rel: str = "") -> str:
        return self.root + self._check(rel)

    @staticmethod
    def _check(rel: str) -> str:
        parts = Path(rel).parts
        if rel.startswith("/") or ".." in parts:
            raise ValueError(f"artefact path {rel!r} would leave the job's prefix")
        return rel

    def exists(self, rel: str) -> bool:
        if not self.is_s3:
            return Path(self.uri(rel)).exists()
        bucket, key = split_s3(self.uri(rel))
        with self.storage.errors(self.uri(rel)):
            try:
                self.storage.client.head_object(Bucket=bucket, Key=key)
                return True
            except self.storage.client.exceptions.ClientError as err:
                if str(err.response.get("Error", {}).get("Code")) in MISSING_CODES:
                    return False
                raise

    def read_text(self, rel: str) -> str:
        if not self.is_s3:
            return Path(self.uri(rel)).read_text()
        bucket, key = split_s3(self.uri(rel))
        with self.storage.errors(self.uri(rel)):
            return self.storage.client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()

    def write_text(self, rel: str, text: str) -> str:
        if not self.is_s3:
            path = Path(self.uri(rel))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".partial")
            tmp.write_text(text)
            tmp.replace(path)
            return str(path)
        bucket, key = split_s3(self.uri(rel))
        with self.storage.errors(self.uri(rel)):
            self.storage.client.put_object(Bucket=bucket, Key=key, Body=text.encode())
        return self.uri(rel)

    def create_exclusive(self, rel: str, text: str) -> str | None:
        """Create `rel` holding `text` only if nothing is there (S3 `If-None-Match: *`, O_EXCL locally);
        None when created, else what is already there."""
        for _ in range(5):  # a holder may release between our create and our read: then create again
            if not self._create_if_absent(rel, text):
                return None
            try:
                return self.read_text(rel)
            except (NotFound, FileNotFoundError):
                continue
        return self.read_text(rel)

    def _create_if_absent(self, rel: str, text: str) -> bool:
        """False when created; True when something was already there."""
        if not self.is_s3:
            path = Path(self.uri(rel))
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return True
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return False
        from botocore.exceptions import ClientError

        bucket, key = split_s3(self.uri(rel))
        with self.storage.errors(self.uri(rel)):
            try:
                self.storage.client.put_object(Bucket=bucket, Key=key, Body=text.encode(), IfNoneMatch="*")
                return False
            except ClientError as err:  # 412: it exists; 409: a concurrent conditional write won
                if str(err.response.get("Error", {}).get("Code")) not in ("PreconditionFailed",
                                                                           "ConditionalRequestConflict"):
                    raise
                return True

    def delete(self, rel: str) -> None:
        if not self.is_s3:
            Path(self.uri(rel)).unlink(missing_ok=True)
            return
        bucket, key = split_s3(self.uri(rel))
        with self.storage.errors(self.uri(rel)):
            self.storage.client.delete_object(Bucket=bucket, Key=key)

    def put_file(self, rel: str, local: Path) -> str:
        if not self.is_s3:
            path = Path(self.uri(rel))
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, path.with_name(path.name + ".partial"))
            path.with_name(path.name + ".partial").replace(path)
            return str(path)
        bucket, key = split_s3(self.uri(rel))
        with self.storage.errors(self.uri(rel)):
            self.storage.client.upload_file(str(local), bucket, key, Config=self.storage.transfer_config())
        return self.uri(rel)

    def put_tree(self, rel: str, local_dir: Path) -> str:
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            self.put_file(f"{rel.rstrip('/')}/{path.relative_to(local_dir).as_posix()}", path)
        return self.uri(rel.rstrip("/") + "/")

    def get_tree(self, rel: str, local_dir: Path) -> Path:
        if not self.is_s3:
            shutil.copytree(self.uri(rel), local_dir, dirs_exist_ok=True)
            return local_dir
        return self.storage.fetch_tree(self.uri(rel.rstrip("/") + "/"), local_dir)

    def list_dirs(self, rel: str) -> list[str]:
        """Names of the immediate sub-folders of `rel` that hold at least one file."""
        if not self.is_s3:
            path = Path(self.uri(rel))
            return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
        # Derived from the keys themselves: some stores (SeaweedFS) list emptied folders as prefixes.
        bucket, key = split_s3(self.uri(rel.rstrip("/") + "/"))
        names = set()
        with self.storage.errors(self.uri(rel)):
            for page in self.storage.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                for obj in page.get("Contents", []):
                    name, sep, _ = obj["Key"][len(key):].partition("/")
                    if sep:
                        names.add(name)
        return sorted(names)

    def delete_tree(self, rel: str) -> None:
        if not rel.strip("/"):
            raise ValueError("refusing to delete the whole artefact root")
        if not self.is_s3:
            shutil.rmtree(self.uri(rel), ignore_errors=True)
            return
        bucket, key = split_s3(self.uri(rel.rstrip("/") + "/"))
        client = self.storage.client
        with self.storage.errors(self.uri(rel)):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objects:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})


class Background:
    """`fn(*args)` in a daemon thread; `result()` waits and returns its value or raises its error. A daemon,
    so a run that fails meanwhile exits without waiting for a download it no longer needs."""

    def __init__(self, fn, *args):
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name=f"background-{fn.__name__}",
                                        daemon=True)
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._value = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the caller of result(), never swallowed
            self._error = err

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value
