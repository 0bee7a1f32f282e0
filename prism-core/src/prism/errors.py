"""Every error Prism raises on purpose.

Each error says what happened and what to do about it, naming the namespace, the
key and the limit where they apply. The gateway maps these classes onto gRPC
status codes, so the class is part of the contract, not only the message.
"""

from __future__ import annotations

from collections.abc import Sequence


class PrismError(Exception):
    """Base class of every error Prism raises on purpose."""


class ConfigError(PrismError):
    """The configuration is invalid. ``problems`` lists every problem found, each
    starting with the path of the offending value (``namespaces.users.needs.ttl``)."""

    def __init__(self, problems: Sequence[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"invalid Prism configuration{where} ({count} {noun}):\n{lines}")


class PlanError(PrismError):
    """No configured backend can serve a namespace. ``reasons`` maps each backend
    name to why it does not fit."""

    def __init__(self, namespace: str, abstraction: str, reasons: dict[str, str]) -> None:
        self.namespace = namespace
        self.abstraction = abstraction
        self.reasons = dict(reasons)
        if reasons:
            detail = "\n".join(f"  - {name}: {why}" for name, why in reasons.items())
        else:
            detail = "  - no backends are configured; add one under `backends:`"
        super().__init__(
            f"namespace {namespace!r}: no configured backend can serve {abstraction} "
            f"with the declared needs:\n{detail}"
        )


class NamespaceNotFound(PrismError):
    """The namespace is not configured."""

    def __init__(self, namespace: str, known: Sequence[str] = ()) -> None:
        self.namespace = namespace
        hint = f" Configured namespaces: {', '.join(sorted(known))}." if known else ""
        super().__init__(
            f"namespace {namespace!r} is not configured. Declare it under `namespaces:` in prism.yaml.{hint}"
        )


class WrongAbstraction(PrismError):
    """A namespace was opened as an abstraction it was not declared with."""

    def __init__(self, namespace: str, declared: str, requested: str) -> None:
        self.namespace = namespace
        super().__init__(
            f"namespace {namespace!r} is declared as {declared}, not {requested}; "
            f"open it with .{declared}({namespace!r})"
        )


class InvalidArgument(PrismError):
    """A request is malformed. ``field`` names the offending argument."""

    def __init__(self, message: str, *, namespace: str | None = None, field: str | None = None) -> None:
        self.namespace = namespace
        self.field = field
        prefix = f"namespace {namespace!r}: " if namespace else ""
        super().__init__(prefix + message)


class LimitExceeded(InvalidArgument):
    """A request is over one of the namespace's limits."""

    def __init__(
        self,
        message: str,
        *,
        namespace: str,
        limit_name: str,
        limit: int,
        actual: int,
        field: str | None = None,
    ) -> None:
        self.limit_name = limit_name
        self.limit = limit
        self.actual = actual
        super().__init__(message, namespace=namespace, field=field or limit_name)


class InvalidPageToken(InvalidArgument):
    """A page token is malformed, tampered with, or used outside the namespace,
    record and predicate it was issued for."""

    def __init__(self, reason: str, *, namespace: str) -> None:
        super().__init__(
            f"page token refused: {reason}. Start again without a page token.",
            namespace=namespace,
            field="page_token",
        )


class Unsupported(PrismError):
    """The backend serving a namespace lacks a capability and the core cannot
    emulate it."""

    def __init__(self, capability: str, *, namespace: str, backend: str) -> None:
        self.capability = capability
        self.namespace = namespace
        self.backend = backend
        super().__init__(
            f"namespace {namespace!r}: backend {backend!r} does not support {capability}. "
            f"Pin the namespace to a backend that declares {capability} "
            f"(see `prism plugins`), or avoid this operation."
        )


class BackendError(PrismError):
    """The datastore failed. The request may be retried."""


class Overloaded(PrismError):
    """The gateway shed the call: ``namespace`` already had ``limit`` calls in
    flight (RESOURCE_EXHAUSTED). Nothing was done; retry after a backoff."""

    def __init__(
        self, namespace: str, *, limit: int, limit_name: str = "gateway.limits.max_concurrency"
    ) -> None:
        self.namespace = namespace
        self.limit = limit
        self.limit_name = limit_name
        super().__init__(
            f"namespace {namespace!r}: the gateway is at its limit of {limit} calls in flight for this "
            f"namespace ({limit_name}) and shed this call without running it; retry after a backoff, "
            "or ask the operator to raise the limit"
        )


class BreakerOpen(BackendError):
    """The gateway's circuit breaker for ``backend`` is open: the datastore
    failed its last calls, so calls fail fast (UNAVAILABLE) instead of waiting
    on it. One call is let through after ``retry_after_s`` to probe it."""

    def __init__(
        self, backend: str, *, namespace: str, failures: int, retry_after_s: float, cause: str
    ) -> None:
        self.backend = backend
        self.namespace = namespace
        self.failures = failures
        self.retry_after_s = retry_after_s
        super().__init__(
            f"namespace {namespace!r}: backend {backend!r} is failing ({failures} calls in a row, the last "
            f"with {cause}), so the gateway fails calls to it fast; it probes the backend again in "
            f"{retry_after_s:.1f}s. Retry after that, and check the datastore"
        )
