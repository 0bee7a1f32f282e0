"""Prism: one API for KeyValue data, embedded or through the gateway.

Open Prism in process with :func:`open` (sync) or :func:`open_async`, then work
with a namespace::

    import prism

    with prism.open() as db:                       # ./prism.yaml, else SQLite in ./prism-data/
        users = db.keyvalue("users")
        users.put_items("user:1", {b"name": b"Ada", b"lang": b"en"})
        page = users.get_items("user:1")
        print(page.as_dict())
"""

from __future__ import annotations

from prism.client import AsyncPrism, KeyValue, Prism, open, open_async
from prism.errors import (
    BackendError,
    ConfigError,
    InvalidArgument,
    InvalidPageToken,
    LimitExceeded,
    NamespaceNotFound,
    PlanError,
    PrismError,
    Unsupported,
    WrongAbstraction,
)
from prism.keyvalue.namespace import AsyncKeyValue
from prism.models import (
    AllItems,
    Delete,
    IdempotencyToken,
    Item,
    ItemsPage,
    KeyRange,
    Keys,
    Put,
    RecordsPage,
)

__all__ = [
    "AllItems",
    "AsyncKeyValue",
    "AsyncPrism",
    "BackendError",
    "ConfigError",
    "Delete",
    "IdempotencyToken",
    "InvalidArgument",
    "InvalidPageToken",
    "Item",
    "ItemsPage",
    "KeyRange",
    "KeyValue",
    "Keys",
    "LimitExceeded",
    "NamespaceNotFound",
    "PlanError",
    "Prism",
    "PrismError",
    "Put",
    "RecordsPage",
    "Unsupported",
    "WrongAbstraction",
    "open",
    "open_async",
]
