"""Start the gateway on the embedded SQLite default and use it over gRPC.

What ``./dev -s demo`` runs: ``prism serve`` with no configuration (SQLite in
./prism-data/, any namespace created on first use), then a client that
writes, reads, publishes, consumes, records events and counts through it with
``prism.connect``. The
gateway then keeps serving until Ctrl-C, so you can try it yourself with
``grpcurl`` or ``prism.connect``; ``--once`` stops it after the demo.

    python examples/gateway.py [--listen 127.0.0.1:50051] [--once]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import prism

STARTUP_TIMEOUT_S = 60.0


def start_gateway(listen: str) -> tuple[subprocess.Popen[str], str]:
    """``prism serve`` on the embedded default; returns it and the address it
    listens on, read from its start-up log line."""
    env = {k: v for k, v in os.environ.items() if k not in ("PRISM_CONFIG", "PRISM_LISTEN")}
    env["PYTHONUNBUFFERED"] = "1"
    gateway = subprocess.Popen(
        [sys.executable, "-m", "prism", "serve", "--listen", listen],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert gateway.stderr is not None
    found: list[str] = []
    ready = threading.Event()

    def relay() -> None:
        # Show the gateway's own lines (start, access log, drain) as they come.
        assert gateway.stderr is not None
        for line in gateway.stderr:
            sys.stderr.write(f"  [gateway] {line}")
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == "prism gateway listening":
                found.append(record["address"])
                ready.set()
        ready.set()  # it exited: stop waiting

    threading.Thread(target=relay, daemon=True).start()
    if not ready.wait(STARTUP_TIMEOUT_S) or not found:
        gateway.kill()
        raise SystemExit(f"prism serve did not start within {STARTUP_TIMEOUT_S:g}s (exit {gateway.poll()})")
    return gateway, found[0]


def demo(target: str) -> None:
    with prism.connect(target) as db:
        users = db.keyvalue("users")
        users.put_items("user:1", {b"name": b"Ada Lovelace", b"lang": b"en"})
        users.put_items("user:2", [prism.Item(b"name", b"Grace Hopper")])
        print("get user:1 ->", users.get_items("user:1").as_dict())
        print("scan       ->", users.scan().record_ids)

        orders = db.queue("orders")
        ids = orders.publish("created", [prism.Message(key=b"cart:42", payload=b'{"total": 30}')])
        print("published  ->", ids)
        with orders.consumer("created", group="billing") as worker:
            for delivery in worker.consume(max_messages=10, wait=1):
                print("consumed   ->", delivery.id, delivery.attempt, delivery.payload)
                worker.ack([delivery])

        metrics = db.timeseries("metrics")
        now = datetime.now(UTC)
        metrics.write_events(
            "cpu:host1", [prism.Event(now - timedelta(seconds=s), f"s{s}", b"0.4") for s in range(3)]
        )
        page = metrics.read_events("cpu:host1", now - timedelta(minutes=1), now + timedelta(seconds=1))
        print("events     ->", [e.event_id for e in page.events])

        views = db.counter("page_views")
        views.add("home")
        print("counted    ->", views.add("home", 2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT")
    parser.add_argument("--once", action="store_true", help="stop the gateway after the demo")
    args = parser.parse_args()

    gateway, address = start_gateway(args.listen)
    target = f"grpc://{address}"
    try:
        print(f"The gateway serves the embedded SQLite default (./prism-data/) at {target}")
        demo(target)
        if not args.once:
            print(
                f"\nThe gateway keeps serving at {target}; try:\n"
                f"  grpcurl -plaintext {address} list\n"
                f'  grpcurl -plaintext -d \'{{"namespace": "users", "id": "user:1"}}\' '
                f"{address} prism.v1.KeyValueService/GetItems\n"
                f'  python -c \'import prism; print(prism.connect("{target}").keyvalue("users").scan())\'\n'
                "Ctrl-C stops it (it drains first)."
            )
            while gateway.poll() is None:
                time.sleep(0.5)  # until Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        if gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(timeout=60)
    print(f"The gateway drained and exited with status {code}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
