"""``dnsmesh agent``: the key agent over a real unix socket under ``tmp_path``.

The agent runs in a thread of this process (``AgentServer.serve``) except in
the last test, which starts it the way a user does (``dnsmesh agent start``
in a child process that forks the agent) and stops it again. Cheap Argon2
parameters come from ``DMP_KDF_PROFILE=test``.

Not tested here: a peer with *another uid* being refused. That needs a second
user able to reach the socket (the 0700 directory stops it before the
``SO_PEERCRED`` check), so ``test_peer_uid_is_checked`` instead makes the
agent accept only a uid that is not ours and checks that we are refused.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from dmp.apps.client import agent
from dmp.apps.client.config import config_home, load_config, save_config
from tests.integration.test_cli_e2e import (  # noqa: F401 - node is a fixture
    ZONE,
    Result,
    RunningNode,
    User,
    node,
)


class Person(User):
    """A CLI user (see test_cli_e2e) whose ``env=`` *replaces* the environment.

    So a call can leave the passphrase out (:attr:`no_passphrase`) and reach
    for the agent.
    """

    @property
    def no_passphrase(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if k != "DMP_PASSPHRASE"}

    def run(self, *args: str, env: Mapping[str, str] | None = None) -> Result:
        return self.main(args, self.env if env is None else env)

    def offline_init(self) -> None:
        self.ok("init", self.name, "--no-default-resolvers", "--no-probe-local-dns")
        self.ok("identity", "show")  # records verify_pubkey

    def server(self, **kw: Any) -> agent.AgentServer:
        cfg = load_config(self.home)
        keys = self.keys()
        assert keys.ed25519_public.hex() == cfg.verify_pubkey
        return agent.AgentServer(
            self.home, keys.x25519_private, cfg.kdf_salt, cfg.verify_pubkey, **kw
        )


@pytest.fixture
def people(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    def make(name: str) -> Person:
        return Person(name, tmp_path, capsys)

    return make


class Running:
    """An :class:`AgentServer` serving on a thread of this process."""

    def __init__(self, server: agent.AgentServer) -> None:
        self.server = server
        server.bind()
        self.thread = threading.Thread(target=server.serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            agent.stop(self.server.home)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Running] = []

    def start(server: agent.AgentServer) -> Running:
        running = Running(server)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


# ---------------------------------------------------------------- locations


@pytest.mark.parametrize(
    ("explicit", "environ"),
    [
        (None, {"HOME": "/home/u"}),
        (None, {"HOME": "/home/u", "DMP_CONFIG_HOME": "/etc/dmp-u"}),
        ("~/elsewhere", {"HOME": "/home/u", "DMP_CONFIG_HOME": "/etc/dmp-u"}),
        ("rel/dir", {"HOME": "/home/u"}),
        (None, {"HOME": "/home/u", "DMP_CONFIG_HOME": ""}),
    ],
)
def test_resolve_home_agrees_with_the_config_module(
    explicit: str | None, environ: dict[str, str]
) -> None:
    assert agent.resolve_home(explicit, environ) == config_home(explicit, environ)


def test_agent_mode_knob() -> None:
    assert agent.agent_mode({}) == "on"
    assert agent.agent_mode({"DMP_AGENT": "1"}) == "on"
    for off in ("0", "off", "OFF", "no", "false"):
        assert agent.agent_mode({"DMP_AGENT": off}) == "off"
    assert agent.agent_mode({"DMP_AGENT": "keys"}) == "keys"


# ---------------------------------------------------------------- key requests


def test_agent_serves_its_identity_over_a_private_socket(people: Any, serve: Any) -> None:
    alice = people("alice")
    alice.offline_init()
    cfg = load_config(alice.home)
    running = serve(alice.server())
    path = agent.socket_path(alice.home)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700

    got = agent.fetch_private_key(alice.home, cfg.kdf_salt, cfg.verify_pubkey)
    assert got == alice.keys().x25519_private
    # another identity's request is refused
    assert agent.fetch_private_key(alice.home, "00" * 32, cfg.verify_pubkey) is None
    assert agent.fetch_private_key(alice.home, cfg.kdf_salt, "11" * 32) is None

    info = agent.status(alice.home)
    assert info is not None
    assert info["pid"] == os.getpid()
    assert info["verify_pubkey"] == cfg.verify_pubkey
    assert info["requests"] == 1

    assert agent.stop(alice.home) is not None
    running.thread.join(timeout=10)
    assert not running.thread.is_alive()
    assert not path.exists()
    assert agent.status(alice.home) is None


def test_commands_take_the_keys_from_the_agent(people: Any, serve: Any) -> None:
    alice = people("alice")
    alice.offline_init()
    expected = alice.ok("identity", "show", "--json")

    code, _, err = alice.run("identity", "show", env=alice.no_passphrase)
    assert code == 1
    assert "no passphrase" in err

    running = serve(alice.server())
    assert alice.ok("identity", "show", "--json", env=alice.no_passphrase) == expected
    # a wrong passphrase is never consulted while the agent serves this identity
    wrong = {**alice.env, "DMP_PASSPHRASE": "not it"}
    assert alice.ok("identity", "show", "--json", env=wrong) == expected
    # DMP_AGENT=off: derived as before, so the wrong passphrase trips the tripwire
    code, _, err = alice.run("identity", "show", env={**wrong, "DMP_AGENT": "off"})
    assert code == 1
    assert "passphrase mismatch" in err

    running.stop()
    code, _, err = alice.run("identity", "show", env=alice.no_passphrase)
    assert code == 1
    assert "no passphrase" in err


def test_agent_for_another_config_is_not_used(people: Any, serve: Any) -> None:
    alice = people("alice")
    alice.offline_init()
    serve(alice.server())
    # init --force: a new salt, so the agent's identity is no longer this config's
    alice.ok("init", "alice", "--no-default-resolvers", "--no-probe-local-dns", "--force")
    code, _, err = alice.run("identity", "show", env=alice.no_passphrase)
    assert code == 1
    assert "no passphrase" in err
    alice.ok("identity", "show")  # derives as before


def test_absent_or_stale_agent_means_deriving_as_before(people: Any) -> None:
    alice = people("alice")
    alice.offline_init()
    cfg = load_config(alice.home)
    assert agent.fetch_private_key(alice.home, cfg.kdf_salt, cfg.verify_pubkey) is None
    assert agent.status(alice.home) is None
    assert agent.stop(alice.home) is None
    assert agent.try_run(alice.home, ["recv"], alice.env) is None

    # a socket file nobody listens on (an agent killed with SIGKILL)
    import socket

    path = agent.socket_path(alice.home)
    path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
    assert path.exists()
    assert agent.fetch_private_key(alice.home, cfg.kdf_salt, cfg.verify_pubkey) is None
    assert agent.try_run(alice.home, ["recv"], alice.env) is None
    alice.ok("identity", "show")
    code, _, err = alice.run("identity", "show", env=alice.no_passphrase)
    assert code == 1
    assert "no passphrase" in err

    # a new agent replaces the stale socket
    server = alice.server()
    server.bind()
    try:
        assert agent.socket_path(alice.home).exists()
    finally:
        server.close()
    assert not path.exists()


def test_a_group_readable_agent_directory_is_not_trusted(people: Any, serve: Any) -> None:
    alice = people("alice")
    alice.offline_init()
    cfg = load_config(alice.home)
    serve(alice.server())
    folder = agent.socket_path(alice.home).parent
    os.chmod(folder, 0o750)
    try:
        assert agent.fetch_private_key(alice.home, cfg.kdf_salt, cfg.verify_pubkey) is None
        assert agent.status(alice.home) is None
    finally:
        os.chmod(folder, 0o700)
    assert agent.status(alice.home) is not None


def test_peer_uid_is_checked(people: Any, serve: Any) -> None:
    """An agent that accepts only another uid answers us nothing (SO_PEERCRED is read)."""
    alice = people("alice")
    alice.offline_init()
    cfg = load_config(alice.home)
    running = serve(alice.server(allowed_uid=os.getuid() + 1))
    assert agent.fetch_private_key(alice.home, cfg.kdf_salt, cfg.verify_pubkey) is None
    assert agent.status(alice.home) is None
    running.server.allowed_uid = os.getuid()  # control: the same agent answers us now
    assert agent.status(alice.home) is not None


def test_one_agent_per_config_home(people: Any, serve: Any) -> None:
    alice = people("alice")
    alice.offline_init()
    serve(alice.server())
    with pytest.raises(agent.AgentError, match="already running"):
        alice.server().bind()
    code, _, err = alice.run("agent", "start", "--foreground")
    assert code == 1
    assert "already running" in err


def test_a_busy_agent_is_not_replaced(people: Any) -> None:
    """Something accepts on the socket but does not answer yet: still counts as running."""
    import socket

    alice = people("alice")
    alice.offline_init()
    path = agent.socket_path(alice.home)
    path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(str(path))
        busy.listen(4)
        with pytest.raises(agent.AgentError, match="already running"):
            alice.server().bind()
        assert path.exists()


# ---------------------------------------------------------------- idle timeout


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_idle_timeout_ends_the_agent(people: Any, serve: Any) -> None:
    alice = people("alice")
    alice.offline_init()
    cfg = load_config(alice.home)
    clock = FakeClock()
    running = serve(alice.server(idle_timeout_s=60, clock=clock, poll_s=0.01))

    clock.t += 50
    assert agent.status(alice.home)["idle_left_s"] == pytest.approx(10)
    # a key request is a use: the deadline moves
    assert agent.fetch_private_key(alice.home, cfg.kdf_salt, cfg.verify_pubkey) is not None
    clock.t += 50
    info = agent.status(alice.home)  # status alone is not a use
    assert info is not None
    assert info["idle_left_s"] == pytest.approx(10)
    assert running.thread.is_alive()

    clock.t += 11
    running.thread.join(timeout=10)
    assert not running.thread.is_alive()
    assert not agent.socket_path(alice.home).exists()
    assert agent.fetch_private_key(alice.home, cfg.kdf_salt, cfg.verify_pubkey) is None


# ---------------------------------------------------------------- run requests


class Recorder:
    """A runner that records what the agent gave it and prints a little."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, argv: Sequence[str], environ: Mapping[str, str], keys: Any) -> int:
        umask = os.umask(0)
        os.umask(umask)
        self.calls.append(
            {
                "argv": list(argv),
                "environ": dict(environ),
                "os_environ_marker": os.environ.get("MARKER"),
                "cwd": os.getcwd(),
                "umask": umask,
                "spk": keys.ed25519_public.hex(),
            }
        )
        print("out line")
        print("err line", file=sys.stderr)
        return 7


def test_run_requests_execute_with_the_clients_environment(
    people: Any, serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = people("alice")
    alice.offline_init()
    runner = Recorder()
    serve(alice.server(runner=runner))
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    env = {**alice.no_passphrase, "MARKER": "from-client"}
    old = os.umask(0o027)
    try:
        got = agent.try_run(alice.home, ["--debug", "recv"], env)
    finally:
        os.umask(old)
    assert got == (7, "out line\n", "err line\n")
    (call,) = runner.calls
    assert call["argv"] == ["--debug", "recv"]
    assert call["os_environ_marker"] == "from-client"
    assert call["environ"]["DMP_AGENT"] == "off"
    assert call["cwd"] == str(workdir)
    assert call["umask"] == 0o027
    assert call["spk"] == load_config(alice.home).verify_pubkey
    assert os.environ.get("MARKER") is None  # the agent's own environment is back

    # through the CLI entry point: the same three results
    code, out, err = alice.run("recv", env=env)
    assert (code, out, err) == (7, "out line\n", "err line\n")
    assert len(runner.calls) == 2
    # DMP_AGENT=keys or off: not handed to the agent
    for mode in ("keys", "off"):
        assert agent.try_run(alice.home, ["recv"], {**env, "DMP_AGENT": mode}) is None
    assert len(runner.calls) == 2


def test_run_declines_when_the_config_changed(people: Any, serve: Any) -> None:
    alice = people("alice")
    alice.offline_init()
    runner = Recorder()
    serve(alice.server(runner=runner))
    cfg = load_config(alice.home)
    cfg.verify_pubkey = "22" * 32
    save_config(alice.home, cfg)
    assert agent.try_run(alice.home, ["recv"], alice.env) is None
    assert runner.calls == []


def test_send_and_recv_run_in_the_agents(
    node: RunningNode,  # noqa: F811 - the fixture
    people: Any,
    serve: Any,
) -> None:
    """alice and bob each with an agent and no passphrase exchange a message; same output."""
    alice, bob = people("alice"), people("bob")
    for p in (alice, bob):
        p.join(node)
    alice.ok("identity", "fetch", f"bob@{ZONE}", "--add")
    bob.ok("identity", "fetch", f"alice@{ZONE}", "--add")
    agents = {p.name: serve(p.server()) for p in (alice, bob)}

    out = alice.ok("send", f"bob@{ZONE}", "hello through the agent", env=alice.no_passphrase)
    assert out.startswith(f"sent → bob@{ZONE}")
    out = bob.ok("recv", env=bob.no_passphrase)
    assert f"from alice@{ZONE}" in out
    assert "hello through the agent" in out
    assert agents["alice"].server.requests == 1
    assert agents["bob"].server.requests == 1

    # the same command without the agent prints the same thing
    alice.ok("send", f"bob@{ZONE}", "second", env=alice.no_passphrase)
    via_agent = bob.ok("recv", "--primary-only", env=bob.no_passphrase)
    assert "second" in via_agent
    assert bob.ok("recv", env=bob.no_passphrase) == "(no new messages)\n"
    assert bob.ok("recv", env={**bob.env, "DMP_AGENT": "off"}) == "(no new messages)\n"
    assert agents["bob"].server.requests == 3

    # an error inside the agent's run comes back as the command's own error
    code, _, err = alice.run("send", "nobody-known", "x", env=alice.no_passphrase)
    local = alice.run("send", "nobody-known", "x", env={**alice.env, "DMP_AGENT": "off"})
    assert (code, err) == (local[0], local[2])
    assert code == 1


# ---------------------------------------------------------------- the real thing


def test_agent_start_status_stop_as_a_user_runs_them(people: Any) -> None:
    """``dnsmesh agent start`` forks a background agent that the other commands use."""
    alice = people("alice")
    alice.offline_init()
    expected = alice.ok("identity", "show", "--json")
    env = {**os.environ, **alice.env}
    start = subprocess.run(
        [sys.executable, "-m", "dmp.apps.client", "agent", "start", "--idle-timeout", "120"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert start.returncode == 0, start.stderr
    pid = int(start.stdout.split("(pid ")[1].split(")")[0])
    try:
        assert pid > 0
        out = alice.ok("agent", "status")
        assert f"pid {pid}" in out
        assert "120 s" in out
        assert alice.ok("identity", "show", "--json", env=alice.no_passphrase) == expected
        assert "agent stopped" in alice.ok("agent", "stop")
        code, out, _ = alice.run("agent", "status")
        assert code == 1
        assert "no agent running" in out
    finally:
        if agent.status(alice.home) is not None:  # only the agent this test started
            os.kill(pid, signal.SIGTERM)
