"""``make demo``: two people exchange end-to-end encrypted messages through a local dmp node.

What it does, from a fresh clone (after ``make`` has built ``.venv``):

1. starts a dmp node (``python -m dmp.apps.node``) as a subprocess: embedded
   sqlite under a temporary directory, DNS and HTTP on 127.0.0.1 with ports
   chosen by the kernel (read back from the node's ``listening`` log lines),
   RFC 2136 UPDATE and self-service registration on, serving ``mesh.test``;
2. creates alice and bob, each with their own config home and passphrase;
3. registers a TSIG key for each (``dnsmesh tsig register``), so every write
   after that is a TSIG-signed DNS UPDATE;
4. publishes both identities and a pool of one-time prekeys;
5. has each fetch and pin the other (``dnsmesh identity fetch … --add``);
6. sends a message each way and prints what each one received;
7. stops the node (SIGTERM to its pid) and exits 0, or 1 if any step failed.

Everything stays on 127.0.0.1. Each step prints the ``dnsmesh`` command it
runs, so the output doubles as a walkthrough (README.md has the same steps
by hand). Run it directly with ``.venv/bin/python examples/demo.py``;
``--keep`` leaves the temporary directory in place for a look around.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ZONE = "mesh.test"
READY_TIMEOUT_S = 30.0
STEP_TIMEOUT_S = 60.0
LISTEN_RE = {
    "dns": re.compile(r"listening dns \S+ 127\.0\.0\.1:(\d+)"),
    "http": re.compile(r"listening http 127\.0\.0\.1:(\d+)"),
}


def venv_bin() -> Path:
    """The directory holding ``dnsmesh`` and this interpreter."""
    return Path(sys.executable).parent


class Node:
    """A dmp node subprocess on loopback, stopped by pid."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "node"
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.dns_port = 0
        self.http_port = 0

    def start(self) -> None:
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("DMP_"):
                del env[key]
        env.update(
            {
                "DMP_LOG_LEVEL": "INFO",
                "DMP_OPERATOR_TOKEN": "demo-operator-token",
                "DMP_REGISTRATION_ENDPOINT_RATE_PER_SEC": "100",
                "DMP_REGISTRATION_ENDPOINT_BURST": "100",
                "DMP_RECEIVER_CLAIM_NOTIFICATIONS": "1",
            }
        )
        argv = [
            sys.executable,
            "-m",
            "dmp.apps.node",
            "--db-path",
            str(self.dir / "dmp.db"),
            "--dns-host",
            "127.0.0.1",
            "--dns-port",
            "0",
            "--http-host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--served-zone",
            ZONE,
            "--node-hostname",
            ZONE,
            "--auth-mode",
            "multi-tenant",
            "--dns-update",
            "--registration",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.proc.returncode}:\n{self.log()}")
            text = self.log()
            found = {k: rx.search(text) for k, rx in LISTEN_RE.items()}
            if all(found.values()) and " ready" in text:
                self.dns_port = int(found["dns"].group(1))  # type: ignore[union-attr]
                self.http_port = int(found["http"].group(1))  # type: ignore[union-attr]
                return
            time.sleep(0.05)
        raise RuntimeError(f"the node was not ready within {READY_TIMEOUT_S:.0f} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


class User:
    """One ``dnsmesh`` user: a config home and a passphrase."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.home = workdir / name / ".dmp"
        self.env = {
            "PATH": f"{venv_bin()}:/usr/bin:/bin",
            "HOME": str(workdir / name),
            "DMP_CONFIG_HOME": str(self.home),
            "DMP_PASSPHRASE": f"{name}: correct horse battery staple",
        }
        for key in ("LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR"):
            if key in os.environ:
                self.env[key] = os.environ[key]

    def run(self, *args: str) -> str:
        shown = " ".join(shlex.quote(a) for a in args)
        print(f"\n[{self.name}] $ dnsmesh {shown}", flush=True)
        proc = subprocess.run(
            [str(venv_bin() / "dnsmesh"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
        for line in (proc.stdout + proc.stderr).rstrip().splitlines():
            print(f"    {line}")
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: `dnsmesh {shown}` exited {proc.returncode}")
        return proc.stdout


def run_demo(workdir: Path) -> None:
    node = Node(workdir)
    print("starting a dmp node on 127.0.0.1 ...", flush=True)
    node.start()
    try:
        print(
            f"node ready: DNS 127.0.0.1:{node.dns_port} (UDP+TCP), "
            f"HTTP http://127.0.0.1:{node.http_port}, zone {ZONE}, pid {node.proc.pid}"  # type: ignore[union-attr]
        )
        alice, bob = User("alice", workdir), User("bob", workdir)
        for user in (alice, bob):
            user.run(
                "init",
                f"{user.name}@{ZONE}",
                "--endpoint",
                f"http://127.0.0.1:{node.http_port}",
                "--dns-resolvers",
                f"127.0.0.1:{node.dns_port}",
            )
            user.run(
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
            user.run("identity", "publish")
            user.run("identity", "refresh-prekeys", "--count", "5")
        alice.run("identity", "fetch", f"bob@{ZONE}", "--add")
        bob.run("identity", "fetch", f"alice@{ZONE}", "--add")

        to_bob = "Hi Bob, this travelled as signed TXT records through a dmp node."
        to_alice = "Hi Alice, and this is the reply. Nobody but you can read it."
        alice.run("send", f"bob@{ZONE}", to_bob)
        got_bob = bob.run("recv")
        bob.run("send", f"alice@{ZONE}", to_alice)
        got_alice = alice.run("recv")

        missing = [
            who
            for who, text, got in (("bob", to_bob, got_bob), ("alice", to_alice, got_alice))
            if text not in got
        ]
        if missing:
            raise RuntimeError(f"message not delivered to: {', '.join(missing)}")
        print("\nbob received:\n    " + "\n    ".join(got_bob.strip().splitlines()))
        print("alice received:\n    " + "\n    ".join(got_alice.strip().splitlines()))
    finally:
        print(f"\nstopping the node (pid {node.proc.pid if node.proc else '-'}) ...", flush=True)
        node.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dmp-demo-"))
    try:
        run_demo(workdir)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        log = workdir / "node" / "node.log"
        if log.exists():
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
            print("last node log lines:\n  " + "\n  ".join(tail), file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"(kept {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\ndemo OK: both messages were delivered end to end.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
