"""The reference ``dnsmesh`` CLI registers, publishes, sends and receives through a node.

Each scenario drives the unchanged reference CLI (separate venv) as a user
would, against the node fixture (ours by default; see conftest).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest
from nodelib import NodeProc, ref_venv

from tests.interop.conftest import DNS_PORT, OPERATOR_TOKEN

ZONE = "mesh.test"


class User:
    """One reference-CLI user with its own HOME and passphrase."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.home = root / f"home-{name}"
        self.home.mkdir(parents=True, exist_ok=True)
        venv = ref_venv()
        assert venv is not None
        self.exe = str(venv / "bin" / "dnsmesh")
        self.env = {
            "PATH": f"{venv}/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "DMP_PASSPHRASE": f"{name}-interop-passphrase",
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [self.exe, *args], env=self.env, capture_output=True, text=True, timeout=90
        )
        if ok:
            assert p.returncode == 0, (
                f"{self.name}: dnsmesh {' '.join(args)} rc={p.returncode}\n"
                f"stdout: {p.stdout[-1500:]}\nstderr: {p.stderr[-1500:]}"
            )
        return p

    def init(self, node: NodeProc, *extra: str) -> None:
        self.run(
            "init",
            self.name,
            "--domain",
            ZONE,
            "--endpoint",
            "http://127.0.0.1",
            "--dns-resolvers",
            f"127.0.0.1:{DNS_PORT}",
            *extra,
        )

    def tsig_register(self) -> subprocess.CompletedProcess[str]:
        """``tsig register`` with the node (HTTP for the registration, DNS_PORT for UPDATE)."""
        return self.run(
            "tsig",
            "register",
            "--node",
            "127.0.0.1",
            "--scheme",
            "http",
            "--dns-server",
            "127.0.0.1",
            "--dns-port",
            str(DNS_PORT),
        )

    def keys(self) -> dict[str, str]:
        return json.loads(self.run("identity", "show", "--json").stdout)

    def config(self) -> dict[str, str]:
        """Top-level scalar keys of ``~/.dmp/config.yaml`` (enough for the TSIG block)."""
        text = (self.home / ".dmp" / "config.yaml").read_text()
        return dict(re.findall(r"^(\w+): ?(.*)$", text, flags=re.MULTILINE))

    @property
    def h16(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()[:16]


def txt(name: str) -> list[str]:
    """TXT values at ``name`` read straight from the node over UDP (EDNS 4096)."""
    q = dns.message.make_query(name, dns.rdatatype.TXT, use_edns=0, payload=4096)
    r = dns.query.udp(q, "127.0.0.1", port=DNS_PORT, timeout=3)
    if r.rcode() == dns.rcode.NXDOMAIN:
        return []
    assert r.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(r.rcode())
    return [b"".join(rd.strings).decode() for rrset in r.answer for rd in rrset]


def exchange(sender: User, receiver: User, text: str) -> None:
    """``sender`` sends ``text``; ``receiver``'s recv shows it once, then nothing new."""
    out = sender.run("send", f"{receiver.name}@{ZONE}", text).stdout
    assert f"sent → {receiver.name}@{ZONE}" in out
    got = receiver.run("recv").stdout
    assert text in got, got
    assert sender.keys()["signing_public_key"][:16] in got
    again = receiver.run("recv").stdout
    assert text not in again
    assert "no new messages" in again


def test_tsig_register_publish_identity_and_prekeys(node: NodeProc, tmp_path: Path) -> None:
    """tsig register mints a scoped key; identity and prekeys go in by TSIG UPDATE."""
    alice, bob = User("alice", tmp_path), User("bob", tmp_path)
    for u in (alice, bob):
        u.init(node)
        out = u.tsig_register().stdout
        spk = u.keys()["signing_public_key"]
        m = re.search(r"TSIG key:\s+(\S+)", out)
        assert m, out
        subject_h6 = hashlib.sha256(f"{u.name}@{ZONE}".encode()).hexdigest()[:6]
        assert m.group(1) == f"{u.name}-{spk[:8]}-{subject_h6}.{ZONE}."
        assert f"id-{u.h16}.{ZONE}" in out
        assert "slot-*.mb-*.mesh.test" in out

        assert f"published identity to id-{u.h16}.{ZONE}" in u.run("identity", "publish").stdout
        out = u.run("identity", "refresh-prekeys", "--count", "3").stdout
        assert "published 3/3 prekeys" in out

        ident = txt(f"id-{u.h16}.{ZONE}")
        assert len(ident) == 1
        assert ident[0].startswith("v=dmp1;t=identity;")
        assert len(txt(f"prekeys.id-{u.h16[:12]}.{ZONE}")) == 3

    out = alice.run("identity", "fetch", f"bob@{ZONE}", "--add").stdout
    assert bob.keys()["signing_public_key"] in out
    assert "added contact" in out
    out = bob.run("identity", "fetch", f"alice@{ZONE}", "--add").stdout
    assert alice.keys()["signing_public_key"] in out


def test_tsig_key_cannot_write_outside_its_scope(node: NodeProc, tmp_path: Path) -> None:
    """A second user's key may not overwrite the first user's identity name."""
    alice, mallory = User("alice", tmp_path), User("mallory", tmp_path)
    for u in (alice, mallory):
        u.init(node)
        u.tsig_register()
    alice.run("identity", "publish")
    before = txt(f"id-{alice.h16}.{ZONE}")
    # mallory's key is scoped to id-<sha256("mallory")>; alice's name is out of scope
    cfg = mallory.config()
    ring = dns.tsigkeyring.from_text(
        {cfg["tsig_key_name"]: base64.b64encode(bytes.fromhex(cfg["tsig_secret_hex"])).decode()}
    )
    upd = dns.update.UpdateMessage(ZONE, keyring=ring, keyname=cfg["tsig_key_name"])
    upd.add(f"id-{alice.h16}.{ZONE}.", 300, "TXT", '"v=dmp1;t=identity;forged"')
    resp = dns.query.udp(upd, "127.0.0.1", port=DNS_PORT, timeout=3)
    assert resp.rcode() == dns.rcode.REFUSED
    assert txt(f"id-{alice.h16}.{ZONE}") == before


def test_bearer_register_send_and_receive(node: NodeProc, tmp_path: Path) -> None:
    """register (bearer token) + identity, prekeys, send and recv both ways over HTTP/DNS."""
    carol, dave = User("carol", tmp_path), User("dave", tmp_path)
    for u in (carol, dave):
        u.init(node)
        out = u.run("register", "--node", "127.0.0.1", "--scheme", "http").stdout
        assert f"registered {u.name}@{ZONE}" in out
        u.run("identity", "publish")
        assert (
            "published 3/3 prekeys" in u.run("identity", "refresh-prekeys", "--count", "3").stdout
        )
    carol.run("identity", "fetch", f"dave@{ZONE}", "--add")
    dave.run("identity", "fetch", f"carol@{ZONE}", "--add")

    exchange(carol, dave, "hello dave, from carol over dmp")
    exchange(dave, carol, "hi carol, the reverse direction works too")


def test_operator_token_send_and_receive(node: NodeProc, tmp_path: Path) -> None:
    """The single-operator setup: init --http-token, writes over HTTP with the operator token."""
    erin, frank = User("erin", tmp_path), User("frank", tmp_path)
    for u in (erin, frank):
        u.init(node, "--http-token", OPERATOR_TOKEN)
        u.run("identity", "publish")
    erin.run("identity", "fetch", f"frank@{ZONE}", "--add")
    frank.run("identity", "fetch", f"erin@{ZONE}", "--add")
    exchange(erin, frank, "operator-token path works")


def test_cross_mode_fetch_and_wrong_token(node: NodeProc, tmp_path: Path) -> None:
    """A TSIG user resolves a bearer user; a forged bearer token is refused (401)."""
    alice, carol = User("alice", tmp_path), User("carol", tmp_path)
    alice.init(node)
    alice.tsig_register()
    carol.init(node, "--http-token", "dmp_v1_" + "a" * 52)
    p = carol.run("identity", "publish", ok=False)
    assert p.returncode != 0
    assert "401" in p.stdout + p.stderr
    carol2 = User("carol", tmp_path / "second")
    carol2.init(node)
    carol2.run("register", "--node", "127.0.0.1", "--scheme", "http")
    carol2.run("identity", "publish")
    out = alice.run("identity", "fetch", f"carol@{ZONE}", "--add").stdout
    assert carol2.keys()["signing_public_key"] in out
    # the TSIG user receives from the bearer user (the reference CLI cannot *send*
    # over TSIG: its UPDATE writer puts >255-byte values in one string)
    alice.run("identity", "publish")
    carol2.run("identity", "fetch", f"alice@{ZONE}", "--add")
    exchange(carol2, alice, "to a TSIG-registered user")


def test_doctor_is_happy(node: NodeProc, tmp_path: Path) -> None:
    """dnsmesh doctor checks /health, the DNS endpoint and the TSIG registration."""
    alice = User("alice", tmp_path)
    alice.init(node)
    alice.tsig_register()
    out = alice.run("doctor").stdout
    assert "FAIL" not in out, out


@pytest.mark.parametrize("path", ["/health", "/stats"])
def test_plain_endpoints(node: NodeProc, path: str) -> None:
    from nodelib import http_json

    status, body = http_json(node.url + path)
    assert status == 200
    assert isinstance(json.loads(body), dict)
