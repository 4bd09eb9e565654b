"""Start, probe, measure and stop node processes: ours and the reference (not a test).

Shared by ``bench/node.py`` and the opt-in interop suite (``tests/interop``).

* ``dmp``: ``<repo venv python> -m dmp.apps.node``.
* ``ref``: ``$DMP_REF_VENV/bin/python -m dmp.server`` (``pip install dnsmesh==0.7.5``
  in a venv outside the repo).

Both are configured by the SAME DMP_* environment, which is the point: an
operator of the reference switches by changing the command only. Every wait
is bounded; only processes started here are signalled, by pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def ref_venv() -> Path | None:
    """The reference venv from ``$DMP_REF_VENV`` (default ``../refvenv`` beside the repo), if it has dnsmesh."""
    venv = Path(os.environ.get("DMP_REF_VENV", Path(__file__).resolve().parents[2] / "refvenv"))
    return venv if (venv / "bin" / "dnsmesh").exists() else None


def our_python() -> str:
    """The interpreter of the repo venv (falls back to this one)."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def in_private_netns() -> bool:
    """True inside a network namespace whose only interface is ``lo``."""
    try:
        return sorted(os.listdir("/sys/class/net")) == ["lo"]
    except OSError:
        return False


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process, seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        parts = fh.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (KiB) and Threads of one process."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


class NodeProc:
    """One node process (``kind`` is ``dmp`` or ``ref``) on fixed loopback ports."""

    def __init__(
        self,
        kind: str,
        name: str,
        workdir: Path,
        *,
        dns_port: int,
        http_port: int,
        env: Mapping[str, str] | None = None,
        fresh: bool = True,
    ) -> None:
        if kind not in ("dmp", "ref"):
            raise ValueError(kind)
        self.kind = kind
        self.name = name
        self.dir = Path(workdir) / name
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dns_port = dns_port
        self.http_port = http_port
        self.db = self.dir / "dmp.db"
        if kind == "ref":
            venv = ref_venv()
            if venv is None:
                raise RuntimeError(
                    "no reference venv: set DMP_REF_VENV (pip install dnsmesh==0.7.5)"
                )
            self.argv = [str(venv / "bin" / "python"), "-m", "dmp.server"]
            path = f"{venv}/bin:/usr/bin:/bin"
        else:
            self.argv = [our_python(), "-m", "dmp.apps.node"]
            path = f"{Path(our_python()).parent}:/usr/bin:/bin"
        self.env = {
            "PATH": path,
            "HOME": str(self.dir),
            "PYTHONDONTWRITEBYTECODE": "1",
            "DMP_DB_PATH": str(self.db),
            "DMP_DNS_HOST": "127.0.0.1",
            "DMP_DNS_PORT": str(dns_port),
            "DMP_HTTP_HOST": "127.0.0.1",
            "DMP_HTTP_PORT": str(http_port),
            "DMP_LOG_LEVEL": "WARNING",
            # the reference publishes a cluster manifest from this path when present
            "DMP_CLUSTER_FILE": str(self.dir / "no-cluster.json"),
        }
        if env:
            self.env.update(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.t_spawn = 0.0
        self.log_path = self.dir / "node.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> float:
        """Spawn; when ``wait``, return seconds until /health is 200 and DNS answers."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir
        )
        log.close()
        return self.wait_ready(timeout) if wait else 0.0

    def wait_ready(self, timeout: float = 30.0) -> float:
        import dns.message
        import dns.query
        import dns.rdatatype

        assert self.proc is not None
        deadline = self.t_spawn + timeout
        http_ok = False
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} node {self.name} exited rc={self.proc.returncode}: "
                    f"{self.log_tail()}"
                )
            try:
                if not http_ok:
                    with urllib.request.urlopen(self.url + "/health", timeout=0.5) as r:
                        http_ok = r.status == 200
                if http_ok:
                    q = dns.message.make_query("probe.mesh.test", dns.rdatatype.TXT)
                    dns.query.udp(q, "127.0.0.1", port=self.dns_port, timeout=0.5)
                    return time.perf_counter() - self.t_spawn
            except (OSError, urllib.error.URLError, dns.exception.DNSException):
                pass
            time.sleep(0.005)
        raise TimeoutError(f"{self.kind} node {self.name} not ready in {timeout}s")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return proc_status(self.pid).get("VmRSS", 0)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                rc = self.proc.wait(5)
        self.proc = None
        return rc


def http_json(
    url: str,
    method: str = "GET",
    body: object | None = None,
    token: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One HTTP request; returns (status, body)."""
    import json

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
