"""``python -m prism``: the same as the ``prism`` command."""

from prism.cli import main

raise SystemExit(main())
