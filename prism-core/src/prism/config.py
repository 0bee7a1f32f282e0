"""``prism.yaml``: named backends and the namespaces planned onto them.

Configuration is structured by one private cattrs converter that forbids unknown
keys. Every problem in a file is collected and reported at once, each naming the
path of the offending value and what was expected::

    namespaces.users.needs.ttl: expected a duration like 30d, 12h or 500ms, got 'soon'
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import yaml
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from prism import capabilities
from prism.errors import ConfigError
from prism.plugins.registry import BackendRegistry
from prism.spi import Consistency, Durability
from prism.units import ByteSize, parse_duration, parse_size

Abstraction = Literal["keyvalue", "queue", "timeseries", "counter"]
ABSTRACTIONS: tuple[str, ...] = typing.get_args(Abstraction)
Role = Literal["read", "write", "admin"]
ROLES: tuple[str, ...] = typing.get_args(Role)

#: Namespace names become table, keyspace and topic names, so they are kept to
#: what every datastore accepts (Cassandra: 48 characters, letters, digits, _).
NAMESPACE_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
BACKEND_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")

DEFAULT_CONFIG_FILE = "prism.yaml"
DEFAULT_DATA_DIR = "prism-data"


@attrs.frozen
class Needs:
    """What a namespace needs; the planner finds a backend that meets it all.

    ``ttl`` is also the namespace's default TTL for items written without one.
    """

    durability: Durability | None = None
    consistency: Consistency | None = None
    ttl: timedelta | None = None
    max_value_bytes: ByteSize | None = None
    read_rps: int | None = None
    write_rps: int | None = None
    capabilities: tuple[str, ...] = ()


@attrs.frozen
class Limits:
    """Per-namespace limits, each enforced with an error that names it."""

    max_key_bytes: ByteSize = ByteSize(2048)
    max_value_bytes: ByteSize | None = None
    """None: ``needs.max_value_bytes`` if given, else 8 MiB, capped by the backend."""
    max_items_per_call: int = 1000
    page_size_bytes: ByteSize = ByteSize(2 * 1024 * 1024)
    """The default byte bound of a page; a request may ask for less or more."""
    max_page_size_bytes: ByteSize = ByteSize(16 * 1024 * 1024)
    max_page_items: int = 1000
    tombstone_ttl: timedelta = timedelta(days=1)
    """How long a delete protects against older writes arriving late."""
    max_token_skew: timedelta = timedelta(minutes=10)
    """How far in the future an idempotency token's time may be."""


@attrs.frozen
class QueueLimits:
    """Per-namespace Queue settings and limits (the ``queue:`` block of a queue
    namespace). Each limit is enforced with a ``LimitExceeded`` that names it."""

    max_message_bytes: ByteSize = ByteSize(1024 * 1024)
    """Key, payload and header names and values of one message together; capped by
    what the backend can store."""
    max_batch: int = 1000
    """Messages per publish, deliveries per consume, ids per ack or nack."""
    max_topic_name_bytes: int = 200
    """Topic and group names: letters, digits, '.', '_' and '-', starting with a
    letter or digit, at most this long. 200 leaves room below Kafka's 249 for the
    dead-letter suffix and a namespace prefix."""
    visibility_timeout: timedelta = timedelta(seconds=30)
    """How long a delivery stays with its consumer before it is delivered again."""
    max_attempts: int = 5
    """Deliveries of one message to one group before it moves to the dead-letter topic."""
    max_wait: timedelta = timedelta(seconds=20)
    """The longest ``wait`` a consume call may ask for."""
    max_delay: timedelta = timedelta(days=7)
    """The furthest ``deliver_after`` may lie in the future."""
    dead_letter_suffix: str = ".dlq"
    """A message that exhausted its attempts on topic T moves to topic T + suffix.
    Messages on a topic with this suffix are never moved again."""


@attrs.frozen
class TimeSeriesSettings:
    """Per-namespace TimeSeries settings and limits (the ``timeseries:`` block).
    Each limit is enforced with a ``LimitExceeded`` that names it."""

    retention: timedelta = timedelta(days=30)
    """Events older than this (by event time) are never returned, and are purged.
    A write of an event already past it is refused."""
    max_future_skew: timedelta = timedelta(minutes=1)
    """How far past the current time an event's time may lie; later is refused."""
    bucket: timedelta = timedelta(hours=1)
    """Backends that partition a series by time (Cassandra, DynamoDB) put the
    events of one bucket of this length in one partition. Fixed once events are
    written: a backend refuses to serve a namespace whose bucket changed."""
    max_payload_bytes: ByteSize = ByteSize(64 * 1024)
    """The largest event payload; capped by what the backend can store."""
    max_tags: int = 32
    """Tags per event."""
    max_tag_bytes: int = 256
    """One tag's name and value together, in UTF-8."""
    max_series_name_bytes: int = 256
    max_event_id_bytes: int = 128
    max_events_per_call: int = 1000
    """Events per write."""
    max_page_events: int = 1000
    """The most events one read returns; also the default ``limit``."""
    page_size_bytes: ByteSize = ByteSize(2 * 1024 * 1024)
    """A page ends before its events' payloads and tags pass this size (at
    least one event is always returned)."""


CounterMode = Literal["best_effort", "exact"]


@attrs.frozen
class CounterSettings:
    """Per-namespace Counter settings (the ``counter:`` block)."""

    mode: CounterMode = "best_effort"
    """``best_effort``: the datastore's native atomic increment; a retried add may
    count twice. ``exact``: adds and clears are idempotent by their token, so a
    replay never counts twice; costs a token check per write. The planner only
    picks a backend that declares the mode (``counter.best_effort``,
    ``counter.exact``)."""
    token_window: timedelta = timedelta(minutes=10)
    """``exact`` only: how long a token is remembered. An add or clear whose
    token is older than this is refused (its replay could no longer be
    recognised); a client retries within it, with the same token."""
    max_counter_name_bytes: int = 256


@attrs.frozen
class NamespaceConfig:
    abstraction: Abstraction
    needs: Needs = Needs()
    backend: str | None = None
    limits: Limits = Limits()
    queue: QueueLimits = QueueLimits()
    """Only for queue namespaces."""
    timeseries: TimeSeriesSettings = TimeSeriesSettings()
    """Only for timeseries namespaces."""
    counter: CounterSettings = CounterSettings()
    """Only for counter namespaces."""


@attrs.frozen
class BackendConfig:
    """A named connection: the plugin and its structured settings."""

    plugin: str
    settings: Any


@attrs.frozen
class TokenConfig:
    """One bearer token the gateway accepts: its name (for logs), the SHA-256 of
    the secret (never the secret), and its roles per namespace (``"*"``: all)."""

    name: str
    sha256: str
    """64 lowercase hex characters."""
    grants: Mapping[str, frozenset[str]]


@attrs.frozen
class AuthConfig:
    """``gateway.auth``: when present, every call needs one of these tokens."""

    tokens: tuple[TokenConfig, ...] = ()


@attrs.frozen
class TlsConfig:
    """``gateway.tls``: the server's certificate and key (PEM files) and, when
    ``client_ca`` is set, the CA that client certificates must chain to."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@attrs.frozen
class GatewayLimits:
    """``gateway.limits``: what protects the datastores behind the gateway.

    The per-call limits (items per call, page size, value and message size)
    are the namespace's own ``limits:`` and ``queue:`` settings, enforced by the
    core embedded and remote alike; these are the limits only a server has."""

    max_request_bytes: ByteSize = ByteSize(32 * 1024 * 1024)
    """The largest request message the gateway reads; larger ones get
    RESOURCE_EXHAUSTED before any of it is decoded."""
    max_concurrency: int = 128
    """Calls in flight per namespace. A call beyond it gets RESOURCE_EXHAUSTED
    at once (load shedding), so admitted calls keep their latency."""
    namespace_concurrency: Mapping[str, int] = attrs.Factory(dict)
    """Per-namespace overrides of ``max_concurrency``."""

    def concurrency_for(self, namespace: str) -> int:
        return self.namespace_concurrency.get(namespace, self.max_concurrency)


@attrs.frozen
class BreakerConfig:
    """``gateway.breaker``: one circuit breaker per backend."""

    failures: int = 5
    """Consecutive failed calls (the datastore unreachable or too slow) that
    open the breaker."""
    open_for: timedelta = timedelta(seconds=5)
    """How long an open breaker fails calls fast before it lets one probe call
    through; the probe's success closes it, its failure opens it again."""


@attrs.frozen
class MetricsConfig:
    """``gateway.metrics``: where Prometheus scrapes the gateway."""

    listen: str
    """``HOST:PORT`` of the metrics HTTP endpoint (``/metrics``)."""


@attrs.frozen
class CreateNamespacesConfig:
    """``gateway.create_namespaces``: the operator's policy for namespaces that
    clients declare at run time (AdminService.CreateNamespace).

    Off unless ``allow`` is true, because a run-time namespace provisions tables
    or topics on a datastore the operator runs: the operator says where
    (``backends``) and how many (``max_namespaces``)."""

    allow: bool = False
    backends: tuple[str, ...] | None = None
    """The backends run-time namespaces may land on; None: every configured one."""
    max_namespaces: int = 10000
    """How many run-time namespaces the gateway holds at once (until it restarts)."""


@attrs.frozen
class GatewayConfig:
    """The ``gateway:`` section; only ``prism serve`` reads it."""

    auth: AuthConfig | None = None
    """None: no authentication, every call is allowed."""
    tls: TlsConfig | None = None
    limits: GatewayLimits = GatewayLimits()
    breaker: BreakerConfig = BreakerConfig()
    metrics: MetricsConfig | None = None
    """None: no metrics endpoint (``prism serve --metrics-listen`` turns it on)."""
    create_namespaces: CreateNamespacesConfig | None = None
    """None: CreateNamespace is refused (PERMISSION_DENIED)."""


@attrs.frozen
class Config:
    backends: Mapping[str, BackendConfig]
    namespaces: Mapping[str, NamespaceConfig]
    auto_namespaces: bool = False
    """Plan undeclared namespaces on first use, with no needs and default limits.
    On in the embedded default, off otherwise."""
    page_token_secret: str | None = None
    """Signs page tokens. Unset: a random secret per process, so page tokens do
    not outlive the process. Also read from ``PRISM_PAGE_TOKEN_SECRET``."""
    source: str | None = None
    base_dir: Path = attrs.field(factory=Path.cwd)
    """Relative paths in backend settings are resolved against this folder."""
    gateway: GatewayConfig = GatewayConfig()


@attrs.frozen
class _RawBackend:
    plugin: str


@attrs.frozen
class _RawConfig:
    backends: dict[str, dict[str, Any]] = attrs.Factory(dict)
    namespaces: dict[str, NamespaceConfig] = attrs.Factory(dict)
    auto_namespaces: bool = False
    page_token_secret: str | None = None
    gateway: dict[str, Any] | None = None


# -- the converter ----------------------------------------------------------------


def _strict_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _strict_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _strict_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal


def _structure_literal(value: object, tp: Any) -> Any:
    allowed = typing.get_args(tp)
    if value not in allowed:
        raise ValueError(f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _structure_capabilities(value: object, _: type) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of capability names, got {value!r}")
    unknown = [v for v in value if v not in capabilities.ALL]
    if unknown:
        raise ValueError(
            f"unknown capabilities {unknown!r}; expected some of {', '.join(sorted(capabilities.ALL))}"
        )
    return tuple(value)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(timedelta, lambda v, _: parse_duration(v))
    conv.register_structure_hook(ByteSize, lambda v, _: ByteSize(parse_size(v)))
    conv.register_structure_hook(Path, lambda v, _: Path(_strict_str(v, str)))
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _structure_capabilities)
    conv.register_structure_hook_func(_is_literal, _structure_literal)
    return conv


_converter = _make_converter()


def structure(data: object, cls: type[Any]) -> Any:
    """Structure ``data`` into ``cls`` with the configuration converter.

    Plugins use it for their own settings types, so their errors read the same.
    """
    return _converter.structure(data, cls)


# -- error reporting ----------------------------------------------------------------


def _note_step(note: object) -> str | None:
    name = getattr(note, "name", None)
    if name is not None:
        return str(name)
    index = getattr(note, "index", None)
    if index is not None:
        return str(index)
    return None


def _join(path: str, step: str) -> str:
    return f"{path}.{step}" if path else step


def flatten_errors(exc: BaseException, path: str = "") -> list[str]:
    """Turn a cattrs validation error into ``path: problem`` lines."""
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        out: list[str] = []
        for sub, note in with_notes:
            step = _note_step(note)
            out += flatten_errors(sub, _join(path, step) if step else path)
        for sub in without:
            out += flatten_errors(sub, path)
        return out
    if isinstance(exc, IterableValidationError):
        grouped, rest = exc.group_exceptions()
        lines: list[str] = []
        for item_exc, item_note in grouped:
            lines += flatten_errors(item_exc, _join(path, str(item_note.index)))
        for sub in rest:
            lines += flatten_errors(sub, path)
        return lines
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        keys = ", ".join(repr(k) for k in sorted(exc.extra_fields))
        hint = f"; expected one of: {', '.join(known)}" if known else ""
        return [f"{path or '(top level)'}: unknown key {keys}{hint}"]
    if isinstance(exc, KeyError):
        return [
            f"{path}: required key {exc.args[0]!r} is missing"
            if path
            else f"required key {exc.args[0]!r} is missing"
        ]
    if isinstance(exc, ExceptionGroup):
        return [line for sub in exc.exceptions for line in flatten_errors(sub, path)]
    message = str(exc)
    if isinstance(exc, TypeError | AttributeError) or not message:
        message = f"invalid value ({type(exc).__name__}: {exc})"
    return [f"{path}: {message}" if path else message]


def _missing_fields(data: Mapping[str, Any], cls: type[Any], path: str) -> list[str]:
    return [
        f"{_join(path, field.name)}: required key is missing"
        for field in attrs.fields(cls)
        if field.default is attrs.NOTHING and field.name not in data
    ]


# -- loading --------------------------------------------------------------------------


def parse_config(
    data: object,
    registry: BackendRegistry,
    *,
    source: str | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Validate a parsed ``prism.yaml`` mapping against the loaded plugins.

    :raises ConfigError: listing every problem found.
    """
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            [f"expected a mapping with backends: and namespaces:, got {type(data).__name__}"], source
        )

    raw: _RawConfig | None = None
    try:
        raw = _converter.structure(data, _RawConfig)
    except Exception as exc:
        problems += flatten_errors(exc)
        # Keep going with what can be salvaged, so that backend settings and
        # pins are checked in the same run.
        raw = _salvage(data, problems)

    backends: dict[str, BackendConfig] = {}
    for name, body in raw.backends.items():
        path = f"backends.{name}"
        if not BACKEND_NAME.fullmatch(name):
            problems.append(f"{path}: backend names are letters, digits, '_' and '-', starting with a letter")
        if not isinstance(body, Mapping):
            problems.append(f"{path}: expected a mapping with plugin: and its settings, got {body!r}")
            continue
        plugin = body.get("plugin")
        if plugin is None:
            problems.append(f"{path}.plugin: required key is missing; name a plugin such as sqlite or memory")
            continue
        if not isinstance(plugin, str):
            problems.append(f"{path}.plugin: expected a plugin name, got {plugin!r}")
            continue
        settings_type = registry.settings_type(plugin)
        if settings_type is None:
            available = ", ".join(registry.names()) or "none"
            problems.append(
                f"{path}.plugin: no installed plugin is named {plugin!r} (available: {available}); "
                f"install it (pip install prism-plugin-{plugin}) or check `prism plugins`"
            )
            continue
        settings_data = {k: v for k, v in body.items() if k != "plugin"}
        try:
            settings = _converter.structure(settings_data, settings_type)
        except Exception as exc:
            problems += flatten_errors(exc, path)
            continue
        backends[name] = BackendConfig(plugin=plugin, settings=settings)

    for name, ns in raw.namespaces.items():
        path = f"namespaces.{name}"
        if not NAMESPACE_NAME.fullmatch(name):
            problems.append(
                f"{path}: namespace names are 1-48 lowercase letters, digits and '_', starting with a letter"
            )
        if ns.backend is not None and ns.backend not in raw.backends:
            known = ", ".join(raw.backends) or "none configured"
            problems.append(f"{path}.backend: no backend is named {ns.backend!r} (backends: {known})")
        problems += _abstraction_problems(path, ns)

    gateway = _parse_gateway(raw.gateway, base_dir or Path.cwd(), problems)
    problems += _create_namespaces_backend_problems(gateway.create_namespaces, raw.backends)

    if problems:
        raise ConfigError(problems, source)
    secret = raw.page_token_secret or os.environ.get("PRISM_PAGE_TOKEN_SECRET") or None
    return Config(
        backends=backends,
        namespaces=dict(raw.namespaces),
        auto_namespaces=raw.auto_namespaces,
        page_token_secret=secret,
        source=source,
        base_dir=base_dir or Path.cwd(),
        gateway=gateway,
    )


def _abstraction_problems(path: str, ns: NamespaceConfig) -> list[str]:
    """Settings that do not belong to the namespace's abstraction are errors, not
    silently ignored."""
    out: list[str] = []
    foreign = sorted(set(ns.needs.capabilities) - capabilities.BY_ABSTRACTION[ns.abstraction])
    if foreign:
        out.append(
            f"{path}.needs.capabilities: {', '.join(foreign)} do not apply to {ns.abstraction}; "
            f"expected some of {', '.join(sorted(capabilities.BY_ABSTRACTION[ns.abstraction]))}"
        )
    if ns.abstraction != "queue" and ns.queue != QueueLimits():
        out.append(f"{path}.queue: only queue namespaces take queue settings")
    if ns.abstraction != "timeseries" and ns.timeseries != TimeSeriesSettings():
        out.append(f"{path}.timeseries: only timeseries namespaces take timeseries settings")
    if ns.abstraction != "counter" and ns.counter != CounterSettings():
        out.append(f"{path}.counter: only counter namespaces take counter settings")
    if ns.abstraction == "timeseries":
        out += _timeseries_problems(f"{path}.timeseries", ns.timeseries)
    if ns.abstraction == "counter":
        c = ns.counter
        if c.token_window <= timedelta(0):
            out.append(f"{path}.counter.token_window: must be longer than 0")
        if c.max_counter_name_bytes < 1:
            out.append(
                f"{path}.counter.max_counter_name_bytes: must be at least 1, got {c.max_counter_name_bytes}"
            )
    if ns.abstraction == "queue":
        q = ns.queue
        for name, value in (("max_batch", q.max_batch), ("max_attempts", q.max_attempts)):
            if value < 1:
                out.append(f"{path}.queue.{name}: must be at least 1, got {value}")
        if q.max_topic_name_bytes < 1:
            out.append(f"{path}.queue.max_topic_name_bytes: must be at least 1, got {q.max_topic_name_bytes}")
        if q.visibility_timeout <= timedelta(0):
            out.append(f"{path}.queue.visibility_timeout: must be longer than 0")
        if not q.dead_letter_suffix or not re.fullmatch(r"[A-Za-z0-9._-]+", q.dead_letter_suffix):
            out.append(
                f"{path}.queue.dead_letter_suffix: use letters, digits, '.', '_' and '-', "
                f"got {q.dead_letter_suffix!r}"
            )
    return out


def _timeseries_problems(path: str, t: TimeSeriesSettings) -> list[str]:
    out: list[str] = []
    for name in ("retention", "bucket"):
        if getattr(t, name) <= timedelta(0):
            out.append(f"{path}.{name}: must be longer than 0")
    if t.bucket.microseconds or t.bucket.total_seconds() < 1:
        out.append(f"{path}.bucket: use whole seconds, at least 1s (got {t.bucket})")
    if t.max_future_skew < timedelta(0):
        out.append(f"{path}.max_future_skew: must not be negative")
    counts = (
        ("max_tags", t.max_tags, 0),
        ("max_tag_bytes", t.max_tag_bytes, 1),
        ("max_series_name_bytes", t.max_series_name_bytes, 1),
        ("max_event_id_bytes", t.max_event_id_bytes, 1),
        ("max_events_per_call", t.max_events_per_call, 1),
        ("max_page_events", t.max_page_events, 1),
        ("max_payload_bytes", t.max_payload_bytes, 0),
        ("page_size_bytes", t.page_size_bytes, 1),
    )
    for name, value, least in counts:
        if value < least:
            out.append(f"{path}.{name}: must be at least {least}, got {value}")
    return out


def _salvage(data: Mapping[str, Any], problems: list[str]) -> _RawConfig:
    """Structure each namespace on its own, keeping the valid ones, so that one
    bad namespace does not hide problems elsewhere. Problems were already
    reported by the whole-file pass."""
    backends = data.get("backends")
    namespaces: dict[str, NamespaceConfig] = {}
    raw_namespaces = data.get("namespaces")
    if isinstance(raw_namespaces, Mapping):
        for name, body in raw_namespaces.items():
            try:
                namespaces[str(name)] = _converter.structure(body, NamespaceConfig)
            except Exception:
                continue
    gateway = data.get("gateway")
    return _RawConfig(
        backends=dict(backends) if isinstance(backends, Mapping) else {},
        namespaces=namespaces,
        gateway=dict(gateway) if isinstance(gateway, Mapping) else None,
    )


# -- the gateway section ----------------------------------------------------------------
#
# Checked by hand rather than by the converter alone: a token is named by its
# position (``gateway.auth.tokens[0]``), and a secret pasted where its hash
# belongs must be refused without echoing it back into a log or a terminal.

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@attrs.frozen
class _RawToken:
    name: str
    sha256: str
    grants: dict[str, list[str]] = attrs.Factory(dict)


@attrs.frozen
class _RawTls:
    cert: Path
    key: Path
    client_ca: Path | None = None


def _unknown_keys(body: Mapping[str, Any], known: tuple[str, ...], path: str) -> list[str]:
    extra = sorted(str(k) for k in body if k not in known)
    if not extra:
        return []
    return [f"{path}: unknown key {', '.join(map(repr, extra))}; expected one of: {', '.join(known)}"]


def _parse_token(body: object, path: str, problems: list[str]) -> TokenConfig | None:
    if not isinstance(body, Mapping):
        problems.append(
            f"{path}: expected a mapping with name:, sha256: and grants:, got {type(body).__name__}"
        )
        return None
    try:
        raw: _RawToken = _converter.structure(body, _RawToken)
    except Exception as exc:
        problems += flatten_errors(exc, path)
        return None
    ok = True
    if not raw.name.strip():
        problems.append(f"{path}.name: give the token a name (it names the caller in logs)")
        ok = False
    digest = raw.sha256.strip()
    if not _SHA256_HEX.fullmatch(digest):
        # Never echo the value: it may be the secret itself.
        problems.append(
            f"{path}.sha256: expected the SHA-256 of the token as 64 hex characters, got "
            f"{len(raw.sha256)} characters that are not; this looks like a plain token. Put only its hash "
            "in prism.yaml (`prism token new` prints both), and replace the token if it was shared"
        )
        ok = False
    grants: dict[str, frozenset[str]] = {}
    for namespace, roles in raw.grants.items():
        grant_path = f"{path}.grants.{namespace}"
        if namespace != "*" and not NAMESPACE_NAME.fullmatch(namespace):
            problems.append(f'{grant_path}: grant a namespace name, or "*" for every namespace')
            ok = False
        unknown = [role for role in roles if role not in ROLES]
        if unknown:
            problems.append(
                f"{grant_path}: unknown roles {', '.join(map(repr, unknown))}; expected some of "
                f"{', '.join(ROLES)}"
            )
            ok = False
        elif not roles:
            problems.append(
                f"{grant_path}: grant at least one of {', '.join(ROLES)}, or leave the namespace out"
            )
            ok = False
        grants[namespace] = frozenset(roles)
    if not ok:
        return None
    return TokenConfig(name=raw.name, sha256=digest.lower(), grants=grants)


def _parse_auth(body: object, problems: list[str]) -> AuthConfig | None:
    path = "gateway.auth"
    if not isinstance(body, Mapping):
        problems.append(f"{path}: expected a mapping with tokens:, got {body!r}")
        return None
    problems += _unknown_keys(body, ("tokens",), path)
    raw_tokens = body.get("tokens", [])
    if not isinstance(raw_tokens, list):
        problems.append(f"{path}.tokens: expected a list of tokens (name:, sha256:, grants:)")
        return None
    tokens: list[TokenConfig] = []
    names: dict[str, int] = {}
    digests: dict[str, int] = {}
    for index, item in enumerate(raw_tokens):
        token_path = f"{path}.tokens[{index}]"
        token = _parse_token(item, token_path, problems)
        if token is None:
            continue
        if token.name in names:
            problems.append(
                f"{token_path}.name: {token.name!r} is also the name of tokens[{names[token.name]}]; "
                "names must be unique so logs tell callers apart"
            )
        if token.sha256 in digests:
            problems.append(
                f"{token_path}.sha256: the same hash as tokens[{digests[token.sha256]}]; "
                "one token cannot have two entries"
            )
        names.setdefault(token.name, index)
        digests.setdefault(token.sha256, index)
        tokens.append(token)
    return AuthConfig(tokens=tuple(tokens))


def _parse_tls(body: object, base_dir: Path, problems: list[str]) -> TlsConfig | None:
    path = "gateway.tls"
    if not isinstance(body, Mapping):
        problems.append(
            f"{path}: expected a mapping with cert:, key: and optionally client_ca:, got {body!r}"
        )
        return None
    try:
        raw: _RawTls = _converter.structure(body, _RawTls)
    except Exception as exc:
        problems += flatten_errors(exc, path)
        return None
    return TlsConfig(
        cert=base_dir / raw.cert,
        key=base_dir / raw.key,
        client_ca=base_dir / raw.client_ca if raw.client_ca is not None else None,
    )


def _parse_gateway(body: Mapping[str, Any] | None, base_dir: Path, problems: list[str]) -> GatewayConfig:
    """The ``gateway:`` section; relative paths are resolved against ``base_dir``
    (the config file's folder), as backend paths are."""
    if body is None:
        return GatewayConfig()
    problems += _unknown_keys(
        body, ("auth", "tls", "limits", "breaker", "metrics", "create_namespaces"), "gateway"
    )
    auth = _parse_auth(body["auth"], problems) if body.get("auth") is not None else None
    tls = _parse_tls(body["tls"], base_dir, problems) if body.get("tls") is not None else None
    limits = _parse_section(body.get("limits"), GatewayLimits, "gateway.limits", problems)
    breaker = _parse_section(body.get("breaker"), BreakerConfig, "gateway.breaker", problems)
    metrics = (
        _parse_section(body["metrics"], MetricsConfig, "gateway.metrics", problems)
        if body.get("metrics") is not None
        else None
    )
    create_namespaces = (
        _parse_create_namespaces(body["create_namespaces"], problems)
        if body.get("create_namespaces") is not None
        else None
    )
    return GatewayConfig(
        auth=auth,
        tls=tls,
        limits=limits or GatewayLimits(),
        breaker=breaker or BreakerConfig(),
        metrics=metrics,
        create_namespaces=create_namespaces,
    )


@attrs.frozen
class _RawCreateNamespaces:
    # list, not tuple: the converter's tuple[str, ...] hook checks capability names.
    allow: bool = False
    backends: list[str] | None = None
    max_namespaces: int = 10000


def _parse_create_namespaces(body: object, problems: list[str]) -> CreateNamespacesConfig | None:
    """``gateway.create_namespaces``; its backend names are checked against
    ``backends:`` by :func:`_create_namespaces_backend_problems`."""
    path = "gateway.create_namespaces"
    if not isinstance(body, Mapping):
        problems.append(
            f"{path}: expected a mapping like {{allow: true, backends: [NAME, ...], max_namespaces: N}}, "
            f"got {body!r}"
        )
        return None
    try:
        raw: _RawCreateNamespaces = _converter.structure(body, _RawCreateNamespaces)
    except Exception as exc:
        problems += flatten_errors(exc, path)
        return None
    ok = True
    if raw.max_namespaces < 1:
        problems.append(
            f"{path}.max_namespaces: must be at least 1, got {raw.max_namespaces}; "
            "set allow: false to refuse run-time namespaces"
        )
        ok = False
    if raw.backends is not None and not raw.backends:
        problems.append(f"{path}.backends: name at least one backend, or leave the key out for all of them")
        ok = False
    if not ok:
        return None
    backends = tuple(raw.backends) if raw.backends is not None else None
    return CreateNamespacesConfig(allow=raw.allow, backends=backends, max_namespaces=raw.max_namespaces)


def _create_namespaces_backend_problems(
    policy: CreateNamespacesConfig | None, configured: Mapping[str, Any]
) -> list[str]:
    """Every name in ``gateway.create_namespaces.backends`` must be a configured backend."""
    if policy is None or policy.backends is None:
        return []
    known = ", ".join(configured) or "none configured"
    return [
        f"gateway.create_namespaces.backends.{index}: no backend is named {name!r} (backends: {known})"
        for index, name in enumerate(policy.backends)
        if name not in configured
    ]


_S = typing.TypeVar("_S", GatewayLimits, BreakerConfig, MetricsConfig)


def _parse_section(body: object, cls: type[_S], path: str, problems: list[str]) -> _S | None:
    """One plain ``gateway:`` block through the converter, with its own checks:
    every count at least 1, and listen addresses as ``HOST:PORT``."""
    if body is None:
        return None
    if not isinstance(body, Mapping):
        problems.append(f"{path}: expected a mapping, got {body!r}")
        return None
    try:
        section: _S = _converter.structure(body, cls)
    except Exception as exc:
        problems += flatten_errors(exc, path)
        return None
    ok = True
    if isinstance(section, GatewayLimits):
        counts = {"max_concurrency": section.max_concurrency} | {
            f"namespace_concurrency.{name}": value for name, value in section.namespace_concurrency.items()
        }
        for name, value in counts.items():
            if value < 1:
                problems.append(f"{path}.{name}: must be at least 1, got {value}")
                ok = False
        if section.max_request_bytes < 1024:
            problems.append(
                f"{path}.max_request_bytes: must be at least 1KiB, got {section.max_request_bytes}"
            )
            ok = False
    elif isinstance(section, BreakerConfig):
        if section.failures < 1:
            problems.append(f"{path}.failures: must be at least 1, got {section.failures}")
            ok = False
        if section.open_for <= timedelta(0):
            problems.append(f"{path}.open_for: must be longer than 0s")
            ok = False
    elif not _HOST_PORT.fullmatch(section.listen):
        problems.append(f"{path}.listen: expected HOST:PORT such as 127.0.0.1:9464, got {section.listen!r}")
        ok = False
    return section if ok else None


_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}")


def load_config(path: str | os.PathLike[str], registry: BackendRegistry) -> Config:
    """Read and validate a ``prism.yaml`` file.

    :raises ConfigError: when the file is missing, is not YAML, or is invalid.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the configuration file: {exc.strerror or exc}"], str(file)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(file)) from exc
    return parse_config(data, registry, source=str(file), base_dir=file.resolve().parent)


def default_config_data(data_dir: str = DEFAULT_DATA_DIR) -> dict[str, Any]:
    """The embedded default: SQLite in ``./prism-data/``, namespaces planned on use."""
    return {
        "backends": {"local": {"plugin": "sqlite", "path": f"{data_dir}/prism.db"}},
        "namespaces": {},
        "auto_namespaces": True,
    }


def resolve_config(
    config: Config | Mapping[str, Any] | str | os.PathLike[str] | None,
    registry: BackendRegistry,
) -> Config:
    """Turn what a user passed to ``prism.open`` or ``--config`` into a Config.

    ``None`` means ``./prism.yaml`` when it exists, else the embedded default.
    """
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return parse_config(config, registry, source="<dict>")
    if config is None:
        if Path(DEFAULT_CONFIG_FILE).is_file():
            return load_config(DEFAULT_CONFIG_FILE, registry)
        return parse_config(default_config_data(), registry, source="<embedded default>")
    return load_config(config, registry)
