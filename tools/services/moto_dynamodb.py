"""DynamoDB as served by moto (``moto[server]``), spoken to by real boto3 over HTTP.

moto runs through :mod:`tools.services.moto_serial`, one request at a time, so
each DynamoDB request is atomic as on real DynamoDB (see that module)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tools.services.common import HOST, Service

REGION = "us-east-1"


class DynamoDBService(Service):
    name = "dynamodb"
    port = 18000
    marker = "moto_serial.py"
    start_deadline = 60.0

    def __init__(self) -> None:
        self._python = sys.executable

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def prepare(self) -> None:
        # The runner's own interpreter has moto[server] (the nox session installs it).
        self._python = sys.executable

    def command(self) -> Sequence[str]:
        return [self._python, str(Path(__file__).with_name("moto_serial.py")), HOST, str(self.port)]

    def probe(self, timeout: float) -> None:
        # Loaded lazily (slow to import, and `status` may run where it is missing); no stubs installed.
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        client = boto3.client(
            "dynamodb",
            endpoint_url=self.url,
            region_name=REGION,
            # moto accepts any credentials; fixed dummies keep real ones on this machine out of it.
            aws_access_key_id="prism-test",
            aws_secret_access_key="prism-test",
            config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1}),
        )
        response = client.list_tables()
        if "TableNames" not in response:
            raise RuntimeError("ListTables answered without TableNames")

    def env(self) -> Mapping[str, str]:
        return {"PRISM_TEST_DYNAMODB_URL": self.url}

    def backend(self) -> Mapping[str, Any]:
        # moto accepts any credentials but boto3 refuses to sign without some;
        # a machine with no AWS configuration (CI) has none.
        return {
            "plugin": "dynamodb",
            "endpoint_url": self.url,
            "region": REGION,
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
        }
