"""register / tsig register against the node's own registration use cases, in process."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from dmp.adapters.client_state import MemoryTokenFiles
from dmp.adapters.http_client import RegistrationClient
from dmp.adapters.memory_store import MemoryTsigKeyStore
from dmp.adapters.token_store import MemoryTokenStore
from dmp.apps.client.config import ClientConfig
from dmp.apps.client.registration import register, tsig_register
from dmp.apps.node.registration import Refused, Registrar, RegistrationSettings
from dmp.domain import tsig
from dmp.domain.errors import BadSubject
from dmp.domain.registration import token_hash
from dmp.ports.registration import RegistrationApi
from dmp.ports.transport import PeerRejected
from tests.unit.apps.client_world import keys_for

pytestmark = pytest.mark.anyio

NOW = 1_900_000_000


class InProcessNode:
    """:class:`RegistrationApi` served by a node :class:`Registrar` (no HTTP)."""

    def __init__(self, *, tsig_enabled: bool = True, node: str = "dmp.example.com") -> None:
        self.tokens = MemoryTokenStore()
        self.tsig_keys = MemoryTsigKeyStore()
        counter = iter(range(1, 10**6))
        self.registrar = Registrar(
            RegistrationSettings(
                node_hostname=node, served_zone="mesh.example.com", tsig_enabled=tsig_enabled
            ),
            tokens=self.tokens,
            audit=self.tokens,
            tsig_keys=self.tsig_keys,
            random_bytes=lambda n: hashlib.sha256(str(next(counter)).encode()).digest()[:n],
        )
        self.bodies: list[dict[str, Any]] = []

    async def challenge(self) -> dict[str, Any]:
        return dict(
            self.registrar.issue_challenge(NOW).to_json(self.registrar.settings.node_hostname)
        )

    async def _reply(self, outcome: Any) -> dict[str, Any]:
        if isinstance(outcome, Refused):
            raise PeerRejected(outcome.error, status=outcome.status)
        return dict(outcome.to_json())

    async def confirm(
        self, *, subject: str, ed25519_spk: bytes, challenge: bytes, signature: bytes
    ) -> dict[str, Any]:
        body = {
            "subject": subject,
            "ed25519_spk": ed25519_spk.hex(),
            "challenge": challenge.hex(),
            "signature": signature.hex(),
        }
        self.bodies.append(body)
        return await self._reply(await self.registrar.confirm_token(body, NOW))

    async def tsig_confirm(
        self,
        *,
        subject: str,
        ed25519_spk: bytes,
        challenge: bytes,
        signature: bytes,
        x25519_pub: bytes | None = None,
        x25519_pop: bytes | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "subject": subject,
            "ed25519_spk": ed25519_spk.hex(),
            "challenge": challenge.hex(),
            "signature": signature.hex(),
        }
        if x25519_pub is not None:
            body["x25519_pub"] = x25519_pub.hex()
        if x25519_pop is not None:
            body["x25519_pop"] = x25519_pop.hex()
        self.bodies.append(body)
        return await self._reply(await self.registrar.confirm_tsig(body, NOW))


async def test_registration_api_implementations() -> None:
    """The in-process fake and the httpx adapter both implement the port (mypy checks too)."""
    fake: RegistrationApi = InProcessNode()
    assert isinstance(fake, RegistrationApi)
    async with RegistrationClient("https://node.example") as client:
        api: RegistrationApi = client
        assert isinstance(api, RegistrationApi)


async def test_register_saves_a_working_token() -> None:
    """The node accepts the signature; the token is saved under the node's host."""
    node = InProcessNode()
    keys = keys_for("alice")
    config = ClientConfig(username="Alice", domain="Example.COM")
    files = MemoryTokenFiles()
    saved = await register(
        node, "https://dmp.example.com/", keys=keys, config=config, tokens=files, now=NOW
    )
    assert saved.subject == "alice@example.com"
    assert saved.node == "dmp.example.com"
    assert saved.registered_spk == keys.ed25519_public.hex()
    assert saved.saved_at == NOW
    assert files.load("dmp.example.com") == saved
    stored = await node.tokens.get(token_hash(saved.token))
    assert stored is not None
    assert stored.subject == "alice@example.com"
    assert saved.expires_at == stored.expires_at


async def test_register_with_explicit_subject_and_a_refusal() -> None:
    node = InProcessNode()
    files = MemoryTokenFiles()
    config = ClientConfig(username="alice", domain="example.com")
    await register(
        node, "dmp.example.com", keys=keys_for("alice"), config=config, tokens=files,
        now=NOW, subject=" Bob@Example.com ",
    )  # fmt: skip
    assert node.bodies[-1]["subject"] == "bob@example.com"
    # another key for the same live subject: the node's anti-takeover refusal surfaces
    with pytest.raises(PeerRejected) as info:
        await register(
            node, "dmp.example.com", keys=keys_for("mallory"), config=config, tokens=files,
            now=NOW, subject="bob@example.com",
        )  # fmt: skip
    assert info.value.status == 409
    with pytest.raises(BadSubject):
        await register(
            node, "dmp.example.com", keys=keys_for("alice"), config=config, tokens=files,
            now=NOW, subject="not an address",
        )  # fmt: skip


async def test_tsig_register_stores_the_key_in_config() -> None:
    """The X25519 proof is accepted, so the key is scoped to our mailbox."""
    node = InProcessNode()
    keys = keys_for("alice")
    config = ClientConfig(username="alice", domain="mesh.example.com")
    saved: list[ClientConfig] = []
    result = await tsig_register(
        node,
        "http://dmp.example.com:8053",
        keys=keys,
        config=config,
        dns_port=5353,
        persist=saved.append,
    )
    (stored,) = await node.tsig_keys.all()
    assert config.tsig_key_name == stored.keyname == result.key_name
    assert config.tsig_secret_hex == stored.secret.hex()
    assert config.tsig_algorithm == "hmac-sha256"
    assert config.tsig_zone == "mesh.example.com"
    assert (config.tsig_dns_server, config.tsig_dns_port) == ("dmp.example.com", 5353)
    assert saved == [config]
    mailbox = f"mb-{tsig.mailbox_scope_hash12(keys.x25519_public)}.mesh.example.com"
    assert mailbox in result.allowed_suffixes
    assert "secret" not in repr(result)


async def test_tsig_register_refused_when_disabled() -> None:
    node = InProcessNode(tsig_enabled=False)
    config = ClientConfig(username="alice", domain="mesh.example.com")
    with pytest.raises(PeerRejected) as info:
        await tsig_register(node, "dmp.example.com", keys=keys_for("alice"), config=config)
    assert info.value.status == 404
    assert config.tsig_key_name == ""


class BrokenNode(InProcessNode):
    async def challenge(self) -> dict[str, Any]:
        return {"challenge": "zz", "node": "n", "server_x25519_pub": "00" * 32}


async def test_malformed_challenge_is_a_peer_rejection() -> None:
    config = ClientConfig(username="alice", domain="example.com")
    with pytest.raises(PeerRejected, match="challenge"):
        await register(
            BrokenNode(), "n", keys=keys_for("a"), config=config, tokens=MemoryTokenFiles(), now=NOW
        )
