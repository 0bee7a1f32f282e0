"""Tests of the conformance suite itself."""

from __future__ import annotations

import sys
from pathlib import Path

pytest_plugins = ["pytester"]

# The helper modules beside the tests (buggy_backends) are imported
# by name, here and by the generated test modules the planted-bug runs execute.
TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
