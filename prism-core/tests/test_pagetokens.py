from __future__ import annotations

import pytest

from prism.errors import InvalidPageToken
from prism.pagetokens import PageTokenSigner


def test_round_trip() -> None:
    signer = PageTokenSigner("secret")
    token = signer.issue("users", "items", b"binding", {"after": "YQ=="})
    assert signer.open(token, "users", "items", b"binding") == {"after": "YQ=="}


@pytest.mark.parametrize(
    ("namespace", "kind", "binding", "reason"),
    [
        ("orders", "items", b"binding", "issued for namespace 'users'"),
        ("users", "scan", b"binding", "items listing"),
        ("users", "items", b"other", "another record or predicate"),
    ],
)
def test_token_is_bound(namespace: str, kind: str, binding: bytes, reason: str) -> None:
    signer = PageTokenSigner("secret")
    token = signer.issue("users", "items", b"binding", {"after": "YQ=="})
    with pytest.raises(InvalidPageToken, match=reason):
        signer.open(token, namespace, kind, binding)


def test_tampering_and_foreign_secret_are_refused() -> None:
    signer = PageTokenSigner("secret")
    token = signer.issue("users", "items", b"b", {"after": "YQ=="})
    body, mac = token.split(".")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    with pytest.raises(InvalidPageToken, match="signature"):
        signer.open(f"{flipped}.{mac}", "users", "items", b"b")
    with pytest.raises(InvalidPageToken, match="signature"):
        PageTokenSigner("other").open(token, "users", "items", b"b")
    for garbage in ["", "nonsense", "!!!.???", "a.b.c"]:
        with pytest.raises(InvalidPageToken):
            signer.open(garbage, "users", "items", b"b")


def test_every_other_last_character_is_refused() -> None:
    """A 32-byte signature is 43 base64 characters, the last carrying 4 unused
    bits; a decoder that ignores them accepts 4 spellings of the same token.
    Only the issued one may pass."""
    signer = PageTokenSigner("secret")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for n in range(40):
        token = signer.issue("users", "items", b"b", {"n": n})
        for char in alphabet:
            altered = token[:-1] + char
            if altered == token:
                continue
            with pytest.raises(InvalidPageToken):
                signer.open(altered, "users", "items", b"b")
