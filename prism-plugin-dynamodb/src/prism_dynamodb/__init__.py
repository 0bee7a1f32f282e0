"""Prism's DynamoDB backend: KeyValue, time-bucketed TimeSeries and Counters
(UpdateItem ADD, and transactions with token items for exact mode) on Amazon
DynamoDB through boto3.

Install the distribution and name ``plugin: dynamodb`` under ``backends:`` in
``prism.yaml``; :mod:`prism_dynamodb.plugin` registers it through the
``prism.backends`` entry point.
"""

from __future__ import annotations

from prism_dynamodb.counter import COUNTER, DynamoCounter
from prism_dynamodb.keyvalue import KEYVALUE, DynamoKeyValue
from prism_dynamodb.service import DynamoSettings
from prism_dynamodb.timeseries import TIMESERIES, DynamoTimeSeries

__all__ = [
    "COUNTER",
    "KEYVALUE",
    "TIMESERIES",
    "DynamoCounter",
    "DynamoKeyValue",
    "DynamoSettings",
    "DynamoTimeSeries",
]
