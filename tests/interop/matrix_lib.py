"""Helpers for the interop matrix: one ``dnsmesh`` user of either implementation.

A :class:`CliUser` drives either CLI as a person would, through its console
script, with a HOME (and config home) of its own:

* ``dmp``: this repo's ``.venv/bin/dnsmesh``, with ``DMP_AGENT=off`` (no key
  agent) and the real Argon2id parameters (``DMP_KDF_PROFILE`` is never
  passed on: identities must be the ones the reference derives);
* ``ref``: ``$DMP_REF_VENV/bin/dnsmesh`` (``dnsmesh==0.7.5``).

How a user gets write access to the node (:meth:`CliUser.register`):

* ``dmp`` users: ``dnsmesh tsig register`` (every write is a TSIG-signed DNS
  UPDATE; values over 255 bytes go out as several character-strings);
* ``ref`` users: ``dnsmesh register`` (a bearer token; every write is an HTTP
  POST/DELETE to ``/v1/records``). The reference CLI in TSIG mode puts each
  value into ONE character-string, so it cannot publish a slot manifest
  (always > 255 bytes): its ``send`` fails (wire.md gap 11). A real user of
  the reference works around that exactly like this, with ``register``.

Nothing here binds a port or starts a node; the node comes from the suite's
``node`` fixture (conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Literal

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from nodelib import REPO, ref_venv

from dmp.domain.manifest import SlotManifest, parse_manifest
from dmp.domain.names import mailbox_hash12

Impl = Literal["dmp", "ref"]
IMPLS: tuple[Impl, ...] = ("dmp", "ref")
#: How a user writes: ``tsig`` (``tsig register``; DNS UPDATE + TSIG), ``bearer``
#: (``register``; HTTP with its own token), ``operator`` (``init --http-token``
#: with the node's operator token; HTTP).
Mode = Literal["tsig", "bearer", "operator"]
DEFAULT_MODE: dict[Impl, Mode] = {"dmp": "tsig", "ref": "bearer"}
ZONE = "mesh.test"
DNS_HOST = "127.0.0.1"
#: Wall-clock bound for one CLI process (Argon2id + a few DNS round trips).
STEP_TIMEOUT_S = 120.0


class CliFailed(AssertionError):
    """A ``dnsmesh`` step exited non-zero (the message carries both output streams)."""


def txt(name: str, dns_port: int) -> list[str]:
    """TXT values at ``name``, read straight from the node over TCP, without EDNS.

    (A pool of 25 prekeys is ~4.4 kB: too big for UDP, and the reference node
    answers SERVFAIL over TCP when the query's EDNS payload size is smaller
    than the answer.)

    Returns each value with its character-strings joined; ``[]`` on NXDOMAIN.
    """
    q = dns.message.make_query(name, dns.rdatatype.TXT)
    r = dns.query.tcp(q, DNS_HOST, port=dns_port, timeout=3)
    if r.rcode() == dns.rcode.NXDOMAIN:
        return []
    assert r.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(r.rcode())
    return [b"".join(rd.strings).decode() for rrset in r.answer for rd in rrset]


def manifests_to(sender: CliUser, receiver: CliUser, dns_port: int) -> list[SlotManifest]:
    """``sender``'s manifests to ``receiver`` now at the 10 slots of its mailbox (over DNS).

    Both users live in :data:`ZONE`, so the slots are ``slot-0..9.mb-<h12>.ZONE``.
    """
    xpub = bytes.fromhex(receiver.keys()["public_key"])
    recipient_id = hashlib.sha256(xpub).digest()
    spk = bytes.fromhex(sender.keys()["signing_public_key"])
    out = []
    for n in range(10):
        for wire in txt(f"slot-{n}.mb-{mailbox_hash12(recipient_id)}.{ZONE}", dns_port):
            manifest = parse_manifest(wire)
            if manifest.sender_spk == spk and manifest.recipient_id == recipient_id:
                out.append(manifest)
    return out


def parse_received(impl: Impl, stdout: str) -> list[tuple[str, str]]:
    """``(sender, body)`` for every message a ``recv`` printed.

    Both CLIs print one block per message: ``from <sender>``, ``  ts=<unix
    seconds>``, the body indented by two spaces, then an empty line.
    ``<sender>`` is the contact name or the first 16 hex of the sender's
    Ed25519 key + ``...``. A multi-line body: ours indents every line, the
    reference only the first. (Bodies with empty lines would be ambiguous;
    this suite sends none.)
    """
    out: list[tuple[str, str]] = []
    lines = stdout.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("from "):
            i += 1
            continue
        who = lines[i][5:]
        i += 1
        if i < len(lines) and lines[i].startswith("  ts="):
            i += 1
        body: list[str] = []
        while i < len(lines) and lines[i] != "":
            line = lines[i]
            if impl == "dmp" or not body:
                assert line.startswith("  "), stdout
                line = line[2:]
            body.append(line)
            i += 1
        out.append((who, "\n".join(body)))
    return out


class CliUser:
    """One user of the ``impl`` CLI, with its own HOME and passphrase."""

    def __init__(
        self,
        impl: Impl,
        name: str,
        root: Path,
        *,
        mode: Mode | None = None,
        operator_token: str = "",
    ) -> None:
        self.impl = impl
        self.name = name
        self.mode: Mode = mode or DEFAULT_MODE[impl]
        if self.mode == "operator" and not operator_token:
            raise ValueError("mode 'operator' needs the node's operator_token")
        self.operator_token = operator_token
        self.home = root / f"{impl}-{name}"
        self.home.mkdir(parents=True, exist_ok=True)
        if impl == "ref":
            venv = ref_venv()
            assert venv is not None, "no reference venv (DMP_REF_VENV)"
            bindir = venv / "bin"
        else:
            bindir = REPO / ".venv" / "bin"
        self.exe = str(bindir / "dnsmesh")
        # built from scratch: nothing of the caller's DMP_* (e.g. DMP_KDF_PROFILE) leaks in
        self.env = {
            "PATH": f"{bindir}:/usr/bin:/bin",
            "HOME": str(self.home),
            "DMP_CONFIG_HOME": str(self.home / ".dmp"),
            "DMP_PASSPHRASE": f"{name}: correct horse battery staple ({impl})",
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        }
        if impl == "dmp":
            self.env["DMP_AGENT"] = "off"
        self.log: list[str] = []
        self._keys: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"{self.name}({self.impl}, {self.mode})"

    @property
    def address(self) -> str:
        return f"{self.name}@{ZONE}"

    @property
    def h16(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()[:16]

    @property
    def prekey_owner(self) -> str:
        return f"prekeys.id-{self.h16[:12]}.{ZONE}"

    @property
    def identity_owner(self) -> str:
        return f"id-{self.h16}.{ZONE}"

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``dnsmesh *args``; when ``ok``, fail the test on a non-zero exit."""
        p = subprocess.run(
            [self.exe, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
            cwd=self.home,
        )
        self.log.append(
            f"$ dnsmesh {' '.join(args)}  [rc={p.returncode}]\n{p.stdout}{p.stderr}".rstrip()
        )
        if ok and p.returncode != 0:
            raise CliFailed(
                f"{self!r}: dnsmesh {' '.join(args)} exited {p.returncode}\n"
                f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}"
            )
        return p

    # ------------------------------------------------------------ steps

    def init(self, http_port: int, dns_port: int) -> None:
        endpoint = "http://127.0.0.1" + ("" if http_port == 80 else f":{http_port}")
        self.run(
            "init",
            self.name,
            "--domain",
            ZONE,
            "--endpoint",
            endpoint,
            "--dns-resolvers",
            f"{DNS_HOST}:{dns_port}",
            *(("--http-token", self.operator_token) if self.mode == "operator" else ()),
        )

    def register(self, http_port: int, dns_port: int) -> None:
        """Get write access as :attr:`mode` says (``operator``: nothing to do)."""
        node = "127.0.0.1" + ("" if http_port == 80 else f":{http_port}")
        if self.mode == "operator":
            return
        if self.mode == "tsig":
            out = self.run(
                "tsig",
                "register",
                "--node",
                node,
                "--scheme",
                "http",
                "--dns-server",
                DNS_HOST,
                "--dns-port",
                str(dns_port),
            ).stdout
            assert re.search(r"TSIG key:\s+\S+", out), out
            return
        out = self.run("register", "--node", node, "--scheme", "http").stdout
        assert f"registered {self.address}" in out, out

    def keys(self) -> dict[str, str]:
        """``identity show --json`` (run once, then cached): public keys (hex) and more."""
        if self._keys is None:
            data = json.loads(self.run("identity", "show", "--json").stdout)
            assert isinstance(data, dict)
            self._keys = {str(k): str(v) for k, v in data.items()}
        return self._keys

    def publish(self, prekeys: int, *, advertise_v2: bool = False) -> None:
        """``identity publish`` (``--advertise-v2``: DMPv2 envelopes welcome) + prekeys."""
        out = self.run("identity", "publish", *(["--advertise-v2"] if advertise_v2 else [])).stdout
        assert self.identity_owner in out, out
        out = self.run("identity", "refresh-prekeys", "--count", str(prekeys)).stdout
        assert f"published {prekeys}/{prekeys} prekeys" in out, out

    def rotate(self, new_passphrase: str, reason: str) -> str:
        """``identity rotate --experimental --yes --reason R``; then use the new passphrase.

        The new passphrase comes from ``DMP_NEW_PASSPHRASE``. Afterwards the
        user runs with it as ``DMP_PASSPHRASE``; a reference user also sets
        ``DMP_PASSPHRASE_OVERRIDE_VERIFY=1``: the reference's rotate (``--yes``,
        no passphrase file) leaves the config's ``verify_pubkey`` at the old
        key, and that variable is its own way past the mismatch.
        """
        env = dict(self.env, DMP_NEW_PASSPHRASE=new_passphrase)
        saved, self.env = self.env, env
        try:
            out = self.run("identity", "rotate", "--experimental", "--yes", "--reason", reason)
        finally:
            self.env = saved
        self.env["DMP_PASSPHRASE"] = new_passphrase
        if self.impl == "ref":
            self.env["DMP_PASSPHRASE_OVERRIDE_VERIFY"] = "1"
        self._keys = None
        return out.stdout

    def pin(self, other: CliUser) -> str:
        """Fetch, verify and pin ``other``; returns the output.

        ``dmp``: ``identity fetch other@zone --add``. ``ref``: ``identity fetch
        other --domain zone --add``: the reference keys a ``user@host`` contact
        by the full address and then uses that whole string as the username
        when it looks up the contact's prekeys (``prekeys.id-<sha256("bob@
        mesh.test")[:12]>``, never published), so its ``send`` silently falls
        back to the long-term key (no forward secrecy). Pinned by the bare name
        with ``--domain``, the contact's username is right and the reference
        uses a one-time prekey; ``send bob@mesh.test`` still finds the contact
        (the reference falls back to the bare name).
        """
        if self.impl == "ref":
            return self.run("identity", "fetch", other.name, "--domain", ZONE, "--add").stdout
        return self.run("identity", "fetch", other.address, "--add").stdout

    def send(self, other: CliUser, text: str) -> str:
        out = self.run("send", other.address, text).stdout
        assert f"sent → {other.address}" in out, out
        return out

    def recv(self) -> list[tuple[str, str]]:
        """One ``recv``: the ``(sender, body)`` of each message shown."""
        return parse_received(self.impl, self.run("recv").stdout)

    def transcript(self) -> str:
        return f"--- {self!r} ---\n" + "\n".join(self.log)
