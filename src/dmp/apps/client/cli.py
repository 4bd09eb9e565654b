"""The ``dnsmesh`` command line (layer: apps; also ``python -m dmp.apps.client``).

The same sub-commands and flags as the reference CLI ``dnsmesh`` 0.7.5
(behaviour.md §a), so a user can switch without relearning::

    dnsmesh [--config-home DIR] [--tokens-home DIR] [--debug] COMMAND ...

    init USERNAME|USER@HOST   identity show|publish|refresh-prekeys|fetch|rotate
    contacts add|list         send RECIPIENT MESSAGE      recv
    intro list|accept|trust|block                         doctor
    register                  tsig register               token list|forget
    resolvers discover|list   node                        agent start|status|stop

Conventions:

* exit codes: 0 ok; 1 a user or configuration error (bad flag value, no
  config, wrong passphrase, unknown contact, ...); 2 a network or backend
  error (node unreachable, UPDATE refused, ...). argparse usage errors are 2,
  as in the reference;
* errors are ONE line on stderr, ``dnsmesh: <message>``; ``--debug`` adds the
  traceback;
* ``--json`` where the reference has it (``identity show``, ``identity
  fetch``, ``token list``);
* tables use ``rich`` when stdout is a terminal, plain aligned text otherwise.

Speed: ``dnsmesh --help`` must stay under 0.15 s, so this module imports only
the standard library at the top; every heavy module (dnspython, PyNaCl,
httpx, anyio, argon2, rich, yaml, attrs, ``dmp.domain``) is imported inside
the command that needs it. Check with
``python -X importtime -m dmp.apps.client --help``.

Concrete adapters are chosen in :mod:`dmp.apps.client.wiring` only.

The opt-in key agent (:mod:`dmp.apps.client.agent`, ``dnsmesh agent
start``): while one runs for the config home, ``send`` and ``recv`` are
handed to it right after argument parsing (this process then imports nothing
else), and other commands take the keys from it instead of running Argon2id.

Test-only environment hooks (never needed by users): ``DMP_KDF_PROFILE=test``
(cheap Argon2, see wiring) and ``DMP_RESOLVER_CANDIDATES=ip[:port],...``
(what ``resolvers discover`` probes instead of the public resolvers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from dmp.apps.pipes import flush_stdout, stdout_gone

if TYPE_CHECKING:
    from dmp.apps.client.config import ClientConfig
    from dmp.domain.crypto import IdentityKeys

__all__ = ["CliError", "build_parser", "main"]

PROG = "dnsmesh"
EXIT_OK = 0
EXIT_USER = 1
EXIT_NETWORK = 2
DEFAULT_DOMAIN = "mesh.local"
DEFAULT_RESOLVERS = ("1.1.1.1", "8.8.8.8")
PROBE_PORTS = (5353, 53)


class CliError(Exception):
    """A one-line error for the user; ``exit_code`` 1 (user/config) or 2 (network/backend)."""

    def __init__(self, message: str, exit_code: int = EXIT_USER) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors print two lines (usage + error) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_NETWORK, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole ``dnsmesh`` argument tree (imports nothing heavy)."""
    p = _Parser(prog=PROG, description="DNS Mesh Protocol client (dmp).")
    p.add_argument(
        "--config-home",
        metavar="DIR",
        help="configuration directory (default: $DMP_CONFIG_HOME, else ~/.dmp)",
    )
    p.add_argument(
        "--tokens-home",
        metavar="DIR",
        help="saved per-node tokens (default: $DMP_TOKENS_HOME, else <config-home>/tokens)",
    )
    p.add_argument("--debug", action="store_true", help="print a traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    # init
    init = sub.add_parser("init", help="write a fresh config for a new identity")
    init.add_argument("username", help="your name, or user@host (host becomes --domain)")
    init.add_argument("--domain", help=f"mesh zone your records live in (default {DEFAULT_DOMAIN})")
    init.add_argument("--endpoint", help="HTTP URL of your node (a bare host means https://)")
    init.add_argument("--http-token", help="bearer token for the node's HTTP API")
    init.add_argument("--dns-host", help="DNS server to read from (default: the resolvers)")
    init.add_argument("--dns-port", type=int, default=5353, help="port of --dns-host (5353)")
    init.add_argument(
        "--dns-resolvers",
        metavar="IP[:PORT],...",
        help="resolver pool, IP literals only, e.g. 9.9.9.9,[2620:fe::fe]:53 "
        "(default: 1.1.1.1,8.8.8.8)",
    )
    init.add_argument(
        "--no-default-resolvers",
        action="store_true",
        help="no resolver pool: read through --dns-host or the node directly",
    )
    init.add_argument(
        "--identity-domain",
        metavar="ZONE",
        help="a zone you control; your identity is published at dmp.<ZONE>",
    )
    init.add_argument("--force", action="store_true", help="replace an existing config")
    init.add_argument(
        "--no-probe-local-dns",
        action="store_true",
        help="do not probe the endpoint host for the node's DNS port (5353, then 53)",
    )
    init.add_argument(
        "--allow-tofu",
        action="store_true",
        help="deliver signature-valid messages while no contact is pinned (less safe)",
    )
    init.add_argument(
        "--require-dnssec",
        action="store_true",
        help="drop resolver answers without the DNSSEC AD bit",
    )

    # identity
    isub = _actions(sub, "identity", "your identity and other people's")
    show = isub.add_parser("show", help="print your keys (offline)")
    show.add_argument("--json", action="store_true", help="print JSON")
    pub = isub.add_parser("publish", help="publish your signed identity record")
    pub.add_argument("--ttl", type=int, default=86400, help="record TTL, seconds (86400)")
    pub.add_argument("--advertise-v2", action="store_true", help="advertise DMPv2 envelope support")
    pre = isub.add_parser("refresh-prekeys", help="publish a fresh pool of one-time prekeys")
    pre.add_argument("--count", type=int, default=25, help="how many prekeys (25)")
    pre.add_argument("--ttl", type=int, default=86400, help="prekey lifetime, seconds (86400)")
    rot = isub.add_parser("rotate", help="EXPERIMENTAL: move to a new key (needs --experimental)")
    rot.add_argument(
        "--new-passphrase-file",
        metavar="PATH",
        help="file holding the new passphrase (else $DMP_NEW_PASSPHRASE, else a prompt)",
    )
    rot.add_argument("--ttl", type=int, default=86400, help="record TTL, seconds (86400)")
    rot.add_argument(
        "--exp-seconds",
        type=int,
        default=365 * 86400,
        help="rotation record lifetime, seconds (1 year)",
    )
    rot.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rot.add_argument(
        "--reason",
        choices=("routine", "compromise", "lost_key"),
        default="routine",
        help="routine (default); compromise / lost_key also revoke the old key",
    )
    rot.add_argument(
        "--experimental", action="store_true", help="required: the record format may change"
    )
    rot.add_argument("--advertise-v2", action="store_true", help="as for identity publish")
    fetch = isub.add_parser("fetch", help="look up someone's identity record")
    fetch.add_argument("username", help="user@host, or a user in your own domain")
    fetch.add_argument("--domain", help="zone to look in (default: yours)")
    fetch.add_argument("--add", action="store_true", help="pin the result as a contact")
    fetch.add_argument(
        "--accept-fingerprint",
        metavar="HEX16",
        help="pick this record when several exist (check it out of band first)",
    )
    fetch.add_argument("--json", action="store_true", help="print JSON")
    fetch.add_argument(
        "--via-bootstrap",
        action="store_true",
        help="discover the host's cluster through a pinned bootstrap signer (not supported)",
    )

    # contacts
    csub = _actions(sub, "contacts", "pinned contacts")
    cadd = csub.add_parser("add", help="pin a contact by key")
    cadd.add_argument("name", help="local name (user@host to also record the zone)")
    cadd.add_argument("pubkey", help="the contact's X25519 public key, 64 hex")
    cadd.add_argument(
        "--signing-key", metavar="HEX64", help="the contact's Ed25519 key, 64 hex (pins it)"
    )
    csub.add_parser("list", help="list contacts")

    # send / recv
    send = sub.add_parser("send", help="send an encrypted message")
    send.add_argument("recipient", help="a contact name or user@host")
    send.add_argument("message", help="the text to send")
    recv = sub.add_parser("recv", help="fetch new messages once")
    mode = recv.add_mutually_exclusive_group()
    mode.add_argument(
        "--primary-only", action="store_true", help="only poll claims on your own zone"
    )
    mode.add_argument("--skip-primary", action="store_true", help="only walk the mailbox slots")

    # intro
    nsub = _actions(sub, "intro", "messages from senders you have not pinned")
    nsub.add_parser("list", help="list pending intros")
    acc = nsub.add_parser("accept", help="deliver one intro, without pinning its sender")
    acc.add_argument("intro_id", type=int)
    tr = nsub.add_parser("trust", help="deliver one intro and pin its sender")
    tr.add_argument("intro_id", type=int)
    tr.add_argument("--label", help="contact name (default intro-<key prefix>)")
    tr.add_argument("--username", help="the sender's identity name on their node")
    bl = nsub.add_parser("block", help="drop one intro and deny its sender")
    bl.add_argument("intro_id", type=int)
    bl.add_argument("--note", default="", help="why, kept with the denylist entry")

    # doctor
    doc = sub.add_parser("doctor", help="check the config against the node")
    doc.add_argument(
        "--repair", action="store_true", help="re-probe the node's DNS port and save it"
    )

    # register / tsig
    reg = sub.add_parser("register", help="get a publish token from a multi-tenant node")
    _registration_flags(reg)
    tsub = _actions(sub, "tsig", "DNS UPDATE credentials")
    treg = tsub.add_parser("register", help="get a TSIG key from a node")
    _registration_flags(treg)
    treg.add_argument("--dns-server", help="where UPDATEs go (default: the node host)")
    treg.add_argument("--dns-port", type=int, default=53, help="its port (53; 5353 for dev)")

    # token
    ksub = _actions(sub, "token", "saved per-node publish tokens")
    tl = ksub.add_parser("list", help="list saved tokens (never the secrets)")
    tl.add_argument("--json", action="store_true", help="print JSON")
    tf = ksub.add_parser("forget", help="delete the saved token for a node")
    tf.add_argument("node", help="node host name")

    # resolvers
    rsub = _actions(sub, "resolvers", "upstream DNS resolvers")
    disc = rsub.add_parser("discover", help="probe well-known public resolvers")
    disc.add_argument("--save", action="store_true", help="save the working ones")
    disc.add_argument("--timeout", type=float, default=2.0, help="seconds per probe (2.0)")
    rsub.add_parser("list", help="print the configured resolvers")

    # agent
    asub = _actions(sub, "agent", "keep your keys unlocked in a background agent")
    ast = asub.add_parser("start", help="derive your keys once and serve them (opt-in)")
    ast.add_argument(
        "--idle-timeout",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="exit after this long unused (900)",
    )
    ast.add_argument(
        "--foreground", action="store_true", help="serve in this process instead of forking"
    )
    asub.add_parser("status", help="is an agent running for this config home?")
    asub.add_parser("stop", help="stop the agent and forget the keys")

    # node
    node = sub.add_parser("node", help="run a dmp node in the foreground (dmp-node)")
    node.add_argument("--db-path", help="sqlite record store")
    node.add_argument("--dns-port", type=int, help="DNS port")
    node.add_argument("--http-port", type=int, help="HTTP port")
    node.add_argument("--dev", action="store_true", help="loopback-only development node")
    return p


def _actions(
    sub: argparse._SubParsersAction[_Parser], name: str, help_text: str
) -> argparse._SubParsersAction[_Parser]:
    """Add ``dnsmesh <name> ACTION``; its actions go on the returned subparsers."""
    command = sub.add_parser(name, help=help_text)
    actions = command.add_subparsers(dest=f"{name}_command", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    return actions


def _registration_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", required=True, help="node host name (a scheme is ignored)")
    p.add_argument("--subject", help="who to register (default: you@your-domain)")
    p.add_argument(
        "--scheme", choices=("https", "http"), default="https", help="https (default) or http"
    )


# ---------------------------------------------------------------- context


class Context:
    """What every command needs: where the config lives, output, the environment."""

    def __init__(
        self,
        ns: argparse.Namespace,
        environ: Mapping[str, str],
        held_keys: IdentityKeys | None = None,
    ) -> None:
        from dmp.apps.client.config import config_home, tokens_home

        self.ns = ns
        self.environ = environ
        self.held_keys = held_keys
        self.home: Path = config_home(ns.config_home, environ)
        self.tokens_home: Path = tokens_home(self.home, ns.tokens_home, environ)
        self._config: ClientConfig | None = None

    # -- config
    @property
    def config(self) -> ClientConfig:
        if self._config is None:
            from dmp.apps.client.config import load_config

            self._config = load_config(self.home)
        return self._config

    def save(self) -> Path:
        from dmp.apps.client.config import save_config

        return save_config(self.home, self.config)

    # -- output
    @staticmethod
    def out(text: str = "") -> None:
        print(text, file=sys.stdout)

    @staticmethod
    def warn(text: str) -> None:
        print(text, file=sys.stderr)

    @staticmethod
    def is_tty() -> bool:
        try:
            return sys.stdout.isatty()
        except (AttributeError, ValueError):
            return False

    def table(
        self, headers: Sequence[str], rows: Sequence[Sequence[str]], plain: list[str]
    ) -> None:
        """A rich table on a terminal, else the ``plain`` lines."""
        if self.is_tty():
            from rich.console import Console
            from rich.table import Table

            table = Table()
            for header in headers:
                table.add_column(header, overflow="fold")  # never hide part of a key
            for row in rows:
                table.add_row(*row)
            Console().print(table)
        else:
            for line in plain:
                self.out(line)

    # -- identity
    def agent_keys(self) -> IdentityKeys | None:
        """Our keys from the agent (or the keys it handed this run), if they are this config's.

        None when no agent runs for the config home, ``DMP_AGENT=off``, the
        agent holds another identity, or what it returned does not derive the
        config's ``verify_pubkey``.
        """
        cfg = self.config
        want = cfg.verify_pubkey.lower()
        if not want:
            return None
        keys = self.held_keys
        if keys is None:
            from dmp.apps.client import agent

            if agent.agent_mode(self.environ) == "off":
                return None
            if not agent.socket_path(self.home).exists():
                return None
            private = agent.fetch_private_key(self.home, cfg.kdf_salt, want)
            if private is None:
                return None
            from dmp.domain.crypto import IdentityKeys

            keys = IdentityKeys.from_x25519_private(private)
        return keys if keys.ed25519_public.hex() == want else None

    def unlock(self, *, use_agent: bool = True) -> IdentityKeys:
        """Our keys: from the agent when one serves this identity, else derived.

        Deriving reads the passphrase (``DMP_PASSPHRASE``, ``passphrase_file``,
        a prompt) and runs Argon2id, with the ``verify_pubkey`` tripwire.

        Raises:
            PassphraseError: no passphrase, or it derives another identity.
        """
        from dmp.apps.client.config import PassphraseError, read_passphrase

        if use_agent:
            held = self.agent_keys()
            if held is not None:
                return held
        from dmp.apps.client.wiring import kdf_params
        from dmp.domain.crypto import derive_identity

        cfg = self.config
        prompt = _getpass if _stdin_is_tty() else None
        passphrase = read_passphrase(cfg, environ=self.environ, prompt=prompt)
        try:
            params = kdf_params(self.environ)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        keys = derive_identity(passphrase, cfg.salt if cfg.kdf_salt else None, params)
        derived = keys.ed25519_public.hex()
        if not cfg.verify_pubkey:
            cfg.verify_pubkey = derived
            self.save()
        elif cfg.verify_pubkey.lower() != derived:
            if self.environ.get("DMP_PASSPHRASE_OVERRIDE_VERIFY") == "1":
                self.warn(
                    f"warning: this passphrase derives signing key {derived[:16]}…, not "
                    f"{cfg.verify_pubkey[:16]}… from config.yaml; continuing because "
                    "DMP_PASSPHRASE_OVERRIDE_VERIFY=1"
                )
            else:
                raise PassphraseError(
                    f"passphrase mismatch: it derives signing key {derived[:16]}…, but this "
                    f"config was first used with {cfg.verify_pubkey[:16]}… (a typo? "
                    "DMP_PASSPHRASE_OVERRIDE_VERIFY=1 bypasses this check once)"
                )
        return keys


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _getpass(prompt: str) -> str:
    import getpass

    return getpass.getpass(prompt)


def _run(coro_fn: Callable[..., Any], *args: Any) -> Any:
    """Run one async use case to completion on a fresh event loop."""
    import anyio

    return anyio.run(coro_fn, *args)


# ---------------------------------------------------------------- init


def cmd_init(ctx: Context, ns: argparse.Namespace) -> int:
    import secrets

    from dmp.apps.client.config import CONFIG_FILE, ClientConfig, save_config
    from dmp.apps.client.wiring import endpoint_host, parse_resolver_list

    path = ctx.home / CONFIG_FILE
    if path.exists() and not ns.force:
        raise CliError(f"config already exists at {path} (use --force to overwrite)")
    username, domain = ns.username.strip(), ns.domain
    if "@" in username:
        user, _, host = username.partition("@")
        if not user or not host:
            raise CliError(f"both user and host must be non-empty in {username!r}")
        username = user
        domain = domain or host
    if not username or any(c.isspace() for c in username) or "/" in username:
        raise CliError(f"invalid username {ns.username!r}")
    domain = (domain or DEFAULT_DOMAIN).strip().rstrip(".").lower()
    endpoint = (ns.endpoint or "").strip().rstrip("/")
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    if ns.no_default_resolvers:
        resolvers: list[str] = []
        if ns.dns_resolvers:
            raise CliError("--dns-resolvers and --no-default-resolvers contradict each other")
    elif ns.dns_resolvers:
        try:
            resolvers = parse_resolver_list(ns.dns_resolvers)
        except ValueError as exc:
            raise CliError(f"invalid --dns-resolvers: {exc}") from None
    else:
        resolvers = list(DEFAULT_RESOLVERS)
    if not 1 <= ns.dns_port <= 65535:
        raise CliError(f"--dns-port {ns.dns_port} is outside 1-65535")
    cfg = ClientConfig(
        username=username,
        domain=domain,
        endpoint=endpoint,
        http_token=ns.http_token or None,
        dns_host=ns.dns_host or None,
        dns_port=ns.dns_port,
        dns_resolvers=resolvers,
        identity_domain=(ns.identity_domain or "").strip().rstrip(".").lower(),
        kdf_salt=secrets.token_bytes(32).hex(),
        allow_tofu=bool(ns.allow_tofu),
        dnssec_required=bool(ns.require_dnssec),
    )
    host = endpoint_host(endpoint) if endpoint else ""
    if host and not ns.no_probe_local_dns:
        from dmp.apps.client.wiring import parse_resolver, probe_node_dns

        ports = [p for h, p in map(parse_resolver, resolvers) if h == host]
        if ns.dns_host and ns.dns_host.strip().lower() == host:
            ports.append(ns.dns_port)
        ports += [p for p in PROBE_PORTS if p not in ports]
        probe_ports = tuple(dict.fromkeys(ports))
        port = _run(probe_node_dns, host, probe_ports)
        if port is not None:
            cfg.local_node_dns_server = host
            cfg.local_node_dns_port = port
            ctx.out(f"  found the node's DNS at {host}:{port}")
        else:
            ctx.warn(
                f"  note: no dmp node answered DNS on {host} "
                f"(ports {', '.join(map(str, probe_ports))}); "
                "set local_node_dns_server/local_node_dns_port or run `dnsmesh doctor --repair`"
            )
    written = save_config(ctx.home, cfg)
    ctx.out(f"wrote config to {written}")
    ctx.out(
        "Next: set DMP_PASSPHRASE (or passphrase_file in the config), then `dnsmesh identity show`."
    )
    ctx.out(
        "Back up this config: without its kdf_salt the passphrase alone cannot recover the identity."
    )
    return EXIT_OK


# ---------------------------------------------------------------- identity (offline)


def cmd_identity_show(ctx: Context, ns: argparse.Namespace) -> int:
    keys = ctx.unlock()
    cfg = ctx.config
    data = {
        "username": cfg.username,
        "domain": cfg.effective_domain,
        "public_key": keys.x25519_public.hex(),
        "signing_public_key": keys.ed25519_public.hex(),
        "user_id": keys.user_id.hex(),
    }
    if ns.json:
        ctx.out(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            ctx.out(f"{key}: {value}")
    return EXIT_OK


def _use_cases(ctx: Context, fn: Callable[[Any], Any], *, needs_writer: bool = False) -> Any:
    """Unlock, build the adapters (wiring), run ``await fn(deps)``, close everything."""
    from dmp.apps.client.wiring import NO_WRITER_REASON, has_writer, open_deps

    cfg = ctx.config
    if needs_writer and not has_writer(cfg):
        raise CliError(f"{NO_WRITER_REASON} (config: {ctx.home / 'config.yaml'})")
    keys = ctx.unlock()

    async def go() -> Any:
        async with open_deps(
            cfg, keys, home=ctx.home, tokens_dir=ctx.tokens_home, environ=ctx.environ
        ) as deps:
            return await fn(deps)

    return _run(go)


def _owner_text(owner: Any) -> str:
    return str(owner.to_text(omit_final_dot=True))


def cmd_identity_publish(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client.identity import publish_identity

    if ns.ttl < 1:
        raise CliError("--ttl must be positive")
    done = _use_cases(
        ctx,
        lambda deps: publish_identity(deps, ttl=ns.ttl, advertise_v2=ns.advertise_v2),
        needs_writer=True,
    )
    ctx.out(f"published identity to {_owner_text(done.owner)}")
    ctx.out(f"  fingerprint: {done.fingerprint}")
    ctx.out(f"  others can resolve you with: dnsmesh identity fetch {ctx.config.address}")
    return EXIT_OK


def cmd_identity_refresh_prekeys(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client.identity import refresh_prekeys

    if ns.count < 1:
        raise CliError("--count must be at least 1")
    if ns.ttl < 1:
        raise CliError("--ttl must be positive")

    async def go(deps: Any) -> tuple[Any, int]:
        done = await refresh_prekeys(deps, count=ns.count, ttl=ns.ttl)
        return done, len(deps.prekeys.ids())

    done, live = _use_cases(ctx, go, needs_writer=True)
    ctx.out(f"published {len(done.prekey_ids)}/{ns.count} prekeys to {_owner_text(done.owner)}")
    ctx.out(f"  local live prekey count: {live}")
    return EXIT_OK


def cmd_identity_fetch(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client.identity import fetch_identity

    if ns.via_bootstrap:
        raise CliError("--via-bootstrap (cluster discovery) is not supported by dmp yet")
    who = ns.username.strip()
    if not who or who.startswith("@") or who.endswith("@"):
        raise CliError(f"invalid user {ns.username!r}: expected user or user@host")
    found = _use_cases(
        ctx,
        lambda deps: fetch_identity(
            deps,
            who,
            domain=ns.domain,
            add=ns.add,
            accept_fingerprint=ns.accept_fingerprint,
        ),
    )
    rec = found.record
    if ns.json:
        data = {
            "username": rec.username,
            "address": found.address,
            "public_key": rec.x25519_public.hex(),
            "signing_public_key": rec.ed25519_public.hex(),
            "ts": rec.ts,
            "dns_name": _owner_text(found.chosen.owner),
            "fingerprint": found.fingerprint,
        }
        if found.contact_name:
            data["contact"] = found.contact_name
        ctx.out(json.dumps(data, indent=2))
    else:
        ctx.out(f"address:            {found.address}")
        ctx.out(f"username:           {rec.username}")
        ctx.out(f"public_key:         {rec.x25519_public.hex()}")
        ctx.out(f"signing_public_key: {rec.ed25519_public.hex()}")
        ctx.out(f"fingerprint:        {found.fingerprint}")
        ctx.out(f"published at:       {rec.ts}")
        ctx.out(f"found at:           {_owner_text(found.chosen.owner)}")
    for fp in found.dropped:
        ctx.warn(f"  ignored revoked or superseded identity {fp}")
    if found.contact_name:
        if found.rotated_from is not None:
            ctx.warn(
                f"  pin of {found.contact_name} follows a verified key rotation from "
                f"{found.rotated_from.hex()[:16]}…"
            )
        if not ns.json:
            ctx.out(f"added contact {found.contact_name} (pinned signing key)")
    return EXIT_OK


def _new_passphrase(ctx: Context, ns: argparse.Namespace) -> str:
    if ns.new_passphrase_file:
        path = Path(ns.new_passphrase_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}") from None
    elif "DMP_NEW_PASSPHRASE" in ctx.environ:
        text = ctx.environ["DMP_NEW_PASSPHRASE"]
    elif _stdin_is_tty():
        text = _getpass("New passphrase: ")
        if _getpass("New passphrase again: ") != text:
            raise CliError("the two new passphrases differ")
    else:
        raise CliError("no new passphrase: use --new-passphrase-file or DMP_NEW_PASSPHRASE")
    if not text:
        raise CliError("the new passphrase is empty")
    return text


def cmd_identity_rotate(ctx: Context, ns: argparse.Namespace) -> int:
    if not ns.experimental:
        raise CliError(
            "identity rotate is experimental (its record format may still change): "
            "pass --experimental to use it"
        )
    from dmp.apps.client.identity import rotate_identity
    from dmp.apps.client.wiring import kdf_params
    from dmp.domain.crypto import derive_identity
    from dmp.domain.rotation import RevocationReason

    cfg = ctx.config
    new_pass = _new_passphrase(ctx, ns)
    new_keys = derive_identity(
        new_pass, cfg.salt if cfg.kdf_salt else None, kdf_params(ctx.environ)
    )
    if not ns.yes:
        if not _stdin_is_tty():
            raise CliError("refusing to rotate without confirmation: pass --yes")
        answer = input(
            f"Rotate {cfg.address} to signing key {new_keys.ed25519_public.hex()[:16]}… "
            f"(reason {ns.reason})? Type 'yes': "
        )
        if answer.strip().lower() != "yes":
            raise CliError("rotation cancelled")
    reason = RevocationReason[ns.reason.upper()]
    done = _use_cases(
        ctx,
        lambda deps: rotate_identity(
            deps,
            new_keys,
            reason=reason,
            ttl=ns.ttl,
            exp_seconds=ns.exp_seconds,
            advertise_v2=ns.advertise_v2,
        ),
        needs_writer=True,
    )
    cfg.verify_pubkey = new_keys.ed25519_public.hex()
    if ns.new_passphrase_file and cfg.passphrase_file:
        cfg.passphrase_file = str(Path(ns.new_passphrase_file).expanduser())
    ctx.save()
    ctx.out(f"published rotation to {_owner_text(done.rotation_owner)}")
    if done.revocation is not None:
        ctx.out(f"  revoked the old key ({ns.reason})")
    ctx.out(f"published new identity to {_owner_text(done.identity.owner)}")
    ctx.out(f"  new signing key: {new_keys.ed25519_public.hex()}")
    ctx.out("  from now on, use the NEW passphrase")
    return EXIT_OK


# ---------------------------------------------------------------- contacts


def cmd_contacts_add(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client.contacts import add_contact
    from dmp.domain.errors import LowOrderKey
    from dmp.domain.keys import check_verify_key

    name = ns.name.strip()
    cfg = ctx.config
    contact = add_contact(cfg, name, ns.pubkey, signing_key_hex=ns.signing_key)
    if contact.spk:
        try:
            check_verify_key(bytes.fromhex(contact.spk))
        except LowOrderKey:
            raise CliError("signing key is a low-order point and can never be trusted") from None
    ctx.save()
    if contact.spk:
        ctx.out(f"added contact {name} (pinned signing key)")
    else:
        ctx.out(f"added contact {name}")
        ctx.warn(
            "  warning: no signing key pinned for this contact. While no contact has one, "
            "`dnsmesh recv` trusts any validly signed message on first use; pass "
            "--signing-key, or use `dnsmesh identity fetch <user@host> --add` to pin both keys."
        )
    return EXIT_OK


def cmd_contacts_list(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client.contacts import list_contacts

    views = list_contacts(ctx.config)
    if not views:
        ctx.out(
            "(no contacts yet: `dnsmesh identity fetch <user@host> --add` "
            "or `dnsmesh contacts add <name> <pubkey_hex>`)"
        )
        return EXIT_OK
    width = max(len(v.name) for v in views)
    rows, plain = [], []
    for v in views:
        state = "pinned" if v.pinned else "UNPINNED"
        pub = v.contact.pub or "-" * 64
        rows.append([v.name, pub, state, v.zone])
        plain.append(f"{v.name:<{width}}  {pub}  ({state})")
    ctx.table(["name", "x25519 public key", "signing key", "zone"], rows, plain)
    return EXIT_OK


# ---------------------------------------------------------------- send / recv


def cmd_send(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client.messaging import send_message

    if not ns.message:
        raise CliError("the message is empty")
    done = _use_cases(
        ctx, lambda deps: send_message(deps, ns.recipient, ns.message), needs_writer=True
    )
    prekey = f"prekey {done.prekey_id}" if done.prekey_id else "long-term key"
    ctx.out(
        f"sent → {done.recipient} ({done.total_chunks} chunks, {prekey}) "
        f"(+ {done.claims_sent}/{done.claims_attempted} claim publishes)"
    )
    for line in done.claim_errors:
        ctx.warn(f"  claim not accepted: {line}")
    if done.claims_attempted and not done.claims_sent:
        ctx.warn(
            "  warning: no claim was accepted; the recipient still finds the message "
            "by walking your zone once they have pinned you"
        )
    return EXIT_OK


def _sender_name(label: str, contact: str | None, spk: bytes) -> str:
    if label:
        return label
    if contact:
        return contact
    return f"{spk.hex()[:16]}... (unpinned sender)"


def _print_message(ctx: Context, who: str, ts: int, body: bytes) -> None:
    ctx.out(f"from {who}")
    ctx.out(f"  ts={ts}")
    for line in body.decode("utf-8", errors="replace").splitlines() or [""]:
        ctx.out(f"  {line}")
    ctx.out()


def cmd_recv(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client.messaging import receive_messages

    got = _use_cases(
        ctx,
        lambda deps: receive_messages(
            deps, primary_only=ns.primary_only, skip_primary=ns.skip_primary
        ),
    )
    for msg in got.delivered:
        _print_message(
            ctx,
            _sender_name(msg.sender_label, msg.contact, msg.sender_spk),
            msg.timestamp,
            msg.body,
        )
    if not got.delivered:
        ctx.out("(no new messages)")
    if got.queued:
        ctx.out(
            f"({len(got.queued)} new first-contact message(s) from unpinned senders: "
            "`dnsmesh intro list`)"
        )
    if got.failed_lookups:
        ctx.warn(f"  warning: {got.failed_lookups} of {got.lookups} DNS lookups failed")
    if got.prekey_deletes_failed:
        ctx.warn(
            f"  warning: {got.prekey_deletes_failed} used prekey record(s) could not be "
            "deleted from DNS"
        )
    return EXIT_OK


# ---------------------------------------------------------------- intro


def _intro_queue(ctx: Context) -> Any:
    from dmp.apps.client.wiring import open_intro_queue

    ctx.config  # noqa: B018 - a missing config is the error to report first
    return open_intro_queue(ctx.home)


def cmd_intro_list(ctx: Context, ns: argparse.Namespace) -> int:
    import time

    from dmp.apps.client.intros import list_intros

    queue = _intro_queue(ctx)
    try:
        intros = list_intros(queue)
    finally:
        queue.close()
    if not intros:
        ctx.out("(no pending intros)")
        return EXIT_OK
    rows, plain = [], []
    for i in intros:
        who = i.sender_label or f"spk {i.sender_spk.hex()[:16]}…"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.ts))
        text = i.body.decode("utf-8", errors="replace")
        rows.append([str(i.intro_id), who, i.sender_zone, when, text])
        plain.append(f"#{i.intro_id}  from {who}  zone {i.sender_zone}  ts={i.ts}")
        plain += [f"    {line}" for line in text.splitlines() or [""]]
    ctx.table(["id", "from", "zone", "sent", "message"], rows, plain)
    ctx.out(
        "accept: `dnsmesh intro accept <id>` · trust and pin: `dnsmesh intro trust <id>` · block: `dnsmesh intro block <id>`"
    )
    return EXIT_OK


def cmd_intro_accept(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client.intros import accept_intro

    queue = _intro_queue(ctx)
    try:
        intro = accept_intro(queue, ns.intro_id)
    finally:
        queue.close()
    who = intro.sender_label or f"{intro.sender_spk.hex()[:16]}... (unpinned sender)"
    _print_message(ctx, who, intro.ts, intro.body)
    return EXIT_OK


def cmd_intro_trust(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client.intros import trust_intro

    queue = _intro_queue(ctx)
    try:
        intro, name = trust_intro(
            queue, ctx.config, ns.intro_id, label=ns.label, username=ns.username
        )
        ctx.save()
    finally:
        queue.close()
    _print_message(ctx, intro.sender_label or name, intro.ts, intro.body)
    ctx.out(f"pinned {name} (signing key {intro.sender_spk.hex()[:16]}…, zone {intro.sender_zone})")
    contact = ctx.config.contacts[name]
    if not contact.pub:
        ctx.out(
            "  to reply, fetch their encryption key: "
            f"`dnsmesh identity fetch {contact.username or '<user>'}@{intro.sender_zone} --add`"
        )
    return EXIT_OK


def cmd_intro_block(ctx: Context, ns: argparse.Namespace) -> int:
    import time

    from dmp.apps.client.intros import block_intro

    queue = _intro_queue(ctx)
    try:
        intro = block_intro(queue, ns.intro_id, now=int(time.time()), note=ns.note)
    finally:
        queue.close()
    ctx.out(
        f"blocked sender {intro.sender_spk.hex()[:16]}… (intro #{intro.intro_id} dropped; "
        "later messages from this key are ignored)"
    )
    return EXIT_OK


# ---------------------------------------------------------------- registration


def _registration_url(ns: argparse.Namespace) -> tuple[str, str]:
    from dmp.ports.client_state import node_host

    host = node_host(ns.node)
    return host, f"{ns.scheme}://{host}"


def cmd_register(ctx: Context, ns: argparse.Namespace) -> int:
    import time

    from dmp.adapters.client_state import FileTokenFiles
    from dmp.adapters.http_client import RegistrationClient
    from dmp.apps.client.registration import register

    host, url = _registration_url(ns)
    keys = ctx.unlock()
    tokens = FileTokenFiles(ctx.tokens_home)

    async def go() -> Any:
        async with RegistrationClient(url) as api:
            return await register(
                api,
                host,
                keys=keys,
                config=ctx.config,
                tokens=tokens,
                now=int(time.time()),
                subject=ns.subject,
            )

    saved = _run(go)
    ctx.out(f"registered {saved.subject} on {host}")
    ctx.out(f"  token saved to {tokens.path_for(host)}")
    ctx.out(f"  expires: {_utc(saved.expires_at)}")
    endpoint_host = ctx.config.endpoint and _registration_host(ctx.config.endpoint)
    if endpoint_host != host:
        ctx.out(
            f"  note: your endpoint is {ctx.config.endpoint or '(none)'}; the token is used for writes to {host} only"
        )
    return EXIT_OK


def _registration_host(endpoint: str) -> str:
    from dmp.ports.client_state import ClientStateError, node_host

    try:
        return node_host(endpoint)
    except ClientStateError:
        return ""


def _utc(ts: int | None) -> str:
    import time

    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def cmd_tsig_register(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.adapters.http_client import RegistrationClient
    from dmp.apps.client.config import save_config
    from dmp.apps.client.registration import tsig_register

    if not 1 <= ns.dns_port <= 65535:
        raise CliError(f"--dns-port {ns.dns_port} is outside 1-65535")
    host, url = _registration_url(ns)
    keys = ctx.unlock()
    cfg = ctx.config

    async def go() -> Any:
        async with RegistrationClient(url) as api:
            return await tsig_register(
                api,
                host,
                keys=keys,
                config=cfg,
                subject=ns.subject,
                dns_server=ns.dns_server,
                dns_port=ns.dns_port,
                persist=lambda c: save_config(ctx.home, c),
            )

    done = _run(go)
    ctx.out(f"registered {done.subject} on {host}")
    ctx.out(f"  TSIG key:  {done.key_name}")
    ctx.out(f"  algorithm: {done.algorithm}")
    ctx.out(f"  zone:      {done.zone}")
    ctx.out(f"  DNS:       {done.dns_server}:{done.dns_port}/udp")
    ctx.out("  scope:")
    for suffix in sorted(done.allowed_suffixes):
        ctx.out(f"    - {suffix}")
    ctx.out(f"  expires:   {_utc(done.expires_at)}")
    ctx.out(
        "  from now on `dnsmesh identity publish` and `dnsmesh send` write with DNS UPDATE + TSIG"
    )
    return EXIT_OK


# ---------------------------------------------------------------- doctor


def _doctor_node_dns(ctx: Context, repair: bool) -> tuple[str, str, str]:
    """Does our node answer DNS where the config says (``--repair``: find it and save it)?"""
    from dmp.apps.client.wiring import endpoint_host, parse_resolver, probe_node_dns

    cfg = ctx.config
    name = "local DNS endpoint responds"
    saved = (cfg.local_node_dns_server, cfg.local_node_dns_port)
    if saved[0] and saved[1] and not repair:
        if _run(probe_node_dns, saved[0], (saved[1],)) == saved[1]:
            return "PASS", name, f"{saved[0]}:{saved[1]} answered a probe"
        return (
            "FAIL",
            name,
            (f"no dmp node answered at {saved[0]}:{saved[1]}; try `dnsmesh doctor --repair`"),
        )
    host = endpoint_host(cfg.endpoint) if cfg.endpoint else saved[0]
    if not host:
        return "INFO", name, "no endpoint or local_node_dns_server to probe"
    ports = [saved[1]] if saved[1] and saved[0] == host else []
    for entry in cfg.dns_resolvers:
        try:
            rhost, rport = parse_resolver(entry)
        except ValueError:
            continue
        if rhost == host:
            ports.append(rport)
    ports += list(PROBE_PORTS)
    probe_ports = tuple(dict.fromkeys(ports))
    found = _run(probe_node_dns, host, probe_ports)
    if found is None:
        verdict = "FAIL" if saved[1] else "WARN"
        tried = ", ".join(map(str, probe_ports))
        return verdict, name, f"no dmp node answered DNS on {host} (ports {tried})"
    if (host, found) == saved:
        return "PASS", name, f"{host}:{found} answered a probe"
    if repair:
        cfg.local_node_dns_server, cfg.local_node_dns_port = host, found
        ctx.save()
        return "PASS", name, f"{host}:{found} answered; saved as local_node_dns_server/port"
    return "WARN", name, f"{host}:{found} answered but is not saved; run `dnsmesh doctor --repair`"


def cmd_doctor(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client.wiring import PUBLIC_RESOLVER_ADDRESSES

    cfg = ctx.config
    checks: list[tuple[str, str, str]] = []

    async def health() -> str:
        from dmp.adapters.http_client import RegistrationClient

        async with RegistrationClient(cfg.endpoint, timeout=5.0) as api:
            body = await api.health()
        return str(body.get("status", "?"))

    if cfg.endpoint:
        from dmp.ports.transport import TransportError

        try:
            status = _run(health)
        except TransportError as exc:
            checks.append(("FAIL", "endpoint reachable", _one_line(exc)))
        else:
            verdict = "PASS" if status == "ok" else "WARN"
            checks.append((verdict, "endpoint reachable", f"{cfg.endpoint}/health says {status!r}"))
    else:
        checks.append(("INFO", "endpoint", "none configured (writes need a TSIG key)"))

    checks.append(_doctor_node_dns(ctx, ns.repair))
    if cfg.dns_host and cfg.dns_host in PUBLIC_RESOLVER_ADDRESSES:
        checks.append(
            ("WARN", "dns_host", f"{cfg.dns_host} is a public recursive resolver, not your node")
        )
    if cfg.tsig_key_name and cfg.tsig_secret_hex:
        checks.append(
            (
                "PASS",
                "TSIG registered",
                f"key={cfg.tsig_key_name} zone={cfg.tsig_zone} server={cfg.tsig_dns_server}:{cfg.tsig_dns_port}",
            )
        )
    else:
        checks.append(
            (
                "INFO",
                "TSIG registered",
                "no (writes go over HTTP; `dnsmesh tsig register` switches to DNS UPDATE)",
            )
        )

    ctx.out()
    ctx.out("CONFIG")
    ctx.out("------")
    ctx.out(f"  config: {ctx.home / 'config.yaml'}")
    ctx.out(f"  username: {cfg.username}")
    ctx.out(f"  domain: {cfg.effective_domain}")
    ctx.out(f"  endpoint: {cfg.endpoint or '(none)'}")
    ctx.out(f"  resolvers: {', '.join(cfg.dns_resolvers) or '(none)'}")
    ctx.out()
    ctx.out("CHECKS")
    ctx.out("------")
    for verdict, name, detail in checks:
        ctx.out(f"  {verdict:<5} {name}")
        ctx.out(f"        {detail}")
    failed = [c for c in checks if c[0] == "FAIL"]
    ctx.out()
    ctx.out(f"DOCTOR: {len(failed)} problem(s)" if failed else "DOCTOR: clean")
    return EXIT_USER if failed else EXIT_OK


# ---------------------------------------------------------------- resolvers


def cmd_resolvers_list(ctx: Context, ns: argparse.Namespace) -> int:
    resolvers = ctx.config.dns_resolvers
    if not resolvers:
        ctx.out("(no resolvers configured: reads go to the node directly)")
    for entry in resolvers:
        ctx.out(entry)
    return EXIT_OK


def cmd_resolvers_discover(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client.wiring import PUBLIC_RESOLVERS, probe_resolver

    candidates = list(PUBLIC_RESOLVERS)
    override = ctx.environ.get("DMP_RESOLVER_CANDIDATES", "").strip()
    if override:  # test hook: probe these instead of the public list
        candidates = [("candidate", a.strip()) for a in override.split(",") if a.strip()]

    async def probe_all() -> list[tuple[str, str, float | None, str]]:
        import anyio

        from dmp.ports.transport import TransportError

        results: list[tuple[str, str, float | None, str]] = [
            (n, a, None, "") for n, a in candidates
        ]

        async def one(i: int, name: str, address: str) -> None:
            try:
                with anyio.fail_after(ns.timeout + 0.5):
                    latency = await probe_resolver(address, ns.timeout)
                results[i] = (name, address, latency, "ok")
            except (TransportError, TimeoutError, ValueError) as exc:
                results[i] = (name, address, None, str(exc) or type(exc).__name__)

        async with anyio.create_task_group() as tg:
            for i, (name, address) in enumerate(candidates):
                tg.start_soon(one, i, name, address)
        return results

    results = _run(probe_all)
    working = [a for _, a, lat, _ in results if lat is not None]
    rows, plain = [], []
    for name, address, latency, detail in results:
        status = f"{latency * 1000:.0f} ms" if latency is not None else "FAIL"
        rows.append([name, address, status, "" if latency is not None else detail])
        plain.append(f"{address:<18} {name:<11} {status}")
    ctx.table(["resolver", "address", "result", "detail"], rows, plain)
    if not working:
        raise CliError("no resolver answered", EXIT_NETWORK)
    if ns.save:
        ctx.config.dns_resolvers = working
        path = ctx.save()
        ctx.out(f"saved {len(working)} resolver(s) to {path}")
    return EXIT_OK


# ---------------------------------------------------------------- tokens


def cmd_token_list(ctx: Context, ns: argparse.Namespace) -> int:
    import time

    from dmp.adapters.client_state import FileTokenFiles

    tokens = FileTokenFiles(ctx.tokens_home)
    saved = tokens.list()
    if ns.json:
        entries = [
            {
                "node": t.node,
                "subject": t.subject,
                "expires_at": t.expires_at,
                "registered_spk": t.registered_spk,
                "saved_at": t.saved_at,
                "path": str(tokens.path_for(t.node)),
            }
            for t in saved
        ]
        ctx.out(json.dumps(entries, indent=2))
        return EXIT_OK
    if not saved:
        ctx.out("(no saved tokens)")
        return EXIT_OK
    now = int(time.time())
    rows, plain = [], []
    for t in saved:
        when = _utc(t.expires_at) + ("" if t.is_usable(now) else "  (EXPIRED)")
        rows.append([t.node, t.subject, when])
        plain.append(f"{t.node}  {t.subject}  expires {when}")
    ctx.table(["node", "subject", "expires"], rows, plain)
    return EXIT_OK


def cmd_token_forget(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.adapters.client_state import FileTokenFiles
    from dmp.ports.client_state import node_host

    tokens = FileTokenFiles(ctx.tokens_home)
    host = node_host(ns.node)
    if not tokens.forget(host):
        raise CliError(f"no saved token for {host}")
    ctx.out(f"forgot the token for {host}")
    return EXIT_OK


# ---------------------------------------------------------------- agent


def cmd_agent_start(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client import agent

    if not ns.idle_timeout > 0:
        raise CliError("--idle-timeout must be positive")
    cfg = ctx.config
    keys = ctx.unlock(use_agent=False)  # always from the passphrase
    spk = keys.ed25519_public.hex()
    if cfg.verify_pubkey.lower() != spk:
        raise CliError(
            "the agent only holds the identity recorded in config.yaml (verify_pubkey); "
            "this passphrase derives another one"
        )
    server = agent.AgentServer(
        ctx.home, keys.x25519_private, cfg.kdf_salt, spk, idle_timeout_s=ns.idle_timeout
    )
    server.bind()
    lines = [
        f"  socket: {server.path}",
        f"  identity: {cfg.address}, signing key {spk[:16]}…",
        f"  idle timeout: {ns.idle_timeout:g} s; `dnsmesh agent stop` ends it sooner",
        "  while it runs, commands on this config home need no passphrase",
    ]
    if ns.foreground:
        ctx.out(f"agent serving in the foreground (pid {os.getpid()})")
        for line in lines:
            ctx.out(line)
        sys.stdout.flush()
        agent.serve_foreground(server)
        return EXIT_OK
    pid = agent.daemonize(server)
    ctx.out(f"agent started (pid {pid})")
    for line in lines:
        ctx.out(line)
    return EXIT_OK


def cmd_agent_status(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client import agent

    info = agent.status(ctx.home)
    if info is None:
        ctx.out(f"no agent running for {ctx.home}")
        return EXIT_USER
    spk = str(info.get("verify_pubkey", ""))
    ctx.out(f"agent running (pid {info.get('pid')}) for {info.get('home')}")
    ctx.out(f"  signing key: {spk[:16]}…")
    ctx.out(
        f"  idle timeout: {float(info.get('idle_timeout_s', 0)):g} s "
        f"({float(info.get('idle_left_s', 0)):.0f} s left unless used)"
    )
    ctx.out(f"  requests served: {info.get('requests')}")
    if agent.agent_mode(ctx.environ) == "off":
        ctx.out(f"  note: {agent.AGENT_ENV}=off here, so commands do not use it")
    return EXIT_OK


def cmd_agent_stop(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.client import agent

    info = agent.stop(ctx.home)
    if info is None:
        ctx.out(f"no agent running for {ctx.home}")
        return EXIT_USER
    ctx.out(f"agent stopped (pid {info.get('pid')})")
    return EXIT_OK


# ---------------------------------------------------------------- node


def cmd_node(ctx: Context, ns: argparse.Namespace) -> int:
    from dmp.apps.node.cli import main as node_main

    argv: list[str] = []
    if ns.dev:
        argv.append("--dev")
    if ns.db_path:
        argv += ["--db-path", ns.db_path]
    if ns.dns_port is not None:
        argv += ["--dns-port", str(ns.dns_port)]
    if ns.http_port is not None:
        argv += ["--http-port", str(ns.http_port)]
    return node_main(["serve", *argv], environ=ctx.environ)


# ---------------------------------------------------------------- dispatch


COMMANDS: dict[tuple[str, str | None], Callable[[Context, argparse.Namespace], int]] = {
    ("init", None): cmd_init,
    ("identity", "show"): cmd_identity_show,
    ("identity", "publish"): cmd_identity_publish,
    ("identity", "refresh-prekeys"): cmd_identity_refresh_prekeys,
    ("identity", "fetch"): cmd_identity_fetch,
    ("identity", "rotate"): cmd_identity_rotate,
    ("contacts", "add"): cmd_contacts_add,
    ("send", None): cmd_send,
    ("recv", None): cmd_recv,
    ("intro", "list"): cmd_intro_list,
    ("intro", "accept"): cmd_intro_accept,
    ("intro", "trust"): cmd_intro_trust,
    ("intro", "block"): cmd_intro_block,
    ("register", None): cmd_register,
    ("tsig", "register"): cmd_tsig_register,
    ("doctor", None): cmd_doctor,
    ("contacts", "list"): cmd_contacts_list,
    ("resolvers", "list"): cmd_resolvers_list,
    ("resolvers", "discover"): cmd_resolvers_discover,
    ("token", "list"): cmd_token_list,
    ("token", "forget"): cmd_token_forget,
    ("node", None): cmd_node,
    ("agent", "start"): cmd_agent_start,
    ("agent", "status"): cmd_agent_status,
    ("agent", "stop"): cmd_agent_stop,
}


def _action(ns: argparse.Namespace) -> str | None:
    return getattr(ns, f"{ns.command}_command", None)


def _exit_code(exc: BaseException) -> int:
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and code in (EXIT_USER, EXIT_NETWORK):
        return code
    return EXIT_USER


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    held_keys: IdentityKeys | None = None,
) -> int:
    """Entry point of ``dnsmesh``; returns the exit code.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when None).
        environ: the environment (``os.environ`` when None).
        held_keys: the identity, already unlocked (the agent running a
            command); used when it matches the config's ``verify_pubkey``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    env: Mapping[str, str] = os.environ if environ is None else environ
    try:
        ns = build_parser().parse_args(args)
    except SystemExit as exc:  # --help, or a usage error (already printed)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USER
    if held_keys is None and ns.command in ("send", "recv"):
        done = _run_in_agent(ns, args, env)
        if done is not None:
            return done
    handler = COMMANDS[(ns.command, _action(ns))]
    try:
        code = handler(Context(ns, env, held_keys), ns)
        return flush_stdout() or code
    except BrokenPipeError:  # `dnsmesh contacts list | head -1`: stop quietly
        return stdout_gone()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the CLI's single error edge
        if ns.debug:
            import traceback

            traceback.print_exception(exc)
        leaf = _leaf(exc)
        message = _one_line(leaf)
        if _is_expected(leaf):
            code = _exit_code(leaf)
        else:
            code = EXIT_USER
            message = f"unexpected {type(leaf).__name__}: {message} (--debug shows a traceback)"
        print(f"{PROG}: {message}", file=sys.stderr)
        return code


def _run_in_agent(ns: argparse.Namespace, args: list[str], env: Mapping[str, str]) -> int | None:
    """Hand ``send``/``recv`` to the agent of the config home; None: run it here."""
    from dmp.apps.client import agent

    if agent.agent_mode(env) != "on":
        return None
    home = agent.resolve_home(ns.config_home, env)
    if not agent.socket_path(home).exists():
        return None
    try:
        done = agent.try_run(home, args, env)
    except agent.AgentError as exc:
        print(f"{PROG}: {_one_line(exc)}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:  # we stop waiting; the agent finishes the command
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if done is None:
        return None
    code, out, err = done
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


def _leaf(exc: BaseException) -> BaseException:
    """The first meaningful exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        inner = [e for e in exc.exceptions if _is_expected(_leaf(e))]
        exc = inner[0] if inner else exc.exceptions[0]
    return exc


def _is_expected(exc: BaseException) -> bool:
    """Errors that carry a CLI exit code and a message meant for the user."""
    if isinstance(exc, CliError | OSError):
        return True
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}
    return bool(names & _EXPECTED)


_EXPECTED = frozenset(
    {
        "dmp.apps.client.agent.AgentError",
        "dmp.apps.client.config.ConfigError",
        "dmp.ports.client_state.ClientStateError",
        "dmp.ports.transport.TransportError",
        "dmp.domain.errors.DmpError",
    }
)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
