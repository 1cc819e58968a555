"""The S3-to-S3 recipe of docs/streaming.md, run against moto (test_docs.py runs every block)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import boto3
import moto
import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "streaming.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)


def test_s3_recipe_copies_and_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    [recipe] = [block for block in BLOCKS if "def copy_s3_object" in block]
    namespace: dict[str, Any] = {"__name__": "streaming_doc_s3"}
    exec(compile(recipe, f"{DOC.name}[s3 recipe]", "exec"), namespace)
    copy_s3_object = namespace["copy_s3_object"]

    data = os.urandom(9 * 1024 * 1024 + 123)  # above boto3's 8 MiB multipart threshold
    with moto.mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="src")
        s3.create_bucket(Bucket="dst")
        s3.put_object(Bucket="src", Key="in.bin", Body=data)
        digest = copy_s3_object(s3, "src", "in.bin", "dst", "out.bin", memory_limit=2**20)
        copy = s3.get_object(Bucket="dst", Key="out.bin")
        assert copy["Body"].read() == data
        assert copy["ETag"].strip('"').endswith("-2")  # two parts: 8 MiB and the rest
        assert digest == hashlib.sha256(data).hexdigest()

        with pytest.raises(Exception, match="NoSuchKey"):
            copy_s3_object(s3, "src", "missing.bin", "dst", "never.bin")
        assert s3.list_objects_v2(Bucket="dst").get("KeyCount") == 1
