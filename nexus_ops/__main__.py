"""``python -m nexus_ops`` is the ``nexus-ops`` command."""

from __future__ import annotations

from nexus_ops.cli import main

raise SystemExit(main())
