"""The ``prism`` command.

This is the application, so it is the one place that configures logging.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import importlib
import json
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from prism import capabilities as caps
from prism.client import Prism
from prism.client import open as open_prism
from prism.config import Config, resolve_config
from prism.errors import ConfigError, PrismError
from prism.gateway.command import add_serve_parser
from prism.gateway.tokens import add_token_parser
from prism.logging_setup import configure_logging
from prism.models import (
    AllItems,
    Delivery,
    Event,
    IdempotencyToken,
    Item,
    KeyRange,
    Keys,
    Message,
    Predicate,
)
from prism.planner import plan
from prism.plugins.manager import PluginSet, load_plugins
from prism.units import format_duration, parse_duration

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
            print(f"  {name:<28} {text}")
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
    if args.target is None:
        tls = [
            flag
            for flag, value in (
                ("--token", args.token),
                ("--ca", args.ca),
                ("--cert", args.cert),
                ("--key", args.key),
            )
            if value is not None
        ]
        if tls:
            raise CliError(f"{', '.join(tls)} only apply with --target grpc://HOST:PORT (a gateway)")
        return run(
            args.backend,
            config_path=_config_arg(args),
            abstraction=args.abstraction,
            report_dir=args.report_dir,
        )
    if args.config is not None:
        raise CliError(
            "give --target or --config, not both: through a gateway, BACKEND names a backend in the "
            "gateway's own configuration"
        )
    return run(
        args.backend,
        config_path=None,
        abstraction=args.abstraction,
        report_dir=args.report_dir,
        target=args.target,
        token=args.token,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
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


# -- prism queue ---------------------------------------------------------------------------


def _header(text: str, encoding: str) -> tuple[str, bytes]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise CliError(f"--header {text!r} must look like NAME=VALUE")
    return name, _decode(value, encoding, f"header {name!r} value")


def _delay(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CliError(f"--delay: {exc}") from None


def cmd_queue_publish(args: argparse.Namespace) -> int:
    payloads = list(args.payloads)
    if args.stdin:
        if payloads:
            raise CliError("give PAYLOADs or --stdin, not both")
        payloads = [line.rstrip("\r\n") for line in sys.stdin]
    if not payloads:
        raise CliError("nothing to publish: give one or more PAYLOADs, or --stdin with one payload per line")
    key = _decode(args.key, args.encoding, "--key")
    headers = dict(_header(h, args.encoding) for h in args.header)
    delay = _delay(args.delay)
    messages = [
        Message(key, _decode(p, args.encoding, "payload"), headers, deliver_after=delay) for p in payloads
    ]
    with _open_kv(args) as db:
        queue = db.queue(args.namespace)
        ids: list[str] = []
        batch = queue.limits.max_batch
        for start in range(0, len(messages), batch):
            ids += queue.publish(args.topic, messages[start : start + batch])
        for message_id in ids:
            print(message_id)
        print(
            f"# published {len(ids)} message(s) to {args.namespace}/{args.topic} on backend {queue.backend_name}",
            file=sys.stderr,
        )
    return 0


def _print_delivery(delivery: Delivery, args: argparse.Namespace) -> None:
    if args.json:
        record = {
            "id": delivery.id,
            "topic": delivery.topic,
            "group": delivery.group,
            "attempt": delivery.attempt,
            "published_at": delivery.published_at.isoformat(),
            "key": _encode(delivery.key, args.encoding),
            "payload": _encode(delivery.payload, args.encoding),
            "headers": {name: _encode(value, args.encoding) for name, value in delivery.headers.items()},
        }
        print(json.dumps(record, sort_keys=True), flush=True)
        return
    key = _encode(delivery.key, args.encoding)
    print(f"{delivery.id}\t{delivery.attempt}\t{key}\t{_encode(delivery.payload, args.encoding)}", flush=True)


def _wait(args: argparse.Namespace) -> float:
    try:
        return parse_duration(args.wait).total_seconds()
    except ValueError as exc:
        raise CliError(f"--wait: {exc}") from None


def cmd_queue_consume(args: argparse.Namespace) -> int:
    wait = _wait(args)
    if args.follow and not args.ack:
        raise CliError(
            "--follow needs --ack: a follower that never acks would hold every message until "
            "the visibility timeout and then receive it again"
        )
    with _open_kv(args) as db:
        queue = db.queue(args.namespace)
        if not args.ack:
            # Without --ack the deliveries stay leased to this call for the
            # visibility timeout, so `prism queue ack` can acknowledge them.
            deliveries = queue.consume(args.topic, args.group, args.max, wait)
            for delivery in deliveries:
                _print_delivery(delivery, args)
            if deliveries:
                print(
                    f"# {len(deliveries)} delivery(ies), not acknowledged: run `prism queue ack "
                    f"{args.namespace} {args.topic} {args.group} ID...` within the visibility timeout "
                    f"({format_duration(queue.limits.visibility_timeout)}) or they are delivered again",
                    file=sys.stderr,
                )
            else:
                print(
                    f"# no messages for group {args.group!r} on {args.namespace}/{args.topic}",
                    file=sys.stderr,
                )
            return 0
        # With --ack: a consumer handle, so whatever was received but not yet
        # acked when this process stops (Ctrl-C) is delivered again at once.
        total = 0
        with queue.consumer(args.topic, args.group) as consumer:
            while True:
                want = args.max if args.follow else args.max - total
                deliveries = consumer.consume(want, wait)
                for delivery in deliveries:
                    _print_delivery(delivery, args)
                consumer.ack(deliveries)
                total += len(deliveries)
                if not args.follow and (not deliveries or total >= args.max):
                    break
        print(f"# consumed and acknowledged {total} message(s)", file=sys.stderr)
    return 0


def cmd_queue_ack(args: argparse.Namespace) -> int:
    with _open_kv(args) as db:
        queue = db.queue(args.namespace)
        if args.command_name == "ack":
            queue.ack(args.topic, args.group, args.ids)
            print(f"acknowledged {len(args.ids)} message(s) for group {args.group!r}", file=sys.stderr)
        else:
            queue.nack(args.topic, args.group, args.ids, requeue=not args.dead_letter)
            where = (
                f"moved to {queue.dead_letter_topic(args.topic)}"
                if args.dead_letter
                else "to be delivered again"
            )
            print(f"gave back {len(args.ids)} message(s) for group {args.group!r}: {where}", file=sys.stderr)
    return 0


# -- prism ts ------------------------------------------------------------------------------


def _when(text: str, what: str) -> datetime:
    """``now``, a duration relative to now (``-1h``, ``+30s``), or an ISO 8601
    time (UTC when it has no offset)."""
    now = datetime.now(UTC)
    if text == "now":
        return now
    if text[:1] in "+-":
        try:
            delta = parse_duration(text[1:])
        except ValueError as exc:
            raise CliError(f"{what}: {exc}") from None
        return now + delta if text[0] == "+" else now - delta
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"{what} {text!r} is not a time: use now, -1h, +30s or ISO 8601 (2026-11-26T10:00:00Z)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _tag(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise CliError(f"--tag {text!r} must look like NAME=VALUE")
    return name, value


def _event_from_json(line: str, number: int, encoding: str) -> Event:
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("not an object")
        tags = record.get("tags", {})
        if not isinstance(tags, dict):
            raise ValueError("tags must be an object")
        return Event(
            event_time=_when(str(record.get("time", "now")), f"line {number}: time"),
            event_id=str(record.get("id") or uuid.uuid4()),
            payload=_decode(str(record.get("payload", "")), encoding, f"line {number}: payload"),
            tags={str(k): str(v) for k, v in tags.items()},
        )
    except ValueError as exc:
        raise CliError(
            f"--stdin line {number} is not an event ({exc}): give one JSON object per line, "
            '{"time": "now", "id": "e1", "payload": "...", "tags": {"k": "v"}}'
        ) from None


def cmd_ts_write(args: argparse.Namespace) -> int:
    if args.stdin:
        if args.payloads:
            raise CliError("give PAYLOADs or --stdin, not both")
        events = [
            _event_from_json(line, n, args.encoding) for n, line in enumerate(sys.stdin, 1) if line.strip()
        ]
    else:
        if not args.payloads:
            raise CliError(
                "nothing to write: give one or more PAYLOADs, or --stdin with one JSON event per line"
            )
        if args.id is not None and len(args.payloads) > 1:
            raise CliError("--id names one event; give one PAYLOAD with it")
        when = _when(args.time, "--time")
        tags = dict(_tag(t) for t in args.tag)
        events = [
            Event(
                event_time=when,
                event_id=args.id or str(uuid.uuid4()),
                payload=_decode(p, args.encoding, "payload"),
                tags=tags,
            )
            for p in args.payloads
        ]
    with _open_kv(args) as db:
        ts = db.timeseries(args.namespace)
        batch = ts.settings.max_events_per_call
        for start in range(0, len(events), batch):
            ts.write_events(args.series, events[start : start + batch])
        for event in events:
            print(f"{event.event_time.isoformat()}\t{event.event_id}")
        print(
            f"# wrote {len(events)} event(s) to {args.namespace}/{args.series} on backend {ts.backend_name}",
            file=sys.stderr,
        )
    return 0


def cmd_ts_read(args: argparse.Namespace) -> int:
    start = _when(args.start, "--start")
    end = _when(args.end, "--end")
    with _open_kv(args) as db:
        ts = db.timeseries(args.namespace)
        token = args.page_token
        shown = 0
        while True:
            page = ts.read_events(
                args.series, start, end, order=args.order, limit=args.limit, page_token=token
            )
            for event in page.events:
                payload = _encode(event.payload, args.encoding)
                if args.json:
                    record = {
                        "time": event.event_time.isoformat(),
                        "id": event.event_id,
                        "payload": payload,
                        "tags": dict(event.tags),
                    }
                    print(json.dumps(record, sort_keys=True))
                else:
                    tags = ",".join(f"{k}={v}" for k, v in sorted(event.tags.items()))
                    print(f"{event.event_time.isoformat()}\t{event.event_id}\t{payload}\t{tags}")
            shown += len(page.events)
            token = page.next_page_token
            if token is None or not args.all:
                break
        if token is not None:
            print(f"# more events: --page-token {token}  (or --all)", file=sys.stderr)
        print(f"# {shown} event(s)", file=sys.stderr)
    return 0


# -- prism counter -------------------------------------------------------------------------


def _counter_token(text: str | None) -> IdempotencyToken | None:
    if text is None:
        return None
    micros, sep, nonce = text.partition(":")
    if not sep or not micros.isdigit() or not nonce:
        raise CliError(
            f"--token {text!r} must look like GENERATION_MICROS:NONCE, as printed by an earlier call; "
            "reuse it only to retry that same call"
        )
    return IdempotencyToken(int(micros), nonce)


def cmd_counter(args: argparse.Namespace) -> int:
    with _open_kv(args) as db:
        counter = db.counter(args.namespace)
        if args.command_name == "get":
            print(counter.get(args.counter))
            return 0
        token = _counter_token(args.token)
        if counter.mode == "exact" and token is None:
            token = IdempotencyToken.new()
        if args.command_name == "add":
            value = counter.add(args.counter, args.delta, token=token)
            print(counter.get(args.counter) if value is None else value)
        else:
            counter.clear(args.counter, token=token)
            print(0)
        if token is not None:
            print(
                f"# token {token.generation_time_us}:{token.nonce} (pass it as --token to retry this "
                f"{args.command_name} without applying it twice)",
                file=sys.stderr,
            )
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
    p.add_argument(
        "--abstraction", default="keyvalue", choices=["keyvalue", "queue", "timeseries", "counter"]
    )
    p.add_argument("--report-dir", default="conformance-report", metavar="DIR")
    p.add_argument(
        "--target",
        metavar="grpc://HOST:PORT",
        help="run through this gateway (prism serve); BACKEND then names a backend in its configuration, "
        "and its gateway.create_namespaces must allow run-time namespaces",
    )
    p.add_argument(
        "--token", help="with --target: the bearer token, with the admin grant (default: $PRISM_TOKEN)"
    )
    p.add_argument("--ca", metavar="FILE", help="with a grpcs:// --target: the CA that signed the gateway")
    p.add_argument("--cert", metavar="FILE", help="with a grpcs:// --target: a client certificate")
    p.add_argument("--key", metavar="FILE", help="with --cert: its private key")
    p.add_argument(
        "backend",
        metavar="BACKEND",
        help="a backend named in the config, or a plugin name; with --target, a backend of the gateway",
    )
    p.set_defaults(func=cmd_conformance)

    add_serve_parser(sub)
    add_token_parser(sub)

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

    queue = sub.add_parser("queue", help="Queue operations").add_subparsers(
        dest="queue_command", required=True
    )

    def queue_command(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = queue.add_parser(name, help=help_text)
        _add_config(cmd)
        cmd.add_argument(
            "--encoding",
            choices=["utf8", "hex", "base64"],
            default="utf8",
            help="how keys, payloads and header values are written and printed (default utf8)",
        )
        cmd.add_argument("namespace", metavar="NAMESPACE")
        cmd.add_argument("topic", metavar="TOPIC")
        return cmd

    p = queue_command("publish", "publish messages: prism queue publish NS TOPIC PAYLOAD [PAYLOAD ...]")
    p.add_argument("payloads", nargs="*", metavar="PAYLOAD")
    p.add_argument("--stdin", action="store_true", help="read payloads from standard input, one per line")
    p.add_argument("--key", default="", help="the messages' key (same-key messages keep their order)")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", help="add a header")
    p.add_argument("--delay", help="deliver no sooner than this, e.g. 30s (needs queue.delay)")
    p.set_defaults(func=cmd_queue_publish)

    p = queue_command("consume", "receive messages for a consumer group and print them")
    p.add_argument("group", metavar="GROUP")
    p.add_argument("--max", type=int, default=10, help="messages to receive (per round with --follow)")
    p.add_argument("--wait", default="0s", help="how long to wait for the first message, e.g. 5s")
    p.add_argument("--ack", action="store_true", help="acknowledge what was printed")
    p.add_argument("--follow", action="store_true", help="keep consuming until interrupted (needs --ack)")
    p.add_argument("--json", action="store_true", help="print one JSON object per delivery")
    p.set_defaults(func=cmd_queue_consume)

    for name, help_text in (
        ("ack", "acknowledge deliveries: prism queue ack NS TOPIC GROUP ID [ID ...]"),
        ("nack", "give deliveries back to be delivered again (or --dead-letter them)"),
    ):
        p = queue_command(name, help_text)
        p.add_argument("group", metavar="GROUP")
        p.add_argument("ids", nargs="+", metavar="ID")
        if name == "nack":
            p.add_argument("--dead-letter", action="store_true", help="move them to the dead-letter topic")
        p.set_defaults(func=cmd_queue_ack, command_name=name)

    ts = sub.add_parser("ts", help="TimeSeries operations").add_subparsers(dest="ts_command", required=True)

    def ts_command(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = ts.add_parser(name, help=help_text)
        _add_config(cmd)
        cmd.add_argument(
            "--encoding",
            choices=["utf8", "hex", "base64"],
            default="utf8",
            help="how payloads are written and printed (default utf8)",
        )
        cmd.add_argument("namespace", metavar="NAMESPACE")
        cmd.add_argument("series", metavar="SERIES")
        return cmd

    p = ts_command("write", "write events: prism ts write NS SERIES PAYLOAD [PAYLOAD ...]")
    p.add_argument("payloads", nargs="*", metavar="PAYLOAD")
    p.add_argument(
        "--time", default="now", help="event time: now, ISO 8601, or relative as --time=-5m (default now)"
    )
    p.add_argument("--id", help="event id (default a random UUID per event); one PAYLOAD only")
    p.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE", help="add a tag")
    p.add_argument(
        "--stdin",
        action="store_true",
        help='read events from standard input, one JSON object per line: {"time", "id", "payload", "tags"}',
    )
    p.set_defaults(func=cmd_ts_write)

    p = ts_command("read", "read events in a time range and print them")
    p.add_argument(
        "--start", default="-1h", help="inclusive: now, ISO 8601, or relative as --start=-2h (default -1h)"
    )
    p.add_argument(
        "--end", default="+1m", help="exclusive: now, ISO 8601, or relative as --end=+5m (default +1m)"
    )
    p.add_argument("--order", choices=["asc", "desc"], default="asc")
    p.add_argument("--limit", type=int, help="events per page (default: the namespace's max_page_events)")
    p.add_argument("--page-token", help="continue from a previous read's page token")
    p.add_argument("--all", action="store_true", help="follow page tokens to the end of the range")
    p.add_argument("--json", action="store_true", help="print one JSON object per event")
    p.set_defaults(func=cmd_ts_read)

    counter = sub.add_parser("counter", help="Counter operations").add_subparsers(
        dest="counter_command", required=True
    )

    def counter_command(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = counter.add_parser(name, help=help_text)
        _add_config(cmd)
        cmd.add_argument("namespace", metavar="NAMESPACE")
        cmd.add_argument("counter", metavar="COUNTER")
        cmd.set_defaults(func=cmd_counter, command_name=name)
        return cmd

    p = counter_command("add", "add to a counter and print its new value: prism counter add NS NAME [DELTA]")
    p.add_argument(
        "delta", nargs="?", type=int, default=1, metavar="DELTA", help="may be negative (default 1)"
    )
    p.add_argument("--token", help="exact mode: GENERATION_MICROS:NONCE of the add to retry")
    p = counter_command("clear", "set a counter to 0")
    p.add_argument("--token", help="exact mode: GENERATION_MICROS:NONCE of the clear to retry")
    counter_command("get", "print a counter's value")
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
