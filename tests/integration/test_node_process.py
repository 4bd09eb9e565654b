"""dmp-node as a real process: startup logs, DNS + HTTP, restart, signals, crash safety.

Each test runs ``python -m dmp.apps.node`` on 127.0.0.1 with port 0 and a
sqlite store under ``tmp_path``, reads the ports from its ``listening`` log
lines and talks to it over real sockets. Every wait is bounded; only the
process started here is signalled, by pid.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import anyio
import dns.asyncquery
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from dmp.adapters.sqlite_store import SqliteTsigKeyStore
from dmp.ports.store import StoreUnavailable, TsigKey

TOKEN = "node-process-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ZONE = "mesh.test"
LISTEN = re.compile(r"listening (dns udp\+tcp|http) (\S+):(\d+)")
STARTUP_TIMEOUT_S = 30.0
LOOPBACK_ENV = {
    "DMP_DNS_HOST": "127.0.0.1",
    "DMP_DNS_PORT": "0",
    "DMP_HTTP_HOST": "127.0.0.1",
    "DMP_HTTP_PORT": "0",
    "DMP_OPERATOR_TOKEN": TOKEN,
    "DMP_DOMAIN": ZONE,
}
"""A node on 127.0.0.1 with kernel-chosen ports, serving ZONE, operator token TOKEN."""


class NodeProcess:
    """One ``python -m dmp.apps.node`` child with its stderr collected line by line."""

    def __init__(self, tmp: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "DMP_DB_PATH": str(tmp / "node.db"),
            **LOOPBACK_ENV,
            "DMP_DNS_RATE": "0",
            "DMP_HTTP_RATE": "0",
            "DMP_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }
        self.cwd = tmp
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None
        self.dns_port = 0
        self.http_port = 0

    def spawn(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dmp.apps.node", *args],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc is not None
        stream = self.proc.stderr
        assert stream is not None
        with stream:
            for line in stream:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = STARTUP_TIMEOUT_S) -> str:
        """The first new stderr line containing ``pattern``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"node exited before {pattern!r}:\n" + self.log())
            self.lines.append(line)
            if pattern in line:
                return line
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n" + self.log())

    def start(self, *args: str) -> NodeProcess:
        """Spawn and wait for the ``ready`` line; read the bound ports from the log."""
        self.spawn(*args)
        self.wait_for(" ready")
        for line in self.lines:
            m = LISTEN.search(line)
            if m and m.group(1) == "http":
                self.http_port = int(m.group(3))
            elif m:
                self.dns_port = int(m.group(3))
        assert self.dns_port > 0, self.log()
        assert self.http_port > 0, self.log()
        return self

    def drain(self, timeout: float = 10.0) -> None:
        """Collect the remaining stderr lines (after the process ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return
            if line is None:
                return
            self.lines.append(line)

    def log(self) -> str:
        return "\n".join(self.lines[-60:])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        self.drain()
        return rc

    def kill_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    """Every node a test starts; any still running at the end is SIGKILLed (by pid)."""
    started: list[NodeProcess] = []
    yield started
    for n in started:
        n.kill_if_running()


def new_node(
    nodes: list[NodeProcess], tmp: Path, extra_env: Mapping[str, str] | None = None
) -> NodeProcess:
    n = NodeProcess(tmp, extra_env)
    nodes.append(n)
    return n


def query(port: int, name: str, rdtype: str = "TXT", *, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=5)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=5)


def txt_values(port: int, name: str) -> set[str]:
    r = query(port, name)
    return {b"".join(rd.strings).decode() for rrset in r.answer for rd in rrset}


def publish(client: httpx.Client, name: str, value: str, ttl: int = 3600) -> int:
    r = client.post(f"/v1/records/{name}", json={"value": value, "ttl": ttl}, headers=AUTH)
    return r.status_code


def test_startup_logs_dns_health_and_sigterm(nodes: list[NodeProcess], tmp_path: Path) -> None:
    """The node logs its bound ports, answers DNS and /health, and exits 0 on SIGTERM."""
    node = new_node(nodes, tmp_path).start()
    assert any("listening dns udp+tcp 127.0.0.1:" in line for line in node.lines)
    assert any("listening http 127.0.0.1:" in line for line in node.lines)

    r = query(node.dns_port, f"absent.{ZONE}")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.flags & dns.flags.AA
    with httpx.Client(base_url=node.url, timeout=5) as client:
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        long_value = "v=dmp1;t=test;" + "x" * 600
        assert publish(client, f"hello.{ZONE}", long_value) == 201
    assert txt_values(node.dns_port, f"hello.{ZONE}") == {long_value}
    assert txt_values(node.dns_port, f"HELLO.{ZONE}") == {long_value}  # case-insensitive
    tcp = query(node.dns_port, f"hello.{ZONE}", tcp=True)
    assert tcp.rcode() == dns.rcode.NOERROR
    assert len(tcp.answer[0][0].strings) == 3  # 614 bytes in 255-byte strings

    node.signal(signal.SIGTERM)
    assert node.wait() == 0
    assert any("stopped" in line for line in node.lines), node.log()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", node.http_port), 1),
    ):
        pass


def test_sigint_also_stops_cleanly(nodes: list[NodeProcess], tmp_path: Path) -> None:
    node = new_node(nodes, tmp_path).start()

    node.signal(signal.SIGINT)

    assert node.wait() == 0


def test_restart_keeps_data(nodes: list[NodeProcess], tmp_path: Path) -> None:
    """Records published before a clean stop are served again after a restart."""
    first = new_node(nodes, tmp_path).start()
    records = {f"r{i}.{ZONE}": f"value-{i}-" + "y" * (i * 7) for i in range(40)}
    with httpx.Client(base_url=first.url, timeout=5) as client:
        for name, value in records.items():
            assert publish(client, name, value) == 201
    first.signal(signal.SIGTERM)
    assert first.wait() == 0

    second = new_node(nodes, tmp_path).start()

    for name, value in records.items():
        assert txt_values(second.dns_port, name) == {value}, name
    with httpx.Client(base_url=second.url, timeout=5) as client:
        stats = client.get("/stats").json()
    assert stats["records"] == len(records)


def test_json_log_format(nodes: list[NodeProcess], tmp_path: Path) -> None:
    """DMP_LOG_FORMAT=json writes one JSON object per line, with the bound port as a field."""
    node = new_node(nodes, tmp_path, {"DMP_LOG_FORMAT": "json"})
    node.spawn()
    line = node.wait_for('"listening http')
    entry = json.loads(line)
    assert entry["service"] == "http"
    assert isinstance(entry["port"], int)
    assert entry["port"] > 0
    assert {"ts", "level", "logger", "msg"} <= entry.keys()
    node.wait_for('"ready"')
    node.signal(signal.SIGTERM)
    assert node.wait() == 0


def test_expired_records_are_swept(nodes: list[NodeProcess], tmp_path: Path) -> None:
    """With DMP_CLEANUP_INTERVAL=0.2, a 1 s record is gone from the store soon after expiry."""
    node = new_node(nodes, tmp_path, {"DMP_CLEANUP_INTERVAL": "0.2"}).start()
    with httpx.Client(base_url=node.url, timeout=5) as client:
        assert publish(client, f"short.{ZONE}", "lives one second", ttl=1) == 201
        assert publish(client, f"long.{ZONE}", "lives an hour", ttl=3600) == 201
        assert client.get("/stats").json()["records"] == 2
        deadline = time.monotonic() + 15
        while client.get("/stats").json()["records"] != 1:  # count() includes unswept rows
            assert time.monotonic() < deadline, "expired row never swept"
            time.sleep(0.1)
    assert txt_values(node.dns_port, f"short.{ZONE}") == set()
    assert txt_values(node.dns_port, f"long.{ZONE}") == {"lives an hour"}


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DMP_DNS_PORT": "fifty"}, "DMP_DNS_PORT"),
        ({"DMP_LOG_FORMAT": "yaml"}, "DMP_LOG_FORMAT"),
        ({"DMP_DNS_UPDATE_ENABLED": "1", "DMP_DOMAIN": ""}, "DMP_DNS_UPDATE_ENABLED"),
    ],
)
def test_configuration_error_exits_2_with_one_line(
    nodes: list[NodeProcess], tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    node = new_node(nodes, tmp_path, env)
    node.spawn()

    assert node.wait() == 2
    assert len(node.lines) == 1, node.log()
    assert variable in node.lines[0]
    assert not (tmp_path / "node.db").exists()  # nothing was started or created


def test_busy_port_exits_2_and_leaves_nothing_listening(
    nodes: list[NodeProcess], tmp_path: Path
) -> None:
    """A port that cannot be bound names its variable; the DNS port it had bound is released."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        node = new_node(nodes, tmp_path, {"DMP_HTTP_PORT": str(port)})
        node.spawn()
        assert node.wait() == 2
    tail = node.lines[-1]
    assert tail.startswith("dmp-node: DMP_HTTP_PORT: cannot listen on 127.0.0.1:"), node.log()
    dns_line = next(line for line in node.lines if "listening dns" in line)
    m = LISTEN.search(dns_line)
    assert m is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", int(m.group(3))))  # free again


async def _write_load(
    url: str,
    acked: list[tuple[str, str]],
    stop: anyio.Event,
    enough: tuple[int, anyio.Event],
    writers: int,
    limit: int,
) -> None:
    """Concurrent POSTs until ``stop`` or ``limit`` writes; record every 201.

    ``enough = (n, event)``: the event is set once ``n`` writes are acknowledged.
    """
    counter = iter(range(limit))

    async def writer(w: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            for i in counter:
                if stop.is_set():
                    return
                name, value = f"w{w}-{i}.{ZONE}", f"payload-{w}-{i}-" + "z" * 200
                try:
                    r = await client.post(
                        f"/v1/records/{name}", json={"value": value, "ttl": 3600}, headers=AUTH
                    )
                except httpx.HTTPError:
                    return  # the node died under us: unacknowledged
                if r.status_code == 201:
                    acked.append((name, value))
                    if len(acked) >= enough[0]:
                        enough[1].set()

    async with anyio.create_task_group() as tg:
        for w in range(writers):
            tg.start_soon(writer, w)


def _signal_under_write_load(
    node: NodeProcess, signum: int, enough: int, *, await_exit: bool
) -> list[tuple[str, str]]:
    """Load ``node`` with 16 writers and send ``signum`` once ``enough`` writes are acknowledged.

    The signal goes out after at most 30 s in any case. With ``await_exit`` the
    writers keep going until the process has exited (at most 15 s more).

    Returns:
        The acknowledged ``(name, value)`` writes.
    """
    acked: list[tuple[str, str]] = []

    async def scenario() -> None:
        stop, reached = anyio.Event(), anyio.Event()

        async def signaller() -> None:
            with anyio.move_on_after(30):
                await reached.wait()
            node.signal(signum)  # mid-load: writers are still in flight
            if await_exit:
                with anyio.move_on_after(15):
                    await anyio.to_thread.run_sync(node.proc.wait)  # type: ignore[union-attr]
            stop.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(signaller)
            tg.start_soon(_write_load, node.url, acked, stop, (enough, reached), 16, 50_000)

    anyio.run(scenario)
    return acked


def _missing(client: httpx.Client, acked: list[tuple[str, str]]) -> list[str]:
    """The names of acknowledged writes whose value the node does not return."""
    missing = []
    for name, value in acked:
        r = client.get(f"/v1/records/{name}", headers=AUTH)
        if r.status_code != 200 or value not in r.json()["values"]:
            missing.append(name)
    return missing


def test_sigkill_during_write_load_keeps_every_acknowledged_write(
    nodes: list[NodeProcess], tmp_path: Path
) -> None:
    """Every write answered 201 before a SIGKILL is present after the restart."""
    node = new_node(nodes, tmp_path).start()
    acked = _signal_under_write_load(node, signal.SIGKILL, 400, await_exit=False)
    assert node.wait() == -signal.SIGKILL
    assert len(acked) >= 400

    restarted = new_node(nodes, tmp_path).start()
    with httpx.Client(base_url=restarted.url, timeout=10) as client:
        missing = _missing(client, acked)
    assert missing == [], f"{len(missing)} of {len(acked)} acknowledged writes lost"
    restarted.signal(signal.SIGTERM)
    assert restarted.wait() == 0


# ---------------------------------------------------------------- admin commands


def admin(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dmp.apps.node", "admin", *args],
        env={**env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _tsig_key(keyname: str, subject: str, suffix: str, secret: bytes = b"s" * 32) -> TsigKey:
    """A live hmac-sha256 key for ``subject``, valid for the next hour."""
    now = int(time.time())
    return TsigKey(
        keyname=keyname,
        secret=secret,
        algorithm="hmac-sha256",
        allowed_suffixes=(suffix,),
        subject=subject,
        ed25519_public="00" * 32,
        created_at=now,
        expires_at=now + 3600,
    )


def _seed_tsig_keys(tmp: Path, *keys: TsigKey) -> None:
    """Store ``keys`` in the TSIG database a node on ``tmp`` uses (before it starts)."""

    async def seed() -> None:
        store = await SqliteTsigKeyStore.open(tmp / "node_tsig.db")
        for key in keys:
            await store.put(key)
        await store.aclose()

    anyio.run(seed)


def test_admin_tokens_work_on_the_running_nodes_database(
    nodes: list[NodeProcess], tmp_path: Path
) -> None:
    """A token issued by `dmp-node admin` (same env) publishes; revoked, it is refused."""
    node = new_node(nodes, tmp_path, {"DMP_AUTH_MODE": "multi-tenant"}).start()
    issued = admin(node.env, "token", "issue", "alice@mesh.test", "--json")
    assert issued.returncode == 0, issued.stderr
    token = json.loads(issued.stdout)["token"]
    import hashlib

    owner = f"id-{hashlib.sha256(b'alice').hexdigest()[:16]}.{ZONE}"
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=node.url, timeout=5) as client:
        ok = client.post(
            f"/v1/records/{owner}", json={"value": "v=dmp1;t=x", "ttl": 60}, headers=auth
        )
        assert ok.status_code == 201
        revoked = admin(node.env, "token", "revoke", "alice@mesh.test")
        assert revoked.returncode == 0, revoked.stderr
        refused = client.post(
            f"/v1/records/{owner}", json={"value": "v=dmp1;t=y", "ttl": 60}, headers=auth
        )
        assert refused.status_code == 401
    tail = admin(node.env, "audit", "tail", "--json")
    events = [row["event"] for row in json.loads(tail.stdout)]
    assert {"issued", "used", "revoked", "rejected"} <= set(events)
    listed = admin(node.env, "token", "list", "--include-revoked", "--json")
    assert [t["revoked_at"] is not None for t in json.loads(listed.stdout)] == [True]
    assert token not in listed.stdout


def test_admin_tsig_list_and_revoke(tmp_path: Path) -> None:
    """`admin tsig` lists keys without secrets and revokes by name or subject."""
    env = {"PATH": os.environ.get("PATH", ""), "DMP_DB_PATH": str(tmp_path / "node.db")}
    _seed_tsig_keys(
        tmp_path,
        *(
            _tsig_key(f"{user}-0011aabb-abcdef.{ZONE}.", f"{user}@{ZONE}", f"id-x.{ZONE}")
            for user in ("alice", "bob")
        ),
    )
    listed = admin(env, "tsig", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    keys = json.loads(listed.stdout)
    assert [k["subject"] for k in keys] == ["alice@mesh.test", "bob@mesh.test"]
    assert "secret" not in listed.stdout
    assert admin(env, "tsig", "revoke", f"alice-0011aabb-abcdef.{ZONE}").returncode == 0
    assert admin(env, "tsig", "revoke", f"BOB@{ZONE}").returncode == 0
    assert json.loads(admin(env, "tsig", "list", "--json").stdout) == []
    everything = json.loads(admin(env, "tsig", "list", "--include-revoked", "--json").stdout)
    assert [k["state"] for k in everything] == ["revoked", "revoked"]
    again = admin(env, "tsig", "revoke", f"alice-0011aabb-abcdef.{ZONE}")
    assert again.returncode == 1
    assert "no live TSIG key" in again.stderr


def test_admin_tsig_revoke_reaches_the_running_node(
    nodes: list[NodeProcess], tmp_path: Path
) -> None:
    """A key revoked by `dmp-node admin tsig revoke` stops verifying within seconds."""
    import base64

    import dns.tsig
    import dns.tsigkeyring
    import dns.update

    keyname, secret = f"carol-0011aabb-abcdef.{ZONE}.", bytes(range(32))
    _seed_tsig_keys(tmp_path, _tsig_key(keyname, f"carol@{ZONE}", ZONE, secret))
    node = new_node(nodes, tmp_path, {"DMP_DNS_UPDATE_ENABLED": "1"}).start()
    ring = dns.tsigkeyring.from_text({keyname: base64.b64encode(secret).decode()})

    def update(i: int) -> int:
        upd = dns.update.UpdateMessage(ZONE, keyring=ring, keyname=keyname)
        upd.add(f"t{i}.{ZONE}.", 60, "TXT", f'"v{i}"')
        try:
            return dns.query.udp(upd, "127.0.0.1", port=node.dns_port, timeout=3).rcode()
        except dns.tsig.PeerBadKey:  # the unsigned NOTAUTH (BADKEY) reply
            return dns.rcode.NOTAUTH

    assert update(0) == dns.rcode.NOERROR
    assert admin(node.env, "tsig", "revoke", keyname).returncode == 0
    deadline, i = time.monotonic() + 10, 1
    while update(i) == dns.rcode.NOERROR:
        assert time.monotonic() < deadline, "revoked key still accepted after 10 s"
        i += 1
        time.sleep(0.1)
    assert txt_values(node.dns_port, f"t0.{ZONE}") == {"v0"}


# ---------------------------------------------------------------- in process


@pytest.mark.anyio
async def test_build_and_run_in_process_with_a_stop_event() -> None:
    """build_node + run_node under a task group: ports reported, stop event ends it cleanly."""
    from dmp.adapters.clock import SystemClock
    from dmp.apps.node.config import load_config
    from dmp.apps.node.service import build_node, run_node

    config = load_config({"DMP_DB_PATH": ":memory:", **LOOPBACK_ENV}, {})
    node = await build_node(config, clock=SystemClock())
    stop = anyio.Event()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            started = await tg.start(
                lambda task_status: run_node(
                    node, stop=stop, handle_signals=False, task_status=task_status
                )
            )
            assert started is node
            dns_port, http_port = node.bound["dns"][1], node.bound["http"][1]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
                r = await client.post(
                    f"/v1/records/a.{ZONE}", json={"value": "in-process", "ttl": 60}, headers=AUTH
                )
                assert r.status_code == 201
            q = dns.message.make_query(f"a.{ZONE}", "TXT")
            reply = await dns.asyncquery.udp(q, "127.0.0.1", port=dns_port, timeout=5)
            assert [b"".join(rd.strings) for rd in reply.answer[0]] == [b"in-process"]
            stop.set()
    with pytest.raises(StoreUnavailable):
        await node.store.count()


def test_sigterm_during_write_load_exits_0_and_keeps_acknowledged_writes(
    nodes: list[NodeProcess], tmp_path: Path
) -> None:
    """A graceful stop under load: exit 0, and every 201 is there after the restart."""
    node = new_node(nodes, tmp_path).start()
    acked = _signal_under_write_load(node, signal.SIGTERM, 300, await_exit=True)
    assert node.wait() == 0, node.log()
    assert len(acked) >= 300

    restarted = new_node(nodes, tmp_path).start()
    with httpx.Client(base_url=restarted.url, timeout=10) as client:
        stats = client.get("/stats").json()
        missing = _missing(client, acked)
    assert missing == []
    assert stats["records"] >= len(acked)


@pytest.mark.parametrize(
    ("area", "table"),
    [(("token", "list"), "tokens"), (("audit", "tail"), "tokens"), (("tsig", "list"), "tsig_keys")],
)
def test_admin_on_a_foreign_database_is_a_one_line_error(
    tmp_path: Path, area: tuple[str, str], table: str
) -> None:
    """`admin` pointed at another program's file (same table names): one line, exit 1, untouched."""
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE {table} (token_hash TEXT PRIMARY KEY, subject TEXT, scope TEXT)")
    conn.commit()
    before = conn.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
    env = {"PATH": os.environ.get("PATH", "")}
    done = admin(env, area[0], "--db", str(path), area[1])
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "not a dmp-node database" in done.stderr
    assert "Traceback" not in done.stderr
    assert conn.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall() == before
    conn.close()
