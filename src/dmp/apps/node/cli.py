"""The ``dmp-node`` console script (layer: apps; also ``python -m dmp.apps.node``).

Sub-commands::

    dmp-node [serve] [--dev] [--db-path P] [--dns-host H] [--dns-port N] ...
    dmp-node check-config [same flags]       # validate, print the effective config
    dmp-node admin token issue|list|revoke|rotate ...
    dmp-node admin audit tail ...
    dmp-node admin tsig list|revoke ...

``serve`` is the default. Flags override DMP_* variables (see
:mod:`dmp.apps.node.config`). Exit codes: 0 ok; 1 an admin operation failed
(unknown token, ambiguous prefix); 2 configuration or usage error, with one
line on stderr naming the variable or flag. Heavy modules (anyio, dnspython,
Quart, sqlite adapters) are imported only by the sub-command that needs them,
so ``dmp-node --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["build_parser", "main"]

# flag -> (variable, help); mirrors config.FLAGS (kept here so --help imports nothing).
_SERVE_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--db-path", "DMP_DB_PATH", "sqlite record store (':memory:' for an in-memory store)"),
    ("--dns-host", "DMP_DNS_HOST", "DNS listen address (default 0.0.0.0)"),
    ("--dns-port", "DMP_DNS_PORT", "DNS UDP+TCP port (default 5353; 0 = any free port)"),
    ("--http-host", "DMP_HTTP_HOST", "HTTP listen address (default 0.0.0.0)"),
    ("--http-port", "DMP_HTTP_PORT", "HTTP port (default 8053; 0 = any free port)"),
    ("--domain", "DMP_DOMAIN", "served zone, when DMP_SERVED_ZONE is not set"),
    ("--served-zone", "DMP_SERVED_ZONE", "served zone (UPDATE zone, TSIG scopes, apex)"),
    ("--node-hostname", "DMP_NODE_HOSTNAME", "node name bound into registration signatures"),
    ("--log-level", "DMP_LOG_LEVEL", "DEBUG, INFO, WARNING, ERROR (default INFO)"),
    ("--log-format", "DMP_LOG_FORMAT", "text or json (default text)"),
    ("--auth-mode", "DMP_AUTH_MODE", "open, legacy or multi-tenant"),
    ("--token-db-path", "DMP_TOKEN_DB_PATH", "bearer-token database"),
    ("--tsig-db-path", "DMP_TSIG_DB_PATH", "TSIG key database"),
    ("--cleanup-interval", "DMP_CLEANUP_INTERVAL", "expired-record sweep period, seconds"),
)
_SERVE_SWITCHES: tuple[tuple[str, str, str], ...] = (
    ("--dns-update", "DMP_DNS_UPDATE_ENABLED", "enable RFC 2136 UPDATE with TSIG"),
    ("--registration", "DMP_REGISTRATION_ENABLED", "enable self-service registration"),
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors and exit code 2."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def _add_serve_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("node settings (override the DMP_* environment)")
    for flag, var, help_ in _SERVE_FLAGS:
        g.add_argument(
            flag, dest=var, default=argparse.SUPPRESS, metavar="VALUE", help=f"{help_} [{var}]"
        )
    for flag, var, help_ in _SERVE_SWITCHES:
        g.add_argument(
            flag,
            dest=var,
            action="store_const",
            const="1",
            default=argparse.SUPPRESS,
            help=f"{help_} [{var}=1]",
        )
    g.add_argument(
        "--dev",
        action="store_true",
        default=argparse.SUPPRESS,
        help="development mode: loopback only, sqlite store under ./var/",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole ``dmp-node`` argument tree."""
    parser = _Parser(
        prog="dmp-node",
        description="DNS Mesh Protocol node: authoritative DNS for signed records, "
        "RFC 2136 UPDATE with TSIG, registration and an HTTP API. "
        "Configured by DMP_* environment variables; flags override them.",
        epilog="With no sub-command, 'serve' runs.",
    )
    _add_serve_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the node (default)", description="Run the node.")
    _add_serve_flags(serve)
    check = sub.add_parser(
        "check-config",
        help="validate the configuration and print it",
        description="Validate the configuration (environment + flags) and print it as JSON.",
    )
    _add_serve_flags(check)

    admin = sub.add_parser(
        "admin",
        help="manage bearer tokens, the audit log and TSIG keys",
        description="Operate directly on the node's token and TSIG databases (no HTTP).",
    )
    admin_sub = admin.add_subparsers(
        dest="admin_command", metavar="AREA", required=True, parser_class=_Parser
    )

    token = admin_sub.add_parser("token", help="bearer tokens", description="Bearer tokens.")
    token.add_argument(
        "--db",
        help="token database (default: DMP_TOKEN_DB_PATH, else <DMP_DB_PATH stem>_tokens.db)",
    )
    tsub = token.add_subparsers(
        dest="token_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    issue = tsub.add_parser(
        "issue",
        help="mint a token (printed once)",
        description="Mint a bearer token; only its sha256 is stored.",
    )
    issue.add_argument("subject", help="who the token is for (user@host)")
    _token_limits(issue)
    issue.add_argument("--note", default="", help="free text kept with the token")
    issue.add_argument(
        "--with-prekey-scope",
        metavar="X25519_HEX",
        help="also allow the prekey names of this X25519 key",
    )
    issue.add_argument("--json", action="store_true", help="print JSON")
    lst = tsub.add_parser(
        "list",
        help="list tokens (never token material)",
        description="List tokens (hash prefix, subject, state).",
    )
    lst.add_argument("--subject", help="only this subject")
    lst.add_argument("--include-revoked", action="store_true", help="show revoked tokens too")
    lst.add_argument("--json", action="store_true", help="print JSON")
    rev = tsub.add_parser(
        "revoke",
        help="revoke a subject's tokens or one by hash prefix",
        description="Revoke every live token of a subject, or one token "
        "by an unambiguous hash prefix.",
    )
    rev.add_argument("target", help="subject (user@host) or token hash prefix")
    rot = tsub.add_parser(
        "rotate",
        help="revoke a subject's live tokens and mint a new one",
        description="Revoke every live token of a subject and mint a new one.",
    )
    rot.add_argument("subject")
    _token_limits(rot)
    rot.add_argument("--json", action="store_true", help="print JSON")

    audit = admin_sub.add_parser("audit", help="token audit log", description="Audit log.")
    audit.add_argument("--db", help="token database (as for 'admin token')")
    asub = audit.add_subparsers(
        dest="audit_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    tail = asub.add_parser(
        "tail",
        help="recent audit rows, newest first",
        description="Recent audit rows (issued, revoked, used, rejected, throttled), newest first.",
    )
    tail.add_argument("--event", choices=("issued", "revoked", "used", "rejected", "throttled"))
    tail.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    tail.add_argument("--json", action="store_true", help="print JSON")

    tsig = admin_sub.add_parser(
        "tsig",
        help="TSIG keys minted by registration",
        description="TSIG keys (the reference has no such command).",
    )
    tsig.add_argument(
        "--db", help="TSIG database (default: DMP_TSIG_DB_PATH, else <DMP_DB_PATH stem>_tsig.db)"
    )
    ksub = tsig.add_subparsers(
        dest="tsig_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    klist = ksub.add_parser(
        "list", help="list TSIG keys (never secrets)", description="List TSIG keys (never secrets)."
    )
    klist.add_argument("--subject", help="only this subject")
    klist.add_argument(
        "--include-revoked", action="store_true", help="show revoked and expired keys too"
    )
    klist.add_argument("--json", action="store_true", help="print JSON")
    krev = ksub.add_parser(
        "revoke",
        help="revoke a key by name, or every key of a subject",
        description="Revoke one TSIG key by name, or every key of a subject.",
    )
    krev.add_argument("target", help="key name or subject (user@host)")
    return parser


def _token_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expires", help="lifetime: 90d, 12h, 300s, 4w (default: never)")
    p.add_argument("--rate", type=float, default=10.0, help="requests per second (default 10)")
    p.add_argument("--burst", type=int, default=50, help="bucket size (default 50)")


def _overrides(ns: argparse.Namespace) -> dict[str, str]:
    return {k: v for k, v in vars(ns).items() if k.startswith("DMP_")}


def _fail(message: str, code: int = EXIT_CONFIG) -> int:
    print(f"dmp-node: {message}", file=sys.stderr)
    return code


def _load(ns: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    from dmp.apps.node.config import load_config

    return load_config(environ, _overrides(ns), dev=bool(getattr(ns, "dev", False)))


def _cmd_serve(ns: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from dmp.apps.node.config import ConfigError

    try:
        config = _load(ns, environ)
    except ConfigError as exc:
        return _fail(str(exc))
    from dmp.apps.node.logging import setup_logging
    from dmp.apps.node.service import StartupError, serve

    setup_logging(config.log_level, config.log_format)
    try:
        return serve(config)
    except (StartupError, ConfigError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_OK


def _cmd_check_config(ns: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import attrs

    from dmp.apps.node.config import ConfigError

    try:
        config = _load(ns, environ)
    except ConfigError as exc:
        return _fail(str(exc))
    data = attrs.asdict(config)
    for secret in ("operator_token", "sync_peer_token"):
        if data.get(secret):
            data[secret] = "<set>"
    if data.get("sync_operator_spk"):
        data["sync_operator_spk"] = data["sync_operator_spk"].hex()
    print(json.dumps(data, default=str, indent=1, sort_keys=True))
    return EXIT_OK


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of ``dmp-node``; returns the exit code.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when None).
        environ: the environment (``os.environ`` when None).
    """
    from dmp.apps.pipes import flush_stdout, stdout_gone

    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    ns = build_parser().parse_args(args)
    command = ns.command or "serve"
    try:
        if command == "serve":
            return _cmd_serve(ns, env)
        admin_or_check = _cmd_check_config if command == "check-config" else _cmd_admin
        code = admin_or_check(ns, env)
    except BrokenPipeError:  # `dmp-node admin token list | head -1`
        return stdout_gone()
    return flush_stdout() or code


# ---------------------------------------------------------------- admin


def _admin_db(ns: argparse.Namespace, environ: Mapping[str, str], kind: str) -> Any:
    """The token or TSIG database path: ``--db``, else the node's configured path.

    Raises:
        ConfigError: the path is in memory or its directory does not exist.
    """
    from pathlib import Path

    from dmp.apps.node.config import ConfigError, store_paths

    path: Any
    if ns.db:
        path, label = Path(ns.db), "--db"
    else:
        path = store_paths(environ)[kind]
        label = {"tokens": "DMP_TOKEN_DB_PATH", "tsig": "DMP_TSIG_DB_PATH"}[kind]
        if path == ":memory:":
            raise ConfigError(label, "the node keeps this store in memory; nothing to administer")
    if not Path(path).parent.is_dir():
        raise ConfigError(label, f"directory {Path(path).parent} does not exist")
    return path


def _cmd_admin(ns: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """``dmp-node admin ...``: directly on the token / TSIG databases (no HTTP)."""
    import anyio

    from dmp.apps.node.admin_tokens import AdminError
    from dmp.apps.node.config import ConfigError

    area = ns.admin_command
    try:
        path = _admin_db(ns, environ, "tsig" if area == "tsig" else "tokens")
        handler = {"token": _admin_token, "audit": _admin_audit, "tsig": _admin_tsig}[area]
        return anyio.run(handler, ns, path)
    except ConfigError as exc:
        return _fail(str(exc))
    except AdminError as exc:
        return _fail(str(exc), EXIT_FAILED)


async def _open_tokens(path: Any) -> Any:
    from dmp.adapters.token_store import SqliteTokenStore
    from dmp.apps.node.admin_tokens import AdminError
    from dmp.ports.tokens import TokenStoreError

    try:
        return await SqliteTokenStore.open(path)
    except TokenStoreError as exc:
        raise AdminError(str(exc)) from None


def _print_issued(issued: Any, as_json: bool) -> None:
    from dmp.apps.node.admin_tokens import token_to_json

    rec = issued.record
    if as_json:
        print(json.dumps({"token": issued.token, **token_to_json(rec)}, indent=1))
        return
    import time

    expires = (
        "never"
        if rec.expires_at is None
        else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.expires_at))
    )
    print(f"token:   {issued.token}")
    print(f"subject: {rec.subject}")
    print(f"hash:    {rec.token_hash[:12]}")
    print(f"expires: {expires}")
    print(f"limit:   {rec.rate_per_sec:g}/s burst {rec.rate_burst}")
    print("(shown once: only its sha256 is stored)")


async def _admin_token(ns: argparse.Namespace, path: Any) -> int:
    import os
    import time

    from dmp.apps.node import admin_tokens as adm

    store = await _open_tokens(path)
    try:
        action = ns.token_command
        expires = adm.parse_duration(ns.expires) if getattr(ns, "expires", None) else None
        if action == "issue":
            issued = await adm.issue_token(
                store, store, ns.subject, random_bytes=os.urandom, expires_in_s=expires,
                rate_per_sec=ns.rate, rate_burst=ns.burst, note=ns.note,
                prekey_x25519=ns.with_prekey_scope,
            )  # fmt: skip
            _print_issued(issued, ns.json)
        elif action == "list":
            records = await adm.list_tokens(
                store, subject=ns.subject, include_revoked=ns.include_revoked
            )
            if ns.json:
                print(json.dumps([adm.token_to_json(r) for r in records], indent=1))
            else:
                print(adm.format_tokens(records, time.time()))
        elif action == "revoke":
            revoked = await adm.revoke_tokens(store, store, ns.target)
            for rec in revoked:
                print(f"revoked {rec.token_hash[:12]} ({rec.subject})")
        else:  # rotate
            revoked, issued = await adm.rotate_tokens(
                store, store, ns.subject, random_bytes=os.urandom, expires_in_s=expires,
                rate_per_sec=ns.rate, rate_burst=ns.burst,
            )  # fmt: skip
            if not ns.json:
                for rec in revoked:
                    print(f"revoked {rec.token_hash[:12]} ({rec.subject})")
            _print_issued(issued, ns.json)
    finally:
        await store.aclose()
    return EXIT_OK


async def _admin_audit(ns: argparse.Namespace, path: Any) -> int:
    from dmp.apps.node import admin_tokens as adm

    store = await _open_tokens(path)
    try:
        rows = await adm.audit_tail(store, limit=ns.limit, event=ns.event)
    finally:
        await store.aclose()
    if ns.json:
        print(json.dumps([adm.audit_to_json(r) for r in rows], indent=1))
    else:
        print(adm.format_audit(rows))
    return EXIT_OK


def _tsig_state(key: Any, now: float) -> str:
    if key.revoked:
        return "revoked"
    return "live" if key.expires_at > now else "expired"


def _tsig_json(key: Any, now: float) -> dict[str, Any]:
    return {
        "keyname": key.keyname,
        "algorithm": key.algorithm,
        "subject": key.subject,
        "ed25519_public": key.ed25519_public,
        "allowed_suffixes": list(key.allowed_suffixes),
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked": key.revoked,
        "state": _tsig_state(key, now),
    }


async def _admin_tsig(ns: argparse.Namespace, path: Any) -> int:
    """``admin tsig list|revoke`` (the reference has no such command; behaviour.md §b)."""
    import time

    from dmp.adapters.sqlite_store import SqliteTsigKeyStore
    from dmp.apps.node.admin_tokens import AdminError
    from dmp.ports.store import StoreError

    try:
        store = await SqliteTsigKeyStore.open(path)
    except StoreError as exc:
        raise AdminError(f"cannot open TSIG database {path}: {exc}") from None
    now = time.time()
    try:
        if ns.tsig_command == "list":
            keys = await (store.by_subject(ns.subject.lower()) if ns.subject else store.all())
            if not ns.include_revoked:
                keys = [k for k in keys if _tsig_state(k, now) == "live"]
            if ns.json:
                print(json.dumps([_tsig_json(k, now) for k in keys], indent=1))
            elif not keys:
                print("no TSIG keys")
            else:
                print(f"{'KEY NAME':<48}  {'SUBJECT':<28}  {'STATE':<8}  EXPIRES")
                for k in keys:
                    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(k.expires_at))
                    print(f"{k.keyname:<48}  {k.subject:<28}  {_tsig_state(k, now):<8}  {expires}")
            return EXIT_OK
        target = ns.target.strip().lower()
        if "@" in target:
            names = [k.keyname for k in await store.by_subject(target) if not k.revoked]
        else:
            key = await store.get(target if target.endswith(".") else target + ".")
            names = [key.keyname] if key is not None and not key.revoked else []
        revoked = [name for name in names if await store.revoke(name)]
        if not revoked:
            raise AdminError(f"no live TSIG key matches {ns.target!r}")
        for name in revoked:
            print(f"revoked {name}")
        print("a running node stops accepting it within about a second")
        return EXIT_OK
    finally:
        await store.aclose()
