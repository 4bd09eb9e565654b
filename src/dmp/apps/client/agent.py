"""``dnsmesh agent``: derive the identity once and keep it in a small background process (layer: apps).

Why: every ``dnsmesh`` command that signs or decrypts derives the identity
from the passphrase with Argon2id (t=2, m=32 MiB, p=2; fixed by wire.md §3.1),
and a fresh Python process also imports dnspython, anyio/asyncio, attrs and
PyNaCl. Both cost more than the network work of a ``send`` or a ``recv``.
The agent pays them once, like ``ssh-agent``. It is **opt-in**: nothing
changes until you run ``dnsmesh agent start``.

Use::

    dnsmesh agent start [--idle-timeout 900] [--foreground]
    dnsmesh agent status
    dnsmesh agent stop

``agent start`` reads the passphrase the usual way (``DMP_PASSPHRASE``, then
``passphrase_file``, then a prompt), derives the keys with the
``verify_pubkey`` typo tripwire, binds ``<config-home>/agent/agent.sock`` and
forks into the background. While it runs, commands run against the same
config home:

* ``send`` and ``recv`` are executed *by the agent* (it has the modules
  loaded and the keys derived): the ``dnsmesh`` process only sends its
  arguments, environment, working directory and umask, and prints what comes
  back (stdout, stderr, exit code). The agent runs them one at a time with
  that environment, directory and umask in place, so the result is the one
  the command would have produced by itself;
* every other command that needs the keys asks the agent for them instead
  of running Argon2id.

The agent only serves a config whose ``kdf_salt`` and ``verify_pubkey`` are
the ones it was started with; after ``init --force`` or ``identity rotate``
commands fall back to deriving (restart the agent). When the agent is absent,
stale, unreachable or refuses, commands derive the keys themselves exactly as
without an agent. ``DMP_AGENT=off`` (or ``0``/``no``) makes a command ignore
the agent; ``DMP_AGENT=keys`` uses it for keys only (``send``/``recv`` run in
the ``dnsmesh`` process).

Protocol: one request per connection; the client writes one JSON object and
shuts down its write side, the agent answers one JSON object and closes.
Requests: ``{"op": "status"}``, ``{"op": "stop"}``, ``{"op": "keys",
"kdf_salt", "verify_pubkey"}`` and ``{"op": "run", "argv", "environ",
"cwd", "umask", "home"}``. A ``run`` answer is either ``{"ok": true, "code",
"stdout", "stderr"}`` or ``{"ok": false, "fallback": true, ...}`` (nothing
was done: run it locally). A connection that breaks after a ``run`` request
was sent is an error, never a silent local re-run (a message could be sent
twice).

Security notes (read before enabling):

* What the agent holds is the identity itself: the 32-byte X25519 private
  key that every other key derives from (wire.md §3.1). Anyone who can talk
  to the agent can use the identity, sign and decrypt as you, and read the
  key out, for as long as the agent runs. That is the ssh-agent trade-off:
  the passphrase still protects the keys at rest (nothing is written to
  disk), but not while the agent runs.
* Who can talk to it: only processes of the same uid. The socket lives in
  ``<config-home>/agent/``, created mode 0700 and checked to be owned by us
  and not group/world accessible (by the agent and by clients), the socket
  itself is 0600, and the agent checks every connection's peer uid with
  ``SO_PEERCRED`` (so Linux only: elsewhere ``agent start`` refuses). Clients
  check the agent's uid the same way. Another process of your uid can read
  the agent's memory anyway (unless ptrace is restricted), which is why the
  agent also marks itself non-dumpable (``PR_SET_DUMPABLE`` 0: no core
  dumps, no same-uid ptrace) on a best-effort basis.
* Exposure is bounded: the agent exits after ``--idle-timeout`` seconds
  (default 900) without a ``keys`` or ``run`` request, on ``agent stop``, on
  SIGTERM/SIGINT, and removes its socket. It never reads or writes key
  material to disk; Python cannot reliably wipe memory, so the key stays in
  the process until it exits.
* Clients verify what the agent hands out: the returned private key must
  derive the config's ``verify_pubkey`` or it is ignored.
* The agent runs the code it started with: after upgrading dmp, restart it.
  Ctrl-C in ``dnsmesh send``/``recv`` stops waiting for the agent, not the
  command it is running.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "AGENT_ENV",
    "DEFAULT_IDLE_TIMEOUT_S",
    "RUN_COMMANDS",
    "AgentError",
    "AgentServer",
    "agent_mode",
    "daemonize",
    "fetch_private_key",
    "resolve_home",
    "serve_foreground",
    "socket_path",
    "status",
    "stop",
    "try_run",
]

AGENT_ENV = "DMP_AGENT"
AGENT_DIR = "agent"
SOCKET_NAME = "agent.sock"
DEFAULT_IDLE_TIMEOUT_S = 900.0
RUN_COMMANDS = frozenset({"send", "recv"})
"""Commands the agent executes itself (the hot paths; nothing interactive)."""
PROTOCOL = 1
MAX_MESSAGE = 1 << 22
"""Largest request or answer (bytes) either side accepts."""
REQUEST_TIMEOUT_S = 5.0
"""How long the agent waits for a client to send its request."""
_OFF = frozenset({"0", "off", "no", "false"})


class AgentError(Exception):
    """The agent cannot be started, or it failed while running a command (exit code 1)."""

    exit_code = 1


class AgentConnectionLost(AgentError):
    """The agent went away after a ``run`` request was sent (exit code 2: it may have run)."""

    exit_code = 2


# ---------------------------------------------------------------- locations


def agent_mode(environ: Mapping[str, str]) -> str:
    """``"off"``, ``"keys"`` (keys only) or ``"on"`` (keys, and ``send``/``recv`` run by it)."""
    value = environ.get(AGENT_ENV, "").strip().lower()
    if value in _OFF:
        return "off"
    return "keys" if value == "keys" else "on"


def resolve_home(explicit: str | None, environ: Mapping[str, str]) -> Path:
    """The config home as :func:`dmp.apps.client.config.config_home` resolves it.

    Repeated here (a test keeps them equal) so that the ``send``/``recv`` fast
    path need not import the config module and its dependencies.
    """
    if explicit:
        return Path(explicit).expanduser()
    if environ.get("DMP_CONFIG_HOME"):
        return Path(environ["DMP_CONFIG_HOME"]).expanduser()
    return Path(environ.get("HOME") or Path.home()) / ".dmp"


def socket_path(home: Path) -> Path:
    """``<home>/agent/agent.sock``."""
    return home / AGENT_DIR / SOCKET_NAME


def _private_dir_ok(path: Path) -> bool:
    """A real directory, owned by us, with no group or other permission bits."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (Linux ``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


# ---------------------------------------------------------------- wire


def _recv_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_MESSAGE:
            raise ValueError("message too large")
        chunks.append(chunk)


def _decode(data: bytes) -> dict[str, Any]:
    obj = json.loads(data.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


# ---------------------------------------------------------------- client side


def _connect(home: Path, timeout: float | None) -> socket.socket | None:
    """A connection to the agent of ``home``; None when there is no usable agent."""
    path = socket_path(home)
    if not hasattr(socket, "SO_PEERCRED") or not _private_dir_ok(path.parent):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        if _peer_uid(sock) != os.getuid():
            sock.close()
            return None
    except OSError:
        sock.close()
        return None
    return sock


def _listening(path: Path) -> bool:
    """Does a process accept connections on ``path`` (whether or not it answers yet)?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _exchange(sock: socket.socket, request: Mapping[str, Any]) -> dict[str, Any]:
    with sock:
        sock.sendall(json.dumps({"v": PROTOCOL, **request}).encode("utf-8"))
        sock.shutdown(socket.SHUT_WR)
        return _decode(_recv_all(sock))


def _ask(home: Path, request: Mapping[str, Any], timeout: float = 2.0) -> dict[str, Any] | None:
    sock = _connect(home, timeout)
    if sock is None:
        return None
    try:
        return _exchange(sock, request)
    except (OSError, ValueError):
        return None


def fetch_private_key(home: Path, kdf_salt: str, verify_pubkey: str) -> bytes | None:
    """The agent's X25519 private key, if an agent for this identity runs at ``home``.

    The caller must still check that the key derives ``verify_pubkey``.

    Returns:
        32 bytes, or None (no agent, another identity, or any failure).
    """
    if not verify_pubkey:
        return None
    answer = _ask(home, {"op": "keys", "kdf_salt": kdf_salt, "verify_pubkey": verify_pubkey})
    if not answer or not answer.get("ok"):
        return None
    try:
        key = bytes.fromhex(str(answer.get("x25519_private", "")))
    except ValueError:
        return None
    return key if len(key) == 32 else None


def status(home: Path, timeout: float = 15.0) -> dict[str, Any] | None:
    """What the agent of ``home`` reports about itself; None when none answers.

    The timeout is long because the agent answers after the command it may be running.
    """
    answer = _ask(home, {"op": "status"}, timeout)
    return answer if answer and answer.get("ok") else None


def stop(home: Path, timeout: float = 15.0) -> dict[str, Any] | None:
    """Ask the agent of ``home`` to exit; its last status, or None when none answered."""
    answer = _ask(home, {"op": "stop"}, timeout)
    return answer if answer and answer.get("ok") else None


def try_run(
    home: Path, argv: Sequence[str], environ: Mapping[str, str]
) -> tuple[int, str, str] | None:
    """Have the agent of ``home`` run ``dnsmesh argv`` (a ``send`` or ``recv``).

    Returns:
        ``(exit_code, stdout, stderr)``, or None when the agent is absent or
        declined before doing anything (then run the command locally).

    Raises:
        AgentConnectionLost: the connection broke after the request was sent.
        AgentError: the agent failed while running the command.
    """
    if agent_mode(environ) != "on":
        return None
    sock = _connect(home, 2.0)
    if sock is None:
        return None
    umask = os.umask(0o077)
    os.umask(umask)
    request = {
        "op": "run",
        "argv": list(argv),
        "environ": dict(environ),
        "cwd": os.getcwd(),
        "umask": umask,
        "home": str(home.resolve()),
    }
    try:
        sock.settimeout(None)  # a command may take as long as it takes
        answer = _exchange(sock, request)
    except (OSError, ValueError) as exc:
        raise AgentConnectionLost(
            f"lost the agent while it ran the command ({exc}); it may or may not have "
            "completed (DMP_AGENT=off runs commands without the agent)"
        ) from None
    if answer.get("ok"):
        return int(answer["code"]), str(answer["stdout"]), str(answer["stderr"])
    if answer.get("fallback"):
        return None
    raise AgentError(f"agent: {answer.get('error', 'failed')}")


# ---------------------------------------------------------------- server side


Runner = Callable[[Sequence[str], Mapping[str, str], Any], int]
"""``(argv, environ, identity_keys) -> exit code``; prints to sys.stdout/sys.stderr."""


def _run_cli(argv: Sequence[str], environ: Mapping[str, str], keys: Any) -> int:
    from dmp.apps.client.cli import main

    return main(list(argv), environ=environ, held_keys=keys)


@contextlib.contextmanager
def _as_client(environ: Mapping[str, str], cwd: str, umask: int) -> Iterator[None]:
    """The client's environment, working directory and umask for the duration."""
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_umask = os.umask(umask & 0o777)
    try:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        os.umask(saved_umask)


class AgentServer:
    """The agent: holds one identity and answers on ``<home>/agent/agent.sock``.

    Single-threaded: one connection at a time, so ``run`` requests execute one
    after another, each with the client's environment in place.

    Args:
        home: the config home it serves.
        x25519_private: the identity (32 bytes).
        kdf_salt: the config's ``kdf_salt`` (hex) it was derived with.
        verify_pubkey: Ed25519 public key hex of the identity.
        idle_timeout_s: exit after this long without a ``keys``/``run`` request.
        clock: monotonic seconds (injected in tests).
        poll_s: longest wait before the idle deadline is checked again.
        runner: executes ``run`` requests (the CLI's ``main`` by default).
        allowed_uid: the peer uid accepted (ours by default).
    """

    def __init__(
        self,
        home: Path,
        x25519_private: bytes,
        kdf_salt: str,
        verify_pubkey: str,
        *,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 60.0,
        runner: Runner = _run_cli,
        allowed_uid: int | None = None,
    ) -> None:
        if len(x25519_private) != 32:
            raise ValueError("x25519_private must be 32 bytes")
        if idle_timeout_s <= 0:
            raise ValueError("idle timeout must be positive")
        self.home = home.resolve()
        self.path = socket_path(self.home)
        self._key = x25519_private
        self.kdf_salt = kdf_salt.lower()
        self.verify_pubkey = verify_pubkey.lower()
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self.poll_s = poll_s
        self.runner = runner
        self.allowed_uid = os.getuid() if allowed_uid is None else allowed_uid
        self.started = time.time()
        self.last_used = clock()
        self.requests = 0
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._stopping = False
        self._keys: Any = None

    # -- setup
    def bind(self) -> None:
        """Create the private directory and listen on the socket.

        Raises:
            AgentError: not Linux, the directory is not private, an agent
                already answers there, or the path is too long for a socket.
        """
        if not hasattr(socket, "SO_PEERCRED"):
            raise AgentError("the agent needs SO_PEERCRED (Linux); not available here")
        folder = self.path.parent
        folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise AgentError(f"{folder} is not a directory owned by you")
        os.chmod(folder, 0o700)
        if _listening(self.path):
            raise AgentError(
                f"an agent is already running for {self.home} (`dnsmesh agent stop` first)"
            )
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # stale: nobody answered on it
        if len(os.fsencode(self.path)) >= 108:
            raise AgentError(f"socket path too long for a unix socket: {self.path}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise AgentError(f"cannot bind {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._sock = sock
        self._inode = os.stat(self.path).st_ino

    @property
    def bound(self) -> bool:
        """Is it listening (in this process)?"""
        return self._sock is not None

    def release(self) -> None:
        """Close this process's copy of the listening socket, leaving the file (after a fork)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._inode = None

    def close(self) -> None:
        """Stop listening and remove the socket (only if it is still ours)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()

    # -- loop
    def idle_left(self) -> float:
        """Seconds before the idle timeout ends the agent (≤ 0: expired)."""
        return self.last_used + self.idle_timeout_s - self.clock()

    def serve(self) -> None:
        """Answer requests until ``stop``, the idle timeout or SIGTERM; then :meth:`close`."""
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        try:
            while not self._stopping:
                left = self.idle_left()
                if left <= 0:
                    break
                self._sock.settimeout(min(left, self.poll_s))
                try:
                    conn, _ = self._sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    self._handle(conn)
        finally:
            self.close()

    def _handle(self, conn: socket.socket) -> None:
        try:
            if _peer_uid(conn) != self.allowed_uid:
                return  # closed without an answer
            conn.settimeout(REQUEST_TIMEOUT_S)
            request = _decode(_recv_all(conn))
        except (OSError, ValueError):
            return
        try:
            answer = self._answer(request)
        except Exception as exc:  # keep serving; the client gets one line
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(OSError):
            conn.settimeout(REQUEST_TIMEOUT_S)
            conn.sendall(json.dumps(answer).encode("utf-8"))

    def _status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": os.getpid(),
            "home": str(self.home),
            "verify_pubkey": self.verify_pubkey,
            "idle_timeout_s": self.idle_timeout_s,
            "idle_left_s": max(0.0, self.idle_left()),
            "started": self.started,
            "requests": self.requests,
        }

    def _matches(self, kdf_salt: Any, verify_pubkey: Any) -> bool:
        return (
            str(kdf_salt or "").lower() == self.kdf_salt
            and str(verify_pubkey or "").lower() == self.verify_pubkey
        )

    def _answer(self, request: Mapping[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if request.get("v") != PROTOCOL:
            return {"ok": False, "fallback": True, "error": "protocol version mismatch"}
        if op == "status":
            return self._status()
        if op == "stop":
            self._stopping = True
            return self._status()
        if op == "keys":
            if not self._matches(request.get("kdf_salt"), request.get("verify_pubkey")):
                return {"ok": False, "error": "this agent holds another identity"}
            self.requests += 1
            self.last_used = self.clock()
            return {"ok": True, "x25519_private": self._key.hex()}
        if op == "run":
            return self._run(request)
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _run(self, request: Mapping[str, Any]) -> dict[str, Any]:
        from dmp.apps.client.config import ConfigError, load_config

        decline = {"ok": False, "fallback": True}
        argv = request.get("argv")
        environ = request.get("environ")
        if not isinstance(argv, list) or not isinstance(environ, dict):
            return {**decline, "error": "malformed run request"}
        if Path(str(request.get("home", ""))) != self.home:
            return {**decline, "error": "another config home"}
        cwd = str(request.get("cwd") or "/")
        if not os.path.isdir(cwd):
            return {**decline, "error": "the client's working directory is gone"}
        try:
            cfg = load_config(self.home)
        except ConfigError as exc:
            return {**decline, "error": str(exc)}
        if not self._matches(cfg.kdf_salt, cfg.verify_pubkey):
            return {**decline, "error": "the config no longer matches this agent's identity"}
        if self._keys is None:
            from dmp.domain.crypto import IdentityKeys

            self._keys = IdentityKeys.from_x25519_private(self._key)
        self.requests += 1
        env = {str(k): str(v) for k, v in environ.items()}
        env[AGENT_ENV] = "off"  # never ask ourselves for keys
        out, err = io.StringIO(), io.StringIO()
        with (
            _as_client(env, cwd, int(request.get("umask", 0o022))),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = self.runner([str(a) for a in argv], env, self._keys)
        self.last_used = self.clock()
        return {"ok": True, "code": int(code), "stdout": out.getvalue(), "stderr": err.getvalue()}


# ---------------------------------------------------------------- process


def _not_dumpable() -> None:
    """``prctl(PR_SET_DUMPABLE, 0)``: no core dumps, no same-uid ptrace (best effort)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)


def _warm_up() -> None:
    """Import what ``send``/``recv`` need, so the first request does not pay for it."""
    for name in (
        "dmp.apps.client.cli",
        "dmp.apps.client.messaging",
        "dmp.apps.client.wiring",
        "dmp.adapters.dns_client",
        "dmp.adapters.client_state",
        "anyio._backends._asyncio",
        "httpx",  # the HTTP writer imports it on its first request
    ):
        with contextlib.suppress(Exception):
            __import__(name)


def _serve_here(server: AgentServer) -> None:
    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    _not_dumpable()
    _warm_up()
    server.serve()


def serve_foreground(server: AgentServer) -> None:
    """Serve in this process until stopped (``agent start --foreground``); binds if needed."""
    if not server.bound:
        server.bind()
    _serve_here(server)


def daemonize(server: AgentServer) -> int:
    """Bind, then fork the agent into the background; returns its pid (in the parent).

    The child starts a new session, points stdin/stdout/stderr at /dev/null,
    serves until it stops and exits without returning. Binds if needed.
    """
    if not server.bound:
        server.bind()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        server.release()  # the child owns the socket now
        return pid
    code = 0
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        _serve_here(server)
    except BaseException:  # the child must never return into the CLI
        code = 1
    finally:
        os._exit(code)
