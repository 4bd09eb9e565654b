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
    if data.get("operator_token"):
        data["operator_token"] = "<set>"
    print(json.dumps(data, default=str, indent=1, sort_keys=True))
    return EXIT_OK


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of ``dmp-node``; returns the exit code.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when None).
        environ: the environment (``os.environ`` when None).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    ns = build_parser().parse_args(args)
    command = ns.command or "serve"
    if command == "serve":
        return _cmd_serve(ns, env)
    if command == "check-config":
        return _cmd_check_config(ns, env)
    return _cmd_admin(ns, env)


# ---------------------------------------------------------------- admin


def _cmd_admin(ns: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """``dmp-node admin ...``: wired to the token and TSIG stores (see module docstring)."""
    return _fail("admin commands are not available in this build", EXIT_FAILED)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
