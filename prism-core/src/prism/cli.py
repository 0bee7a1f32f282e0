"""The ``prism`` command.

This is the application, so it is the one place that configures logging.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import NoReturn

from prism import capabilities as caps
from prism.client import Prism
from prism.client import open as open_prism
from prism.config import Config, resolve_config
from prism.errors import ConfigError, PrismError
from prism.logging_setup import configure_logging
from prism.models import AllItems, Item, KeyRange, Keys, Predicate
from prism.planner import plan
from prism.plugins.manager import PluginSet, load_plugins
from prism.units import parse_duration

CONFIG_ENV = "PRISM_CONFIG"


class CliError(Exception):
    """A usage problem the CLI reports in one line, exit status 2."""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _config_arg(args: argparse.Namespace) -> str | None:
    value: str | None = args.config or os.environ.get(CONFIG_ENV) or None
    return value


def _load(args: argparse.Namespace) -> tuple[PluginSet, Config]:
    plugins = load_plugins()
    return plugins, resolve_config(_config_arg(args), plugins.registry)


def _describe_source(config: Config) -> str:
    return config.source or "<embedded default>"


# -- prism plugins ------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    plugins = load_plugins()
    rows = [
        [
            p.name,
            p.version,
            p.distribution,
            ", ".join(p.abstractions) or "-",
            ", ".join(p.capabilities) or "-",
        ]
        for p in plugins.loaded
    ]
    print(_table(["plugin", "version", "distribution", "abstractions", "capabilities"], rows))
    if plugins.broken:
        print("\nBroken plugins (skipped):")
        print(
            _table(
                ["plugin", "distribution", "error"],
                [[b.name, b.distribution, b.error] for b in plugins.broken],
            )
        )
        if args.verbose:
            for broken in plugins.broken:
                print(f"\n--- {broken.name} ---\n{broken.detail}")
    if plugins.disabled:
        print(f"\nDisabled by PRISM_DISABLE_PLUGINS: {', '.join(plugins.disabled)}")
    if args.verbose:
        print("\nCapabilities:")
        for name, text in sorted(caps.DESCRIPTIONS.items()):
            print(f"  {name:<18} {text}")
    return 0


# -- prism plan ------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    plugins, config = _load(args)
    plans, errors = plan(config, plugins.registry)
    print(f"Plan for {_describe_source(config)}:")
    if not plans and not errors:
        print(
            "  no namespaces declared"
            + (" (namespaces are planned on first use)" if config.auto_namespaces else "")
        )
        return 0
    rows = [[p.namespace, p.abstraction, p.backend, p.reason] for p in plans]
    rows += [[e.namespace, e.abstraction, "-", "REFUSED: no backend fits"] for e in errors]
    print(_table(["namespace", "abstraction", "backend", "reason"], rows))
    for error in errors:
        print(f"\n{error}", file=sys.stderr)
    return 1 if errors else 0


# -- prism conformance -------------------------------------------------------------------


def cmd_conformance(args: argparse.Namespace) -> int:
    try:
        runner = importlib.import_module("prism_conformance.runner")
    except ImportError:
        raise CliError(
            "the conformance suite is not installed; run `pip install prism-conformance` and try again"
        ) from None
    run: Callable[..., int] = runner.run
    return run(
        args.backend,
        config_path=_config_arg(args),
        abstraction=args.abstraction,
        report_dir=args.report_dir,
    )


# -- prism kv ------------------------------------------------------------------------------


def _decode(text: str, encoding: str, what: str) -> bytes:
    try:
        if encoding == "hex":
            return bytes.fromhex(text)
        if encoding == "base64":
            return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise CliError(f"{what} {text!r} is not valid {encoding}") from None
    return text.encode("utf-8")


def _encode(data: bytes, encoding: str) -> str:
    if encoding == "hex":
        return data.hex()
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + data.hex()


def _open_kv(args: argparse.Namespace) -> Prism:
    plugins, config = _load(args)
    return open_prism(config, plugins=plugins)


def _predicate(args: argparse.Namespace) -> Predicate:
    if args.keys and (args.start is not None or args.end is not None):
        raise CliError("give either KEYs or --start/--end, not both")
    if args.keys:
        return Keys([_decode(k, args.encoding, "key") for k in args.keys])
    if args.start is not None or args.end is not None:
        start = None if args.start is None else _decode(args.start, args.encoding, "--start")
        end = None if args.end is None else _decode(args.end, args.encoding, "--end")
        return KeyRange(start, end)
    return AllItems()


def cmd_kv_put(args: argparse.Namespace) -> int:
    if len(args.pairs) % 2:
        raise CliError("give KEY VALUE pairs: an even number of arguments after the record id")
    ttl: timedelta | None = None
    if args.ttl is not None:
        try:
            ttl = parse_duration(args.ttl)
        except ValueError as exc:
            raise CliError(f"--ttl: {exc}") from None
    items = [
        Item(_decode(k, args.encoding, "key"), _decode(v, args.encoding, "value"), ttl=ttl)
        for k, v in zip(args.pairs[::2], args.pairs[1::2], strict=True)
    ]
    with _open_kv(args) as db:
        kv = db.keyvalue(args.namespace)
        kv.put_items(args.record_id, items)
        print(f"put {len(items)} item(s) into {args.namespace}/{args.record_id} on backend {kv.backend_name}")
    return 0


def cmd_kv_get(args: argparse.Namespace) -> int:
    with _open_kv(args) as db:
        kv = db.keyvalue(args.namespace)
        token = args.page_token
        predicate = _predicate(args)
        shown = 0
        while True:
            page = kv.get_items(args.record_id, predicate, limit=args.limit, page_token=token)
            for item in page.items:
                expiry = f"\t(expires {item.expires_at.isoformat()})" if item.expires_at else ""
                print(f"{_encode(item.key, args.encoding)}\t{_encode(item.value, args.encoding)}{expiry}")
                shown += 1
            token = page.next_page_token
            if token is None or not args.all_pages:
                break
        if token is not None:
            print(f"# more items: --page-token {token}", file=sys.stderr)
        if shown == 0:
            print(f"# no items in {args.namespace}/{args.record_id}", file=sys.stderr)
    return 0


def cmd_kv_delete(args: argparse.Namespace) -> int:
    with _open_kv(args) as db:
        kv = db.keyvalue(args.namespace)
        kv.delete_items(args.record_id, _predicate(args))
        print(f"deleted from {args.namespace}/{args.record_id}")
    return 0


def cmd_kv_scan(args: argparse.Namespace) -> int:
    with _open_kv(args) as db:
        kv = db.keyvalue(args.namespace)
        token = args.page_token
        while True:
            page = kv.scan(limit=args.limit, page_token=token)
            for record_id in page.record_ids:
                print(record_id)
            token = page.next_page_token
            if token is None or not args.all_pages:
                break
        if token is not None:
            print(f"# more records: --page-token {token}", file=sys.stderr)
    return 0


# -- argument parsing ------------------------------------------------------------------------


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"prism.yaml to use (default: ${CONFIG_ENV}, else ./prism.yaml, else SQLite in ./prism-data/)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prism", description="Prism data access gateway")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed backend plugins, their capabilities and broken ones")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of broken plugins")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("plan", help="show which backend serves each namespace, and why")
    _add_config(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("conformance", help="run the conformance suite against a backend")
    _add_config(p)
    p.add_argument("--abstraction", default="keyvalue", choices=["keyvalue", "queue"])
    p.add_argument("--report-dir", default="conformance-report", metavar="DIR")
    p.add_argument("backend", metavar="BACKEND", help="a backend named in the config, or a plugin name")
    p.set_defaults(func=cmd_conformance)

    kv = sub.add_parser("kv", help="KeyValue operations").add_subparsers(dest="kv_command", required=True)

    def kv_command(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = kv.add_parser(name, help=help_text)
        _add_config(cmd)
        cmd.add_argument(
            "--encoding",
            choices=["utf8", "hex", "base64"],
            default="utf8",
            help="how keys and values are written on the command line and printed (default utf8)",
        )
        cmd.add_argument("namespace", metavar="NAMESPACE")
        return cmd

    p = kv_command("put", "write items: prism kv put NS ID KEY VALUE [KEY VALUE ...]")
    p.add_argument("record_id", metavar="ID")
    p.add_argument("pairs", nargs="+", metavar="KEY VALUE")
    p.add_argument("--ttl", help="expire the items after this long, e.g. 30s or 7d")
    p.set_defaults(func=cmd_kv_put)

    for name, func, help_text in (
        ("get", cmd_kv_get, "read items of a record (all, some KEYs, or --start/--end)"),
        ("delete", cmd_kv_delete, "delete items of a record (all, some KEYs, or --start/--end)"),
    ):
        p = kv_command(name, help_text)
        p.add_argument("record_id", metavar="ID")
        p.add_argument("keys", nargs="*", metavar="KEY")
        p.add_argument("--start", help="range start (inclusive)")
        p.add_argument("--end", help="range end (exclusive)")
        if name == "get":
            p.add_argument("--limit", type=int, help="items per page")
            p.add_argument("--page-token", help="continue from a previous page")
            p.add_argument("--all-pages", action="store_true", help="follow page tokens to the end")
        p.set_defaults(func=func)

    p = kv_command("scan", "list the records of a namespace")
    p.add_argument("--limit", type=int, help="records per page")
    p.add_argument("--page-token", help="continue from a previous page")
    p.add_argument("--all-pages", action="store_true", help="follow page tokens to the end")
    p.set_defaults(func=cmd_kv_scan)
    return parser


def _fail(message: str, status: int) -> NoReturn:
    print(f"prism: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except CliError as exc:
        _fail(str(exc), 2)
    except PrismError as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        if args.log_level == "debug":
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --log-level debug for the traceback)", 1)
