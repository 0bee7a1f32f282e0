"""Prism's Kafka backend: Queue on Apache Kafka, through confluent-kafka.

Install the distribution and name ``plugin: kafka`` under ``backends:`` in
``prism.yaml``; :mod:`prism_kafka.plugin` registers it through the
``prism.backends`` entry point. See the README for topic naming, sizing and
the delivery and commit semantics.
"""

from __future__ import annotations

from prism_kafka.queue import QUEUE, KafkaQueue
from prism_kafka.settings import KafkaSettings

__all__ = ["QUEUE", "KafkaQueue", "KafkaSettings"]
