"""Contacts and intro-queue decisions (configuration and queue only, no network)."""

from __future__ import annotations

import pytest

from dmp.adapters.client_state import MemoryIntroQueue
from dmp.apps.client.config import ClientConfig, ConfigError, Contact
from dmp.apps.client.contacts import add_contact, find_contact, list_contacts, pinned_keys
from dmp.apps.client.intros import accept_intro, block_intro, list_intros, trust_intro
from dmp.domain.errors import IntroNotFound, PinMismatch
from dmp.ports.client_state import PendingIntro

X, S = "11" * 32, "22" * 32


def config() -> ClientConfig:
    return ClientConfig(username="me", domain="mesh.example", identity_domain="me.example")


def test_add_contact_pinned_with_explicit_domain() -> None:
    cfg = config()
    contact = add_contact(
        cfg, "bob@bob.example", X.upper(), signing_key_hex=S, domain="Bob.Example."
    )
    assert contact == Contact(
        pub=X, spk=S, domain="Bob.Example", username="bob", domain_explicit=True
    )
    assert cfg.contacts["bob@bob.example"] is contact


def test_add_contact_without_domain_or_key() -> None:
    """No domain: our own zone, not explicit (no claim goes there); no key: unpinned."""
    cfg = config()
    contact = add_contact(cfg, "carol", X)
    assert (contact.domain, contact.domain_explicit, contact.spk, contact.username) == (
        "me.example",
        False,
        "",
        "carol",
    )
    (view,) = list_contacts(cfg)
    assert (view.name, view.zone, view.pinned) == ("carol", "me.example", False)
    assert pinned_keys(cfg) == []


@pytest.mark.parametrize("bad", ["", "zz" * 32, "11" * 31, "11" * 33])
def test_add_contact_refuses_bad_keys(bad: str) -> None:
    with pytest.raises(ConfigError):
        add_contact(config(), "x", bad)
    with pytest.raises(ConfigError):
        add_contact(config(), "x", X, signing_key_hex=bad)


def test_list_and_pins_and_find() -> None:
    cfg = config()
    add_contact(cfg, "zed", X, signing_key_hex=S, domain="z.example")
    add_contact(cfg, "amy", X)
    assert [(v.name, v.pinned) for v in list_contacts(cfg)] == [("amy", False), ("zed", True)]
    assert pinned_keys(cfg) == [(bytes.fromhex(S), "z.example")]
    assert find_contact(cfg, "zed") == ("zed", cfg.contacts["zed"])
    assert find_contact(cfg, "zed@Z.Example.") == ("zed", cfg.contacts["zed"])
    assert find_contact(cfg, "amy@me.example") == ("amy", cfg.contacts["amy"])
    assert find_contact(cfg, "zed@other.example") is None
    assert find_contact(cfg, "nobody") is None


def queued(queue: MemoryIntroQueue, spk: bytes, label: str = "") -> PendingIntro:
    return queue.add(
        sender_spk=spk,
        msg_id=spk[:16],
        sender_zone="carol.example",
        body=b"hello",
        sender_label=label,
        ts=1,
        received_at=2,
    )


def test_intro_accept_and_unknown_ids() -> None:
    queue = MemoryIntroQueue()
    intro = queued(queue, b"\x01" * 32)
    assert list_intros(queue) == [intro]
    assert accept_intro(queue, intro.intro_id) == intro
    assert list_intros(queue) == []
    with pytest.raises(IntroNotFound):
        accept_intro(queue, intro.intro_id)
    with pytest.raises(IntroNotFound):
        trust_intro(queue, config(), 99)
    with pytest.raises(IntroNotFound):
        block_intro(queue, 99, now=1)


def test_intro_trust_pins_sender_to_its_zone() -> None:
    queue = MemoryIntroQueue()
    cfg = config()
    spk = b"\x02" * 32
    intro = queued(queue, spk, label="carol@carol.example")
    got, name = trust_intro(queue, cfg, intro.intro_id)
    assert got == intro
    assert name == "carol@carol.example"
    assert cfg.contacts[name] == Contact(
        pub="", spk=spk.hex(), domain="carol.example", username="carol", domain_explicit=True
    )
    assert pinned_keys(cfg) == [(spk, "carol.example")]
    assert list_intros(queue) == []
    # without a verified label: spk-based name, --username kept
    other = queued(queue, b"\x03" * 32)
    _, name = trust_intro(queue, cfg, other.intro_id, username="dave")
    assert name == "spk-" + "03" * 8
    assert cfg.contacts[name].username == "dave"


def test_intro_trust_refuses_to_repin_another_key() -> None:
    queue = MemoryIntroQueue()
    cfg = config()
    add_contact(cfg, "carol", X, signing_key_hex=S)
    intro = queued(queue, b"\x04" * 32)
    with pytest.raises(PinMismatch):
        trust_intro(queue, cfg, intro.intro_id, label="carol")
    assert cfg.contacts["carol"].spk == S
    assert [i.intro_id for i in list_intros(queue)] == [intro.intro_id]
    # an unpinned contact of that name gains the key and keeps its X25519 key
    add_contact(cfg, "erin", X)
    trust_intro(queue, cfg, intro.intro_id, label="erin")
    assert (cfg.contacts["erin"].pub, cfg.contacts["erin"].spk) == (X, ("04" * 32))


def test_intro_block() -> None:
    queue = MemoryIntroQueue()
    spk = b"\x05" * 32
    first = queued(queue, spk)
    block_intro(queue, first.intro_id, now=9, note="no thanks")
    assert queue.is_blocked(spk)
    assert list_intros(queue) == []
    assert [(d.note, d.blocked_at) for d in queue.denylist()] == [("no thanks", 9)]
