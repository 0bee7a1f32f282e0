"""Library logging: silent below warning unless the application says otherwise.

Run in fresh interpreters, because logging and structlog configuration is
process-wide and other tests configure it."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=True
    )


def test_unconfigured_library_logs_only_warnings_through_stdlib_logging() -> None:
    result = _run(
        """
        from prism.log import get_logger
        log = get_logger("prism.example", backend="b1")
        log.debug("chatty detail", n=1)
        log.info("routine", n=2)
        log.warning("something to act on", n=3)
        """
    )
    assert result.stdout == ""
    assert "chatty detail" not in result.stderr
    assert "routine" not in result.stderr
    assert "something to act on backend='b1' n=3" in result.stderr


def test_the_applications_stdlib_logging_decides() -> None:
    result = _run(
        """
        import logging
        logging.basicConfig(level=logging.DEBUG, format="%(name)s|%(levelname)s|%(message)s")
        from prism.log import get_logger
        get_logger("prism.example").debug("chatty detail", n=1)
        """
    )
    assert "prism.example|DEBUG|chatty detail n=1" in result.stderr


def test_configured_structlog_is_used_as_configured() -> None:
    result = _run(
        """
        from prism.logging_setup import configure_logging
        configure_logging("info")
        from prism.log import get_logger
        get_logger("prism.example").info("routine", n=2)
        get_logger("prism.example").debug("chatty detail", n=1)
        """
    )
    assert '"event": "routine"' in result.stderr
    assert '"n": 2' in result.stderr
    assert "chatty detail" not in result.stderr


def test_enabled_says_whether_an_event_would_be_emitted() -> None:
    result = _run(
        """
        import structlog
        from prism.log import get_logger
        log = get_logger("prism.access")
        print("unconfigured", log.enabled("info"), log.enabled("warning"))
        from prism.logging_setup import configure_logging
        configure_logging("info")
        print("app at info", log.enabled("debug"), log.enabled("info"))
        configure_logging("error")
        print("app at error", log.enabled("info"))
        with structlog.testing.capture_logs():
            print("captured", log.enabled("debug"))
        structlog.configure(processors=[structlog.processors.JSONRenderer()])
        print("structlog printing", log.enabled("debug"))
        """
    )
    assert result.stdout.splitlines() == [
        "unconfigured False True",
        "app at info False True",
        "app at error False",
        "captured True",
        "structlog printing True",
    ]
