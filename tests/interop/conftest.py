"""Opt-in interop suite: the reference ``dnsmesh`` 0.7.5 CLI against our dmp-node.

Not collected unless ``DMP_INTEROP=1`` (``make interop``). Needs:

* a venv with the reference (``DMP_REF_VENV``, default ``../refvenv`` beside
  the repo; ``make interop`` creates it with ``pip install dnsmesh==0.7.5``);
* a loopback-only network namespace of its own (``DMP_NETNS=dmpinterop sh
  bench/netns.sh``, then run pytest through ``ip netns exec dmpinterop``; a
  namespace shared with other runs may already have ports 80/5353 taken). The reference CLI falls back to public
  resolvers and a built-in claim provider; inside the namespace those lookups
  fail at once instead of leaving the machine. It also lets the node use the
  ports the CLI assumes (HTTP 80 for ``dnsmesh register --node 127.0.0.1``,
  DNS 5353 for ``dnsmesh init``'s probe).

``DMP_INTEROP_TARGETS`` (default ``dmp``; e.g. ``dmp,ref``) chooses which node
implementations the scenarios run against; ``ref`` checks the harness itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ENABLED = os.environ.get("DMP_INTEROP") == "1"
collect_ignore_glob = [] if ENABLED else ["test_*.py"]

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from nodelib import NodeProc, in_private_netns, ref_venv  # noqa: E402

TARGETS = [t.strip() for t in os.environ.get("DMP_INTEROP_TARGETS", "dmp").split(",") if t.strip()]
OPERATOR_TOKEN = "interop-operator-token"
DNS_PORT = 5353
HTTP_PORT = 80

#: One environment for both implementations: an operator switches by command only.
NODE_ENV = {
    "DMP_OPERATOR_TOKEN": OPERATOR_TOKEN,
    "DMP_DNS_RATE": "0",
    "DMP_HTTP_RATE": "0",
    "DMP_DOMAIN": "mesh.test",
    "DMP_SERVED_ZONE": "mesh.test",
    "DMP_NODE_HOSTNAME": "mesh.test",
    "DMP_DNS_UPDATE_ENABLED": "1",
    "DMP_AUTH_MODE": "multi-tenant",
    "DMP_REGISTRATION_ENABLED": "1",
    "DMP_REGISTRATION_ENDPOINT_RATE_PER_SEC": "100",
    "DMP_REGISTRATION_ENDPOINT_BURST": "100",
    "DMP_DNS_APEX_NS": "ns1.mesh.test",
    "DMP_DNS_APEX_SOA_RNAME": "hostmaster.mesh.test",
    "DMP_LOG_LEVEL": "INFO",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    if ref_venv() is None:
        reason = "no reference venv (DMP_REF_VENV with dnsmesh==0.7.5)"
    elif not in_private_netns():
        reason = "run inside the loopback-only netns: ip netns exec dmpbench ..."
    if reason:
        # This hook sees every item of the session: mark only the interop ones.
        here = Path(__file__).resolve().parent
        for item in items:
            if here in item.path.resolve().parents:
                item.add_marker(pytest.mark.skip(reason=reason))


def running_node(kind: str, name: str, tmp_path: Path, env: dict[str, str]) -> Iterator[NodeProc]:
    """Start a ``kind`` node (``dmp`` or ``ref``) on DNS_PORT/HTTP_PORT, yield it, stop it.

    A dmp-node must then exit 0 (a clean SIGTERM shutdown).
    """
    proc = NodeProc(kind, name, tmp_path, dns_port=DNS_PORT, http_port=HTTP_PORT, env=env)
    proc.start(timeout=30)
    try:
        yield proc
    finally:
        rc = proc.stop()
        if kind == "dmp":
            assert rc == 0, f"dmp-node exit code {rc}: {proc.log_tail()}"


@pytest.fixture(params=TARGETS)
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NodeProc]:
    """A node (ours or the reference) on 127.0.0.1: DNS 5353, HTTP 80."""
    yield from running_node(request.param, f"interop-{request.param}", tmp_path, NODE_ENV)
