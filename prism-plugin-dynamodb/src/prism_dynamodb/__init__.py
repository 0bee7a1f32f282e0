"""Prism's DynamoDB backend: KeyValue on Amazon DynamoDB through boto3.

Install the distribution and name ``plugin: dynamodb`` under ``backends:`` in
``prism.yaml``; :mod:`prism_dynamodb.plugin` registers it through the
``prism.backends`` entry point.
"""

from __future__ import annotations

from prism_dynamodb.keyvalue import KEYVALUE, DynamoKeyValue, DynamoSettings

__all__ = ["KEYVALUE", "DynamoKeyValue", "DynamoSettings"]
