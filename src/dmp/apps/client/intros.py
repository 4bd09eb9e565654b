"""The intro queue: first-contact messages from senders nobody pinned (layer: apps).

``recv`` quarantines a decrypted message here when a claim led to it and
its sender is not pinned for the zone the manifest was found in
(behaviour.md §a, §g). The user then decides:

* ``intro accept <id>``: show it once, pin nothing;
* ``intro trust <id>``: show it and pin the sender's Ed25519 key to that
  zone (the X25519 key stays empty until ``identity fetch --add``);
* ``intro block <id>``: drop it and put the sender key on the denylist
  (later messages from it are ignored).

These need no passphrase: they work on the queue and the configuration.
"""

from __future__ import annotations

from dmp.apps.client.config import ClientConfig, Contact
from dmp.domain.errors import IntroNotFound, PinMismatch
from dmp.ports.client_state import IntroQueue, PendingIntro

__all__ = ["accept_intro", "block_intro", "list_intros", "trust_intro"]


def list_intros(intros: IntroQueue) -> list[PendingIntro]:
    """Every queued first-contact message, by id (``intro list``)."""
    return intros.list()


def _take(intros: IntroQueue, intro_id: int) -> PendingIntro:
    intro = intros.get(intro_id)
    if intro is None:
        raise IntroNotFound(f"no intro with id {intro_id}; see `dnsmesh intro list`")
    return intro


def accept_intro(intros: IntroQueue, intro_id: int) -> PendingIntro:
    """Deliver one queued message without pinning its sender (``intro accept``).

    Returns:
        The message (now removed from the queue).

    Raises:
        IntroNotFound: no such id.
    """
    intro = _take(intros, intro_id)
    intros.remove(intro_id)
    return intro


def trust_intro(
    intros: IntroQueue,
    config: ClientConfig,
    intro_id: int,
    *,
    label: str | None = None,
    username: str | None = None,
) -> tuple[PendingIntro, str]:
    """Deliver a queued message and pin its sender to its zone (``intro trust``).

    The contact is named ``label``, else the verified sender label, else
    ``spk-<first 16 hex of the key>``. Its username (for prekey and rotation
    lookups) is ``username``, else the local part of the sender label. The
    caller saves ``config``.

    Returns:
        The message (removed from the queue) and the contact name.

    Raises:
        IntroNotFound: no such id.
        PinMismatch: a contact of that name is pinned to another key.
    """
    intro = _take(intros, intro_id)
    spk_hex = intro.sender_spk.hex()
    name = label or intro.sender_label or f"spk-{spk_hex[:16]}"
    user = username or intro.sender_label.partition("@")[0]
    existing = config.contacts.get(name)
    if existing is not None and existing.spk and existing.spk.lower() != spk_hex:
        raise PinMismatch(f"contact {name!r} is already pinned to another key")
    config.contacts[name] = Contact(
        pub=existing.pub if existing is not None else "",
        spk=spk_hex,
        domain=intro.sender_zone,
        username=user or (existing.username if existing is not None else ""),
        domain_explicit=True,
    )
    intros.remove(intro_id)
    return intro, name


def block_intro(intros: IntroQueue, intro_id: int, *, now: int, note: str = "") -> PendingIntro:
    """Drop a queued message and denylist its sender (``intro block``).

    Everything else that sender has queued is dropped too.

    Returns:
        The blocked message.

    Raises:
        IntroNotFound: no such id.
    """
    intro = _take(intros, intro_id)
    intros.block(intro.sender_spk, note=note, now=now)
    intros.remove(intro_id)
    return intro
