"""The client use cases in one place (layer: apps).

Every ``dnsmesh`` command that does more than edit ``config.yaml`` is one
async function here, run over the ports in :class:`ClientDeps`:

==========================  =================================================
command                     use case
==========================  =================================================
``identity show``           :func:`show_identity`
``identity publish``        :func:`publish_identity`
``identity fetch``          :func:`fetch_identity`
``identity refresh-prekeys``  :func:`refresh_prekeys`
``identity rotate``         :func:`rotate_identity`
``contacts add|list``       :func:`add_contact`, :func:`list_contacts`
``send``                    :func:`send_message`
``recv``                    :func:`receive_messages`
``intro list|accept|trust|block``  :func:`list_intros`, :func:`accept_intro`,
                            :func:`trust_intro`, :func:`block_intro`
``register``                :func:`register`
``tsig register``           :func:`tsig_register`
==========================  =================================================

Errors: :class:`~dmp.domain.errors.DmpError` subclasses (exit 1, e.g.
``UnknownContact``, ``AmbiguousIdentity``, ``PinMismatch``),
:class:`~dmp.ports.transport.TransportError` (exit 2),
:class:`~dmp.apps.client.config.ConfigError` and
:class:`~dmp.ports.client_state.ClientStateError` (exit 1).
"""

from __future__ import annotations

from dmp.apps.client.contacts import (
    ContactView,
    add_contact,
    find_contact,
    list_contacts,
    pinned_keys,
)
from dmp.apps.client.deps import (
    BUILTIN_CLAIM_PROVIDER_SEEDS,
    DEFAULT_CONCURRENCY,
    ClientDeps,
    Lookups,
    lookup_many,
)
from dmp.apps.client.identity import (
    DEFAULT_IDENTITY_TTL,
    DEFAULT_PREKEY_COUNT,
    DEFAULT_PREKEY_TTL,
    DEFAULT_ROTATION_EXP_S,
    FetchedIdentity,
    IdentityCandidate,
    PublishedIdentity,
    RefreshedPrekeys,
    RotatedIdentity,
    fetch_identity,
    own_identity_owner,
    own_prekey_owner,
    publish_identity,
    refresh_prekeys,
    rotate_identity,
    show_identity,
    verify_sender_label,
)
from dmp.apps.client.intros import accept_intro, block_intro, list_intros, trust_intro
from dmp.apps.client.messaging import (
    Delivered,
    ReceiveResult,
    Rejection,
    SendResult,
    discover_claim_providers,
    receive_messages,
    send_message,
)
from dmp.apps.client.registration import TsigRegistration, register, tsig_register

__all__ = [
    "BUILTIN_CLAIM_PROVIDER_SEEDS",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_IDENTITY_TTL",
    "DEFAULT_PREKEY_COUNT",
    "DEFAULT_PREKEY_TTL",
    "DEFAULT_ROTATION_EXP_S",
    "ClientDeps",
    "ContactView",
    "Delivered",
    "FetchedIdentity",
    "IdentityCandidate",
    "Lookups",
    "PublishedIdentity",
    "ReceiveResult",
    "RefreshedPrekeys",
    "Rejection",
    "RotatedIdentity",
    "SendResult",
    "TsigRegistration",
    "accept_intro",
    "add_contact",
    "block_intro",
    "discover_claim_providers",
    "fetch_identity",
    "find_contact",
    "list_contacts",
    "list_intros",
    "lookup_many",
    "own_identity_owner",
    "own_prekey_owner",
    "pinned_keys",
    "publish_identity",
    "receive_messages",
    "refresh_prekeys",
    "register",
    "rotate_identity",
    "send_message",
    "show_identity",
    "trust_intro",
    "tsig_register",
    "verify_sender_label",
]
