"""Prism: one API for KeyValue data and queues, embedded or through the gateway.

Open Prism in process with :func:`open` (sync) or :func:`open_async`, then work
with a namespace::

    import prism

    with prism.open() as db:                       # ./prism.yaml, else SQLite in ./prism-data/
        users = db.keyvalue("users")
        users.put_items("user:1", {b"name": b"Ada", b"lang": b"en"})
        page = users.get_items("user:1")
        print(page.as_dict())

Queues work the same way (on memory, sqlite, redis and kafka)::

    with prism.open({"backends": {"mem": {"plugin": "memory"}}, "auto_namespaces": True}) as db:
        orders = db.queue("orders")
        orders.publish("created", [prism.Message(b"user:1", b"order 7")])
        with orders.consumer("created", "billing") as consumer:
            for delivery in consumer.consume(max_messages=10, wait=1.0):
                consumer.ack([delivery])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prism.client import AsyncPrism, Consumer, Counter, KeyValue, Prism, Queue, TimeSeries, open, open_async
from prism.counter.namespace import AsyncCounter
from prism.errors import (
    BackendError,
    BreakerOpen,
    ConfigError,
    InvalidArgument,
    InvalidPageToken,
    LimitExceeded,
    NamespaceNotFound,
    Overloaded,
    PlanError,
    PrismError,
    Unsupported,
    WrongAbstraction,
)
from prism.keyvalue.namespace import AsyncKeyValue
from prism.models import (
    AllItems,
    Delete,
    Delivery,
    Event,
    EventsPage,
    IdempotencyToken,
    Item,
    ItemsPage,
    KeyRange,
    Keys,
    Message,
    Put,
    RecordsPage,
)
from prism.queue.namespace import AsyncConsumer, AsyncQueue
from prism.timeseries.namespace import AsyncTimeSeries

__all__ = [
    "AllItems",
    "AsyncConsumer",
    "AsyncCounter",
    "AsyncKeyValue",
    "AsyncPrism",
    "AsyncQueue",
    "AsyncTimeSeries",
    "BackendError",
    "BreakerOpen",
    "ConfigError",
    "Consumer",
    "Counter",
    "Delete",
    "Delivery",
    "Event",
    "EventsPage",
    "IdempotencyToken",
    "InvalidArgument",
    "InvalidPageToken",
    "Item",
    "ItemsPage",
    "KeyRange",
    "KeyValue",
    "Keys",
    "LimitExceeded",
    "Message",
    "NamespaceNotFound",
    "Overloaded",
    "PlanError",
    "Prism",
    "PrismError",
    "Put",
    "Queue",
    "RecordsPage",
    "TimeSeries",
    "Unsupported",
    "WrongAbstraction",
    "connect",
    "connect_async",
    "open",
    "open_async",
]

if TYPE_CHECKING:
    from prism.remote import connect, connect_async
else:

    def __getattr__(name: str) -> Any:
        # The remote client loads grpc; embedded users should not pay for it
        # at `import prism`, so it is imported on first use of prism.connect.
        if name in ("connect", "connect_async"):
            from prism import remote

            return getattr(remote, name)
        raise AttributeError(f"module 'prism' has no attribute {name!r}")
