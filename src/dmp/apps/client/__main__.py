"""``python -m dmp.apps.client``: the ``dnsmesh`` CLI."""

import sys

from dmp.apps.client.cli import main

sys.exit(main())
