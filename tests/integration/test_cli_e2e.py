"""The ``dnsmesh`` CLI end to end: every command through ``main([...])`` against a live node.

A fresh in-process dmp node per test (built with ``build_node`` and run by
``run_node`` on an anyio portal thread) listens on 127.0.0.1 with kernel-chosen
ports: DNS over UDP+TCP with RFC 2136 UPDATE and TSIG, HTTP with
self-service registration, serving ``mesh.test``. Each test makes fresh users
with their own config homes under ``tmp_path`` and drives them only through
the CLI entry point, reading what a user would read (stdout, stderr, the exit
code) plus the files the CLI owns.

Cheap Argon2 parameters come from ``DMP_KDF_PROFILE=test`` (test-only, see
``dmp.apps.client.wiring``). Nothing leaves 127.0.0.1: every user reads
through the node (``--dns-resolvers 127.0.0.1:<port>``), and claims for
``mesh.test`` go to the node found by ``init``'s probe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import anyio.from_thread
import attrs
import pytest

from dmp.apps.client.cli import main
from dmp.domain.crypto import IdentityKeys, KdfParams, derive_identity

ZONE = "mesh.test"
OPERATOR_TOKEN = "cli-e2e-operator-token"


@attrs.frozen
class RunningNode:
    dns_port: int
    http_port: int
    node: Any
    portal: Any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@pytest.fixture
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """A fresh dmp node in this process (its own event-loop thread), 127.0.0.1, port 0."""
    from dmp.adapters.clock import SystemClock
    from dmp.apps.node.config import load_config
    from dmp.apps.node.service import build_node, run_node

    tmp = tmp_path_factory.mktemp("node")
    env = {
        "DMP_DB_PATH": str(tmp / "dmp.db"),
        "DMP_DNS_HOST": "127.0.0.1",
        "DMP_DNS_PORT": "0",
        "DMP_HTTP_HOST": "127.0.0.1",
        "DMP_HTTP_PORT": "0",
        "DMP_SERVED_ZONE": ZONE,
        "DMP_NODE_HOSTNAME": ZONE,
        "DMP_DNS_UPDATE_ENABLED": "1",
        "DMP_AUTH_MODE": "multi-tenant",
        "DMP_REGISTRATION_ENABLED": "1",
        "DMP_REGISTRATION_ENDPOINT_RATE_PER_SEC": "1000",
        "DMP_REGISTRATION_ENDPOINT_BURST": "1000",
        "DMP_RECEIVER_CLAIM_NOTIFICATIONS": "1",
        "DMP_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "DMP_DNS_RATE": "0",
        "DMP_HTTP_RATE": "0",
        "DMP_CLAIM_RATE_BURST": "1000",
        "DMP_LOG_LEVEL": "WARNING",
    }
    config = load_config(env, {})
    with anyio.from_thread.start_blocking_portal() as portal:
        stop = portal.call(anyio.Event)
        built = portal.call(functools.partial(build_node, config, clock=SystemClock()))
        future, running = portal.start_task(
            functools.partial(run_node, built, stop=stop, handle_signals=False)
        )
        yield RunningNode(running.bound["dns"][1], running.bound["http"][1], running, portal)
        portal.call(stop.set)
        future.result(timeout=30)


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Result(NamedTuple):
    code: int
    out: str
    err: str


class User:
    """One CLI user: a config home, a passphrase, and ``run`` = ``main([...])``."""

    def __init__(self, name: str, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.name = name
        self.home = root / name / ".dmp"
        self.capsys = capsys
        self.env = {
            "HOME": str(root / name),
            "DMP_CONFIG_HOME": str(self.home),
            "DMP_PASSPHRASE": f"{name} passphrase",
            "DMP_KDF_PROFILE": "test",
        }

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """``main([...])`` with ``env`` added to this user's environment."""
        return self.main(args, {**self.env, **(env or {})})

    def main(self, args: tuple[str, ...], environ: Mapping[str, str]) -> Result:
        """``main([...])`` under exactly ``environ``, with the output captured."""
        self.capsys.readouterr()
        code = main(list(args), environ=dict(environ))
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        r = self.run(*args, env=env)
        assert r.code == 0, f"{self.name}: dnsmesh {' '.join(args)} -> {r.code}\n{r.out}{r.err}"
        return r.out

    @property
    def config(self) -> dict[str, Any]:
        import yaml

        data = yaml.safe_load((self.home / "config.yaml").read_text())
        assert isinstance(data, dict)
        return data

    def keys(self) -> IdentityKeys:
        """The identity keys, derived as the CLI does (with the cheap test KDF)."""
        salt = bytes.fromhex(self.config["kdf_salt"])
        return derive_identity(self.env["DMP_PASSPHRASE"], salt, KdfParams(1, 8, 1, 32))

    def init(self, node: RunningNode, *extra: str) -> None:
        self.ok(
            "init",
            f"{self.name}@{ZONE}",
            "--endpoint",
            node.url,
            "--dns-resolvers",
            f"127.0.0.1:{node.dns_port}",
            *extra,
        )

    def tsig_register(self, node: RunningNode) -> str:
        """``tsig register`` with ``node`` (HTTP for the registration, its DNS port for UPDATE)."""
        return self.ok(
            "tsig",
            "register",
            "--node",
            f"127.0.0.1:{node.http_port}",
            "--scheme",
            "http",
            "--dns-server",
            "127.0.0.1",
            "--dns-port",
            str(node.dns_port),
        )

    def join(self, node: RunningNode, *, prekeys: int = 0) -> None:
        """init, tsig register, identity publish (and refresh-prekeys)."""
        self.init(node)
        self.tsig_register(node)
        self.ok("identity", "publish")
        if prekeys:
            self.ok("identity", "refresh-prekeys", "--count", str(prekeys))


@pytest.fixture
def users(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    def make(name: str) -> User:
        return User(name, tmp_path, capsys)

    return make


def operator_publish(node: RunningNode, owner: str, value: str, ttl: int = 300) -> None:
    """Write a TXT value straight into the node with the operator token (an attacker's write)."""
    req = urllib.request.Request(
        f"{node.url}/v1/records/{urllib.parse.quote(owner.rstrip('.'), safe='.')}",
        data=json.dumps({"value": value, "ttl": ttl}).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {OPERATOR_TOKEN}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in (200, 201)


def node_values(node: RunningNode, owner: str) -> list[str]:
    """The TXT values the node serves at ``owner`` (read over real DNS)."""
    import dns.message
    import dns.query
    import dns.rdatatype

    query = dns.message.make_query(owner, dns.rdatatype.TXT, use_edns=0, payload=4096)
    reply = dns.query.tcp(query, "127.0.0.1", port=node.dns_port, timeout=5)
    return [b"".join(rd.strings).decode() for rrset in reply.answer for rd in rrset]


def flip_base64_char(value: str) -> str:
    """``value`` with one base64 character of its payload changed."""
    i = len(value) // 2
    return value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]


def pair(node: RunningNode, users: Any, *, prekeys: int = 0) -> tuple[User, User]:
    """alice and bob, registered, published, each pinning the other."""
    alice, bob = users("alice"), users("bob")
    alice.join(node)
    bob.join(node, prekeys=prekeys)
    alice.ok("identity", "fetch", f"bob@{ZONE}", "--add")
    bob.ok("identity", "fetch", f"alice@{ZONE}", "--add")
    return alice, bob


# ---------------------------------------------------------------- offline commands


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` exits 0 and names every reference sub-command."""
    assert main(["--help"], environ={}) == 0
    out = capsys.readouterr().out
    for command in (
        "init",
        "identity",
        "contacts",
        "send",
        "recv",
        "intro",
        "doctor",
        "register",
        "tsig",
        "token",
        "resolvers",
        "node",
    ):
        assert command in out


HEAVY = ("dns", "nacl", "httpx", "anyio", "argon2", "rich", "yaml", "attr", "attrs", "zfec")


def test_help_imports_nothing_heavy() -> None:
    """``dnsmesh --help`` loads no third-party library and no dmp.domain (keeps it < 0.15 s)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dmp.apps.client.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(','.join(sorted(m for m in sys.modules)))\n"
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    loaded = set(out.split(","))
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m.startswith("dmp.domain"))
    assert heavy == []


def test_usage_error_exits_2(users: Any) -> None:
    """argparse errors (mutually exclusive flags) exit 2 like the reference."""
    r = users("alice").run("recv", "--primary-only", "--skip-primary")
    assert r.code == 2
    assert "not allowed with" in r.err


def test_init_writes_a_private_config(users: Any) -> None:
    """init splits user@host, writes config.yaml 0600 with a 32-byte salt and the resolvers."""
    alice = users("alice")
    out = alice.ok(
        "init",
        "alice@example.org",
        "--dns-resolvers",
        "9.9.9.9,[2620:fe::fe]:53",
        "--identity-domain",
        "alice.example.org",
        "--allow-tofu",
    )
    assert "wrote config" in out
    path = alice.home / "config.yaml"
    assert path.stat().st_mode & 0o777 == 0o600
    cfg = alice.config
    assert cfg["username"] == "alice"
    assert cfg["domain"] == "example.org"
    assert cfg["identity_domain"] == "alice.example.org"
    assert cfg["dns_resolvers"] == ["9.9.9.9", "[2620:fe::fe]:53"]
    assert cfg["allow_tofu"] is True
    assert len(bytes.fromhex(cfg["kdf_salt"])) == 32
    assert cfg["verify_pubkey"] == ""


def test_init_refuses_to_overwrite_without_force(users: Any) -> None:
    """A second init exits 1 and keeps the salt; --force replaces it."""
    alice = users("alice")
    alice.ok("init", "alice", "--no-default-resolvers")
    salt = alice.config["kdf_salt"]
    r = alice.run("init", "alice")
    assert r.code == 1
    assert "already exists" in r.err
    assert "--force" in r.err
    assert alice.config["kdf_salt"] == salt
    alice.ok("init", "alice", "--force")
    assert alice.config["kdf_salt"] != salt
    assert alice.config["dns_resolvers"] == ["1.1.1.1", "8.8.8.8"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--dns-resolvers", "dns.google"), "hostnames are not accepted"),
        (("--dns-resolvers", "1.2.3.4:99999"), "outside 1-65535"),
        (("--dns-port", "0"), "--dns-port"),
    ],
)
def test_init_rejects_bad_values(users: Any, args: tuple[str, ...], needle: str) -> None:
    """Invalid flag values exit 1 with one line naming the problem; nothing is written."""
    alice = users("alice")
    r = alice.run("init", "alice", *args)
    assert r.code == 1
    assert needle in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not (alice.home / "config.yaml").exists()


def test_init_with_empty_user_or_host_fails(users: Any) -> None:
    """``@host`` and ``user@`` are refused."""
    assert users("a").run("init", "@x").code == 1
    assert users("b").run("init", "x@").code == 1


def test_commands_without_config_exit_1(users: Any) -> None:
    """No config.yaml: one line pointing at ``dnsmesh init``, exit 1."""
    r = users("nobody").run("identity", "show")
    assert r.code == 1
    assert "dnsmesh init" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_identity_show_and_the_passphrase_tripwire(users: Any) -> None:
    """show prints the derived keys and stores verify_pubkey; a typo'd passphrase exits 1."""
    alice = users("alice")
    alice.ok("init", "alice@mesh.test", "--no-default-resolvers")
    data = json.loads(alice.ok("identity", "show", "--json"))
    keys = alice.keys()
    assert data == {
        "username": "alice",
        "domain": "mesh.test",
        "public_key": keys.x25519_public.hex(),
        "signing_public_key": keys.ed25519_public.hex(),
        "user_id": keys.user_id.hex(),
    }
    assert alice.config["verify_pubkey"] == keys.ed25519_public.hex()
    plain = alice.ok("identity", "show")
    assert f"signing_public_key: {keys.ed25519_public.hex()}" in plain

    wrong = alice.run("identity", "show", env={"DMP_PASSPHRASE": "alice passphrasf"})
    assert wrong.code == 1
    assert "passphrase mismatch" in wrong.err
    assert wrong.out == ""
    assert len(wrong.err.strip().splitlines()) == 1

    forced = alice.run(
        "identity",
        "show",
        "--json",
        env={"DMP_PASSPHRASE": "alice passphrasf", "DMP_PASSPHRASE_OVERRIDE_VERIFY": "1"},
    )
    assert forced.code == 0
    assert "warning" in forced.err
    assert json.loads(forced.out)["signing_public_key"] != keys.ed25519_public.hex()
    assert alice.config["verify_pubkey"] == keys.ed25519_public.hex()


def test_passphrase_file_is_used_when_no_env(users: Any, tmp_path: Path) -> None:
    """Without DMP_PASSPHRASE the passphrase_file (stripped) is read; none at all exits 1."""
    alice = users("alice")
    alice.ok("init", "alice", "--no-default-resolvers")
    via_env = json.loads(alice.ok("identity", "show", "--json"))
    secret = tmp_path / "pass.txt"
    secret.write_text(alice.env["DMP_PASSPHRASE"] + "\n")
    alice.env.pop("DMP_PASSPHRASE")
    assert alice.run("identity", "show").code == 1
    cfg = (alice.home / "config.yaml").read_text()
    (alice.home / "config.yaml").write_text(
        cfg.replace("passphrase_file: null", f"passphrase_file: {secret}")
    )
    assert json.loads(alice.ok("identity", "show", "--json")) == via_env


def test_contacts_add_and_list(users: Any) -> None:
    """contacts add pins with --signing-key, warns without; list marks pinned / UNPINNED."""
    alice = users("alice")
    alice.ok("init", "alice@mesh.test", "--no-default-resolvers")
    x = "11" * 32
    r = alice.run("contacts", "add", "bob", x)
    assert r.code == 0
    assert "added contact bob" in r.out
    assert "warning" in r.err
    alice.ok("contacts", "add", "carol", x, "--signing-key", "22" * 32)
    out = alice.ok("contacts", "list")
    assert re.search(r"^bob\s+1{64}\s+\(UNPINNED\)$", out, re.M)
    assert re.search(r"^carol\s+1{64}\s+\(pinned\)$", out, re.M)
    assert alice.config["contacts"]["carol"]["spk"] == "22" * 32

    assert alice.run("contacts", "add", "dave", "0011").code == 1
    low_order = alice.run("contacts", "add", "dave", x, "--signing-key", "00" * 32)
    assert low_order.code == 1
    assert "low-order" in low_order.err
    assert "dave" not in alice.config["contacts"]


def test_empty_lists(users: Any) -> None:
    """contacts / token / intro lists on a fresh config say so, exit 0."""
    alice = users("alice")
    alice.ok("init", "alice", "--no-default-resolvers")
    assert "no contacts" in alice.ok("contacts", "list")
    assert "no saved tokens" in alice.ok("token", "list")
    assert json.loads(alice.ok("token", "list", "--json")) == []
    assert "no pending intros" in alice.ok("intro", "list")
    assert "no resolvers" in alice.ok("resolvers", "list")


def test_resolvers_list_and_discover(node: RunningNode, users: Any) -> None:
    """discover probes candidates (here: the node and a dead port), --save keeps the live ones."""
    alice = users("alice")
    alice.ok("init", "alice", "--dns-resolvers", "9.9.9.9:53")
    assert alice.ok("resolvers", "list").split() == ["9.9.9.9:53"]
    live, dead = f"127.0.0.1:{node.dns_port}", f"127.0.0.1:{free_port()}"
    # the node answers google.com TXT with NXDOMAIN, which is no answer: make it one
    operator_publish(node, "google.com", "v=spf1 -all")
    out = alice.ok(
        "resolvers",
        "discover",
        "--save",
        "--timeout",
        "1",
        env={"DMP_RESOLVER_CANDIDATES": f"{live},{dead}"},
    )
    assert "FAIL" in out
    assert alice.config["dns_resolvers"] == [live]
    r = alice.run(
        "resolvers", "discover", "--timeout", "0.5", env={"DMP_RESOLVER_CANDIDATES": dead}
    )
    assert r.code == 2


def test_node_command_reports_config_errors(users: Any) -> None:
    """``dnsmesh node`` hands over to dmp-node; a bad port is its config error (exit 2)."""
    alice = users("alice")
    r = alice.run("node", "--dns-port", "70000")
    assert r.code == 2
    assert "DMP_DNS_PORT" in r.err


# ---------------------------------------------------------------- registration and tokens


def test_tsig_register_switches_writes_to_dns_update(node: RunningNode, users: Any) -> None:
    """tsig register stores the TSIG block; publish then goes over UPDATE (no endpoint needed)."""
    alice = users("alice")
    alice.init(node)
    out = alice.tsig_register(node)
    cfg = alice.config
    assert cfg["tsig_key_name"].startswith("alice-")
    assert cfg["tsig_key_name"] in out
    assert cfg["tsig_zone"] == ZONE
    assert cfg["tsig_dns_port"] == node.dns_port
    assert len(bytes.fromhex(cfg["tsig_secret_hex"])) >= 16
    # prove the writes use the key: drop the endpoint, publish still works
    text = (alice.home / "config.yaml").read_text()
    (alice.home / "config.yaml").write_text(text.replace(f"endpoint: {node.url}", "endpoint: ''"))
    alice.ok("identity", "publish")
    owner = "id-" + hashlib.sha256(b"alice").hexdigest()[:16] + "." + ZONE
    assert len(node_values(node, owner)) == 1


def test_register_saves_a_bearer_token_and_uses_it(node: RunningNode, users: Any) -> None:
    """register saves <tokens-home>/<host>.json (0600); publish then uses it; forget deletes it."""
    carol = users("carol")
    carol.init(node)
    carol.ok("register", "--node", f"127.0.0.1:{node.http_port}", "--scheme", "http")
    files = list((carol.home / "tokens").glob("*.json"))
    assert len(files) == 1
    assert files[0].stat().st_mode & 0o777 == 0o600
    saved = json.loads(files[0].read_text())
    assert saved["subject"] == f"carol@{ZONE}"
    listed = json.loads(carol.ok("token", "list", "--json"))
    assert [t["subject"] for t in listed] == [f"carol@{ZONE}"]
    assert all("token" not in t for t in listed)
    assert saved["token"] not in carol.ok("token", "list")
    carol.ok("identity", "publish")
    owner = "id-" + hashlib.sha256(b"carol").hexdigest()[:16] + "." + ZONE
    assert len(node_values(node, owner)) == 1
    carol.ok("token", "forget", f"127.0.0.1:{node.http_port}")
    assert not list((carol.home / "tokens").glob("*.json"))
    assert carol.run("token", "forget", f"127.0.0.1:{node.http_port}").code == 1
    # without a token the multi-tenant node refuses the write: a backend error
    r = carol.run("identity", "publish")
    assert r.code == 2
    assert "401" in r.err


# ---------------------------------------------------------------- identities


def test_publish_fetch_and_pin(node: RunningNode, users: Any) -> None:
    """fetch verifies and prints the record; --add pins both keys bound to the zone."""
    alice, bob = users("alice"), users("bob")
    alice.join(node)
    bob.join(node)
    keys = bob.keys()
    data = json.loads(alice.ok("identity", "fetch", f"bob@{ZONE}", "--json"))
    assert data["public_key"] == keys.x25519_public.hex()
    assert data["signing_public_key"] == keys.ed25519_public.hex()
    assert data["dns_name"] == "id-" + hashlib.sha256(b"bob").hexdigest()[:16] + "." + ZONE
    assert "bob@mesh.test" not in alice.config["contacts"]
    out = alice.ok("identity", "fetch", f"bob@{ZONE}", "--add")
    assert "pinned" in out
    contact = alice.config["contacts"][f"bob@{ZONE}"]
    assert contact["spk"] == keys.ed25519_public.hex()
    assert contact["domain"] == ZONE
    assert re.search(
        r"^bob@mesh\.test\s+[0-9a-f]{64}\s+\(pinned\)$", alice.ok("contacts", "list"), re.M
    )


def test_fetch_unknown_user_fails(node: RunningNode, users: Any) -> None:
    """No record: one line, non-zero exit, no contact added."""
    alice = users("alice")
    alice.join(node)
    r = alice.run("identity", "fetch", f"nobody@{ZONE}", "--add")
    assert r.code in (1, 2)
    assert "nobody" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert alice.config["contacts"] == {}


def test_tampered_identity_record_is_ignored(node: RunningNode, users: Any) -> None:
    """A bit-flipped identity at the owner is dropped; the genuine one is still found."""
    alice, bob = users("alice"), users("bob")
    alice.join(node)
    bob.init(node)
    # bob never publishes; an attacker publishes a tampered copy of a real record
    bob_keys = bob.keys()
    from dmp.domain.identity import IdentityRecord, sign_identity

    genuine = sign_identity(
        IdentityRecord("bob", bob_keys.x25519_public, bob_keys.ed25519_public, int(time.time())),
        bob_keys.ed25519_seed,
    )
    owner = "id-" + hashlib.sha256(b"bob").hexdigest()[:16] + "." + ZONE
    operator_publish(node, owner, flip_base64_char(genuine))
    r = alice.run("identity", "fetch", f"bob@{ZONE}", "--add")
    assert r.code != 0
    assert alice.config["contacts"] == {}
    operator_publish(node, owner, genuine)
    data = json.loads(alice.ok("identity", "fetch", f"bob@{ZONE}", "--json"))
    assert data["signing_public_key"] == bob_keys.ed25519_public.hex()


def test_two_identities_at_one_owner_need_a_fingerprint(node: RunningNode, users: Any) -> None:
    """Two distinct valid records: fetch refuses (exit 1, both fingerprints); one is chosen."""
    alice = users("alice")
    alice.join(node)
    from dmp.domain.identity import IdentityRecord, sign_identity

    owner = "id-" + hashlib.sha256(b"dave").hexdigest()[:16] + "." + ZONE
    fps = []
    for pw in ("dave one", "dave two"):
        k = derive_identity(pw, b"s" * 16, KdfParams(1, 8, 1, 32))
        rec = IdentityRecord("dave", k.x25519_public, k.ed25519_public, int(time.time()))
        operator_publish(node, owner, sign_identity(rec, k.ed25519_seed))
        fps.append(rec.fingerprint)
    r = alice.run("identity", "fetch", f"dave@{ZONE}", "--add")
    assert r.code == 1
    for fp in fps:
        assert fp in r.err
    out = alice.ok("identity", "fetch", f"dave@{ZONE}", "--add", "--accept-fingerprint", fps[1])
    assert fps[1] in out
    assert alice.config["contacts"][f"dave@{ZONE}"]["spk"]


def test_rotate_requires_experimental_then_fetchers_follow(node: RunningNode, users: Any) -> None:
    """rotate without --experimental exits 1; with it, a pinned contact follows the chain."""
    alice, bob = pair(node, users)
    r = bob.run("identity", "rotate", "--yes")
    assert r.code == 1
    assert "--experimental" in r.err
    new_pass = "bob's new passphrase"
    out = bob.ok(
        "identity",
        "rotate",
        "--experimental",
        "--yes",
        env={"DMP_NEW_PASSPHRASE": new_pass},
    )
    assert "rotation" in out
    bob.env["DMP_PASSPHRASE"] = new_pass
    new_spk = json.loads(bob.ok("identity", "show", "--json"))["signing_public_key"]
    assert bob.config["verify_pubkey"] == new_spk
    alice.ok(
        "identity", "fetch", f"bob@{ZONE}", "--add", "--accept-fingerprint", _fp_of(alice, bob)
    )
    assert alice.config["contacts"][f"bob@{ZONE}"]["spk"] == new_spk


def _fp_of(alice: User, bob: User) -> str:
    data = json.loads(bob.ok("identity", "show", "--json"))
    x, s = bytes.fromhex(data["public_key"]), bytes.fromhex(data["signing_public_key"])
    return hashlib.sha256(x + s).hexdigest()[:16]


# ---------------------------------------------------------------- messages


def test_send_and_receive_both_ways(node: RunningNode, users: Any) -> None:
    """A message each way through the node; a second recv delivers nothing (replay cache)."""
    alice, bob = pair(node, users)
    alice.ok("send", f"bob@{ZONE}", "hello bob, from alice")
    got = bob.ok("recv")
    assert "hello bob, from alice" in got
    assert "hello bob" not in bob.ok("recv")
    bob.ok("send", f"alice@{ZONE}", "hi alice")
    assert "hi alice" in alice.ok("recv")


def test_one_time_prekey_is_consumed_after_decrypt(node: RunningNode, users: Any) -> None:
    """A message to a recipient with prekeys uses one; recv consumes it locally and in DNS."""
    alice, bob = pair(node, users, prekeys=3)
    owner = "prekeys.id-" + hashlib.sha256(b"bob").hexdigest()[:12] + "." + ZONE
    assert len(node_values(node, owner)) == 3
    alice.ok("send", f"bob@{ZONE}", "forward secret")
    assert "forward secret" in bob.ok("recv")
    assert len(node_values(node, owner)) == 2
    from dmp.adapters.client_state import SqlitePrekeyStore

    store = SqlitePrekeyStore(bob.home / "prekeys.db")
    try:
        assert len(store.ids()) == 2
    finally:
        store.close()


def test_send_to_unknown_contact_fails(node: RunningNode, users: Any) -> None:
    """send to someone never fetched: exit 1, nothing published."""
    alice = users("alice")
    alice.join(node)
    r = alice.run("send", f"zed@{ZONE}", "hello?")
    assert r.code == 1
    assert "zed" in r.err


def test_replayed_manifest_is_not_delivered_twice(node: RunningNode, users: Any) -> None:
    """The replay cache stops a manifest that is still in DNS, also when copied to another slot."""
    alice, bob = pair(node, users)
    alice.ok("send", f"bob@{ZONE}", "only once")
    assert "only once" in bob.ok("recv")
    assert "only once" not in bob.ok("recv")
    cache = json.loads((bob.home / "replay_cache.json").read_text())
    assert len(cache) == 1
    mb = hashlib.sha256(bob.keys().user_id).hexdigest()[:12]
    manifests = {slot: node_values(node, f"slot-{slot}.mb-{mb}.{ZONE}") for slot in range(10)}
    [(slot, values)] = [(s, v) for s, v in manifests.items() if v]
    operator_publish(node, f"slot-{(slot + 1) % 10}.mb-{mb}.{ZONE}", values[0])
    assert "only once" not in bob.ok("recv")
    # the cache is what stops it: without the cache file the message comes back
    (bob.home / "replay_cache.json").unlink()
    assert "only once" in bob.ok("recv")


def test_expired_message_is_not_delivered(node: RunningNode, users: Any) -> None:
    """A correctly signed message whose ttl ran out is dropped; a fresh one is delivered."""
    alice, bob = pair(node, users)
    from dmp.domain.message import build_message

    alice_keys, bob_keys = alice.keys(), bob.keys()

    def publish(body: bytes, now: int) -> None:
        msg = build_message(
            sender=alice_keys,
            sender_zone=ZONE,
            recipient_x25519_public=bob_keys.x25519_public,
            body=body,
            now=now,
            ttl=300,
            msg_id=os.urandom(16),
            ephemeral_private=os.urandom(32),
            nonce=os.urandom(12),
            prekey=None,
            envelope_from=None,
        )
        for chunk in msg.chunks:
            operator_publish(node, chunk.owner.to_text(), chunk.txt)
        operator_publish(node, msg.manifest_owner.to_text(), msg.manifest_wire)

    publish(b"stale news", int(time.time()) - 3600)
    publish(b"fresh news", int(time.time()))
    got = bob.ok("recv")
    assert "fresh news" in got
    assert "stale news" not in got


def test_tampered_chunk_is_not_delivered(node: RunningNode, users: Any) -> None:
    """A message whose chunks were altered in the node is dropped; an intact one is delivered."""
    alice, bob = pair(node, users)
    from dmp.domain.message import build_message

    def publish(body: bytes, *, tamper: bool) -> None:
        msg = build_message(
            sender=alice.keys(),
            sender_zone=ZONE,
            recipient_x25519_public=bob.keys().x25519_public,
            body=body,
            now=int(time.time()),
            ttl=300,
            msg_id=os.urandom(16),
            ephemeral_private=os.urandom(32),
            nonce=os.urandom(12),
            prekey=None,
            envelope_from=None,
        )
        for chunk in msg.chunks:
            txt = flip_base64_char(chunk.txt) if tamper else chunk.txt
            operator_publish(node, chunk.owner.to_text(), txt)
        operator_publish(node, msg.manifest_owner.to_text(), msg.manifest_wire)

    publish(b"tampered in transit", tamper=True)
    publish(b"arrived intact", tamper=False)
    r = bob.run("recv")
    assert r.code == 0
    assert "arrived intact" in r.out
    assert "tampered in transit" not in r.out


def test_unpinned_sender_goes_to_the_intro_queue(node: RunningNode, users: Any) -> None:
    """bob has not pinned carol: her message waits in intro list; trust delivers and pins."""
    _alice, bob = pair(node, users)
    carol = users("carol")
    carol.join(node)
    carol.ok("identity", "fetch", f"bob@{ZONE}", "--add")
    carol.ok("send", f"bob@{ZONE}", "hello from a stranger")
    got = bob.ok("recv")
    assert "hello from a stranger" not in got
    listing = bob.ok("intro", "list")
    assert "hello from a stranger" in listing
    intro_id = re.search(r"^\s*#?(\d+)", listing, re.M)
    assert intro_id is not None
    out = bob.ok("intro", "trust", intro_id.group(1), "--label", "carol")
    assert "hello from a stranger" in out
    assert bob.config["contacts"]["carol"]["spk"] == carol.keys().ed25519_public.hex()
    assert "no pending intros" in bob.ok("intro", "list")
    assert bob.run("intro", "accept", intro_id.group(1)).code == 1


def test_intro_block_denies_the_sender(node: RunningNode, users: Any) -> None:
    """block drops the intro; the sender's next message does not come back."""
    _alice, bob = pair(node, users)
    mallory = users("mallory")
    mallory.join(node)
    mallory.ok("identity", "fetch", f"bob@{ZONE}", "--add")
    mallory.ok("send", f"bob@{ZONE}", "buy now")
    bob.ok("recv")
    listing = bob.ok("intro", "list")
    intro_id = re.search(r"^\s*#?(\d+)", listing, re.M)
    assert intro_id is not None
    bob.ok("intro", "block", intro_id.group(1), "--note", "spam")
    mallory.ok("send", f"bob@{ZONE}", "buy now, again")
    assert "buy now" not in bob.ok("recv")
    assert "buy now" not in bob.ok("intro", "list")


def test_intro_accept_delivers_without_pinning(node: RunningNode, users: Any) -> None:
    """accept prints the message and leaves the sender unpinned."""
    _alice, bob = pair(node, users)
    dave = users("dave")
    dave.join(node)
    dave.ok("identity", "fetch", f"bob@{ZONE}", "--add")
    dave.ok("send", f"bob@{ZONE}", "accept me")
    bob.ok("recv")
    intro_id = re.search(r"^\s*#?(\d+)", bob.ok("intro", "list"), re.M)
    assert intro_id is not None
    assert "accept me" in bob.ok("intro", "accept", intro_id.group(1))
    assert all(
        c["spk"] != dave.keys().ed25519_public.hex() for c in bob.config["contacts"].values()
    )


# ---------------------------------------------------------------- failures of the network


def test_unreachable_node_exits_2(users: Any) -> None:
    """Nothing listens at the endpoint or resolver: network commands exit 2 with one line."""
    alice = users("alice")
    dead_dns, dead_http = free_port(), free_port()
    alice.ok(
        "init",
        f"alice@{ZONE}",
        "--endpoint",
        f"http://127.0.0.1:{dead_http}",
        "--dns-resolvers",
        f"127.0.0.1:{dead_dns}",
        "--http-token",
        "t",
    )
    alice.ok("contacts", "add", f"bob@{ZONE}", "33" * 32, "--signing-key", "44" * 32)
    for args in (
        ("identity", "publish"),
        ("identity", "fetch", f"bob@{ZONE}"),
        ("send", f"bob@{ZONE}", "anyone there?"),
        ("register", "--node", f"127.0.0.1:{dead_http}", "--scheme", "http"),
    ):
        r = alice.run(*args)
        assert r.code == 2, f"{args}: {r.code} {r.err}"
        assert len(r.err.strip().splitlines()) == 1, r.err


def test_debug_prints_a_traceback(users: Any) -> None:
    """--debug adds the traceback to the one-line error."""
    alice = users("alice")
    r = alice.run("--debug", "identity", "show")
    assert r.code == 1
    assert "Traceback" in r.err


def test_doctor(node: RunningNode, users: Any) -> None:
    """doctor passes against a live node; a dead endpoint is a FAIL and exit 1."""
    alice = users("alice")
    alice.join(node)
    out = alice.ok("doctor")
    assert "FAIL" not in out
    bob = users("bob")
    bob.ok(
        "init",
        "bob",
        "--endpoint",
        f"http://127.0.0.1:{free_port()}",
        "--dns-resolvers",
        f"127.0.0.1:{node.dns_port}",
        "--no-probe-local-dns",
    )
    r = bob.run("doctor")
    assert r.code == 1
    assert "FAIL" in r.out


def test_doctor_repair_saves_the_node_dns_port(node: RunningNode, users: Any) -> None:
    """Without the probe at init, doctor finds the node's DNS port; --repair saves it."""
    carol = users("carol")
    carol.init(node, "--no-probe-local-dns")
    assert carol.config["local_node_dns_port"] == 0
    assert "doctor --repair" in carol.ok("doctor")
    assert carol.config["local_node_dns_port"] == 0
    out = carol.ok("doctor", "--repair")
    assert "saved" in out
    assert carol.config["local_node_dns_server"] == "127.0.0.1"
    assert carol.config["local_node_dns_port"] == node.dns_port
    assert "FAIL" not in carol.ok("doctor")
