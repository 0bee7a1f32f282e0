"""The one place library modules get their logger from.

The library never configures logging; only the ``prism`` application does
(:mod:`prism.logging_setup`). So a library logger must behave well in both
worlds:

* when structlog is configured (the ``prism`` command, or an application that
  configures structlog itself), events go through structlog as configured;
* otherwise they go to the standard library's ``logging`` under the module's
  name, where the embedding application's logging configuration decides what
  is shown. Unconfigured, that is warnings and errors only (``logging``'s last
  resort handler), instead of structlog's default of printing every debug line
  of, say, a gateway running inside someone's test suite.

The choice is made at each call, not at import, because modules get their
logger when imported, before an application gets to configure anything.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class Logger:
    """``debug``/``info``/``warning``/``error``/``critical``/``exception`` with an
    event name and key-value pairs, as structlog's loggers take them."""

    def __init__(self, name: str, initial: dict[str, Any]) -> None:
        self.name = name
        self._initial = initial
        self._stdlib = logging.getLogger(name)
        # A lazy proxy: it reads structlog's configuration at its first use.
        self._structlog = structlog.get_logger(name, **initial)

    def _log(self, level: str, event: str, kwargs: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(self._structlog, level)(event, **kwargs)
            return
        numeric = _LEVELS[level]
        if not self._stdlib.isEnabledFor(numeric):
            return
        exc_info = kwargs.pop("exc_info", None)
        fields = {**self._initial, **kwargs}
        text = event + "".join(f" {key}={value!r}" for key, value in fields.items())
        self._stdlib.log(numeric, "%s", text, exc_info=exc_info, extra={"prism": fields})

    def enabled(self, level: str) -> bool:
        """Whether an event at ``level`` would be emitted, so that a hot path
        can skip building it. Conservative: True unless the standard library
        logger that would receive it is known to drop it."""
        # Configured structlog drops an event by the standard library's level
        # before the processors see it only with filter_by_level; any other
        # chain (a renderer of its own, structlog.testing.capture_logs) sees all.
        if (
            structlog.is_configured()
            and structlog.stdlib.filter_by_level not in structlog.get_config()["processors"]
        ):
            return True
        return self._stdlib.isEnabledFor(_LEVELS[level])

    def debug(self, event: str, **kwargs: Any) -> None:
        self._log("debug", event, kwargs)

    def info(self, event: str, **kwargs: Any) -> None:
        self._log("info", event, kwargs)

    def warning(self, event: str, **kwargs: Any) -> None:
        self._log("warning", event, kwargs)

    def error(self, event: str, **kwargs: Any) -> None:
        self._log("error", event, kwargs)

    def critical(self, event: str, **kwargs: Any) -> None:
        self._log("critical", event, kwargs)

    def exception(self, event: str, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", True)
        self._log("error", event, kwargs)


def get_logger(name: str, **initial: Any) -> Any:
    """The logger of the module ``name`` (see the module docstring)."""
    return Logger(name, initial)
