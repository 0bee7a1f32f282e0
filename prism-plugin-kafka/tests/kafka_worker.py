"""A consumer process for the crash test. It consumes namespace ``q``, topic
``jobs``, group ``g``: acks ACKS messages one at a time, printing each id once
acked; then receives HOLD more without acking them (printing ``held ID`` for
each, then ``holding``), and
waits to be killed with SIGKILL by the parent, mid-stream.

Usage: python kafka_worker.py BOOTSTRAP PREFIX ACKS HOLD
"""

from __future__ import annotations

import asyncio
import sys

from kafka_support import config

import prism


async def main(bootstrap: str, prefix: str, acks: int, hold: int) -> None:
    async with prism.open_async(config(bootstrap, prefix, session_timeout="6s")) as db:
        q = db.queue("q")
        # Exit (so the parent sees the stream end) rather than hang if the work never arrives.
        async with asyncio.timeout(120):
            done = 0
            while done < acks:
                for delivery in await q.consume("jobs", "g", max_messages=1, wait=5):
                    await q.ack("jobs", "g", [delivery])
                    print(delivery.id, flush=True)
                    done += 1
            held = 0
            while held < hold:  # at most one per key is in flight: hold fewer than there are keys
                for delivery in await q.consume("jobs", "g", max_messages=hold - held, wait=5):
                    print(f"held {delivery.id}", flush=True)
                    held += 1
        print("holding", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
