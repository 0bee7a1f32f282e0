"""Apache Kafka 4.x in KRaft mode: one combined broker and controller, from Maven Central."""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from tools.services.common import HOST, LOG_TAIL_LINES, Service, ServiceError
from tools.services.maven import Artifact, classpath, java_bin, resolve

VERSION = "4.3.1"
CONTROLLER_PORT = 19093
# Kafka's POM names only the slf4j 1.7 API; without a binding the broker logs nothing at all.
# This binds slf4j 1.7 to the log4j2 core that Kafka already depends on (same release).
LOG4J_VERSION = "2.25.4"


def new_cluster_id() -> str:
    """What ``kafka-storage random-uuid`` prints: 16 random bytes, URL-safe base64 without padding.

    Made here rather than by a JVM run, which would cost seconds on every first start.
    Kafka rejects ids that start with '-' (they read as command-line options), so redraw those.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class KafkaService(Service):
    name = "kafka"
    port = 19092
    marker = "kafka.Kafka"
    start_deadline = 120.0
    # prism-plugin-kafka provides the `kafka` Queue backend; backend() below uses its settings.
    has_plugin = True
    stop_deadline = 60.0

    def __init__(self) -> None:
        self._lib = self.dir / "lib"
        self._java = "java"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def prepare(self) -> None:
        self._java = java_bin()
        self._lib = resolve(
            self.name,
            [
                Artifact("org.apache.kafka", "kafka_2.13", VERSION),
                Artifact("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
            ],
        )
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.dir / "server.properties").write_text(self._properties())
        (self.dir / "log4j2.properties").write_text(_LOG4J2)
        self._format_storage()

    def _properties(self) -> str:
        return f"""\
# Written by tools/services; edits are overwritten by the next `up`.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{HOST}:{CONTROLLER_PORT}
listeners=PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{CONTROLLER_PORT}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={self.dir / "data"}
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=true
# One broker: every internal topic must fit on it.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests join groups often; waiting for more members would only add seconds to each.
group.initial.rebalance.delay.ms=0
"""

    def _format_storage(self) -> None:
        # Formatting is once per data folder: the cluster id is written into meta.properties.
        if (self.dir / "data" / "meta.properties").is_file():
            return
        command = [
            self._java,
            *self._jvm_common(),
            "-cp",
            classpath(self._lib),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            new_cluster_id(),
            "-c",
            str(self.dir / "server.properties"),
        ]
        result = subprocess.run(command, cwd=self.dir, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
            raise ServiceError(f"kafka: formatting storage failed ({result.returncode}):\n{output}")

    def _jvm_common(self) -> list[str]:
        return [
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Djava.io.tmpdir={self.dir / 'tmp'}",
            f"-Dkafka.logs.dir={self.dir / 'logs'}",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
        ]

    def command(self) -> Sequence[str]:
        return [
            self._java,
            "-Xms256m",
            "-Xmx512m",
            *self._jvm_common(),
            "-cp",
            classpath(self._lib),
            self.marker,
            str(self.dir / "server.properties"),
        ]

    def probe(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        # log_level 0: refused connections while the broker starts are expected, not worth a line each.
        client = AdminClient(
            {"bootstrap.servers": self.bootstrap, "socket.timeout.ms": int(timeout * 1000), "log_level": 0}
        )
        metadata = client.list_topics(timeout=timeout)
        if not metadata.brokers:
            raise RuntimeError("the metadata response lists no broker")

    def env(self) -> Mapping[str, str]:
        return {"PRISM_TEST_KAFKA": self.bootstrap}

    def backend(self) -> Mapping[str, Any]:
        return {"plugin": "kafka", "bootstrap_servers": self.bootstrap}


_LOG4J2 = """\
# Written by tools/services. Console only: the runner sends stdout to .services/kafka/.
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
# Per-partition chatter says nothing useful about a test broker.
logger.state.name = state.change.logger
logger.state.level = WARN
# Every client, producer and the broker itself print their whole configuration at INFO.
logger.config.name = org.apache.kafka.common.config
logger.config.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
"""
