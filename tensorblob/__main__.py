"""``python -m tensorblob``: the same as the ``tensorblob`` command (see docs/cli.md)."""

from ._cli import main

raise SystemExit(main())
