"""A whole dmp-node in process with anti-entropy on, for the sync integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from dmp.adapters.clock import SystemClock
from dmp.apps.node.config import load_config
from dmp.apps.node.service import Node, build_node, run_node

OPERATOR = "op-token"
PEER = "peer-token"


@asynccontextmanager
async def running_node(db: Path, **env: str) -> AsyncIterator[Node]:
    """dmp-node on 127.0.0.1 (ports 0) over ``db``, with DMP_SYNC_PEER_TOKEN=PEER.

    ``env`` adds or overrides DMP_* variables. Stops the node on exit.
    """
    config = load_config(
        {
            "DMP_DB_PATH": str(db),
            "DMP_DNS_HOST": "127.0.0.1",
            "DMP_DNS_PORT": "0",
            "DMP_HTTP_HOST": "127.0.0.1",
            "DMP_HTTP_PORT": "0",
            "DMP_OPERATOR_TOKEN": OPERATOR,
            "DMP_SYNC_PEER_TOKEN": PEER,
            "DMP_HTTP_RATE": "0",
            **env,
        },
        {},
    )
    built = await build_node(config, clock=SystemClock())
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        node = await tg.start(
            lambda *, task_status: run_node(
                built, stop=stop, handle_signals=False, task_status=task_status
            )
        )
        try:
            yield node
        finally:
            stop.set()
