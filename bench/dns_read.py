#!/usr/bin/env python3
"""Quick local DNS read benchmark of dmp's DNS server (not a test).

Starts ``bench/dns_read.py serve`` in a child process (the real
``DnsHandler`` + ``serve_dns`` over a memory or sqlite store filled with a
seeded DMP-shaped corpus), then drives it over UDP on 127.0.0.1 and reports
q/s, server CPU per query (``/proc/<pid>/stat``) and latency percentiles.

Driver: ``dnsperf`` when installed (``apt-get install -y dnsperf``), always
with ``-e`` (EDNS 4096) like ../shared/perf/bench-ref/bench_dns_read.py;
otherwise a raw-socket Python driver (asyncio, a window of in-flight
queries), which is itself the bottleneck above ~30k q/s.

Corpus (same size mix as the shared perf corpus, generated here with its own
seed): N TXT records under mesh.test, one value each: 40 % chunk (241 B),
25 % manifest (~508 B), 10 % identity (~212 B), 25 % 700-1,200 B. Query
files: ``hit`` (every name, shuffled), ``mix50`` (hits + as many absent
names), ``miss`` (absent names) and ``hot`` (one 508 B name).

Every load is bounded by count and time, only 127.0.0.1 is used, and only the
child started here is signalled (by pid).

Usage::

    .venv/bin/python bench/dns_read.py                   # 10k records, 5 s per run
    .venv/bin/python bench/dns_read.py --secs 8 --loop asyncio --store sqlite
    .venv/bin/python bench/dns_read.py --driver python   # without dnsperf
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ZONE = "mesh.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIXES = ("hit", "mix50", "miss", "hot")
KEYNAME = "bench-00000000-000000.mesh.test."
TSIG_SECRET = bytes(range(32))
TSIG_SCOPES = ("chunk-*-*.mesh.test", "slot-*.mb-*.mesh.test")
WRITE_VALUE = "v=dmp1;t=chunk;d=" + "A" * 224  # 241 bytes, a chunk-sized record

# -- corpus -----------------------------------------------------------------


def _value(rng: random.Random, prefix: str, length: int) -> str:
    raw = rng.randbytes(max(3, (length - len(prefix)) // 4 * 3))
    return prefix + base64.b64encode(raw).decode("ascii")


def make_corpus(n: int, seed: int = 4242) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """``(records, query_names_by_mix)``; deterministic for a given ``seed``."""
    rng = random.Random(seed)
    records: dict[str, str] = {}
    while len(records) < n:
        h12, roll, i = rng.randbytes(6).hex(), rng.random(), len(records)
        if roll < 0.40:
            name, value = f"chunk-{i:04d}-{h12}.{ZONE}", _value(rng, "v=dmp1;t=chunk;d=", 241)
        elif roll < 0.65:
            name = f"slot-{rng.randrange(10)}.mb-{h12}.{ZONE}"
            value = _value(rng, "v=dmp1;t=manifest;d=", 508)
        elif roll < 0.75:
            name, value = f"id-{rng.randbytes(8).hex()}.{ZONE}", _value(rng, "v=dmp1;t=id;d=", 212)
        else:
            name = f"claim-{rng.randrange(10)}.mb-{h12}.{ZONE}"
            value = _value(rng, "v=dmp1;t=claim;d=", rng.randint(700, 1200))
        records[name] = value
    names = list(records)
    absent = [f"absent-{rng.randbytes(6).hex()}.{ZONE}" for _ in range(n)]
    hit = names[:]
    rng.shuffle(hit)
    mix = names + absent
    rng.shuffle(mix)
    hot = next(nm for nm, v in records.items() if 480 <= len(v) <= 520)
    queries = {"hit": hit, "mix50": mix, "miss": absent, "hot": [hot]}
    return list(records.items()), queries


# -- server child -------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    import anyio

    sys.path.insert(0, str(REPO / "src"))
    from dmp.adapters.clock import SystemClock
    from dmp.adapters.dns_server import serve_dns
    from dmp.apps.node.dns_handler import DnsConfig, DnsHandler

    clock = SystemClock()
    if args.store == "sqlite":
        from dmp.adapters.sqlite_store import SqliteRecordStore

        store: Any = await SqliteRecordStore.open(
            Path(args.workdir) / "bench.db", synchronous=args.sync
        )
    else:
        from dmp.adapters.memory_store import MemoryRecordStore

        store = MemoryRecordStore()
    records, _ = make_corpus(args.records)
    now = clock.now()
    for name, value in records:
        await store.put(name, value, 86400, now)
    from dmp.adapters.memory_store import MemoryTsigKeyStore
    from dmp.ports.store import TsigKey

    keys = MemoryTsigKeyStore()
    await keys.put(
        TsigKey(KEYNAME, TSIG_SECRET, "hmac-sha256", TSIG_SCOPES, "bench@mesh.test", "00", 0, 2**40)
    )
    config = DnsConfig(
        served_zone=ZONE,
        apex_ns=("ns1.mesh.test",),
        apex_soa_rname="hostmaster.mesh.test",
        dns_rate=0,
        dns_update_enabled=True,
    )
    handler = DnsHandler(config, store, clock=clock, tsig_keys=keys)
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_dns, handler, "127.0.0.1", 0)
        print(f"PORT {port}", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        tg.cancel_scope.cancel()
    print(json.dumps({"cache_hits": handler.cache_hits, **handler.counters}), flush=True)
    await store.aclose()


def serve_main(args: argparse.Namespace) -> None:
    import anyio

    options = {"use_uvloop": True} if args.loop == "uvloop" else {}
    anyio.run(_serve, args, backend="asyncio", backend_options=options)


# -- measurement ----------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


_DNSPERF = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
}
_VERBOSE = re.compile(r"^> (\S+) .* ([\d.]+)$")


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))]


def run_dnsperf(
    port: int, qfile: Path, secs: float, inflight: int, qps: int | None, once: bool = False
) -> dict[str, Any]:
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-e", "-t", "2"]
    cmd += ["-n", "1"] if once else ["-l", str(secs)]
    cmd += ["-q", str(inflight)]
    if qps:
        cmd += ["-Q", str(qps), "-v"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60).stdout
    res: dict[str, Any] = {}
    for key, rx in _DNSPERF.items():
        m = rx.search(out)
        res[key] = float(m.group(1)) if m else None
    if qps:
        lats = sorted(
            float(m.group(2)) * 1000
            for m in map(_VERBOSE.match, out.splitlines())
            if m and m.group(1) != "T"
        )
        for p in (50, 99, 99.9):
            res[f"p{p}_ms"] = pct(lats, p)
    return res


def _build_query(msg_id: int, name: str) -> bytes:
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    opt = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"  # EDNS0, payload 4096
    return struct.pack("!HHHHHH", msg_id, 0x0100, 1, 0, 0, 1) + qname + b"\x00\x10\x00\x01" + opt


async def _python_load(
    port: int, names: list[str], secs: float, inflight: int, qps: int | None
) -> dict[str, Any]:
    """A windowed UDP load: ``inflight`` outstanding queries (or a fixed ``qps``)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    sent_at: dict[int, float] = {}
    lats: list[float] = []
    stats = {"sent": 0, "completed": 0}
    deadline = time.perf_counter() + secs
    ids = iter(range(1 << 62))

    class Client(asyncio.DatagramProtocol):
        transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def send_one(self) -> None:
            msg_id = next(ids) & 0xFFFF
            self.transport.sendto(_build_query(msg_id, names[stats["sent"] % len(names)]))
            sent_at[msg_id] = time.perf_counter()
            stats["sent"] += 1

        def datagram_received(self, data: bytes, addr: Any) -> None:
            start = sent_at.pop(struct.unpack_from("!H", data)[0], None)
            if start is None:
                return
            now = time.perf_counter()
            stats["completed"] += 1
            lats.append((now - start) * 1000)
            if now < deadline and not qps:
                self.send_one()
            elif not sent_at and now >= deadline and not done.done():
                done.set_result(None)

    transport, client = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    t0 = time.perf_counter()
    try:
        if qps:
            interval, next_at = 1.0 / qps, t0
            while time.perf_counter() < deadline:
                client.send_one()
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        else:
            for _ in range(inflight):
                client.send_one()
        await asyncio.wait_for(asyncio.shield(done), timeout=max(0.1, deadline - t0) + 2)
    except TimeoutError:
        pass
    finally:
        transport.close()
    elapsed = min(time.perf_counter(), deadline + 2) - t0
    lats.sort()
    res: dict[str, Any] = {
        "sent": stats["sent"],
        "completed": stats["completed"],
        "lost": stats["sent"] - stats["completed"],
        "qps": stats["completed"] / elapsed,
    }
    for p in (50, 99, 99.9):
        res[f"p{p}_ms"] = pct(lats, p)
    return res


def measure(
    args: argparse.Namespace, pid: int, port: int, work: Path, queries: dict[str, list[str]]
) -> list[dict[str, Any]]:
    use_dnsperf = args.driver == "dnsperf" or (args.driver == "auto" and shutil.which("dnsperf"))
    results = []
    plan = [(mix, "saturation", None) for mix in args.mixes] + [
        (mix, f"fixed {args.fixed_qps}/s", args.fixed_qps) for mix in ("hit", "miss")
    ]
    if use_dnsperf:  # cold: every name once, each one a cache miss (fills the cache)
        for mix in ("hit", "miss"):
            cpu0 = proc_cpu_s(pid)
            res = run_dnsperf(port, work / f"q_{mix}.txt", args.secs, args.inflight, None, True)
            cpu = proc_cpu_s(pid) - cpu0
            res.update(mix=mix, load="cold (1 pass)", driver="dnsperf")
            if res.get("completed"):
                res["cpu_us_per_q"] = round(cpu / res["completed"] * 1e6, 1)
            results.append(res)
            print(json.dumps(res), flush=True)
    for mix in args.mixes:  # warm the answer cache once per mix (bounded)
        _drive(use_dnsperf, port, work, mix, queries, min(2.0, args.secs), args.inflight, None)
    for mix, load, qps in plan:
        cpu0 = proc_cpu_s(pid)
        res = _drive(use_dnsperf, port, work, mix, queries, args.secs, args.inflight, qps)
        cpu = proc_cpu_s(pid) - cpu0
        res.update(mix=mix, load=load, driver="dnsperf" if use_dnsperf else "python")
        if res.get("completed"):
            res["cpu_us_per_q"] = round(cpu / res["completed"] * 1e6, 1)
        res["rss_kib"] = proc_rss_kib(pid)
        results.append(res)
        print(json.dumps(res), flush=True)
    return results


def _drive(
    use_dnsperf: Any,
    port: int,
    work: Path,
    mix: str,
    queries: dict[str, list[str]],
    secs: float,
    inflight: int,
    qps: int | None,
) -> dict[str, Any]:
    if use_dnsperf:
        return run_dnsperf(port, work / f"q_{mix}.txt", secs, inflight, qps)
    return asyncio.run(_python_load(port, queries[mix], secs, inflight, qps))


def serial_updates(port: int, count: int, secs: float) -> dict[str, Any]:
    """One dnspython client, one signed UPDATE at a time (like the CLI writer)."""
    import dns.name
    import dns.query
    import dns.rcode
    import dns.tsig
    import dns.update

    key = dns.tsig.Key(KEYNAME, TSIG_SECRET, "hmac-sha256")
    lats: list[float] = []
    ok = 0
    t0 = time.perf_counter()
    for i in range(count):
        if time.perf_counter() - t0 > secs:
            break
        u = dns.update.UpdateMessage(ZONE, keyring=key)
        u.add(dns.name.from_text(f"chunk-{i}-serial000000.{ZONE}."), 300, "TXT", WRITE_VALUE)
        start = time.perf_counter()
        reply = dns.query.udp(u, "127.0.0.1", port=port, timeout=2)
        lats.append((time.perf_counter() - start) * 1000)
        ok += reply.rcode() == dns.rcode.NOERROR
    elapsed = time.perf_counter() - t0
    lats.sort()
    return {
        "completed": ok,
        "sent": len(lats),
        "qps": ok / elapsed,
        "p50_ms": pct(lats, 50),
        "p99_ms": pct(lats, 99),
    }


def dnsperf_updates(port: int, work: Path, secs: float, inflight: int) -> dict[str, Any]:
    """``dnsperf -u -y``: signed UPDATEs with ``inflight`` outstanding."""
    path = work / "updates.txt"
    with path.open("w") as fh:
        for i in range(200_000):
            fh.write(f'{ZONE}\nadd chunk-{i}-perf00000000 300 TXT "{WRITE_VALUE}"\nsend\n')
    secret = base64.b64encode(TSIG_SECRET).decode()
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(path), "-u", "-t", "2"]
    cmd += ["-y", f"hmac-sha256:{KEYNAME}:{secret}", "-q", str(inflight), "-l", str(secs)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60).stdout
    res: dict[str, Any] = {}
    for key, rx in _DNSPERF.items():
        m = re.search(rx.pattern.replace("Queries", "Updates"), out)
        res[key] = float(m.group(1)) if m else None
    m = re.search(r"Response codes:\s+(.*)", out)
    res["rcodes"] = m.group(1).strip() if m else None
    return res


def measure_updates(
    args: argparse.Namespace, pid: int, port: int, work: Path
) -> list[dict[str, Any]]:
    results = []
    runs: list[tuple[str, Any]] = [
        ("serial (dnspython)", lambda: serial_updates(port, 100_000, args.secs))
    ]
    if shutil.which("dnsperf"):
        runs.append(("20 in flight (dnsperf)", lambda: dnsperf_updates(port, work, args.secs, 20)))
    for load, fn in runs:
        cpu0 = proc_cpu_s(pid)
        res = fn()
        cpu = proc_cpu_s(pid) - cpu0
        res.update(mix="update", load=load)
        if res.get("completed"):
            res["cpu_us_per_q"] = round(cpu / res["completed"] * 1e6, 1)
        results.append(res)
        print(json.dumps(res), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    srv = sub.add_parser("serve", help="(internal) run the DNS server child")
    for p in (ap, srv):
        p.add_argument("--records", type=int, default=10_000)
        p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
        p.add_argument("--store", choices=("memory", "sqlite"), default="memory")
        p.add_argument("--sync", choices=("NORMAL", "FULL"), default="NORMAL",
                       help="sqlite synchronous level (dmp-node's default is NORMAL)")  # fmt: skip
    srv.add_argument("--workdir", required=True)
    ap.add_argument("--secs", type=float, default=5.0)
    ap.add_argument("--inflight", type=int, default=100)
    ap.add_argument("--fixed-qps", type=int, default=200)
    ap.add_argument("--mixes", nargs="+", default=list(MIXES), choices=MIXES)
    ap.add_argument("--driver", choices=("auto", "dnsperf", "python"), default="auto")
    ap.add_argument("--updates", action="store_true", help="also measure TSIG UPDATE writes/s")
    ap.add_argument("--only-updates", action="store_true", help="skip the read runs")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.cmd == "serve":
        serve_main(args)
        return
    _, queries = make_corpus(args.records)
    with tempfile.TemporaryDirectory(prefix="dmp-dns-bench-") as tmp:
        work = Path(tmp)
        for mix, names in queries.items():
            (work / f"q_{mix}.txt").write_text("".join(f"{n} TXT\n" for n in names))
        cmd = [sys.executable, __file__, "serve", "--records", str(args.records)]
        cmd += ["--loop", args.loop, "--store", args.store, "--sync", args.sync, "--workdir", tmp]
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            if not line.startswith("PORT "):
                raise SystemExit(f"server child did not start: {line!r}")
            port = int(line.split()[1])
            meta = {
                "records": args.records,
                "loop": args.loop,
                "store": args.store,
                "ready_s (incl. corpus load)": round(time.perf_counter() - t0, 2),
                "rss_kib_idle": proc_rss_kib(child.pid),
            }
            print(json.dumps(meta), flush=True)
            results = [] if args.only_updates else measure(args, child.pid, port, work, queries)
            if args.updates or args.only_updates:
                results += measure_updates(args, child.pid, port, work)
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                tail = child.communicate(timeout=10)[0]
            except subprocess.TimeoutExpired:
                child.kill()
                tail = child.communicate()[0]
    print("server counters:", tail.strip())
    print(
        f"\n{'mix':7} {'load':14} {'q/s':>9} {'lost':>6} {'cpu µs/q':>9} {'p50 ms':>7} {'p99 ms':>7}"
    )

    def cell(r: dict[str, Any], key: str, fmt: str) -> str:
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    for r in results:
        print(
            f"{r['mix']:7} {r['load']:14} {cell(r, 'qps', '9.0f')} {cell(r, 'lost', '6.0f')} "
            f"{cell(r, 'cpu_us_per_q', '9.1f')} {cell(r, 'p50_ms', '7.3f')} "
            f"{cell(r, 'p99_ms', '7.3f')}"
        )
    qps = [r["qps"] for r in results if r["load"] == "saturation" and r.get("qps")]
    if qps:
        print(f"median saturation q/s: {statistics.median(qps):.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
