"""The one place library modules get their logger from.

The library never configures logging; only the ``prism`` application does
(:mod:`prism.cli`). Without configuration, structlog's defaults apply.
"""

from __future__ import annotations

from typing import Any

import structlog


def get_logger(name: str, **initial: Any) -> Any:
    """A structlog logger bound to the module ``name``."""
    return structlog.get_logger(name, **initial)
