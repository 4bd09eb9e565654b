"""End-to-end latency of the ``dnsmesh`` CLI, ours against the reference, in one run.

Run inside the loopback-only network namespace (``sh bench/netns.sh`` or the
shared ``dmpbench`` namespace)::

    ip netns exec dmpbench .venv/bin/python bench/cli.py [--n 5] [--out bench/results/cli.json]

Not a test: prints figures and ratios, always exits 0 unless a setup step fails.

What is timed (wall clock of each ``dnsmesh`` process from spawn to exit, so
interpreter start, imports, the Argon2id KDF and the network all count, as a
user sees it):

* ``dnsmesh --help`` (median of 7);
* ``dnsmesh send`` of a 140-character message, ``dnsmesh recv`` that
  delivers it, ``dnsmesh recv`` with nothing new, and send+recv end to end
  (median of ``--n``).

Setups (the reference's own is ``../shared/perf/bench-ref/bench_cli.py``):

* ``ref/http``: the reference node (``python -m dmp.server`` from
  ``$DMP_REF_VENV``, dnsmesh 0.7.5) with the reference CLI writing over HTTP
  with the operator token. (Its TSIG flow cannot ``send``: its UPDATE writer
  puts each value in one character-string and the slot manifest is > 255 B.)
* ``dmp/tsig``: our node and our CLI, the documented flow: ``dnsmesh tsig
  register`` and every write as an RFC 2136 UPDATE with TSIG.
* ``dmp/http``: our node and our CLI with the operator token over HTTP
  (the reference's setup, for a like-for-like ratio).
* ``dmp/tsig+agent``, ``dmp/http+agent``: the same with ``dnsmesh agent
  start`` run for both users after setup (the opt-in key agent: ``send`` and
  ``recv`` are executed by the already-unlocked, already-imported agent).
* ``dmp/tsig+keys``: the agent with ``DMP_AGENT=keys``: it only hands out
  the keys (no Argon2id per command), the commands still run in their own
  process (shows what the imports cost).

Nodes use the CLI's dev ports (DNS 5353, HTTP 8053): the reference's ``init``
probes only 5353 and 53. Both are configured by the same DMP_* environment.
Only processes started here are stopped, by pid. Targets (issue 5):
send+recv end to end ≤ 1/3 of the reference's, ``--help`` < 0.15 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodelib import REPO, NodeProc, in_private_netns, our_python, ref_venv

TOKEN = "bench-operator-token"
ZONE = "mesh.test"
DNS_PORT = 5353
HTTP_PORT = 8053
E2E_TARGET_RATIO = 1 / 3
HELP_TARGET_S = 0.15

NODE_ENV = {
    "DMP_OPERATOR_TOKEN": TOKEN,
    "DMP_DNS_RATE": "0",
    "DMP_HTTP_RATE": "0",
    "DMP_DOMAIN": ZONE,
}
TSIG_ENV = {
    "DMP_SERVED_ZONE": ZONE,
    "DMP_NODE_HOSTNAME": ZONE,
    "DMP_DNS_UPDATE_ENABLED": "1",
    "DMP_AUTH_MODE": "multi-tenant",
    "DMP_REGISTRATION_ENABLED": "1",
    "DMP_REGISTRATION_ENDPOINT_RATE_PER_SEC": "100",
    "DMP_REGISTRATION_ENDPOINT_BURST": "100",
}


SETUP_NAMES = {
    ("ref", "http", ""): "ref/http",
    ("dmp", "tsig", ""): "dmp/tsig",
    ("dmp", "http", ""): "dmp/http",
    ("dmp", "tsig", "on"): "dmp/tsig+agent",
    ("dmp", "http", "on"): "dmp/http+agent",
    ("dmp", "tsig", "keys"): "dmp/tsig+keys",
}


def med(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


class Cli:
    """One implementation's ``dnsmesh`` executable."""

    def __init__(self, kind: str, extra_env: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.extra_env = dict(extra_env or {})
        if kind == "ref":
            venv = ref_venv()
            assert venv is not None
            self.exe = str(venv / "bin" / "dnsmesh")
            self.path = f"{venv}/bin:/usr/bin:/bin"
        else:
            bindir = Path(our_python()).parent
            self.exe = str(bindir / "dnsmesh")
            self.path = f"{bindir}:/usr/bin:/bin"

    def run(
        self, home: Path | None, user: str, *args: str, check: bool = True
    ) -> tuple[float, subprocess.CompletedProcess[str]]:
        env = {
            "PATH": self.path,
            "HOME": str(home or tempfile.gettempdir()),
            "DMP_PASSPHRASE": f"{user}-correct-horse-battery",
            "PYTHONDONTWRITEBYTECODE": "1",
            **self.extra_env,
        }
        t0 = time.perf_counter()
        p = subprocess.run([self.exe, *args], env=env, capture_output=True, text=True, timeout=120)
        dt = time.perf_counter() - t0
        if check and p.returncode != 0:
            raise RuntimeError(
                f"{self.kind}: dnsmesh {' '.join(args)} rc={p.returncode}: {p.stderr[-800:]}"
            )
        return dt, p


def help_times(cli: Cli, reps: int = 7) -> list[float]:
    cli.run(None, "x", "--help")  # warm the page cache
    return [cli.run(None, "x", "--help")[0] for _ in range(reps)]


def scenario(kind: str, mode: str, n: int, workdir: Path, agent: str = "") -> dict[str, Any]:
    """One setup; ``agent`` is "" (none), "on" (agent runs send/recv) or "keys" (keys only)."""
    env = dict(NODE_ENV)
    if mode == "tsig":
        env.update(TSIG_ENV)
    suffix = {"": "", "on": "-agent", "keys": "-keys"}[agent]
    node = NodeProc(
        kind,
        f"cli-{kind}-{mode}{suffix}",
        workdir,
        dns_port=DNS_PORT,
        http_port=HTTP_PORT,
        env=env,
    )
    cli = Cli(kind, {"DMP_AGENT": "keys"} if agent == "keys" else None)
    out: dict[str, Any] = {"impl": kind, "mode": mode, "agent": agent or "none"}
    agents: list[tuple[Path, str]] = []
    node.start(timeout=30)
    try:
        homes = {u: node.dir / f"home-{u}" for u in ("alice", "bob")}
        for user, home in homes.items():
            home.mkdir(parents=True, exist_ok=True)
            args = [
                "init",
                user,
                "--domain",
                ZONE,
                "--endpoint",
                node.url,
                "--dns-resolvers",
                f"127.0.0.1:{DNS_PORT}",
            ]
            if mode == "http":
                args += ["--http-token", TOKEN]
            cli.run(home, user, *args)
            if mode == "tsig":
                cli.run(
                    home,
                    user,
                    "tsig",
                    "register",
                    "--node",
                    f"127.0.0.1:{HTTP_PORT}",
                    "--scheme",
                    "http",
                    "--dns-server",
                    "127.0.0.1",
                    "--dns-port",
                    str(DNS_PORT),
                )
            cli.run(home, user, "identity", "publish")
        cli.run(homes["alice"], "alice", "identity", "fetch", f"bob@{ZONE}", "--add")
        cli.run(homes["bob"], "bob", "identity", "fetch", f"alice@{ZONE}", "--add")
        if agent:
            for user, home in homes.items():
                cli.run(home, user, "agent", "start", "--idle-timeout", "600")
                agents.append((home, user))
        sends: list[float] = []
        recvs: list[float] = []
        empties: list[float] = []
        delivered = 0
        for i in range(n):
            msg = f"bench message {i} " + "x" * 120
            dt, p = cli.run(homes["alice"], "alice", "send", f"bob@{ZONE}", msg, check=False)
            if p.returncode != 0:
                out["send_error"] = {"rc": p.returncode, "stderr_tail": p.stderr[-300:]}
                break
            sends.append(dt)
            dt, p = cli.run(homes["bob"], "bob", "recv")
            recvs.append(dt)
            delivered += msg in p.stdout
            empties.append(cli.run(homes["bob"], "bob", "recv")[0])
        out.update(
            {
                "n": len(sends),
                "delivered": delivered,
                "send_s": med(sends),
                "recv_s": med(recvs),
                "recv_empty_s": med(empties),
                "send_recv_e2e_s": med([s + r for s, r in zip(sends, recvs, strict=True)]),
                "send_all": [round(x, 3) for x in sends],
                "recv_all": [round(x, 3) for x in recvs],
            }
        )
    finally:
        for home, user in agents:  # the agents this run started, through their sockets
            cli.run(home, user, "agent", "stop", check=False)
        node.stop()
    return out


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description="dnsmesh CLI latency: dmp vs the reference")
    ap.add_argument("--n", type=int, default=5, help="send/recv rounds per setup (5)")
    ap.add_argument("--out", type=Path, help="also write the raw results as JSON here")
    ap.add_argument("--no-ref", action="store_true", help="skip the reference")
    args = ap.parse_args()
    if not in_private_netns():
        print(
            "refusing to run: not inside a loopback-only netns "
            "(ip netns exec dmpbench .venv/bin/python bench/cli.py)",
            file=sys.stderr,
        )
        return 2
    with_ref = not args.no_ref and ref_venv() is not None
    # An installed wheel ships compiled bytecode (pip compiles it); our editable
    # src/ tree gets the same, so no run pays for compiling a changed module.
    subprocess.run([our_python(), "-m", "compileall", "-q", str(REPO / "src" / "dmp")], check=True)
    results: dict[str, Any] = {"repo": str(REPO)}
    ours = Cli("dmp")
    results["help_dmp_s"] = med(help_times(ours))
    if with_ref:
        results["help_ref_s"] = med(help_times(Cli("ref")))
    with tempfile.TemporaryDirectory(prefix="dmp-bench-cli-") as tmp:
        work = Path(tmp)
        setups = [
            ("dmp", "tsig", ""),
            ("dmp", "http", ""),
            ("dmp", "tsig", "on"),
            ("dmp", "http", "on"),
            ("dmp", "tsig", "keys"),
        ]
        if with_ref:
            setups.insert(0, ("ref", "http", ""))
        for kind, mode, agent in setups:
            r = scenario(kind, mode, args.n, work, agent)
            results[SETUP_NAMES[(kind, mode, agent)]] = r
            print(json.dumps({k: v for k, v in r.items() if not isinstance(v, list)}), flush=True)

    ref = results.get("ref/http", {})
    print("\n== dnsmesh CLI, wall time per process (median) ==")
    print(f"{'setup':<15} {'send':>7} {'recv':>7} {'recv∅':>7} {'e2e':>7} {'delivered':>9}")
    for key in SETUP_NAMES.values():
        r = results.get(key)
        if not r:
            continue
        print(
            f"{key:<15} {r.get('send_s') or '-':>7} {r.get('recv_s') or '-':>7} "
            f"{r.get('recv_empty_s') or '-':>7} {r.get('send_recv_e2e_s') or '-':>7} "
            f"{r.get('delivered', 0)}/{r.get('n', 0):<7}"
        )
    print(
        f"--help: dmp {results['help_dmp_s']} s (target < {HELP_TARGET_S} s)"
        + (
            f", ref {results['help_ref_s']} s, ratio {ratio(results['help_dmp_s'], results['help_ref_s'])}"
            if with_ref
            else ""
        )
    )
    if ref:
        for key in list(SETUP_NAMES.values())[1:]:
            r = results.get(key, {})
            print(
                f"{key:<15} / ref/http: send {ratio(r.get('send_s'), ref.get('send_s'))}, "
                f"recv {ratio(r.get('recv_s'), ref.get('recv_s'))}, "
                f"e2e {ratio(r.get('send_recv_e2e_s'), ref.get('send_recv_e2e_s'))} "
                f"(target ≤ {E2E_TARGET_RATIO:.2f})"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
