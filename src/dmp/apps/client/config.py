"""The ``dnsmesh`` client configuration: ``<config-home>/config.yaml`` (layer: apps).

The file keeps the reference's ``CLIConfig`` field names, so a user can move
between ``dnsmesh`` 0.7.5 and dmp with the same config home
(behaviour.md §a). Unknown keys are preserved on save.

Config home: ``--config-home`` > ``$DMP_CONFIG_HOME`` > ``~/.dmp``. The
tokens home: ``--tokens-home`` > ``$DMP_TOKENS_HOME`` > ``<config-home>/tokens``.
Files are written atomically with mode 0600.

Passphrase (behaviour.md §a): ``$DMP_PASSPHRASE`` verbatim → ``passphrase_file``
(whitespace-stripped) → interactive prompt. The first successful derive
stores ``verify_pubkey`` (Ed25519 public hex); a later mismatch aborts
(typo tripwire) unless ``DMP_PASSPHRASE_OVERRIDE_VERIFY=1``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "ClientConfig",
    "ConfigError",
    "Contact",
    "PassphraseError",
    "config_home",
    "load_config",
    "read_passphrase",
    "save_config",
    "tokens_home",
    "write_private",
]

CONFIG_FILE = "config.yaml"


class ConfigError(Exception):
    """The client configuration is missing or invalid (exit code 1)."""

    exit_code = 1


class PassphraseError(ConfigError):
    """The passphrase is unavailable or does not match ``verify_pubkey``."""


@attrs.define
class Contact:
    """A pinned (or unpinned) contact.

    Attributes:
        pub: X25519 public key hex ('' when unknown).
        spk: Ed25519 public key hex ('' = unpinned).
        domain: the contact's zone ('' = backfilled to our own domain).
        username: remote identity name, for prekey / rotation lookups
            (``remote_username`` in the file, as the reference writes it).
        domain_explicit: True when the user recorded the domain (claims go there).
    """

    pub: str = ""
    spk: str = ""
    domain: str = ""
    username: str = ""
    domain_explicit: bool = False

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"domain": self.domain, "pub": self.pub, "spk": self.spk}
        if self.username:
            out["remote_username"] = self.username
        if self.domain_explicit:
            out["domain_explicit"] = True
        return out

    @classmethod
    def from_yaml(cls, data: Mapping[str, Any]) -> Contact:
        return cls(
            pub=str(data.get("pub") or ""),
            spk=str(data.get("spk") or ""),
            domain=str(data.get("domain") or ""),
            username=str(data.get("remote_username") or data.get("username") or ""),
            domain_explicit=bool(data.get("domain_explicit", bool(data.get("domain")))),
        )


@attrs.define
class ClientConfig:
    """Every field of the reference's ``CLIConfig`` that dmp uses, plus unknown extras."""

    username: str = ""
    domain: str = "mesh.local"
    endpoint: str = ""
    http_token: str | None = None
    dns_host: str | None = None
    dns_port: int = 5353
    dns_resolvers: list[str] = attrs.field(factory=lambda: ["1.1.1.1", "8.8.8.8"])
    identity_domain: str = ""
    kdf_salt: str = ""
    passphrase_file: str | None = None
    verify_pubkey: str = ""
    allow_tofu: bool = False
    dnssec_required: bool = False
    contacts: dict[str, Contact] = attrs.field(factory=dict)
    tsig_key_name: str = ""
    tsig_secret_hex: str = ""
    tsig_algorithm: str = "hmac-sha256"
    tsig_zone: str = ""
    tsig_dns_server: str = ""
    tsig_dns_port: int = 53
    local_node_dns_server: str = ""
    local_node_dns_port: int = 0
    claim_provider_override: str = ""
    claim_provider_zone: str = ""
    recv_secondary_disable: bool = False
    recv_primary_interval_seconds: int = 30
    recv_secondary_interval_seconds: int = 600
    cluster_base_domain: str = ""
    cluster_enabled: bool = False
    cluster_node_token: str = ""
    cluster_operator_spk: str = ""
    cluster_refresh_interval: int = 3600
    bootstrap_signer_spk: str = ""
    bootstrap_user_domain: str = ""
    extras: dict[str, Any] = attrs.field(factory=dict)

    @property
    def effective_domain(self) -> str:
        """The zone our records live in: ``identity_domain`` if set, else ``domain``."""
        return (self.identity_domain or self.domain).rstrip(".")

    @property
    def address(self) -> str:
        """``username@effective_domain``."""
        return f"{self.username}@{self.effective_domain}"

    @property
    def salt(self) -> bytes:
        """The raw Argon2 salt.

        Raises:
            ConfigError: ``kdf_salt`` is missing or not hex.
        """
        try:
            return bytes.fromhex(self.kdf_salt)
        except ValueError as exc:
            raise ConfigError("kdf_salt in config.yaml is not hex") from exc

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extras)
        for field in attrs.fields(ClientConfig):
            if field.name == "extras":
                continue
            value = getattr(self, field.name)
            if field.name == "contacts":
                value = {name: c.to_yaml() for name, c in sorted(value.items())}
            out[field.name] = value
        return dict(sorted(out.items()))

    @classmethod
    def from_yaml(cls, data: Mapping[str, Any]) -> ClientConfig:
        """Build from parsed YAML.

        Raises:
            ConfigError: a field has the wrong type.
        """
        known = {f.name: f for f in attrs.fields(ClientConfig) if f.name != "extras"}
        kwargs: dict[str, Any] = {}
        extras: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                extras[key] = value
                continue
            if key == "contacts":
                if not isinstance(value, Mapping):
                    raise ConfigError("contacts in config.yaml must be a mapping")
                kwargs[key] = {
                    str(n): Contact.from_yaml(c if isinstance(c, Mapping) else {})
                    for n, c in value.items()
                }
            elif key == "dns_resolvers":
                kwargs[key] = [str(v) for v in (value or [])]
            elif str(known[key].type) == "int":
                try:
                    kwargs[key] = int(value or 0)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{key} in config.yaml must be an integer") from exc
            elif str(known[key].type) == "bool":
                kwargs[key] = bool(value)
            else:
                kwargs[key] = value if value is None else str(value)
        return cls(**kwargs, extras=extras)


def config_home(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """``--config-home`` > ``$DMP_CONFIG_HOME`` > ``~/.dmp``."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit).expanduser()
    if env.get("DMP_CONFIG_HOME"):
        return Path(env["DMP_CONFIG_HOME"]).expanduser()
    return Path(env.get("HOME") or Path.home()) / ".dmp"


def tokens_home(
    home: Path, explicit: str | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """``--tokens-home`` > ``$DMP_TOKENS_HOME`` > ``<config-home>/tokens``."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit).expanduser()
    if env.get("DMP_TOKENS_HOME"):
        return Path(env["DMP_TOKENS_HOME"]).expanduser()
    return home / "tokens"


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically with mode 0600, creating the parent (0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_config(home: Path) -> ClientConfig:
    """Read ``<home>/config.yaml``.

    Raises:
        ConfigError: missing, unreadable or not a YAML mapping.
    """
    import yaml

    path = home / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"no config at {path}; run `dnsmesh init <username>` first") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} is not a YAML mapping")
    return ClientConfig.from_yaml(data)


def save_config(home: Path, config: ClientConfig) -> Path:
    """Write ``<home>/config.yaml`` (0600, atomic). Returns the path."""
    import yaml

    path = home / CONFIG_FILE
    text = yaml.safe_dump(config.to_yaml(), sort_keys=True, default_flow_style=False)
    write_private(path, text.encode("utf-8"))
    return path


def read_passphrase(
    config: ClientConfig,
    *,
    environ: Mapping[str, str] | None = None,
    prompt: Callable[[str], str] | None = None,
) -> str:
    """The passphrase: ``$DMP_PASSPHRASE`` (verbatim) → ``passphrase_file`` (stripped) → prompt.

    Raises:
        PassphraseError: no source gave one, or the file cannot be read.
    """
    env = os.environ if environ is None else environ
    if "DMP_PASSPHRASE" in env:
        return env["DMP_PASSPHRASE"]
    if config.passphrase_file:
        path = Path(config.passphrase_file).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PassphraseError(f"cannot read passphrase_file {path}: {exc.strerror}") from exc
    if prompt is None:
        raise PassphraseError("no passphrase: set DMP_PASSPHRASE or passphrase_file in config.yaml")
    try:
        return prompt("Passphrase: ")
    except (EOFError, KeyboardInterrupt) as exc:
        raise PassphraseError("no passphrase given") from exc
