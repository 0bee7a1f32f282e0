"""Who may call what: bearer tokens with per-namespace roles.

The gateway's ``gateway.auth`` section lists tokens by the SHA-256 of their
secret. A call carries ``authorization: Bearer TOKEN``; the gateway hashes the
token and looks the digest up. A plain SHA-256 is enough because tokens are
high-entropy random strings (``prism token new`` makes 256-bit ones): a slow
password hash defends low-entropy secrets against guessing, and there is
nothing to guess here. The lookup compares digests with
:func:`hmac.compare_digest` so that its timing says nothing about how close a
guess came.

Which role each method needs is :data:`REQUIRED_ROLE`, the one table the
servicers consult (through :class:`prism.gateway.services.Calls`), before the
operation runs: a refused call reads and writes nothing.

``admin`` does not imply ``read`` or ``write``: it is for operators who plan
namespaces, and seeing a namespace's plan is not reading its data (Kafka keeps
Alter and Read apart the same way). Grant ``[read, write, admin]`` for all three.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

import attrs

from prism.config import ROLES, AuthConfig, TokenConfig

#: The role each prism.v1 method needs on the request's namespace. ``None``:
#: any role on it will do. ListNamespaces needs only a valid token; it lists
#: the namespaces the token holds any role on.
REQUIRED_ROLE: Mapping[str, str | None] = {
    "GetItems": "read",
    "Scan": "read",
    "PutItems": "write",
    "DeleteItems": "write",
    "MutateItems": "write",
    "Publish": "write",
    # Consumers need read, as Kafka consumers need Read on the topic and group:
    # leasing, acking and nacking only move the group's own position.
    "Consume": "read",
    "Subscribe": "read",
    "Ack": "read",
    "Nack": "read",
    # TimeSeries and Counter: writes need write, reads need read.
    "WriteEvents": "write",
    "ReadEvents": "read",
    "Add": "write",
    "Clear": "write",
    "Get": "read",
    "GetPlan": None,
    "CreateNamespace": "admin",
}

#: Every namespace, in a grant.
ANY_NAMESPACE = "*"


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as ``gateway.auth.tokens[].sha256`` holds it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@attrs.frozen
class Principal:
    """The caller a token identifies: its name (for logs) and its grants."""

    name: str
    grants: Mapping[str, frozenset[str]]

    def roles_on(self, namespace: str) -> frozenset[str]:
        """The roles held on ``namespace``: its own grant and the ``"*"`` grant."""
        return self.grants.get(namespace, frozenset()) | self.grants.get(ANY_NAMESPACE, frozenset())

    def may(self, method: str, namespace: str) -> bool:
        """Whether ``method`` is allowed on ``namespace`` (see :data:`REQUIRED_ROLE`)."""
        roles = self.roles_on(namespace)
        needed = REQUIRED_ROLE[method]
        return bool(roles) if needed is None else needed in roles


#: The caller when auth is off: every role on every namespace.
ANONYMOUS = Principal("anonymous", {ANY_NAMESPACE: frozenset(ROLES)})


class Refusal(Exception):
    """Why a call's credentials were not accepted (UNAUTHENTICATED). The message
    goes to the caller; ``reason`` to the log."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Authenticator:
    """Maps the ``authorization`` metadata of a call to a :class:`Principal`.

    ``None`` config: auth is off and every call is :data:`ANONYMOUS`.
    """

    def __init__(self, config: AuthConfig | None) -> None:
        self.enabled = config is not None
        self._tokens: tuple[TokenConfig, ...] = config.tokens if config is not None else ()
        self._principals = {t.sha256: Principal(t.name, t.grants) for t in self._tokens}

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        """The caller, or :class:`Refusal` when the token is missing, malformed or unknown."""
        if not self.enabled:
            return ANONYMOUS
        values = [value for key, value in metadata or () if key.lower() == "authorization"]
        if not values:
            raise Refusal(
                "this gateway requires a token: send `authorization: Bearer TOKEN` "
                "(prism.remote.connect(target, token=...))",
                "no authorization metadata",
            )
        if len(values) > 1:
            raise Refusal("send one authorization header, not several", "several authorization values")
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        # The scheme is case-insensitive (RFC 7235); the token is not.
        if scheme.lower() != "bearer" or not token:
            raise Refusal(
                "the authorization metadata must be `Bearer TOKEN`",
                "malformed authorization metadata",
            )
        principal = self._lookup(hash_token(token))
        if principal is None:
            raise Refusal(
                "the token is not valid on this gateway; check it, or ask the gateway's operator for one",
                "unknown token",
            )
        return principal

    def _lookup(self, digest: str) -> Principal | None:
        # Every entry is compared, in constant time each, so the time taken
        # does not depend on which entry (if any) matched.
        found: Principal | None = None
        for token in self._tokens:
            if hmac.compare_digest(token.sha256, digest):
                found = self._principals[token.sha256]
        return found


def denial_message(principal: Principal, method: str, namespace: str) -> str:
    """What a caller is told when its token lacks the role (never the token)."""
    needed = REQUIRED_ROLE[method]
    if needed is None:
        what = "needs a grant (read, write or admin)"
        fix = f"{namespace}: [read]"
    else:
        what = f"needs the {needed} role"
        fix = f"{namespace}: [{needed}]"
    return (
        f"namespace {namespace!r}: {method} {what}, which token {principal.name!r} does not have here; "
        f"ask the gateway's operator to add `{fix}` to its grants in gateway.auth.tokens"
    )


__all__ = [
    "ANONYMOUS",
    "ANY_NAMESPACE",
    "REQUIRED_ROLE",
    "Authenticator",
    "Principal",
    "Refusal",
    "denial_message",
    "hash_token",
]
