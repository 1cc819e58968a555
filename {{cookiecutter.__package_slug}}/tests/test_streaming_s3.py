"""S3 to S3 through a HashingQueueIO, with boto3 against moto's in-process S3."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, cast

import boto3
import moto
import pytest
from boto3.s3.transfer import TransferConfig

from {{ cookiecutter.__package_slug }}.streaming import HashingQueueIO, PipeAbortedError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest multipart part, which moto enforces too
WAIT = 20.0
CONFIG = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=2)


class WatchedPipe(HashingQueueIO):
    """Tells the test when the reader (the upload) is blocked waiting for data."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watch = threading.Condition()
        self.reader_waiting = False

    def _wait_for_data(
        self, want: int, deadline: float | None, parts: list[tuple[bytes, int, int]], got: int
    ) -> float | None:
        with self.watch:
            self.reader_waiting = True
            self.watch.notify_all()
        try:
            return super()._wait_for_data(want, deadline, parts, got)
        finally:
            with self.watch:
                self.reader_waiting = False

    def until_reader_waits(self) -> None:
        with self.watch:
            assert self.watch.wait_for(lambda: self.reader_waiting, WAIT), "upload never waited"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Client]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        client: S3Client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="source")
        client.create_bucket(Bucket="dest")
        yield client


def start(target: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def finish(thread: threading.Thread) -> None:
    thread.join(WAIT)
    assert not thread.is_alive(), "thread did not finish in time"


def upload_from(s3: S3Client, pipe: HashingQueueIO, key: str, bucket: str = "dest") -> None:
    """The reader side: boto3 reads the pipe; on failure it hangs up with the cause."""
    try:
        # boto3's stubs ask for typing.IO; any object with read() is what it uses.
        s3.upload_fileobj(cast("IO[bytes]", pipe), bucket, key, Config=CONFIG)
    except BaseException as exc:
        pipe.close_read(exc)
        raise


@pytest.mark.parametrize("seed", [1, 2])
def test_s3_to_s3_streams_in_parts_with_matching_sha256(s3: S3Client, seed: int) -> None:
    rng = random.Random(seed)
    source = os.urandom(4 * PART + 3 * MiB + rng.randrange(1, 100_000))
    s3.put_object(Bucket="source", Key="file.bin", Body=source)

    part_uploaded = threading.Event()
    parts_sent: list[int] = []

    def on_part_sent(params: dict[str, Any], **kwargs: Any) -> None:
        parts_sent.append(params["PartNumber"])

    s3.meta.events.register("before-parameter-build.s3.UploadPart", on_part_sent)
    s3.meta.events.register("after-call.s3.UploadPart", lambda **kwargs: part_uploaded.set())
    pipe = WatchedPipe(memory_limit=2 * MiB, chunk_size=256 * 1024)
    stalls = set(rng.sample(range(60), 8))

    def download() -> None:
        body = s3.get_object(Bucket="source", Key="file.bin")["Body"]
        written = 0
        step = 0
        with pipe:
            while chunk := body.read(rng.randrange(1, 1_500_000)):
                if step in stalls:
                    pipe.until_reader_waits()  # the upload is blocked mid-read(n)
                if written >= 2 * PART and not part_uploaded.is_set():
                    # Streaming, not buffering: a part must go up while we still write.
                    assert part_uploaded.wait(WAIT), "no part was uploaded before EOF"
                pipe.write(chunk)
                written += len(chunk)
                step += 1

    writer, writer_errors = start(download)
    reader, reader_errors = start(lambda: upload_from(s3, pipe, "copy.bin"))
    finish(writer)
    finish(reader)
    assert writer_errors == []
    assert reader_errors == []

    copy = s3.get_object(Bucket="dest", Key="copy.bin")
    assert copy["Body"].read() == source
    assert pipe.hexdigest() == hashlib.sha256(source).hexdigest()
    assert copy["ETag"].strip('"').endswith("-5")  # a multipart upload of five parts
    assert sorted(parts_sent) == [1, 2, 3, 4, 5]
    assert pipe.max_buffered <= 2 * MiB


def test_small_object_goes_up_in_one_put(s3: S3Client) -> None:
    source = os.urandom(300_000)
    s3.put_object(Bucket="source", Key="small.bin", Body=source)
    pipe = WatchedPipe(memory_limit=MiB)

    def download() -> None:
        body = s3.get_object(Bucket="source", Key="small.bin")["Body"]
        with pipe:
            for chunk in body.iter_chunks(64 * 1024):
                pipe.write(chunk)

    writer, writer_errors = start(download)
    upload_from(s3, pipe, "small.bin")
    finish(writer)
    assert writer_errors == []
    copy = s3.get_object(Bucket="dest", Key="small.bin")
    assert copy["Body"].read() == source
    assert "-" not in copy["ETag"]
    assert pipe.hexdigest() == hashlib.sha256(source).hexdigest()


def test_writer_failure_fails_the_upload_and_leaves_no_object(s3: S3Client) -> None:
    pipe = WatchedPipe(memory_limit=2 * MiB)
    failure = ConnectionResetError("source connection lost")

    def download() -> None:
        with pipe:
            pipe.write(os.urandom(PART + MiB))  # the first part can go up
            pipe.until_reader_waits()
            raise failure

    writer, writer_errors = start(download)
    with pytest.raises(PipeAbortedError) as info:
        upload_from(s3, pipe, "broken.bin")
    finish(writer)
    assert writer_errors == [failure]
    assert info.value.__cause__ is failure
    assert s3.list_objects_v2(Bucket="dest").get("KeyCount") == 0
    assert s3.list_multipart_uploads(Bucket="dest").get("Uploads", []) == []


def test_upload_failure_does_not_hang_the_writer(s3: S3Client) -> None:
    # s3transfer reads its source to the end even after a request failed, so the
    # writer is never left blocked on a full pipe; the error comes out of
    # upload_fileobj, and the read end is closed with it as the cause.
    pipe = WatchedPipe(memory_limit=MiB)

    def download() -> None:
        with pipe:
            for _ in range(40):
                pipe.write(os.urandom(256 * 1024))  # 10 MiB through a 1 MiB pipe

    writer, writer_errors = start(download)
    with pytest.raises(Exception, match="NoSuchBucket"):
        upload_from(s3, pipe, "x.bin", bucket="missing-bucket")
    finish(writer)
    assert writer_errors == []
    assert pipe.max_buffered <= MiB
    with pytest.raises(ValueError, match="read end is closed"):
        pipe.read(1)
