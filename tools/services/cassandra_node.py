"""Apache Cassandra 5.0, one node, from Maven Central's ``cassandra-all`` on the machine's Java 17."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tools.services.common import HOST, Service
from tools.services.maven import Artifact, classpath, java_bin, resolve

VERSION = "5.0.9"
STORAGE_PORT = 17000

# Cassandra reaches into JDK internals (off-heap memory, NIO, JMX, agent attach) on Java 17;
# these mirror the exports and opens of its conf/jvm17-server.options.
_EXPORTS = [
    "java.base/jdk.internal.misc",
    "java.base/jdk.internal.ref",
    "java.base/sun.nio.ch",
    "java.base/java.lang.ref",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "jdk.unsupported/sun.misc",
    "jdk.compiler/com.sun.tools.javac.file",
    "jdk.attach/sun.tools.attach",
]
_OPENS = [
    *(
        f"java.base/{package}"
        for package in (
            "java.lang",
            "java.lang.module",
            "java.lang.reflect",
            "java.io",
            "java.nio",
            "java.util",
            "java.util.concurrent",
            "java.util.concurrent.atomic",
            "jdk.internal.loader",
            "jdk.internal.ref",
            "jdk.internal.reflect",
            "jdk.internal.math",
            "jdk.internal.module",
            "jdk.internal.util.jar",
            "sun.nio.ch",
        )
    ),
    "jdk.management/com.sun.management.internal",
    "jdk.compiler/com.sun.tools.javac",
]


class CassandraService(Service):
    name = "cassandra"
    port = 19042
    marker = "org.apache.cassandra.service.CassandraDaemon"
    # A cold JVM start, schema setup and the first CQL answer take a while on two cores.
    start_deadline = 240.0
    # Cassandra flushes memtables and drains on SIGTERM.
    stop_deadline = 60.0

    def __init__(self) -> None:
        self._lib = self.dir / "lib"
        self._java = "java"

    def prepare(self) -> None:
        self._java = java_bin()
        self._lib = resolve(self.name, [Artifact("org.apache.cassandra", "cassandra-all", VERSION)])
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "tmp", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "cassandra.yaml").write_text(self._yaml())
        (self.dir / "logback.xml").write_text(_LOGBACK)

    def _yaml(self) -> str:
        # Only keys Cassandra 5.0 knows: an unknown or removed key is fatal at start-up.
        d = self.dir
        return f"""\
# Written by tools/services; edits are overwritten by the next `up`.
cluster_name: prism-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
listen_address: {HOST}
rpc_address: {HOST}
storage_port: {STORAGE_PORT}
native_transport_port: {self.port}
start_native_transport: true
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{HOST}:{STORAGE_PORT}"
commitlog_sync: periodic
commitlog_sync_period: 10000ms
auto_snapshot: false
data_file_directories:
  - {d / "data"}
commitlog_directory: {d / "commitlog"}
saved_caches_directory: {d / "saved_caches"}
hints_directory: {d / "hints"}
cdc_raw_directory: {d / "cdc_raw"}
"""

    def command(self) -> Sequence[str]:
        d = self.dir
        return [
            self._java,
            "-Xms512m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            "-XX:+PerfDisableSharedMem",
            "-Djava.net.preferIPv4Stack=true",
            "-Djdk.attach.allowAttachSelf=true",
            "-Dio.netty.tryReflectionSetAccessible=true",
            *(f"--add-exports={module}=ALL-UNNAMED" for module in _EXPORTS),
            *(f"--add-opens={module}=ALL-UNNAMED" for module in _OPENS),
            # Without it the daemon closes stdout and stderr, and our log file stays empty.
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.config=file://{d / 'cassandra.yaml'}",
            f"-Dcassandra.storagedir={d}",
            f"-Dcassandra.logdir={d / 'logs'}",
            f"-Dlogback.configurationFile={d / 'logback.xml'}",
            # JNA, snappy, lz4 and zstd unpack native libraries here; the system /tmp may be noexec.
            f"-Djava.io.tmpdir={d / 'tmp'}",
            # A single seed node has no peers to wait for.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=100",
            "-cp",
            classpath(self._lib),
            self.marker,
        ]

    def probe(self, timeout: float) -> None:
        from cassandra.cluster import Cluster  # lazily: slow to import, and only probes need it

        # Refused connections while the node starts are expected; the driver logs each one loudly.
        logging.getLogger("cassandra").setLevel(logging.CRITICAL)
        cluster = Cluster(
            [HOST],
            port=self.port,
            connect_timeout=timeout,
            control_connection_timeout=timeout,
            protocol_version=5,
        )
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local", timeout=timeout).one()
            if row is None:
                raise RuntimeError("system.local returned no row")
        finally:
            cluster.shutdown()

    def env(self) -> Mapping[str, str]:
        return {"PRISM_TEST_CASSANDRA": f"{HOST}:{self.port}"}

    def backend(self) -> Mapping[str, Any]:
        return {"plugin": "cassandra", "contact_points": [HOST], "port": self.port, "replication_factor": 1}


_LOGBACK = """\
<!-- Written by tools/services. Console only: the runner sends stdout to .services/cassandra/. -->
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%date{ISO8601} %-5level [%thread] %logger{1} %msg%n</pattern></encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="com.datastax" level="WARN"/>
  <logger name="io.netty" level="WARN"/>
  <root level="WARN"><appender-ref ref="STDOUT"/></root>
</configuration>
"""
