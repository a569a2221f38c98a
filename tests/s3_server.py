"""An S3-compatible object store on 127.0.0.1 for the tests: moto's standalone server.

It speaks the real S3 protocol over HTTP; the code under test reaches it through the
same pyarrow and boto3 clients it uses against AWS (nothing is mocked inside the test
process). Authentication is on: after the few unauthenticated calls that create an IAM
user and its access key, every request must be signed with that key, so wrong
credentials are refused as AWS refuses them.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from processes import free_port, server

BUCKET = "kd-tune-test"
_SETUP_CALLS = 3  # create_user, put_user_policy, create_access_key


@dataclass(frozen=True)
class S3Server:
    """A running store: its endpoint, the key pair it accepts and its bucket."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str = BUCKET
    pid: int = 0  # the server's process (its CPU time is what a benchmark charges to the store)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with this store's credentials and endpoint."""
        env = dict(os.environ if base is None else base)
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   AWS_ENDPOINT_URL=self.endpoint, AWS_REGION="us-east-1")
        env.pop("AWS_SESSION_TOKEN", None)
        env.pop("AWS_PROFILE", None)
        return env

    def uri(self, prefix: str | None = None) -> str:
        """A fresh ``s3://bucket/prefix`` (a new prefix per call unless one is given)."""
        return f"s3://{self.bucket}/{prefix or 'sweeps-' + uuid.uuid4().hex[:8]}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (relative to it), sorted."""
        prefix = prefix.rstrip("/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix + "/")
        return sorted(o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", []))


@contextlib.contextmanager
def s3_server(folder: Path) -> Iterator[S3Server]:
    """``moto_server`` on 127.0.0.1 in its own process group, with authentication on and
    bucket :data:`BUCKET` made; ended with its group."""
    import boto3

    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with server([moto, "-H", "127.0.0.1", "-p", str(port)], port=port, log=folder / "moto.log", env=env) as proc:
        endpoint = f"http://127.0.0.1:{port}"
        # Authentication on from the next call but _SETUP_CALLS (moto's own switch).
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth",
                                                      data=str(_SETUP_CALLS).encode(), method="POST",
                                                      headers={"Content-Type": "text/plain"}), timeout=10)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="kd-tune")
        iam.put_user_policy(UserName="kd-tune", PolicyName="everything", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="kd-tune")["AccessKey"]
        store = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], pid=proc.pid)
        store.client().create_bucket(Bucket=store.bucket)
        yield store
