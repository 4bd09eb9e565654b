"""Client config.yaml: reference field names, round trip, 0600, passphrase sources."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dmp.apps.client.config import (
    ClientConfig,
    ConfigError,
    Contact,
    PassphraseError,
    config_home,
    load_config,
    read_passphrase,
    save_config,
    tokens_home,
)

REFERENCE_YAML = """\
allow_tofu: false
bootstrap_signer_spk: ''
claim_provider_zone: ''
contacts:
  bob:
    domain: ''
    pub: 87204419a7d56ff32916e154875a60156cc3137b3f7242b01722b59d35834d7a
    spk: 27b0fe9ac95ce7d0075b9eb4cb33aa6c5a8b003702755c8dde72242305c53d79
dns_host: null
dns_port: 5353
dns_resolvers:
- 1.1.1.1
- 8.8.8.8
domain: mesh.test
endpoint: http://127.0.0.1:8053
http_token: null
identity_domain: ''
kdf_salt: 5c8583d527f1feeaa84cdc63e70cd707dd1a8354ba5624b08f5a8d046de112db
some_future_knob: 7
tsig_dns_port: 53
username: alice
verify_pubkey: ''
"""


def test_reads_a_reference_config_and_keeps_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(REFERENCE_YAML, encoding="utf-8")
    config = load_config(tmp_path)
    assert config.username == "alice"
    assert config.address == "alice@mesh.test"
    assert config.dns_port == 5353
    assert config.http_token is None
    assert config.contacts["bob"].spk.startswith("27b0fe9a")
    assert config.contacts["bob"].domain_explicit is False
    assert len(config.salt) == 32
    save_config(tmp_path, config)
    again = load_config(tmp_path)
    assert again == config
    assert again.extras == {"some_future_knob": 7}
    mode = stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode)
    assert mode == 0o600


def test_identity_domain_wins_for_effective_domain() -> None:
    config = ClientConfig(username="alice", domain="mesh.test", identity_domain="alice.example.")
    assert config.effective_domain == "alice.example"


def test_missing_and_broken_configs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dnsmesh init"):
        load_config(tmp_path)
    (tmp_path / "config.yaml").write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a YAML mapping"):
        load_config(tmp_path)
    (tmp_path / "config.yaml").write_text("dns_port: many\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="dns_port"):
        load_config(tmp_path)


def test_homes_follow_flag_then_env_then_default(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "DMP_CONFIG_HOME": str(tmp_path / "env")}
    assert config_home("/x", env) == Path("/x")
    assert config_home(None, env) == tmp_path / "env"
    assert config_home(None, {"HOME": str(tmp_path)}) == tmp_path / ".dmp"
    assert tokens_home(tmp_path, None, {}) == tmp_path / "tokens"
    assert tokens_home(tmp_path, None, {"DMP_TOKENS_HOME": "/t"}) == Path("/t")


def test_passphrase_sources_in_order(tmp_path: Path) -> None:
    pfile = tmp_path / "pass"
    pfile.write_text("  from-file \n", encoding="utf-8")
    config = ClientConfig(passphrase_file=str(pfile))
    assert read_passphrase(config, environ={"DMP_PASSPHRASE": " env "}) == " env "
    assert read_passphrase(config, environ={}) == "from-file"
    assert read_passphrase(ClientConfig(), environ={}, prompt=lambda _: "typed") == "typed"
    with pytest.raises(PassphraseError, match="DMP_PASSPHRASE"):
        read_passphrase(ClientConfig(), environ={})
    with pytest.raises(PassphraseError, match="cannot read"):
        read_passphrase(ClientConfig(passphrase_file=str(tmp_path / "nope")), environ={})


def test_contact_round_trip_keeps_explicit_domain() -> None:
    contact = Contact(
        pub="aa", spk="bb", domain="bob.example", username="bob", domain_explicit=True
    )
    assert Contact.from_yaml(contact.to_yaml()) == contact


def test_contact_remote_username_uses_the_reference_key() -> None:
    """The reference stores a contact's remote name as ``remote_username``."""
    assert Contact(pub="aa", username="bob").to_yaml()["remote_username"] == "bob"
    assert Contact.from_yaml({"pub": "aa", "remote_username": "bob"}).username == "bob"
    assert Contact.from_yaml({"pub": "aa", "username": "old"}).username == "old"
