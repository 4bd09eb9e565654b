"""Node configuration: DMP_* variables and flags to NodeConfig (behaviour.md §c)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmp.apps.node import cli
from dmp.apps.node.config import ConfigError, NodeConfig, load_config, sibling_path

# A minimal environment that passes the cross-field checks on a public bind.
BASE = {"DMP_OPERATOR_TOKEN": "op-secret"}


def cfg(env: dict[str, str] | None = None, **overrides: str) -> NodeConfig:
    return load_config({**BASE, **(env or {})}, overrides)


def error_of(env: dict[str, str], overrides: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(env, overrides or {})
    return info.value


# ---------------------------------------------------------------- defaults


def test_defaults_match_the_reference_node() -> None:
    """Without variables the node uses the reference's defaults (except the DNS rate)."""
    c = cfg()

    assert Path("/var/lib/dmp/dmp.db") == c.db_path
    assert (c.dns_host, c.dns_port) == ("0.0.0.0", 5353)
    assert (c.http_host, c.http_port) == ("0.0.0.0", 8053)
    assert c.dns_ttl == 60
    assert (c.http_rate, c.http_burst) == (10.0, 100.0)
    assert (c.max_ttl, c.max_value_bytes, c.max_values_per_name) == (86400, 2048, 64)
    assert c.cleanup_interval_s == 60.0
    assert (c.log_level, c.log_format) == ("INFO", "text")
    assert Path("/var/lib/dmp/dmp_tokens.db") == c.token_db_path
    assert Path("/var/lib/dmp/dmp_tsig.db") == c.tsig_db_path
    assert c.registration_token_ttl_s == 7_776_000
    assert (c.registration_issued_rate, c.registration_issued_burst) == (10.0, 50.0)
    assert pytest.approx(5 / 3600) == c.registration_endpoint_rate
    assert c.registration_endpoint_burst == 5.0
    assert (c.claim_rate, c.claim_burst, c.claim_max_ttl) == (0.5, 30.0, 86400)
    assert c.claim_provider is True
    assert not (c.dns_update_enabled)
    assert not (c.registration_enabled)
    assert not (c.receiver_claim_notifications)
    assert c.served_zone is None
    assert c.db_synchronous == "NORMAL"


def test_dns_rate_default_does_not_throttle_a_busy_resolver() -> None:
    """The per-source DNS bucket allows thousands of q/s by default; 0 turns it off."""
    c = cfg()

    assert c.dns_rate >= 1000
    assert c.dns_burst >= c.dns_rate
    assert cfg({"DMP_DNS_RATE": "0"}).dns_rate == 0.0


def test_auth_mode_is_legacy_with_a_token_and_open_without() -> None:
    assert cfg().auth_mode == "legacy"
    assert load_config({"DMP_HTTP_HOST": "127.0.0.1"}, {}).auth_mode == "open"


def test_http_token_is_an_alias_of_operator_token() -> None:
    c = load_config({"DMP_HTTP_TOKEN": "legacy-name"}, {})

    assert c.operator_token == "legacy-name"
    assert c.auth_mode == "legacy"


def test_operator_token_is_not_in_repr() -> None:
    assert "op-secret" not in repr(cfg())


def test_sync_peer_token_is_read_and_kept_out_of_repr() -> None:
    c = cfg({"DMP_SYNC_PEER_TOKEN": "peer-secret"})

    assert c.sync_peer_token == "peer-secret"
    assert "peer-secret" not in repr(c)
    assert cfg().sync_peer_token is None
    assert cfg({"DMP_SYNC_PEER_TOKEN": ""}).sync_peer_token is None


def test_sync_operator_key_and_cluster_base_domain() -> None:
    c = cfg({"DMP_SYNC_OPERATOR_SPK": "AB" * 32, "DMP_CLUSTER_BASE_DOMAIN": "Mesh.Test."})

    assert c.sync_operator_spk == b"\xab" * 32
    assert c.cluster_base_domain == "mesh.test"
    assert (cfg().sync_operator_spk, cfg().cluster_base_domain) == (None, None)


@pytest.mark.parametrize("value", ["zz", "ab" * 31, "ab" * 33, "ab" * 31 + "g0"])
def test_sync_operator_key_must_be_32_hex_bytes(value: str) -> None:
    err = error_of({**BASE, "DMP_SYNC_OPERATOR_SPK": value})

    assert err.variable == "DMP_SYNC_OPERATOR_SPK"
    assert "64 hex digits" in err.message


def test_sync_peers_interval_and_self_endpoint() -> None:
    c = cfg(
        {
            "DMP_SYNC_PEER_TOKEN": "t",
            "DMP_SYNC_PEERS": " http://10.0.0.2:8053/ , https://b.example.com,,http://[::1]:9/x ",
            "DMP_SYNC_INTERVAL": "2.5",
        }
    )

    assert c.sync_peers == ("http://10.0.0.2:8053", "https://b.example.com", "http://[::1]:9/x")
    assert c.sync_interval_s == 2.5
    assert c.sync_worker_enabled
    assert cfg({"DMP_SYNC_INTERVAL_SECONDS": "7"}).sync_interval_s == 7.0
    assert (cfg().sync_peers, cfg().sync_interval_s) == ((), 10.0)
    # the worker needs both a token and a peer, as in the reference
    assert not cfg({"DMP_SYNC_PEERS": "http://a:1"}).sync_worker_enabled
    assert not cfg({"DMP_SYNC_PEER_TOKEN": "t"}).sync_worker_enabled
    # our own URL is filtered out of the peer list
    own = cfg(
        {
            "DMP_SYNC_PEERS": "http://a:1,HTTP://Me:8053/",
            "DMP_SYNC_SELF_ENDPOINT": "http://me:8053",
        }
    )
    assert own.sync_peers == ("http://a:1",)
    assert own.sync_self_endpoint == "http://me:8053"


@pytest.mark.parametrize(
    "value",
    ["10.0.0.2:8053", "ftp://a", "http://", "http://a:99999", "http://a/?q=1", "http://a b"],
)
def test_sync_peers_must_be_http_urls(value: str) -> None:
    err = error_of({**BASE, "DMP_SYNC_PEERS": f"http://ok:1,{value}"})

    assert err.variable == "DMP_SYNC_PEERS"
    assert "http:// or https://" in err.message


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_sync_interval_must_be_positive(value: str) -> None:
    assert error_of({**BASE, "DMP_SYNC_INTERVAL": value}).variable == "DMP_SYNC_INTERVAL"


def test_bad_sync_peers_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["check-config", "--dev"], environ={**BASE, "DMP_SYNC_PEERS": "nope"})

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("dmp-node: DMP_SYNC_PEERS: ")


def test_unimplemented_reference_variables_are_listed() -> None:
    c = cfg(
        {
            "DMP_HEARTBEAT_ENABLED": "1",
            "DMP_HEARTBEAT_SEEDS": "a.example",
            "DMP_NODE_ID": "n1",
            "DMP_CLUSTER_FILE": "/etc/dmp/cluster.json",
            "DMP_CLUSTER_MANIFEST_PATH": "",
            "DMP_SYNC_PEERS": "http://a:1",
        }
    )

    assert c.unimplemented_variables == (
        "DMP_CLUSTER_FILE",
        "DMP_HEARTBEAT_ENABLED",
        "DMP_HEARTBEAT_SEEDS",
    )
    assert c.node_id == "n1"
    assert cfg().unimplemented_variables == ()


def test_unimplemented_variables_are_logged_in_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dmp.apps.node.service import log_unimplemented

    with caplog.at_level("WARNING", logger="dmp.node"):
        log_unimplemented(cfg({"DMP_CLUSTER_FILE": "/c.json", "DMP_HEARTBEAT_ENABLED": "1"}))
        log_unimplemented(cfg())

    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage() == (
        "set but not implemented by dmp-node (ignored): DMP_CLUSTER_FILE, DMP_HEARTBEAT_ENABLED"
    )


def test_check_config_masks_the_sync_peer_token(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["check-config", "--dev"], environ={**BASE, "DMP_SYNC_PEER_TOKEN": "peer-s3"})

    out = capsys.readouterr().out
    assert code == 0
    assert '"sync_peer_token": "<set>"' in out
    assert "peer-s3" not in out


# ---------------------------------------------------------------- environment values


def test_every_documented_variable_is_read() -> None:
    env = {
        "DMP_DB_PATH": "/srv/dmp/node.db",
        "DMP_DB_SYNCHRONOUS": "full",
        "DMP_DNS_HOST": "::1",
        "DMP_DNS_PORT": "53",
        "DMP_DNS_TTL": "30",
        "DMP_DNS_RATE": "50",
        "DMP_DNS_BURST": "200",
        "DMP_DNS_MAX_CONCURRENCY": "7",
        "DMP_DNS_APEX_A": "192.0.2.1, 192.0.2.2",
        "DMP_DNS_APEX_AAAA": "2001:db8::1",
        "DMP_DNS_APEX_NS": "NS1.Mesh.Test.",
        "DMP_DNS_APEX_SOA_RNAME": "hostmaster.mesh.test",
        "DMP_HTTP_HOST": "127.0.0.1",
        "DMP_HTTP_PORT": "8080",
        "DMP_HTTP_RATE": "0",
        "DMP_HTTP_BURST": "5",
        "DMP_HTTP_MAX_CONCURRENCY": "9",
        "DMP_HTTP_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
        "DMP_AUTH_MODE": "multi-tenant",
        "DMP_TOKEN_DB_PATH": "/srv/dmp/t.db",
        "DMP_MAX_TTL": "3600",
        "DMP_MAX_VALUE_BYTES": "4096",
        "DMP_MAX_VALUES_PER_NAME": "8",
        "DMP_CLEANUP_INTERVAL": "2.5",
        "DMP_LOG_LEVEL": "debug",
        "DMP_LOG_FORMAT": "JSON",
        "DMP_DOMAIN": "mesh.test",
        "DMP_NODE_HOSTNAME": "node.mesh.test",
        "DMP_DNS_UPDATE_ENABLED": "yes",
        "DMP_TSIG_DB_PATH": "/srv/dmp/k.db",
        "DMP_TSIG_TIGHT_SCOPE": "on",
        "DMP_REGISTRATION_ENABLED": "TRUE",
        "DMP_REGISTRATION_ALLOWLIST": "mesh.test,example.org",
        "DMP_REGISTRATION_TOKEN_TTL_SECONDS": "90d",
        "DMP_REGISTRATION_ISSUED_RATE_PER_SEC": "2",
        "DMP_REGISTRATION_ISSUED_BURST": "4",
        "DMP_REGISTRATION_ENDPOINT_RATE_PER_SEC": "10/60",
        "DMP_REGISTRATION_ENDPOINT_BURST": "3",
        "DMP_CLAIM_PROVIDER": "off",
        "DMP_RECEIVER_CLAIM_NOTIFICATIONS": "1",
        "DMP_CLAIM_MAX_TTL": "600",
        "DMP_CLAIM_RATE_PER_USER_PER_SEC": "1.5",
        "DMP_CLAIM_RATE_BURST": "3",
    }
    c = load_config(env, {})

    assert Path("/srv/dmp/node.db") == c.db_path
    assert c.db_synchronous == "FULL"
    assert (c.dns_host, c.dns_port, c.dns_ttl) == ("::1", 53, 30)
    assert (c.dns_rate, c.dns_burst, c.dns_max_concurrency) == (50.0, 200.0, 7)
    assert c.apex_a == ("192.0.2.1", "192.0.2.2")
    assert c.apex_aaaa == ("2001:db8::1",)
    assert c.apex_ns == ("ns1.mesh.test",)
    assert c.apex_soa_rname == "hostmaster.mesh.test"
    assert (
        c.http_host,
        c.http_port,
        c.http_rate,
        c.http_burst,
        c.http_max_concurrency,
    ) == ("127.0.0.1", 8080, 0.0, 5.0, 9)
    assert c.http_trusted_proxies == ("10.0.0.0/8", "127.0.0.1/32")
    assert c.auth_mode == "multi-tenant"
    assert Path("/srv/dmp/t.db") == c.token_db_path
    assert c.token_store_needed
    assert (c.max_ttl, c.max_value_bytes, c.max_values_per_name) == (3600, 4096, 8)
    assert c.cleanup_interval_s == 2.5
    assert (c.log_level, c.log_format) == ("DEBUG", "json")
    assert (
        c.domain,
        c.served_zone,
        c.node_hostname,
    ) == ("mesh.test", "mesh.test", "node.mesh.test")
    assert c.dns_update_enabled
    assert c.tsig_tight_scope
    assert not c.tsig_loose_scope
    assert Path("/srv/dmp/k.db") == c.tsig_db_path
    assert c.registration_enabled
    assert c.registration_allowlist == ("mesh.test", "example.org")
    assert c.registration_token_ttl_s == 90 * 86400
    assert (
        c.registration_issued_rate,
        c.registration_issued_burst,
        c.registration_endpoint_burst,
    ) == (2.0, 4.0, 3.0)
    assert pytest.approx(10 / 60) == c.registration_endpoint_rate
    assert not c.claim_provider
    assert not c.claim_provider_active
    assert c.receiver_claim_notifications
    assert (c.claim_max_ttl, c.claim_rate, c.claim_burst) == (600, 1.5, 3.0)


@pytest.mark.parametrize(
    ("env", "zone"),
    [
        ({"DMP_NODE_HOSTNAME": "e.test"}, "e.test"),
        ({"DMP_NODE_HOSTNAME": "e.test", "DMP_DOMAIN": "d.test"}, "d.test"),
        ({"DMP_DOMAIN": "d.test", "DMP_CLUSTER_BASE_DOMAIN": "c.test"}, "c.test"),
        ({"DMP_CLUSTER_BASE_DOMAIN": "c.test", "DMP_CLAIM_PROVIDER_ZONE": "b.test"}, "b.test"),
        ({"DMP_CLAIM_PROVIDER_ZONE": "b.test", "DMP_SERVED_ZONE": "A.Test."}, "a.test"),
    ],
)
def test_served_zone_fallback_chain(env: dict[str, str], zone: str) -> None:
    """SERVED_ZONE, then CLAIM_PROVIDER_ZONE, CLUSTER_BASE_DOMAIN, DOMAIN, NODE_HOSTNAME."""
    assert zone == cfg(env).served_zone


def test_empty_variables_count_as_unset() -> None:
    c = cfg({"DMP_DNS_PORT": "", "DMP_DOMAIN": "  ", "DMP_LOG_LEVEL": ""})

    assert (c.dns_port, c.domain, c.log_level) == (5353, None, "INFO")


def test_sibling_databases_follow_the_record_db() -> None:
    c = cfg({"DMP_DB_PATH": "/data/x/store.sqlite"})

    assert Path("/data/x/store_tokens.sqlite") == c.token_db_path
    assert Path("/data/x/store_tsig.sqlite") == c.tsig_db_path
    assert Path("/a/b_tsig.db") == sibling_path(Path("/a/b.db"), "tsig")


def test_memory_db_makes_every_store_in_memory() -> None:
    c = cfg({"DMP_DB_PATH": ":memory:"})

    assert c.in_memory
    assert ":memory:" == c.token_db_path == c.tsig_db_path


def test_claim_provider_is_active_only_with_zone_and_update() -> None:
    assert not cfg({"DMP_DOMAIN": "m.test"}).claim_provider_active
    assert cfg({"DMP_DOMAIN": "m.test", "DMP_DNS_UPDATE_ENABLED": "1"}).claim_provider_active


# ---------------------------------------------------------------- precedence


def test_flags_override_environment() -> None:
    c = cfg(
        {"DMP_DNS_PORT": "5353", "DMP_DB_PATH": "/env.db"},
        DMP_DNS_PORT="0",
        DMP_DB_PATH="/flag.db",
    )

    assert (0, Path("/flag.db")) == (c.dns_port, c.db_path)


def test_dev_binds_loopback_and_stores_under_var() -> None:
    """--dev wins over the environment's hosts and DB, but flags still win over --dev."""
    env = {"DMP_DNS_HOST": "0.0.0.0", "DMP_HTTP_HOST": "0.0.0.0", "DMP_DB_PATH": "/prod.db"}
    c = load_config(env, {}, dev=True)

    assert (c.dns_host, c.http_host) == ("127.0.0.1", "127.0.0.1")
    assert Path("var/dmp.db") == c.db_path
    assert c.auth_mode == "open"  # loopback: open auth is allowed
    assert c.dev
    flagged = load_config(env, {"DMP_DB_PATH": "/tmp/x.db", "DMP_DNS_PORT": "0"}, dev=True)
    assert (Path("/tmp/x.db"), 0) == (flagged.db_path, flagged.dns_port)


def test_cli_flags_become_overrides() -> None:
    ns = cli.build_parser().parse_args(
        ["serve", "--dns-port", "0", "--http-port", "0", "--db-path", ":memory:", "--dns-update"]
    )

    assert cli._overrides(ns) == {
        "DMP_DNS_PORT": "0",
        "DMP_HTTP_PORT": "0",
        "DMP_DB_PATH": ":memory:",
        "DMP_DNS_UPDATE_ENABLED": "1",
    }


def test_flags_before_the_default_sub_command() -> None:
    ns = cli.build_parser().parse_args(["--dev", "--log-format", "json"])

    assert ns.command is None
    assert cli._overrides(ns) == {"DMP_LOG_FORMAT": "json"}
    assert ns.dev


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("DMP_DNS_PORT", "abc", "expected an integer"),
        ("DMP_DNS_PORT", "65536", "between 0 and 65535"),
        ("DMP_HTTP_PORT", "-1", "between 0 and 65535"),
        ("DMP_DNS_TTL", "1.5", "expected an integer"),
        ("DMP_DNS_RATE", "-3", "non-negative"),
        ("DMP_DNS_BURST", "lots", "non-negative"),
        ("DMP_HTTP_RATE", "nan", "non-negative"),
        ("DMP_CLAIM_RATE_BURST", "inf", "non-negative"),
        ("DMP_CLEANUP_INTERVAL", "0", "greater than 0"),
        ("DMP_MAX_VALUE_BYTES", "0", "between 1 and"),
        ("DMP_MAX_VALUES_PER_NAME", "x", "expected an integer"),
        ("DMP_DNS_UPDATE_ENABLED", "maybe", "1/true/yes/on"),
        ("DMP_CLAIM_PROVIDER", "2", "1/true/yes/on"),
        ("DMP_AUTH_MODE", "closed", "open, legacy, multi-tenant"),
        ("DMP_LOG_LEVEL", "loud", "DEBUG"),
        ("DMP_LOG_FORMAT", "xml", "text, json"),
        ("DMP_DB_SYNCHRONOUS", "OFF", "FULL, NORMAL"),
        ("DMP_DNS_HOST", "not a host!", "IP address or host name"),
        ("DMP_DNS_APEX_A", "2001:db8::1", "IPv4"),
        ("DMP_DNS_APEX_AAAA", "192.0.2.1", "IPv6"),
        ("DMP_DOMAIN", "bad..name", "DNS name"),
        ("DMP_SERVED_ZONE", "-x.test", "DNS name"),
        ("DMP_REGISTRATION_TOKEN_TTL_SECONDS", "ninety days", "N[smhdw]"),
        ("DMP_REGISTRATION_TOKEN_TTL_SECONDS", "0", "greater than 0"),
        ("DMP_HTTP_TRUSTED_PROXIES", "10.0.0.0/33", "CIDR"),
        ("DMP_REGISTRATION_ENDPOINT_RATE_PER_SEC", "5/0", "non-negative"),
    ],
)
def test_bad_value_names_the_variable(var: str, value: str, fragment: str) -> None:
    err = error_of({**BASE, "DMP_DOMAIN": "mesh.test", var: value})

    assert var == err.variable
    assert str(err).startswith(f"{var}: ")
    assert fragment in str(err)
    assert "\n" not in str(err)


def test_bad_flag_names_the_flag_and_the_variable() -> None:
    err = error_of(BASE, {"DMP_DNS_PORT": "x"})

    assert err.variable == "--dns-port (DMP_DNS_PORT)"


@pytest.mark.parametrize(
    ("env", "var", "fragment"),
    [
        ({}, "DMP_AUTH_MODE", "DMP_ALLOW_OPEN_PUBLIC_BIND"),
        ({"DMP_AUTH_MODE": "legacy", "DMP_HTTP_HOST": "127.0.0.1"}, "DMP_AUTH_MODE", "TOKEN"),
        (
            {**BASE, "DMP_TSIG_LOOSE_SCOPE": "1", "DMP_TSIG_TIGHT_SCOPE": "1"},
            "DMP_TSIG_TIGHT_SCOPE",
            "LOOSE",
        ),
        ({**BASE, "DMP_DNS_UPDATE_ENABLED": "1"}, "DMP_DNS_UPDATE_ENABLED", "served zone"),
        ({**BASE, "DMP_RECEIVER_CLAIM_NOTIFICATIONS": "1"}, "DMP_RECEIVER", "served zone"),
        (
            {**BASE, "DMP_REGISTRATION_ENABLED": "1", "DMP_NODE_HOSTNAME": "n.test"},
            "DMP_REGISTRATION_ENABLED",
            "multi-tenant",
        ),
        (
            {**BASE, "DMP_REGISTRATION_ENABLED": "1", "DMP_AUTH_MODE": "multi-tenant"},
            "DMP_REGISTRATION_ENABLED",
            "DMP_NODE_HOSTNAME",
        ),
        ({**BASE, "DMP_DNS_APEX_NS": "ns1.m.test"}, "DMP_DNS_APEX_NS", "served zone"),
        (
            {**BASE, "DMP_DOMAIN": "m.test", "DMP_DNS_APEX_SOA_RNAME": "h.m.test"},
            "DMP_DNS_APEX_SOA_RNAME",
            "DMP_DNS_APEX_NS",
        ),
    ],
)
def test_contradictions_are_refused(env: dict[str, str], var: str, fragment: str) -> None:
    err = error_of(env)

    assert err.variable.startswith(var)
    assert fragment in err.message


def test_open_public_bind_is_allowed_when_asked() -> None:
    c = load_config({"DMP_ALLOW_OPEN_PUBLIC_BIND": "1"}, {})

    assert (c.auth_mode, c.http_host) == ("open", "0.0.0.0")


# ---------------------------------------------------------------- CLI exit codes


def test_cli_config_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--dev", "--dns-port", "x"], environ={})

    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "DMP_DNS_PORT" in err


def test_cli_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--no-such-flag"], environ={})

    assert info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_check_config_prints_effective_config(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["check-config", "--dev", "--dns-port", "0"], environ=BASE)

    out = capsys.readouterr().out
    assert code == 0
    assert '"dns_port": 0' in out
    assert '"operator_token": "<set>"' in out
    assert "op-secret" not in out


def test_every_flag_maps_to_a_config_variable() -> None:
    """The CLI's flag table and config.FLAGS agree (errors name the right flag)."""
    from dmp.apps.node.config import FLAGS

    table = {flag: var for flag, var, _ in cli._SERVE_FLAGS + cli._SERVE_SWITCHES}

    assert table == {flag: var for var, flag in FLAGS.items()}
