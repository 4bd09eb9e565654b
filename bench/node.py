#!/usr/bin/env python3
"""dmp-node vs the reference node, side by side in one run (a benchmark, not a test).

Both nodes run at once on 127.0.0.1 with the SAME DMP_* environment (ours:
``python -m dmp.apps.node``; reference: ``$DMP_REF_VENV/bin/python -m
dmp.server``), on the 10k-record corpus of ``../shared/perf/bench-ref/
gen_corpus.py``. Loads alternate between the two nodes within each repetition
and every ratio is computed per repetition, then the median is reported.

Measured (issue 4):

* DNS read q/s at saturation (``dnsperf -q 100``, EDNS 4096) on the hit,
  mix50, miss and hot query files, with server CPU per query (/proc);
* latency p50/p90/p99 at a fixed 200 q/s (``dnsperf -Q 200``);
* TSIG UPDATE writes/s: serial (presigned, and through dnspython, one in
  flight, like the CLI's writer) and 20 in flight (``dnsperf -u -y -e``); the
  key is minted through each node's own registration flow by the reference
  CLI (``dnsmesh tsig register``). The write phase runs our node twice, with
  the default ``DMP_DB_SYNCHRONOUS=NORMAL`` (WAL without fsync per commit:
  survives a process crash, and the WAL is fsynced at least every second;
  the reference's own level) and with ``FULL`` (fsync per commit, survives
  power loss), each against the same reference run;
* HTTP writes/s (``POST /v1/records/{name}``, operator token, one
  connection per request, 1 and 4 clients); ``--only http`` runs the HTTP
  rows alone, with user-token and keep-alive rows and an RSS-growth run;
* startup (spawn until /health is 200 and DNS answers; empty and 10k DB) and
  idle RSS.

Every write phase writes K new names; the names are read back afterwards and
the count that landed is reported. Every load has a time and count limit.
Only processes started here are signalled, by pid.

Run inside a loopback-only namespace that nothing else uses (ports 5353/8053
for the reference, 5354/8054 for ours, 5356/8056 for ours with FULL, 5355
for Knot; ``DMP_NETNS=dmpbench sh bench/netns.sh``)::

    ip netns exec dmpbench .venv/bin/python bench/node.py [--reps 3] [--secs 8] [--k 1000]

``--quick`` is one repetition of 4 s. Results: ``--out`` (JSON) and a table on stdout.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nodelib import REPO, NodeProc, in_private_netns, ref_venv

ZONE = "mesh.test"
TOKEN = "bench-operator-token"
PERF_DIR = Path(os.environ.get("DMP_PERF_DIR", REPO.parent / "shared" / "perf" / "bench-ref"))
PORTS = {"ref": (5353, 8053), "dmp": (5354, 8054), "dmp-full": (5356, 8056)}
KINDS = ("dmp", "ref")
#: The write phase also runs our node with DMP_DB_SYNCHRONOUS=FULL (fsync per
#: commit) beside the default NORMAL (the reference's own level: WAL, no fsync
#: per commit; ours also fsyncs the WAL at least every second).
WRITE_KINDS = ("dmp", "dmp-full", "ref")
FULL_ENV = {"DMP_DB_SYNCHRONOUS": "FULL"}

READ_ENV = {
    "DMP_OPERATOR_TOKEN": TOKEN,
    "DMP_DNS_RATE": "0",
    "DMP_HTTP_RATE": "0",
    "DMP_DOMAIN": ZONE,
    "DMP_DNS_APEX_NS": f"ns1.{ZONE}",
    "DMP_DNS_APEX_SOA_RNAME": f"hostmaster.{ZONE}",
}
WRITE_ENV = {
    **READ_ENV,
    "DMP_SERVED_ZONE": ZONE,
    "DMP_NODE_HOSTNAME": ZONE,
    "DMP_DNS_UPDATE_ENABLED": "1",
    "DMP_AUTH_MODE": "multi-tenant",
    "DMP_REGISTRATION_ENABLED": "1",
    "DMP_REGISTRATION_ENDPOINT_RATE_PER_SEC": "100",
    "DMP_REGISTRATION_ENDPOINT_BURST": "100",
}
READ_FILES = ("hit", "mix50", "miss", "hot")


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def med(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


# ---------------------------------------------------------------- corpus


def make_corpus(work: Path, n: int, name: str) -> Path:
    out = work / name
    if (out / "records.jsonl").exists():
        return out
    script = PERF_DIR / "gen_corpus.py"
    if not script.exists():
        sys.exit(f"corpus generator not found: {script} (set DMP_PERF_DIR)")
    subprocess.run([sys.executable, str(script), str(n), str(out)], check=True, capture_output=True)
    return out


def load_records(corpus: Path) -> list[dict[str, Any]]:
    with open(corpus / "records.jsonl") as fh:
        return [json.loads(line) for line in fh]


# ---------------------------------------------------------------- HTTP writes


def http_publish(
    url: str,
    records: Sequence[dict[str, Any]],
    workers: int,
    ttl: int,
    *,
    token: str = TOKEN,
    keepalive: bool = False,
) -> dict[str, Any]:
    """POST every record, one TCP connection per request (like the reference CLI).

    ``keepalive``: each worker keeps one connection open for all its requests.
    """
    host, port = url.removeprefix("http://").split(":")
    lock = threading.Lock()
    idx = [0]
    lats: list[float] = []
    codes: dict[str, int] = {}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        while True:
            with lock:
                i = idx[0]
                idx[0] += 1
            if i >= len(records):
                if conn is not None:
                    conn.close()
                return
            r = records[i]
            body = json.dumps({"value": r["value"], "ttl": ttl})
            t0 = time.perf_counter()
            try:
                c = conn or http.client.HTTPConnection(host, int(port), timeout=15)
                c.request("POST", f"/v1/records/{r['name']}", body=body, headers=headers)
                resp = c.getresponse()
                resp.read()
                status = str(resp.status)
                if keepalive and not resp.will_close:
                    conn = c
                else:
                    c.close()
                    conn = None
            except OSError as exc:
                status = type(exc).__name__
                conn = None
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                lats.append(dt)
                codes[status] = codes.get(status, 0) + 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    lats.sort()
    return {
        "n": len(records),
        "writes_per_s": round(len(records) / wall, 1),
        "p50_ms": round(pct(lats, 50), 3),
        "p99_ms": round(pct(lats, 99), 3),
        "codes": codes,
    }


# ---------------------------------------------------------------- dnsperf

_DNSPERF = {
    "sent": re.compile(r"(?:Queries|Updates) sent:\s+(\d+)"),
    "completed": re.compile(r"(?:Queries|Updates) completed:\s+(\d+)"),
    "lost": re.compile(r"(?:Queries|Updates) lost:\s+(\d+)"),
    "qps": re.compile(r"(?:Queries|Updates) per second:\s+([\d.]+)"),
}
_RCODES = re.compile(r"Response codes:\s+(.*)")
_VERBOSE = re.compile(r"^> (\S+) .* ([\d.]+)$")


def pct(sorted_vals: Sequence[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, round(p / 100.0 * (len(sorted_vals) - 1))))
    return sorted_vals[k]


def dnsperf(
    port: int,
    datafile: Path,
    *,
    pid: int,
    seconds: float = 0,
    outstanding: int = 100,
    max_qps: int | None = None,
    update: bool = False,
    tsig: str | None = None,
    maxruns: int | None = None,
    timeout_s: float = 2.0,
) -> dict[str, Any]:
    """One dnsperf run against 127.0.0.1:port; server CPU from /proc/<pid>."""
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile), "-c", "1",
           "-q", str(outstanding), "-t", str(timeout_s), "-e", "-v"]  # fmt: skip
    if seconds:
        cmd += ["-l", str(seconds)]
    if maxruns:
        cmd += ["-n", str(maxruns)]
    if max_qps:
        cmd += ["-Q", str(max_qps)]
    if update:
        cmd += ["-u"]
    if tsig:
        cmd += ["-y", tsig]
    from nodelib import proc_cpu_seconds

    cpu0 = proc_cpu_seconds(pid)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=(seconds or 120) + 60)
    cpu = proc_cpu_seconds(pid) - cpu0
    res: dict[str, Any] = {}
    for key, rx in _DNSPERF.items():
        m = rx.search(p.stdout)
        res[key] = float(m.group(1)) if m else None
    m = _RCODES.search(p.stdout)
    res["rcodes"] = m.group(1).strip() if m else None
    lats = sorted(
        float(mm.group(2)) * 1000.0
        for line in p.stdout.splitlines()
        if (mm := _VERBOSE.match(line)) and mm.group(1) != "T"
    )
    for q in (50, 90, 99):
        res[f"p{q}_ms"] = round(pct(lats, q), 3)
    if res.get("completed"):
        res["cpu_us_per_q"] = round(cpu / res["completed"] * 1e6, 1)
    if p.returncode != 0:
        res["stderr"] = p.stderr[-500:]
    return res


def split255(value: str) -> str:
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


def write_update_file(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w") as fh:
        for r in records:
            rel = r["name"][: -len("." + ZONE)]
            fh.write(f"{ZONE}\nadd {rel} 300 TXT {split255(r['value'])}\nsend\n")


# ---------------------------------------------------------------- TSIG


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    venv = ref_venv()
    assert venv is not None
    env = {"PATH": f"{venv}/bin:/usr/bin:/bin", "HOME": str(home),
           "DMP_PASSPHRASE": "bench-writer-pass", "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    return subprocess.run([str(venv / "bin" / "dnsmesh"), *args], env=env, capture_output=True,
                          text=True, timeout=90)  # fmt: skip


def register_tsig(node: NodeProc, attempts: int = 3) -> tuple[str, str]:
    """Mint a TSIG key through the node's registration flow with the reference CLI.

    A freshly minted key is probed with one UPDATE; the reference node now and
    then answers NOTAUTH to its own new key, so up to ``attempts`` keys are tried.
    """
    import dns.query
    import dns.rcode
    import dns.tsigkeyring
    import dns.update

    for attempt in range(attempts):
        home = node.dir / f"clihome{attempt}"
        home.mkdir(exist_ok=True)
        init = cli(home, "init", "benchw", "--domain", ZONE, "--endpoint", node.url,
                   "--dns-resolvers", f"127.0.0.1:{node.dns_port}", "--no-probe-local-dns",
                   "--force")  # fmt: skip
        reg = cli(home, "tsig", "register", "--node", f"127.0.0.1:{node.http_port}", "--scheme",
                  "http", "--dns-server", "127.0.0.1", "--dns-port", str(node.dns_port))  # fmt: skip
        if reg.returncode != 0:
            raise RuntimeError(
                f"tsig register on {node.kind}: {init.stderr[-300:]} {reg.stderr[-500:]}"
            )
        text = (home / ".dmp" / "config.yaml").read_text()
        cfg = dict(re.findall(r"^(\w+): ?(.*)$", text, flags=re.MULTILINE))
        keyname, secret_hex = cfg["tsig_key_name"], cfg["tsig_secret_hex"]
        ring = dns.tsigkeyring.from_text(
            {keyname: base64.b64encode(bytes.fromhex(secret_hex)).decode()}
        )
        upd = dns.update.UpdateMessage(
            ZONE, keyring=ring, keyname=keyname, keyalgorithm="hmac-sha256"
        )
        upd.add(f"chunk-9999-0123456789ab.{ZONE}.", 60, "TXT", '"probe"')
        try:
            resp = dns.query.udp(upd, "127.0.0.1", port=node.dns_port, timeout=5)
            if resp.rcode() == dns.rcode.NOERROR:
                return keyname, secret_hex
        except Exception as exc:
            log(f"  {node.kind}: TSIG probe failed ({type(exc).__name__}), minting another key")
    raise RuntimeError(f"no working TSIG key on {node.kind} after {attempts} attempts")


def serial_updates(
    port: int, keyname: str, secret_hex: str, records: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """One UPDATE in flight at a time (dnspython over UDP), like the CLI's writer."""
    import dns.query
    import dns.rcode
    import dns.tsigkeyring
    import dns.update

    ring = dns.tsigkeyring.from_text(
        {keyname: base64.b64encode(bytes.fromhex(secret_hex)).decode()}
    )
    lats: list[float] = []
    codes: dict[str, int] = {}
    t0 = time.perf_counter()
    for r in records:
        upd = dns.update.UpdateMessage(
            ZONE, keyring=ring, keyname=keyname, keyalgorithm="hmac-sha256"
        )
        upd.add(r["name"] + ".", 300, "TXT", split255(r["value"]))
        s = time.perf_counter()
        try:
            resp = dns.query.udp(upd, "127.0.0.1", port=port, timeout=5)
            code = dns.rcode.to_text(resp.rcode())
        except Exception as exc:
            code = type(exc).__name__
        lats.append((time.perf_counter() - s) * 1000)
        codes[code] = codes.get(code, 0) + 1
    wall = time.perf_counter() - t0
    lats.sort()
    return {"n": len(records), "writes_per_s": round(len(records) / wall, 1),
            "p50_ms": round(pct(lats, 50), 3), "p99_ms": round(pct(lats, 99), 3), "codes": codes}  # fmt: skip


def serial_presigned(
    port: int, keyname: str, secret_hex: str, records: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """One UPDATE in flight at a time, signed beforehand: measures the server, not dnspython.

    dnspython spends ~0.3 ms building and signing one UPDATE and ~0.1 ms
    verifying the signed reply, which caps a dnspython client near 2,500
    serial writes/s whatever the server does. Here every message is built and
    signed before the clock starts (well inside the TSIG fudge), replies are
    matched by ID and their rcode is read from the header.
    """
    import socket

    import dns.rcode
    import dns.tsigkeyring
    import dns.update

    ring = dns.tsigkeyring.from_text(
        {keyname: base64.b64encode(bytes.fromhex(secret_hex)).decode()}
    )
    wires = []
    for i, r in enumerate(records):
        upd = dns.update.UpdateMessage(ZONE, keyring=ring, keyname=keyname,
                                       keyalgorithm="hmac-sha256", id=i & 0xFFFF)  # fmt: skip
        upd.add(r["name"] + ".", 300, "TXT", split255(r["value"]))
        wires.append(upd.to_wire())
    lats: list[float] = []
    codes: dict[str, int] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(5)
        t0 = time.perf_counter()
        for wire in wires:
            s = time.perf_counter()
            sock.send(wire)
            try:
                while True:
                    reply = sock.recv(65535)
                    if reply[:2] == wire[:2]:
                        break
                code = dns.rcode.to_text(dns.rcode.Rcode(reply[3] & 0x0F))
            except TimeoutError:
                code = "timeout"
            lats.append((time.perf_counter() - s) * 1000)
            codes[code] = codes.get(code, 0) + 1
        wall = time.perf_counter() - t0
    lats.sort()
    return {"n": len(records), "writes_per_s": round(len(records) / wall, 1),
            "p50_ms": round(pct(lats, 50), 3), "p99_ms": round(pct(lats, 99), 3), "codes": codes}  # fmt: skip


def count_landed(port: int, records: Sequence[dict[str, Any]]) -> int:
    """How many of ``records`` are now answered (value present) over DNS."""
    import dns.message
    import dns.query

    landed = 0
    for r in records:
        q = dns.message.make_query(r["name"], "TXT", use_edns=0, payload=4096)
        try:
            resp = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
        except Exception:
            try:
                resp = dns.query.tcp(q, "127.0.0.1", port=port, timeout=3)
            except Exception:
                continue
        values = {b"".join(rd.strings).decode() for rrset in resp.answer for rd in rrset}
        landed += r["value"] in values
    return landed


# ---------------------------------------------------------------- Knot (optional anchor)


class Knot:
    """Knot DNS serving the corpus zone file on 127.0.0.1 (``apt-get install knot``)."""

    def __init__(self, work: Path, zonefile: Path, port: int = 5355) -> None:
        self.port = port
        self.dir = work / "knot"
        (self.dir / "db").mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "knot.conf"
        self.conf.write_text(
            f"server:\n    listen: 127.0.0.1@{port}\n    rundir: {self.dir}\n"
            f"log:\n  - target: stderr\n    any: warning\n"
            f"database:\n    storage: {self.dir}/db\n"
            f"template:\n  - id: default\n    storage: {self.dir}\n    zonefile-sync: -1\n"
            f"    journal-content: none\n"
            f"zone:\n  - domain: {ZONE}\n    file: {zonefile}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> float:
        import dns.message
        import dns.query

        log_fh = open(self.dir / "knot.log", "ab")  # noqa: SIM115 - lives as long as knotd
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(["knotd", "-c", str(self.conf)], stdout=log_fh,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        log_fh.close()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"knotd exited rc={self.proc.returncode}")
            try:
                q = dns.message.make_query(ZONE, "SOA")
                if dns.query.udp(q, "127.0.0.1", port=self.port, timeout=0.3).answer:
                    return time.perf_counter() - t0
            except Exception:
                pass
            time.sleep(0.02)
        raise TimeoutError("knotd not ready")

    def rss_kib(self) -> int:
        from nodelib import proc_status

        return proc_status(self.pid).get("VmRSS", 0)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rc = self.proc.returncode
        self.proc = None
        return rc


# ---------------------------------------------------------------- phases


#: Extra DMP_* settings for our node only (``--dmp-env``), for experiments.
DMP_EXTRA: dict[str, str] = {}


def start_pair(
    work: Path, env: dict[str, str], tag: str, kinds: Sequence[str] = KINDS
) -> dict[str, NodeProc]:
    """Node processes by kind (``dmp``, ``ref``, ``dmp-full``), not yet started."""
    nodes = {}
    for kind in kinds:
        dns_port, http_port = PORTS[kind]
        extra = {**DMP_EXTRA, **(FULL_ENV if kind == "dmp-full" else {})}
        impl = "ref" if kind == "ref" else "dmp"
        nodes[kind] = NodeProc(impl, f"{tag}-{kind}", work, dns_port=dns_port, http_port=http_port,
                               env={**env, **(extra if impl == "dmp" else {})})  # fmt: skip
    return nodes


def startup_phase(work: Path, reuse: str | None, reps: int) -> dict[str, Any]:
    """Spawn → ready, then idle RSS after 2 s, ``reps`` times per implementation.

    ``reuse``: the tag of an earlier phase whose node directories (and databases)
    to start on; None starts on an empty database each time.
    """
    out: dict[str, Any] = {}
    for kind in KINDS:
        times, rss = [], []
        for i in range(reps):
            dns_port, http_port = PORTS[kind]
            name = f"{reuse}-{kind}" if reuse else f"startup-{kind}"
            node = NodeProc(kind, name, work, dns_port=dns_port, http_port=http_port,
                            env=READ_ENV, fresh=reuse is None)  # fmt: skip
            try:
                times.append(node.start(timeout=30))
                time.sleep(2)
                rss.append(node.rss_kib())
            finally:
                rc = node.stop()
                if kind == "dmp" and rc != 0:
                    log(f"  dmp exited {rc} on SIGTERM: {node.log_tail(500)}")
            log(f"  startup {kind} #{i}: {times[-1]:.3f} s, idle RSS {rss[-1] / 1024:.1f} MiB")
        out[kind] = {"ready_s": times, "ready_s_median": med(times), "idle_rss_mib": [r / 1024 for r in rss],
                     "idle_rss_mib_median": med([r / 1024 for r in rss])}  # fmt: skip
    return out


def read_phase(work: Path, corpus: Path, reps: int, secs: float, knot: bool) -> dict[str, Any]:
    nodes = start_pair(work, READ_ENV, "read")
    res: dict[str, Any] = {"runs": [], "populate": {}, "startup_empty_s": {}, "idle_rss_mib": {}}
    knotd = Knot(work, corpus / "zone.db") if knot else None
    try:
        if knotd is not None:
            res["knot_start_s"] = knotd.start()
            res["knot_rss_mib"] = round(knotd.rss_kib() / 1024, 1)
        for kind, node in nodes.items():
            res["startup_empty_s"][kind] = node.start(timeout=30)
        records = load_records(corpus)
        for kind, node in nodes.items():
            log(f"  populating {kind} with {len(records)} records over HTTP (4 clients)")
            res["populate"][kind] = http_publish(node.url, records, 4, 86400)
        time.sleep(2)
        for kind, node in nodes.items():
            res["idle_rss_mib"][kind] = round(node.rss_kib() / 1024, 1)
        # The first pass over the names runs the cold path (our answer cache is
        # empty); it is reported as its own row before the measured runs.
        for fname in ("hit", "miss"):
            for kind in KINDS:
                node = nodes[kind]
                r = dnsperf(node.dns_port, corpus / f"q_{fname}.txt", pid=node.pid, maxruns=1,
                            outstanding=100)  # fmt: skip
                r.update(kind=kind, file=fname, load="cold", rep=0)
                res["runs"].append(r)
                log(f"  read cold {fname:<5} {kind}: {r['qps']} q/s, p99 {r['p99_ms']} ms, "
                    f"{r.get('cpu_us_per_q')} µs CPU/q")  # fmt: skip
        plan = [(f, "sat", None) for f in READ_FILES] + [
            ("hit", "Q200", 200),
            ("miss", "Q200", 200),
            ("hot", "Q200", 200),
        ]
        for rep in range(reps):
            for fname, load, qps in plan:
                for kind in KINDS:
                    node = nodes[kind]
                    r = dnsperf(node.dns_port, corpus / f"q_{fname}.txt", pid=node.pid, seconds=secs,
                                outstanding=100, max_qps=qps)  # fmt: skip
                    r.update(kind=kind, file=fname, load=load, rep=rep)
                    res["runs"].append(r)
                    if kind == "ref" and knotd is not None and load == "sat":
                        k = dnsperf(knotd.port, corpus / f"q_{fname}.txt", pid=knotd.pid,
                                    seconds=secs, outstanding=100)  # fmt: skip
                        k.update(kind="knot", file=fname, load=load, rep=rep)
                        res["runs"].append(k)
                        log(f"  read {load:>4} {fname:<5} knot: {k['qps']} q/s, lost {k['lost']}")
                    log(f"  read {load:>4} {fname:<5} {kind}: {r['qps']} q/s, lost {r['lost']}, "
                        f"p50 {r['p50_ms']} p99 {r['p99_ms']} ms, {r.get('cpu_us_per_q')} µs CPU/q")  # fmt: skip
        for kind, node in nodes.items():
            res.setdefault("rss_after_mib", {})[kind] = round(node.rss_kib() / 1024, 1)
    finally:
        for kind, node in nodes.items():
            res.setdefault("exit_codes", {})[kind] = node.stop()
        if knotd is not None:
            knotd.stop()
    return res


def write_phase(
    work: Path, corpus_w: Path, reps: int, k: int, k_inflight: int | None = None
) -> dict[str, Any]:
    """Writes on three nodes: ours with NORMAL (default) and FULL sync, and the reference.

    ``k`` new names per run; ``k_inflight`` (default ``k``) for the 20-in-flight
    dnsperf run, so that a fast node's run lasts long enough to measure.
    """
    nodes = start_pair(work, WRITE_ENV, "write", WRITE_KINDS)
    records = [
        r for r in load_records(corpus_w) if not r["name"].startswith("id-")
    ]  # id-* is out of scope
    res: dict[str, Any] = {"runs": []}
    tmp = Path(tempfile.mkdtemp(prefix="dmpbench-upd-", dir=work))
    try:
        keys = {}
        for kind, node in nodes.items():
            node.start(timeout=30)
            keys[kind] = register_tsig(node)
            log(f"  {kind}: TSIG key {keys[kind][0]}")
        plan: list[tuple[str, int]] = [
            ("http", 1),
            ("http", 4),
            ("tsig-serial", 1),
            ("tsig-dnspython", 1),
            ("tsig-dnsperf", 20),
        ]
        offset = 0
        for rep in range(reps):
            for what, par in plan:
                for kind in WRITE_KINDS:
                    node = nodes[kind]
                    n = (k_inflight or k) if what == "tsig-dnsperf" else k
                    batch = records[offset : offset + n]
                    offset += n
                    if len(batch) < n:
                        raise RuntimeError(
                            "write corpus too small for --k/--reps; regenerate larger"
                        )
                    cpu0 = node.cpu()
                    if what == "http":
                        r = http_publish(node.url, batch, par, 300)
                    elif what == "tsig-serial":
                        r = serial_presigned(node.dns_port, *keys[kind], batch)
                    elif what == "tsig-dnspython":
                        r = serial_updates(node.dns_port, *keys[kind], batch)
                    else:
                        upd = tmp / f"upd-{kind}-{rep}.txt"
                        write_update_file(upd, batch)
                        keyname, secret_hex = keys[kind]
                        tsig = f"hmac-sha256:{keyname}:{base64.b64encode(bytes.fromhex(secret_hex)).decode()}"
                        r = dnsperf(node.dns_port, upd, pid=node.pid, maxruns=1, outstanding=par,
                                    update=True, tsig=tsig, timeout_s=5)  # fmt: skip
                        r["writes_per_s"] = r.get("qps")
                    cpu = node.cpu() - cpu0
                    r.update(kind=kind, what=what, par=par, rep=rep,
                             cpu_ms_per_write=round(cpu / len(batch) * 1e3, 3),
                             landed=count_landed(node.dns_port, batch))  # fmt: skip
                    res["runs"].append(r)
                    log(f"  write {what:<12} x{par:<2} {kind}: {r['writes_per_s']} w/s, "
                        f"p50 {r.get('p50_ms')} p99 {r.get('p99_ms')} ms, landed {r['landed']}/{len(batch)}, "
                        f"{r['cpu_ms_per_write']} ms CPU/w")  # fmt: skip
    finally:
        for kind, node in nodes.items():
            res.setdefault("exit_codes", {})[kind] = node.stop()
    return res


# ---------------------------------------------------------------- HTTP phase

HTTP_SUBJECT = f"bench@{ZONE}"


def issue_user_token(node: NodeProc) -> str:
    """A user bearer token (limits far above the load) from the node's own admin command."""
    if node.kind == "ref":
        venv = ref_venv()
        assert venv is not None
        argv = [str(venv / "bin" / "dnsmesh-node-admin")]
    else:
        argv = [node.argv[0], "-m", "dmp.apps.node", "admin"]
    argv += ["token", "issue", HTTP_SUBJECT, "--rate", "1000000", "--burst", "1000000", "--json"]
    p = subprocess.run(argv, env=node.env, cwd=node.dir, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    if p.returncode != 0:
        raise RuntimeError(f"token issue on {node.kind}: {p.stderr[-500:]}")
    return str(json.loads(p.stdout)["token"])


def http_phase(work: Path, corpus_w: Path, reps: int, k: int, sustained: int) -> dict[str, Any]:
    """HTTP writes only: operator and user token, new connection per request or keep-alive.

    Then ``sustained`` more one-connection-per-request writes (4 clients) with
    RSS before, right after and 2 s after (the memory-growth check).
    """
    nodes = start_pair(work, WRITE_ENV, "http")
    # slot-*/chunk-* (shared pool): writable by the operator and by any user token
    records = [r for r in load_records(corpus_w) if r["name"].startswith(("slot-", "chunk-"))]
    res: dict[str, Any] = {"runs": [], "sustained": {}}
    try:
        tokens = {}
        for kind, node in nodes.items():
            node.start(timeout=30)
            tokens[kind] = issue_user_token(node)
        plan = [("operator", False, 1), ("operator", False, 4), ("user", False, 1),
                ("user", False, 4), ("operator", True, 1), ("operator", True, 4)]  # fmt: skip
        offset = 0
        for rep in range(reps):
            for who, keep, par in plan:
                for kind in KINDS:
                    node = nodes[kind]
                    batch = records[offset : offset + k]
                    offset += k
                    if len(batch) < k:
                        raise RuntimeError("write corpus too small for --k/--reps")
                    token = TOKEN if who == "operator" else tokens[kind]
                    cpu0 = node.cpu()
                    r = http_publish(node.url, batch, par, 300, token=token, keepalive=keep)
                    cpu = node.cpu() - cpu0
                    what = f"http-{who}" + ("-ka" if keep else "")
                    r.update(kind=kind, what=what, par=par, rep=rep,
                             cpu_ms_per_write=round(cpu / len(batch) * 1e3, 3),
                             landed=count_landed(node.dns_port, batch))  # fmt: skip
                    res["runs"].append(r)
                    log(f"  {what:<16} x{par} {kind}: {r['writes_per_s']} w/s, p50 {r['p50_ms']} "
                        f"p99 {r['p99_ms']} ms, {r['cpu_ms_per_write']} ms CPU/w, "
                        f"landed {r['landed']}/{len(batch)} {r['codes']}")  # fmt: skip
        for kind in KINDS:
            node = nodes[kind]
            batch = records[offset : offset + sustained]
            offset += sustained
            before = node.rss_kib()
            r = http_publish(node.url, batch, 4, 300)
            after = node.rss_kib()
            time.sleep(2)
            r.update(rss_before_mib=round(before / 1024, 1), rss_after_mib=round(after / 1024, 1),
                     rss_idle_mib=round(node.rss_kib() / 1024, 1))  # fmt: skip
            res["sustained"][kind] = r
            log(f"  sustained {len(batch)} x4 {kind}: {r['writes_per_s']} w/s, RSS "
                f"{r['rss_before_mib']} -> {r['rss_after_mib']} MiB ({r['rss_idle_mib']} idle)")  # fmt: skip
    finally:
        for kind, node in nodes.items():
            res.setdefault("exit_codes", {})[kind] = node.stop()
    return res


# ---------------------------------------------------------------- report


def ratios(
    runs: list[dict[str, Any]],
    key: Callable[[dict[str, Any]], tuple[Any, ...]],
    metric: str,
    num: str = "dmp",
) -> dict[Any, dict[str, Any]]:
    """Per (group, rep): ``num``/ref of ``metric``; medians of both and of the ratio.

    ``num`` is ``dmp`` (the default NORMAL node) or ``dmp-full`` (write phase);
    the result's ``dmp`` entry is that node's median.
    """
    groups: dict[Any, dict[int, dict[str, float]]] = {}
    for r in runs:
        groups.setdefault(key(r), {}).setdefault(r["rep"], {})[r["kind"]] = r.get(metric)
    out = {}
    for g, reps in groups.items():
        per_rep = [v[num] / v["ref"] for v in reps.values() if v.get(num) and v.get("ref")]
        out[g] = {
            "dmp": med([v.get(num) for v in reps.values()]),
            "ref": med([v.get("ref") for v in reps.values()]),
            "ratio_median": med(per_rep),
            "ratio_per_rep": [round(x, 2) for x in per_rep],
        }
    return out


def knot_ratios(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per query file at saturation: median Knot q/s and median per-rep dmp/knot."""
    out: dict[str, dict[str, float]] = {}
    by: dict[tuple[str, int], dict[str, float]] = {}
    for r in runs:
        if r["load"] == "sat" and r.get("qps"):
            by.setdefault((r["file"], r["rep"]), {})[r["kind"]] = r["qps"]
    for fname in READ_FILES:
        reps = [v for (f, _), v in by.items() if f == fname and "knot" in v and "dmp" in v]
        if reps:
            out[fname] = {
                "knot": med([v["knot"] for v in reps]) or 0.0,
                "ratio": med([v["dmp"] / v["knot"] for v in reps]) or 0.0,
            }
    return out


def report(res: dict[str, Any]) -> str:
    lines = ["", "dmp-node vs reference dnsmesh 0.7.5, one run (medians; ratio = dmp/ref per rep)"]
    rd = res.get("read")
    if rd:
        lines.append("\nDNS reads (dnsperf, EDNS 4096)")
        lines.append(f"{'load':<6}{'file':<7}{'dmp q/s':>11}{'ref q/s':>10}{'ratio':>9}"
                     f"{'dmp µs/q':>10}{'ref µs/q':>10}{'dmp p50/p99 ms':>17}{'ref p50/p99 ms':>17}")  # fmt: skip
        q = ratios(rd["runs"], lambda r: (r["load"], r["file"]), "qps")
        c = ratios(rd["runs"], lambda r: (r["load"], r["file"]), "cpu_us_per_q")
        p50 = ratios(rd["runs"], lambda r: (r["load"], r["file"]), "p50_ms")
        p99 = ratios(rd["runs"], lambda r: (r["load"], r["file"]), "p99_ms")
        for g in q:
            lines.append(
                f"{g[0]:<6}{g[1]:<7}{q[g]['dmp'] or 0:>11,.0f}{q[g]['ref'] or 0:>10,.0f}"
                f"{q[g]['ratio_median'] or 0:>8.1f}×{c[g]['dmp'] or 0:>10.1f}{c[g]['ref'] or 0:>10.1f}"
                f"{p50[g]['dmp']:>8.3f}/{p99[g]['dmp']:<8.3f}{p50[g]['ref']:>8.3f}/{p99[g]['ref']:<8.3f}"
            )
        knot_q = knot_ratios(rd["runs"])
        if knot_q:
            lines.append("Knot DNS 3 on the same corpus, same run (sat): " + ", ".join(
                f"{f} {v['knot']:,.0f} q/s (dmp/knot {v['ratio']:.2f})" for f, v in knot_q.items()))  # fmt: skip
        lines.append(f"populate 10k over HTTP (4 clients): dmp {rd['populate']['dmp']['writes_per_s']} w/s, "
                     f"ref {rd['populate']['ref']['writes_per_s']} w/s")  # fmt: skip
        lines.append(f"RSS after populate (idle): dmp {rd['idle_rss_mib']['dmp']} MiB, ref {rd['idle_rss_mib']['ref']} MiB; "
                     f"after the read runs: dmp {rd['rss_after_mib']['dmp']} MiB, ref {rd['rss_after_mib']['ref']} MiB")  # fmt: skip
    wr = res.get("write")
    if wr:
        lines.append("\nWrites (K new names per run; dmp = default synchronous=NORMAL, the "
                     "reference's own level; dmp-F = DMP_DB_SYNCHRONOUS=FULL, fsync per commit)")  # fmt: skip
        lines.append(
            f"{'path':<15}{'in flight':>9}{'dmp w/s':>9}{'dmp-F w/s':>10}{'ref w/s':>9}"
            f"{'ratio':>7}{'ratio-F':>8}{'ms CPU/w dmp/dmp-F/ref':>24}{'landed dmp/F/ref':>18}"
        )
        kw = {"key": lambda r: (r["what"], r["par"])}
        w = ratios(wr["runs"], metric="writes_per_s", **kw)
        wn = ratios(wr["runs"], metric="writes_per_s", num="dmp-full", **kw)
        c = ratios(wr["runs"], metric="cpu_ms_per_write", **kw)
        cn = ratios(wr["runs"], metric="cpu_ms_per_write", num="dmp-full", **kw)
        landed = ratios(wr["runs"], metric="landed", **kw)
        landedn = ratios(wr["runs"], metric="landed", num="dmp-full", **kw)
        for g in w:
            cpu = f"{c[g]['dmp'] or 0:.3f}/{cn[g]['dmp'] or 0:.3f}/{c[g]['ref'] or 0:.3f}"
            land = f"{landed[g]['dmp'] or 0:.0f}/{landedn[g]['dmp'] or 0:.0f}/{landed[g]['ref'] or 0:.0f}"
            lines.append(
                f"{g[0]:<15}{g[1]:>9}{w[g]['dmp'] or 0:>9,.0f}{wn[g]['dmp'] or 0:>10,.0f}"
                f"{w[g]['ref'] or 0:>9,.0f}{w[g]['ratio_median'] or 0:>6.1f}×"
                f"{wn[g]['ratio_median'] or 0:>7.1f}×{cpu:>24}{land:>18}"
            )
    hp = res.get("http")
    if hp:
        lines.append(
            "\nHTTP writes (POST /v1/records; -ka: keep-alive, else a connection per request)"
        )
        lines.append(f"{'path':<18}{'clients':>8}{'dmp w/s':>10}{'ref w/s':>10}{'ratio':>9}"
                     f"{'dmp ms CPU/w':>14}{'ref ms CPU/w':>14}{'landed dmp/ref':>16}")  # fmt: skip
        w = ratios(hp["runs"], lambda r: (r["what"], r["par"]), "writes_per_s")
        c = ratios(hp["runs"], lambda r: (r["what"], r["par"]), "cpu_ms_per_write")
        landed = ratios(hp["runs"], lambda r: (r["what"], r["par"]), "landed")
        for g in w:
            lines.append(
                f"{g[0]:<18}{g[1]:>8}{w[g]['dmp'] or 0:>10,.0f}{w[g]['ref'] or 0:>10,.0f}"
                f"{w[g]['ratio_median'] or 0:>8.1f}×{c[g]['dmp'] or 0:>14.3f}{c[g]['ref'] or 0:>14.3f}"
                f"{landed[g]['dmp'] or 0:>9.0f}/{landed[g]['ref'] or 0:<6.0f}"
            )
        for kind, r in hp["sustained"].items():
            lines.append(f"  sustained {r['n']} writes x4 {kind}: {r['writes_per_s']} w/s; RSS "
                         f"{r['rss_before_mib']} -> {r['rss_after_mib']} MiB, "
                         f"{r['rss_idle_mib']} MiB 2 s later")  # fmt: skip
    st = res.get("startup")
    if st:
        lines.append("\nStartup (spawn → /health 200 and a DNS answer) and idle RSS 2 s after")
        for label, block in st.items():
            lines.append(f"  {label:<6} dmp {block['dmp']['ready_s_median']:.3f} s / "
                         f"{block['dmp']['idle_rss_mib_median']:.1f} MiB   "
                         f"ref {block['ref']['ready_s_median']:.3f} s / {block['ref']['idle_rss_mib_median']:.1f} MiB")  # fmt: skip
    lines.append("\nTargets (issue 4)")
    for name, ok, detail in targets(res):
        lines.append(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}")
    return "\n".join(lines)


def targets(res: dict[str, Any]) -> list[tuple[str, bool, str]]:
    out: list[tuple[str, bool, str]] = []
    rd, wr, st = res.get("read"), res.get("write"), res.get("startup")
    if rd:
        q = ratios(rd["runs"], lambda r: (r["load"], r["file"]), "qps")
        worst = min((v["ratio_median"] or 0) for g, v in q.items() if g[0] == "sat")
        out.append(("reads ≥ 100× reference q/s (worst query mix)", worst >= 100, f"{worst:.0f}×"))
        kq = knot_ratios(rd["runs"])
        if kq:
            worst_k = min(v["ratio"] for v in kq.values())
            out.append(
                ("reads ≥ ½ of Knot's q/s (worst query mix)", worst_k >= 0.5, f"{worst_k:.2f}")
            )
        p99 = ratios(rd["runs"], lambda r: (r["load"], r["file"]), "p99_ms")
        worst_p99 = max(v["dmp"] for g, v in p99.items() if g[0] == "Q200")
        out.append(("p99 < 1 ms at 200 q/s", worst_p99 < 1.0, f"{worst_p99:.3f} ms"))
    if wr:
        for num, label in (("dmp", "NORMAL, default"), ("dmp-full", "FULL")):
            w = ratios(wr["runs"], lambda r: (r["what"], r["par"]), "writes_per_s", num)
            ser = w.get(("tsig-serial", 1), {}).get("ratio_median") or 0
            par = w.get(("tsig-dnsperf", 20), {}).get("ratio_median") or 0
            out.append((f"TSIG UPDATE serial ≥ 5× ({label})", ser >= 5, f"{ser:.1f}×"))
            out.append((f"TSIG UPDATE 20 in flight ≥ 10× ({label})", par >= 10, f"{par:.1f}×"))
    if st:
        worst_start = max(b["dmp"]["ready_s_median"] for b in st.values())
        worst_rss = max(b["dmp"]["idle_rss_mib_median"] for b in st.values())
        out.append(("startup < 0.5 s", worst_start < 0.5, f"{worst_start:.3f} s"))
        out.append(("idle RSS ≤ 60 MB", worst_rss * 1.048576 <= 60, f"{worst_rss:.1f} MiB"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--secs", type=float, default=8.0, help="seconds per dnsperf read run")
    ap.add_argument("--k", type=int, default=1000, help="writes per write run")
    ap.add_argument("--k-inflight", type=int, default=5000,
                    help="writes per 20-in-flight dnsperf run")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="1 repetition, 4 s runs, k=500")
    ap.add_argument("--only", choices=("read", "write", "startup", "http"), action="append",
                    help="run only these phases (repeatable)")  # fmt: skip
    ap.add_argument("--sustained", type=int, default=10_000,
                    help="http phase: writes of the RSS-growth run")  # fmt: skip
    ap.add_argument("--work", default=None, help="work directory (default: a fresh temp dir)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "node.json"))
    ap.add_argument("--no-knot", action="store_true", help="skip Knot DNS even if installed")
    ap.add_argument("--dmp-env", action="append", default=[], metavar="VAR=VALUE",
                    help="extra environment for our node only (experiments)")  # fmt: skip
    ap.add_argument("--host-net", action="store_true",
                    help="allow running outside the loopback-only netns (127.0.0.1 only)")  # fmt: skip
    a = ap.parse_args()
    if a.quick:
        a.reps, a.secs, a.k, a.k_inflight = 1, 4.0, 500, 2000
    for item in a.dmp_env:
        var, _, value = item.partition("=")
        DMP_EXTRA[var] = value
    if not in_private_netns() and not a.host_net:
        sys.exit("refusing to run outside the loopback-only netns: sh bench/netns.sh; "
                 "ip netns exec dmpbench .venv/bin/python bench/node.py (or --host-net)")  # fmt: skip
    if ref_venv() is None:
        sys.exit(
            "no reference venv: make ../refvenv/bin/dnsmesh (or set DMP_REF_VENV to a venv with dnsmesh==0.7.5)"
        )
    if shutil.which("dnsperf") is None:
        sys.exit("dnsperf not found: apt-get install -y dnsperf")
    phases = a.only or ["read", "write", "startup"]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="dmpbench-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"work dir {work}")
    res: dict[str, Any] = {"meta": {"reps": a.reps, "secs": a.secs, "k": a.k,
                                    "k_inflight": a.k_inflight, "t0": time.time(),
                                    "ports": PORTS, "cpus": os.cpu_count(),
                                    "dmp_env": DMP_EXTRA}}  # fmt: skip
    corpus = make_corpus(work, 10_000, "corpus")
    if "read" in phases:
        log("read phase")
        knot = shutil.which("knotd") is not None and not a.no_knot
        res["read"] = read_phase(work, corpus, a.reps, a.secs, knot)
    if "write" in phases:
        need = a.reps * (4 * a.k + a.k_inflight) * len(WRITE_KINDS) * 10 // 9 + 100
        corpus_w = make_corpus(work, max(30_000, need), "corpus_w")
        log("write phase")
        res["write"] = write_phase(work, corpus_w, a.reps, a.k, a.k_inflight)
    if "http" in phases:  # not in the default set: --only http
        n_http = int((a.reps * 12 * a.k + 2 * a.sustained) / 0.6) + 100  # ~65 % shared pool
        corpus_h = make_corpus(work, n_http, f"corpus_h{n_http}")
        log("http phase")
        res["http"] = http_phase(work, corpus_h, a.reps, a.k, a.sustained)
    if "startup" in phases:
        log("startup phase")
        res["startup"] = {"empty": startup_phase(work, None, max(3, a.reps))}
        if "read" in res:
            res["startup"]["10k"] = startup_phase(work, "read", max(3, a.reps))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1, default=str)
    print(report(res))
    log(f"\nraw results: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
