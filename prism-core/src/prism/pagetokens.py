"""Signed, opaque page tokens.

A token is ``base64url(payload) "." base64url(hmac_sha256(secret, payload))``.
The payload names the namespace, the kind of listing and a digest of what it is
bound to (record and predicate), plus the cursor. A token presented anywhere
else, or altered by one bit, is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any

from prism.errors import InvalidPageToken

_VERSION = 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode, refusing any text :func:`_b64` would not have produced: base64
    ignores the unused low bits of the last character, so without this check
    a token whose last character was changed could still decode to the
    signature and pass."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


class PageTokenSigner:
    def __init__(self, secret: str | bytes | None = None) -> None:
        if secret is None:
            key = os.urandom(32)
        elif isinstance(secret, str):
            key = secret.encode("utf-8")
        else:
            key = secret
        self._key = hashlib.sha256(b"prism.page-token\x00" + key).digest()

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def issue(self, namespace: str, kind: str, binding: bytes, cursor: dict[str, Any]) -> str:
        payload = json.dumps(
            {
                "v": _VERSION,
                "ns": namespace,
                "k": kind,
                "b": hashlib.sha256(binding).hexdigest()[:32],
                "c": cursor,
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode("utf-8")
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def open(self, token: str, namespace: str, kind: str, binding: bytes) -> dict[str, Any]:
        """The cursor of a token issued for exactly this namespace, kind and binding.

        :raises InvalidPageToken: naming why the token is refused.
        """
        try:
            body, _, mac = token.partition(".")
            payload = _unb64(body)
            given = _unb64(mac)
        except (ValueError, TypeError):
            raise InvalidPageToken("it is not a Prism page token", namespace=namespace) from None
        if not hmac.compare_digest(given, self._mac(payload)):
            raise InvalidPageToken(
                "its signature does not match (it was altered, or issued by a gateway with another secret)",
                namespace=namespace,
            )
        data = json.loads(payload)
        if data.get("v") != _VERSION:
            raise InvalidPageToken("it was issued by an incompatible version", namespace=namespace)
        if data["ns"] != namespace:
            raise InvalidPageToken(f"it was issued for namespace {data['ns']!r}", namespace=namespace)
        if data["k"] != kind:
            raise InvalidPageToken(
                f"it was issued for a {data['k']} listing, not {kind}", namespace=namespace
            )
        if data["b"] != hashlib.sha256(binding).hexdigest()[:32]:
            raise InvalidPageToken(
                "it was issued for another record or predicate; pass the same record id and predicate",
                namespace=namespace,
            )
        cursor: dict[str, Any] = data["c"]
        return cursor
