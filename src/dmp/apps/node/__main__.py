"""``python -m dmp.apps.node``: the same as the ``dmp-node`` console script."""

from __future__ import annotations

import sys

from dmp.apps.node.cli import main

sys.exit(main())
