"""``python -m tools.services up|down|status [names]``."""

from __future__ import annotations

import sys

from tools.services.cli import main

sys.exit(main(sys.argv[1:]))
