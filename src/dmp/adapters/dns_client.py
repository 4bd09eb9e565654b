"""DNS client adapters: TXT reads, RFC 2136 UPDATE + TSIG writes, claim UPDATEs (layer: adapters).

Implements the client transport ports of :mod:`dmp.ports.transport`:

* :class:`ResolverPool` / :class:`DirectReader` — :class:`RecordReader` over
  an ordered list of upstreams (public resolvers, or one dmp node) with
  failover, cooldown and the "oracle rule" (behaviour.md §g);
* :class:`TsigUpdateWriter` — :class:`RecordWriter` sending one TSIG-signed
  UPDATE per record to the home node (wire.md §7.3);
* :class:`UdpClaimSender` — :class:`ClaimSender` sending un-TSIG'd claim
  UPDATEs (ADD only) to a provider or recipient zone (wire.md §7.4).

Wire rules (wire.md §1.4, §7.3):

* one RR per UPDATE; the zone section is the key's zone; ADD is class IN TXT
  with a TTL; delete-one is class NONE with the rdata; delete-all is class
  ANY;
* every TXT value is split into character-strings of at most 255 bytes
  (the reference's writer cannot send values over 255 bytes; we must);
* readers join the character-strings of one RR and decode UTF-8;
* an exchange goes over UDP (EDNS0, 1232-byte payload) with a 5 s timeout and
  is retried over TCP (2-byte length framing, RFC 1035 §4.2.2) when the reply
  has TC=1, advertising payload 65535 there (the reference node caps TCP
  answers at the advertised size); NOERROR means success.

I/O: anyio. UDP uses a connected non-blocking socket and
``anyio.wait_readable`` so that an ICMP port-unreachable fails the exchange
at once instead of after the timeout; datagrams that are not a reply to our
message (wrong id, wrong question, garbage) are ignored. TCP uses
``anyio.connect_tcp``. Every adapter is safe for concurrent use: each
exchange has its own socket, and the pool's shared state (cooldowns) is only
touched between awaits.

Errors are mapped in one place (:func:`_mapped_errors`): timeouts →
:class:`ExchangeTimeout`, connection errors → :class:`PeerUnreachable`, a
non-NOERROR rcode or a reply that does not parse or does not verify →
:class:`PeerRejected`.

TSIG signing and checking use wall time inside dnspython (house-style §3.7);
the injected clock is only used for resolver cooldowns.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update
from anyio.streams.buffered import BufferedByteReceiveStream

from dmp.adapters.clock import SystemClock
from dmp.domain.codec import split_txt
from dmp.ports.clock import Clock
from dmp.ports.transport import ExchangeTimeout, PeerRejected, PeerUnreachable

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "EDNS_PAYLOAD",
    "DirectReader",
    "ResolverPool",
    "TsigUpdateWriter",
    "UdpClaimSender",
    "build_txt_query",
    "build_txt_update",
    "exchange",
    "txt_rdata",
]

DEFAULT_TIMEOUT_S = 5.0
"""Per-exchange timeout (wire.md §7.3)."""
EDNS_PAYLOAD = 1232
"""Advertised UDP payload size (the DNS Flag Day 2020 value)."""
_MAX_UDP = 65535
_MAX_TCP_PAYLOAD = 65535
_MAX_STRAY_DATAGRAMS = 64
_IN = dns.rdataclass.IN
_TXT = dns.rdatatype.TXT

Upstream = tuple[str, int]


# ---- message builders ---------------------------------------------------------


def txt_rdata(value: str) -> dns.rdtypes.ANY.TXT.TXT:
    """One TXT rdata holding ``value`` split into ≤255-byte character-strings.

    Args:
        value: the whole TXT value (any length; UTF-8 encoded).

    Returns:
        A TXT rdata whose strings join back to ``value.encode("utf-8")`` (wire.md §1.4).
    """
    return dns.rdtypes.ANY.TXT.TXT(_IN, _TXT, split_txt(value))


def build_txt_update(
    zone: dns.name.Name,
    owner: dns.name.Name,
    *,
    add: tuple[str, int] | None = None,
    delete: str | None = None,
    delete_all: bool = False,
) -> dns.update.UpdateMessage:
    """An UPDATE carrying exactly one TXT change at ``owner`` (wire.md §7.3).

    Args:
        zone: the zone section (the TSIG key's zone, or the claim target zone).
        owner: absolute owner name of the change.
        add: ``(value, ttl)`` for an ADD (class IN).
        delete: a value to delete (class NONE + rdata).
        delete_all: delete the whole TXT RRset (class ANY).

    Returns:
        An unsigned :class:`dns.update.UpdateMessage` with a random id.

    Raises:
        ValueError: not exactly one change was asked for.
    """
    if (add is not None) + (delete is not None) + delete_all != 1:
        raise ValueError("exactly one of add, delete, delete_all")
    update = dns.update.UpdateMessage(zone)
    if add is not None:
        value, ttl = add
        update.add(owner, ttl, txt_rdata(value))
    elif delete is not None:
        update.delete(owner, txt_rdata(delete))
    else:
        update.delete(owner, _TXT)
    return update


def build_txt_query(owner: dns.name.Name, *, want_dnssec: bool = False) -> dns.message.QueryMessage:
    """A recursive TXT query for ``owner`` with EDNS0 (payload :data:`EDNS_PAYLOAD`).

    Args:
        owner: absolute owner name.
        want_dnssec: set DO and AD, asking the resolver to validate (RFC 6840 §5.7).
    """
    query = dns.message.make_query(
        owner, _TXT, use_edns=0, payload=EDNS_PAYLOAD, want_dnssec=want_dnssec
    )
    if want_dnssec:
        query.flags |= dns.flags.AD
    return query


# ---- one exchange ---------------------------------------------------------------


@contextlib.contextmanager
def _mapped_errors(peer: str) -> Iterator[None]:
    """Turn socket, anyio and dnspython failures into port errors."""
    try:
        yield
    except TimeoutError as exc:
        raise ExchangeTimeout(f"{peer}: no reply in time") from exc
    except (anyio.EndOfStream, anyio.IncompleteRead) as exc:
        raise PeerUnreachable(f"{peer}: connection closed before the reply") from exc
    except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise PeerUnreachable(f"{peer}: connection broken") from exc
    except OSError as exc:
        raise PeerUnreachable(f"{peer}: {exc.strerror or exc}") from exc
    except dns.exception.DNSException as exc:
        raise PeerRejected(f"{peer}: bad reply: {exc}") from exc


def _peer_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _matches(query: dns.message.Message, reply: dns.message.Message) -> bool:
    """Is ``reply`` an answer to ``query``? A header-only TC=1 reply counts."""
    if query.is_response(reply):
        return True
    return (
        reply.id == query.id
        and bool(reply.flags & dns.flags.QR)
        and bool(reply.flags & dns.flags.TC)
        and not reply.question
    )


def _parse_unverified(wire: bytes) -> dns.message.Message:
    """Parse a reply without checking its TSIG (``keyring=False``)."""
    return dns.message.from_wire(wire, keyring=False)


def _truncated_header(wire: bytes, query_id: int) -> bool:
    """A reply that does not parse but whose header says ours + QR + TC (RFC 2181 §9)."""
    return (
        len(wire) >= 12
        and int.from_bytes(wire[:2], "big") == query_id
        and bool(wire[2] & 0x80)
        and bool(wire[2] & 0x02)
    )


def _ip_literal(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]] | None:
    """``(family, sockaddr)`` for an IPv4/IPv6 literal, without a resolver round trip.

    None for anything else (names, scoped IPv6 such as ``fe80::1%eth0``):
    those go through ``getaddrinfo`` (which costs a worker-thread hop).
    """
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        pass
    else:
        return socket.AF_INET, (host, port)
    try:
        socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return None
    return socket.AF_INET6, (host, port, 0, 0)


async def _udp_exchange(
    query: dns.message.Message, wire: bytes, host: str, port: int, leg_timeout_s: float
) -> tuple[bytes, dns.message.Message | None]:
    """Send ``wire`` over UDP; the first matching reply, raw and parsed.

    The parsed message is None when the reply is a truncated one that did not
    parse (only its header was usable).
    """
    with anyio.fail_after(leg_timeout_s):
        literal = _ip_literal(host, port)
        if literal is not None:
            family, sockaddr = literal
        else:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            if not infos:
                raise OSError(errno.EHOSTUNREACH, "no address")
            family, _, _, _, sockaddr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(sockaddr)
            sent = False
            for _ in range(_MAX_STRAY_DATAGRAMS):
                if not sent:
                    try:
                        sock.send(wire)
                        sent = True
                    except BlockingIOError:
                        await anyio.wait_writable(sock)
                        continue
                await anyio.wait_readable(sock)
                try:
                    data = sock.recv(_MAX_UDP)
                except BlockingIOError:
                    continue
                try:
                    reply = _parse_unverified(data)
                except dns.exception.DNSException:
                    if _truncated_header(data, query.id):
                        return data, None
                    continue  # garbage or a stray datagram
                if _matches(query, reply):
                    return data, reply
    raise PeerUnreachable(f"{_peer_text(host, port)}: too many unexpected datagrams")


async def _tcp_exchange(
    query: dns.message.Message, wire: bytes, host: str, port: int, leg_timeout_s: float
) -> tuple[bytes, dns.message.Message]:
    """Send ``wire`` over TCP with 2-byte framing; the reply, raw and parsed."""
    with anyio.fail_after(leg_timeout_s):
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(len(wire).to_bytes(2, "big") + wire)
            reader = BufferedByteReceiveStream(stream)
            size = int.from_bytes(await reader.receive_exactly(2), "big")
            data = await reader.receive_exactly(size)
    reply = _parse_unverified(data)
    if not _matches(query, reply):
        raise PeerRejected(f"{_peer_text(host, port)}: reply does not match the request")
    return data, reply


def _for_tcp(query: dns.message.Message, wire: bytes) -> tuple[dns.message.Message, bytes]:
    """The message and bytes for the TCP leg: an EDNS query advertises payload 65535 there.

    The payload size is a UDP limit (RFC 6891 §6.2.3), but the reference node
    caps TCP answers at it too and answers SERVFAIL when the RRset is bigger
    (a pool of 25 prekeys is ~4.4 kB). ``query`` itself is left as it was.
    """
    if query.edns < 0 or query.payload >= _MAX_TCP_PAYLOAD:
        return query, wire
    tcp_query = copy.copy(query)
    tcp_query.use_edns(query.edns, query.ednsflags, _MAX_TCP_PAYLOAD, options=query.options)
    return tcp_query, tcp_query.to_wire()


async def exchange(
    query: dns.message.Message,
    host: str,
    port: int,
    *,
    leg_timeout_s: float = DEFAULT_TIMEOUT_S,
    tsig_key: dns.tsig.Key | None = None,
) -> dns.message.Message:
    """One DNS exchange: UDP first, TCP when the reply is truncated.

    Args:
        query: the message to send (a query or an UPDATE), unsigned.
        host: server host name or IP literal.
        port: server port.
        leg_timeout_s: seconds allowed for each leg (UDP, then TCP).
        tsig_key: sign the message with this key and require a reply whose
            TSIG verifies (checked only on NOERROR replies: error stubs such as
            the 12-byte NOTAUTH carry no TSIG).

    Returns:
        The reply. Its rcode is NOT checked here.

    Raises:
        ExchangeTimeout: a leg got no matching reply within ``leg_timeout_s``.
        PeerUnreachable: resolution failed, the connection was refused or broken.
        PeerRejected: the reply does not parse, does not match, or its TSIG
            does not verify.
    """
    if tsig_key is not None:
        query.use_tsig(tsig_key)
    wire = query.to_wire()
    peer = _peer_text(host, port)
    with _mapped_errors(peer):
        data, parsed = await _udp_exchange(query, wire, host, port, leg_timeout_s)
        if parsed is None or parsed.flags & dns.flags.TC:
            query, wire = _for_tcp(query, wire)
            data, parsed = await _tcp_exchange(query, wire, host, port, leg_timeout_s)
    if tsig_key is not None and parsed.rcode() == dns.rcode.NOERROR:
        try:
            parsed = dns.message.from_wire(data, keyring=tsig_key, request_mac=query.mac)
        except dns.exception.DNSException as exc:
            raise PeerRejected(f"{peer}: reply TSIG did not verify: {exc}") from exc
    return parsed


def _check_rcode(reply: dns.message.Message, what: str, peer: str) -> None:
    rcode = reply.rcode()
    if rcode != dns.rcode.NOERROR:
        raise PeerRejected(f"{peer}: {what}: {dns.rcode.to_text(rcode)}", rcode=int(rcode))


# ---- readers ----------------------------------------------------------------


def _txt_values(reply: dns.message.Message, owner: dns.name.Name) -> list[str]:
    """The TXT values for ``owner`` in a NOERROR reply, following CNAMEs.

    Values that are not valid UTF-8 are skipped: no DMP record can be one, and
    one bad value must not hide the others.
    """
    if not isinstance(reply, dns.message.QueryMessage):
        return []
    try:
        chain = reply.resolve_chaining()
    except dns.exception.DNSException:
        return []
    if chain.answer is None or chain.answer.rdtype != _TXT:
        return []
    values: list[str] = []
    for rdata in chain.answer:
        try:
            values.append(b"".join(rdata.strings).decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return values


class ResolverPool:
    """A :class:`~dmp.ports.transport.RecordReader` over ordered upstreams (behaviour.md §g).

    A lookup asks the upstreams in order:

    * a failure (timeout, unreachable, an rcode other than NOERROR/NXDOMAIN,
      an unusable reply) puts that upstream in cooldown for ``cooldown``
      seconds (failure threshold 1) and moves on to the next;
    * records end the lookup;
    * a negative answer (NXDOMAIN, or NOERROR without TXT) moves on too, and
      if a later upstream then returns records, every upstream that answered
      negatively is put in cooldown ("oracle rule": a resolver denying a name
      that exists is stale or lying); if nobody has records, ``[]``.

    Upstreams in cooldown are asked only when no healthy upstream gave an
    answer, as a last resort, in order. A successful answer clears an
    upstream's cooldown. The whole lookup is bounded by ``lifetime`` seconds.

    Args:
        upstreams: ``(host, port)`` pairs, in preference order (IP literals or names).
        timeout: seconds per exchange leg.
        lifetime: seconds for a whole lookup across upstreams.
        cooldown: seconds an upstream is skipped after a failure.
        clock: time source for cooldowns (wall clock by default).
        require_dnssec: ask for validation and treat replies without AD as failures.

    Raises:
        ValueError: no upstreams.
    """

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        timeout: float = DEFAULT_TIMEOUT_S,
        lifetime: float = 10.0,
        cooldown: float = 60.0,
        *,
        clock: Clock | None = None,
        require_dnssec: bool = False,
    ) -> None:
        if not upstreams:
            raise ValueError("a resolver pool needs at least one upstream")
        self.upstreams: tuple[Upstream, ...] = tuple((h, int(p)) for h, p in upstreams)
        self.timeout = timeout
        self.lifetime = lifetime
        self.cooldown = cooldown
        self.require_dnssec = require_dnssec
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._cooling_until: dict[Upstream, float] = {}

    def in_cooldown(self, upstream: Upstream) -> bool:
        """Is ``upstream`` being skipped right now?"""
        until = self._cooling_until.get(upstream)
        if until is None:
            return False
        if self._clock.now() >= until:
            del self._cooling_until[upstream]
            return False
        return True

    def _demote(self, upstream: Upstream) -> None:
        self._cooling_until[upstream] = self._clock.now() + self.cooldown

    def _promote(self, upstream: Upstream) -> None:
        self._cooling_until.pop(upstream, None)

    async def _ask(
        self, upstream: Upstream, owner: dns.name.Name, leg_timeout_s: float
    ) -> list[str]:
        """Records, or ``[]`` for a negative answer; raises on failure."""
        host, port = upstream
        peer = _peer_text(host, port)
        reply = await exchange(
            build_txt_query(owner, want_dnssec=self.require_dnssec),
            host,
            port,
            leg_timeout_s=leg_timeout_s,
        )
        rcode = reply.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return []
        _check_rcode(reply, f"TXT {owner}", peer)
        if self.require_dnssec and not reply.flags & dns.flags.AD:
            raise PeerRejected(f"{peer}: TXT {owner}: answer not DNSSEC-validated (no AD)")
        return _txt_values(reply, owner)

    async def query_txt(self, owner: dns.name.Name) -> list[str]:
        """Every TXT value at ``owner`` (strings of one RR joined, UTF-8 decoded).

        Returns:
            The values of the first upstream that has records, or ``[]`` when
            every upstream that answered had none.

        Raises:
            PeerUnreachable: no upstream answered (ExchangeTimeout when the
                lifetime ran out).
            PeerRejected: every upstream that answered refused (SERVFAIL, REFUSED, ...).
        """
        healthy = [u for u in self.upstreams if not self.in_cooldown(u)]
        cooling = [u for u in self.upstreams if u not in healthy]
        negative: list[Upstream] = []
        rejected: PeerRejected | None = None
        unreachable: PeerUnreachable | None = None
        deadline = anyio.current_time() + self.lifetime
        for group, last_resort in ((healthy, False), (cooling, True)):
            if last_resort and negative:
                break
            for upstream in group:
                left = deadline - anyio.current_time()
                if left <= 0:
                    break
                try:
                    with anyio.fail_after(left):
                        values = await self._ask(upstream, owner, min(self.timeout, left))
                except TimeoutError:
                    self._demote(upstream)
                    unreachable = ExchangeTimeout(f"TXT {owner}: lookup lifetime exhausted")
                    continue
                except PeerRejected as exc:
                    self._demote(upstream)
                    rejected = exc
                    continue
                except PeerUnreachable as exc:
                    self._demote(upstream)
                    unreachable = exc
                    continue
                self._promote(upstream)
                if not values:
                    negative.append(upstream)
                    continue
                for liar in negative:
                    self._demote(liar)
                return values
        if negative:
            return []
        if rejected is not None:
            raise rejected
        if unreachable is not None:
            raise unreachable
        raise ExchangeTimeout(f"TXT {owner}: lookup lifetime of {self.lifetime} s exhausted")


class DirectReader:
    """A :class:`~dmp.ports.transport.RecordReader` asking one dmp node directly.

    Args:
        host: the node's DNS host (name or IP literal).
        port: the node's DNS port.
        timeout: seconds per exchange leg.
    """

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.host = host
        self.port = port
        self._pool = ResolverPool([(host, port)], timeout=timeout, lifetime=2 * timeout)

    async def query_txt(self, owner: dns.name.Name) -> list[str]:
        """Every TXT value the node holds at ``owner``; ``[]`` for NXDOMAIN/NODATA.

        Raises:
            PeerUnreachable: the node did not answer.
            PeerRejected: the node answered with an error rcode.
        """
        return await self._pool.query_txt(owner)


# ---- writers ----------------------------------------------------------------


def _absolute(name: dns.name.Name | str) -> dns.name.Name:
    if isinstance(name, str):
        return dns.name.from_text(name)
    if not name.is_absolute():
        raise ValueError(f"name must be absolute: {name}")
    return name


class TsigUpdateWriter:
    """A :class:`~dmp.ports.transport.RecordWriter` using RFC 2136 UPDATE + TSIG (wire.md §7.3).

    Args:
        server: the home node's ``(host, port)`` for DNS.
        zone: the zone the key is registered for (the UPDATE zone section).
        keyname: the TSIG key name (e.g. ``alice-1a2b3c4d-5e6f70.mesh.example.``).
        secret: the raw TSIG secret bytes (``bytes.fromhex(tsig_secret_hex)``).
        algorithm: any RFC 8945 algorithm name (default ``hmac-sha256``).
        timeout: seconds per exchange leg.
    """

    def __init__(
        self,
        server: Upstream,
        zone: dns.name.Name | str,
        keyname: dns.name.Name | str,
        secret: bytes,
        algorithm: str = "hmac-sha256",
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.host, self.port = server[0], int(server[1])
        self.zone = _absolute(zone)
        self.tsig_key = dns.tsig.Key(_absolute(keyname), secret, algorithm)
        self.timeout = timeout

    async def _send(self, update: dns.update.UpdateMessage, what: str) -> None:
        reply = await exchange(
            update, self.host, self.port, leg_timeout_s=self.timeout, tsig_key=self.tsig_key
        )
        _check_rcode(reply, what, _peer_text(self.host, self.port))

    async def publish(self, owner: dns.name.Name, value: str, ttl: int) -> None:
        """ADD ``value`` (split into ≤255-byte strings) at ``owner`` with ``ttl``.

        Raises:
            PeerUnreachable: no reply (ExchangeTimeout on timeout).
            PeerRejected: an rcode other than NOERROR (``.rcode`` set; NOTAUTH for
                a bad key, REFUSED for a scope miss or a cap), or a reply whose
                TSIG does not verify.
        """
        update = build_txt_update(self.zone, owner, add=(value, ttl))
        await self._send(update, f"UPDATE add TXT {owner}")

    async def delete(self, owner: dns.name.Name, value: str | None = None) -> None:
        """Delete ``value`` at ``owner`` (class NONE), or the whole TXT RRset (class ANY).

        Deleting something absent succeeds (RFC 2136 §3.4.2.4).

        Raises:
            PeerUnreachable, PeerRejected: as for :meth:`publish`.
        """
        if value is None:
            update = build_txt_update(self.zone, owner, delete_all=True)
        else:
            update = build_txt_update(self.zone, owner, delete=value)
        await self._send(update, f"UPDATE delete TXT {owner}")


class UdpClaimSender:
    """A :class:`~dmp.ports.transport.ClaimSender`: un-TSIG'd claim ADDs (wire.md §7.4).

    The UPDATE goes to the zone apex host (the zone's own name resolved as a
    host) on ``port``, unless ``targets`` names another ``(host, port)`` for
    the zone (a provider endpoint host, a local test node).

    Args:
        port: DNS port of claim targets (``DMP_PROVIDER_DNS_PORT``, default 53).
        targets: per-zone ``(host, port)`` overrides.
        timeout: seconds per exchange leg.
    """

    def __init__(
        self,
        port: int = 53,
        *,
        targets: dict[dns.name.Name, Upstream] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.port = port
        self.targets = dict(targets or {})
        self.timeout = timeout

    def target(self, zone: dns.name.Name) -> Upstream:
        """Where a claim for ``zone`` is sent."""
        found = self.targets.get(zone)
        if found is not None:
            return found
        return zone.to_text(omit_final_dot=True), self.port

    async def send_claim(
        self, zone: dns.name.Name, owner: dns.name.Name, value: str, ttl: int
    ) -> None:
        """ADD the claim ``value`` at ``owner`` in ``zone``, unsigned.

        Raises:
            PeerUnreachable: no reply (ExchangeTimeout on timeout).
            PeerRejected: an rcode other than NOERROR (REFUSED for a shape or
                verification failure, SERVFAIL when rate-limited).
        """
        host, port = self.target(zone)
        update = build_txt_update(zone, owner, add=(value, ttl))
        reply = await exchange(update, host, port, leg_timeout_s=self.timeout)
        _check_rcode(reply, f"claim UPDATE {owner}", _peer_text(host, port))
