"""``prism token new``: make a bearer token for the gateway.

It prints the token once, for the client, and the ``gateway.auth.tokens``
entry holding only its SHA-256, for the operator's prism.yaml. Prism never
stores the token itself, so a lost token is replaced, not recovered.

``prism.cli`` wires it in with ``add_token_parser(sub)``.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys

from prism.gateway.auth import hash_token

#: A prefix makes a leaked token easy to recognise (secret scanners, grep);
#: the 32 random bytes after it (256 bits) are what make it unguessable.
TOKEN_PREFIX = "prism_"
TOKEN_BYTES = 32

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:/-]{0,127}")


def new_token() -> str:
    """A fresh random token: ``prism_`` and 43 URL-safe characters."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def config_entry(name: str, token: str) -> str:
    """The one-line ``gateway.auth.tokens`` entry for ``token`` (YAML flow style;
    the name is JSON-quoted, which YAML reads as the same string)."""
    return f'- {{name: {json.dumps(name)}, sha256: "{hash_token(token)}", grants: {{}}}}'


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a token name: use 1-128 letters, digits and . _ @ : / -, "
            "starting with a letter or digit (for example billing-service)"
        )
    return value


def add_token_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``token`` (with ``token new``) to the ``prism`` command's subparsers."""
    p = subparsers.add_parser(
        "token",
        help="make bearer tokens for the gateway",
        description="Bearer tokens for `prism serve` with gateway.auth.",
    )
    commands = p.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    new = commands.add_parser(
        "new",
        help="print a new random token and its prism.yaml entry",
        description=(
            "Print a new random token (once: Prism keeps only its hash) and the entry to add under "
            "gateway.auth.tokens in prism.yaml. Fill in its grants, for example {orders: [read, write]}."
        ),
    )
    new.add_argument(
        "--name", type=_name, default="client", help="who uses the token, as logs name it (default: client)"
    )
    new.set_defaults(func=cmd_token_new)
    return p


def cmd_token_new(args: argparse.Namespace) -> int:
    token = new_token()
    # stdout is the two lines to copy; the guidance goes to stderr, so
    # `prism token new > file` keeps only what matters.
    print(f"token: {token}")
    print(config_entry(args.name, token))
    print(
        "\nGive the token to the client (prism.remote.connect(target, token=...)); it is not shown again.\n"
        "Add the entry under gateway.auth.tokens in prism.yaml, fill in its grants "
        "(for example {orders: [read, write]}), and restart `prism serve`.",
        file=sys.stderr,
    )
    return 0


__all__ = ["TOKEN_PREFIX", "add_token_parser", "cmd_token_new", "config_entry", "new_token"]
