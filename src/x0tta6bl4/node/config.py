"""The agent's configuration: one TOML file, overridden by ``X0T_*`` environment variables.

``X0T_NAME=web-1`` overrides ``name``; nested tables use a double underscore
(``X0T_API__METRICS=127.0.0.1:9470``). A wrong field stops the agent before it does
anything, with one sentence naming the field and the file (:class:`ConfigError`).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from x0tta6bl4.channel.constants import DEFAULT_MAX_DATAGRAM
from x0tta6bl4.errors import X0tError


class ConfigError(X0tError):
    """The configuration file or environment is wrong; the message names the field."""


# The address helpers live in the pydantic-free module the running agent imports.
from x0tta6bl4.node.runsettings import (  # noqa: E402
    DEFAULT_PORT,
    HostPort,
    RunSettings,
    format_host_port,
    parse_host_port,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TunSettings(_Section):
    enabled: bool = False
    name: str = Field(default="x0t0", max_length=15)
    mtu: int = Field(default=1280, ge=1280, le=65535)
    # An overlay IPv4 address in 100.64.0.0/10, derived from the identity like the IPv6
    # one (tun.overlay_ipv4), so every node can compute every other node's.
    ipv4: bool = False
    deny_tcp: str = Field(default="drop", pattern="^(drop|reset)$")  # a denied TCP segment

    @field_validator("ipv4", mode="before")
    @classmethod
    def _derived(cls, v: object) -> object:
        if isinstance(v, str):
            raise ValueError(
                "must be true or false: the node's overlay IPv4 address derives from its "
                "identity (x0t status shows it), it is not chosen here"
            )
        return v


class ApiSettings(_Section):
    socket: str = ""  # the local API's Unix socket; "" = STATE_DIR/agent.sock
    metrics: str = ""  # "HOST:PORT" for /metrics; "" = off

    @field_validator("metrics")
    @classmethod
    def _addr(cls, v: str) -> str:
        if v:
            parse_host_port(v, 0)
        return v


class DiscoverySettings(_Section):
    enabled: bool = False
    port: int = Field(default=7099, ge=1, le=65535)
    interval: float = Field(default=5.0, ge=0.5, le=300.0)
    interfaces: list[str] = Field(default_factory=list)


class ControlSettings(_Section):
    # The control plane's URL ("http://HOST:PORT" or https); "" = run standalone on the
    # state directory's certificate and policy.
    url: str = Field(default="", pattern=r"^(|https?://[^\s/]+(/[^\s]*)?)$")
    # Seconds between status reports.
    report_interval: float = Field(default=5.0, ge=0.5, le=3600.0)
    # While the push stream is down, check for policy and revocations this often.
    poll_interval: float = Field(default=10.0, ge=1.0, le=3600.0)


class LogSettings(_Section):
    format: str = Field(default="json", pattern="^(json|console)$")
    level: str = Field(default="info", pattern="^(debug|info|warning|error)$")


class NodeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="X0T_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    name: str = Field(min_length=1, max_length=63)
    state_dir: Path
    listen: list[str] = Field(default_factory=lambda: [f"127.0.0.1:{DEFAULT_PORT}"], min_length=1)
    peers: list[str] = Field(default_factory=list)
    # Links are declared dead after 0.4 s without a hello: at least three must fit.
    hello_interval: float = Field(default=0.1, ge=0.02, le=0.13)
    # Largest UDP payload this node sends to a neighbour: 1280 crosses any path; the
    # underlay MTU minus 48 (IPv6 and UDP headers) fills its links, with fewer datagrams
    # per packet. A link that cannot carry it is taken out of routing (link_mtu_low).
    datagram_size: int = Field(default=DEFAULT_MAX_DATAGRAM, ge=DEFAULT_MAX_DATAGRAM, le=8952)
    policy_file: str = ""  # "" = STATE_DIR/policy.signed if present, else default deny
    tun: TunSettings = Field(default_factory=TunSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    discovery: DiscoverySettings = Field(default_factory=DiscoverySettings)
    control: ControlSettings = Field(default_factory=ControlSettings)

    @field_validator("listen", "peers")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for item in v:
            parse_host_port(item)
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init values).
        return env_settings, init_settings

    @model_validator(mode="after")
    def _discovery_needs_ipv6(self) -> NodeSettings:
        if self.discovery.enabled and not any(":" in h for h, _ in self.listen_addrs):
            raise ValueError('discovery.enabled needs an IPv6 listen address such as "[::]:7100"')
        return self

    def runtime(self) -> RunSettings:
        """The validated values as the running agent reads them (no pydantic)."""
        return RunSettings.from_dict(self.model_dump(mode="json"))

    @property
    def listen_addrs(self) -> list[HostPort]:
        return self.runtime().listen_addrs

    @property
    def peer_addrs(self) -> list[HostPort]:
        return self.runtime().peer_addrs

    @property
    def api_socket(self) -> Path:
        return self.runtime().api_socket


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _env_source(loc: tuple[int | str, ...]) -> str | None:
    """The X0T_* variable a bad field came from, if the environment set it."""
    names = [str(p) for p in loc if isinstance(p, str)]
    env = {k.upper() for k in os.environ}
    for i in range(len(names), 0, -1):
        var = "X0T_" + "__".join(names[:i]).upper()
        if var in env:
            return var
    return None


def load_settings(path: Path | None, **overrides: Any) -> NodeSettings:
    """Read ``path`` (TOML) and the environment. Raises ConfigError in one sentence."""
    if path is None:
        return _build(dict(overrides), "the environment")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return settings_from_text(text, path, **overrides)


def settings_from_text(text: str, path: Path, **overrides: Any) -> NodeSettings:
    """The settings ``text`` (TOML, to be written at ``path``) and the environment give:
    check a configuration before writing it."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    # A relative state directory is relative to the file, not to the caller's cwd.
    sd = data.get("state_dir")
    if isinstance(sd, str) and not Path(sd).is_absolute():
        data["state_dir"] = str((path.parent / sd).resolve())
    data.update(overrides)
    return _build(data, str(path))


def _build(data: dict[str, Any], where: str) -> NodeSettings:
    try:
        return NodeSettings(**data)
    except SettingsError as exc:  # an X0T_* list or table that is not JSON
        raise ConfigError(
            f"the environment: {exc} (lists and tables are JSON, e.g. "
            """X0T_LISTEN='["127.0.0.1:7100"]')"""
        ) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        var = _env_source(loc)
        source = f"environment variable {var}" if var else where
        msg = first["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        where = f"field '{_field_path(loc)}': " if loc else ""  # a rule across fields
        raise ConfigError(f"{source}: {where}{msg}{more}") from None


TEMPLATE = """\
# x0tta6bl4 node configuration. Every field can be overridden by an environment
# variable: X0T_<FIELD>, nested tables with a double underscore (X0T_API__METRICS).

# The node's name: the certificate in the state directory must carry it.
name = "{name}"

# Keys (mode 0600), certificate, trust bundle, revocation list, policy, peer cache and
# the routing sequence number. Relative paths are relative to this file.
state_dir = "{state_dir}"

# UDP addresses to listen on: IPv4 "HOST:PORT", IPv6 "[HOST]:PORT".
listen = [{listen}]

# Neighbours to connect to (their listen addresses). Others may connect to us.
peers = [{peers}]

# Seconds between hellos to each neighbour, 0.02..0.13 (a link is declared dead after
# 0.4 s without one).
hello_interval = 0.1

# Largest UDP datagram sent to a neighbour, 1280..8952 bytes. 1280 crosses any path; set
# the underlay MTU minus 48 (1452 on 1,500-byte links) for fewer datagrams per packet.
# Neighbours that cannot carry it are taken out of routing (healing: link_mtu_low).
datagram_size = 1280

# A CA-signed policy (x0t policy sign). "" = STATE_DIR/policy.signed if present;
# without any policy every inbound packet is denied.
policy_file = ""

[tun]
# Carry IP packets through the mesh (Linux, root or CAP_NET_ADMIN).
enabled = false
name = "x0t0"
mtu = 1280
# Also an overlay IPv4 address in 100.64.0.0/10. Like the IPv6 one it derives from the
# node's identity, so peers know it without being told; `x0t status` shows both.
ipv4 = false
# A TCP segment the policy denies: "drop" it, or answer with a "reset".
deny_tcp = "drop"

[api]
# The local API (x0t status, ping, send, listen): a Unix socket. "" = STATE_DIR/agent.sock
socket = ""
# Prometheus /metrics, "HOST:PORT"; "" = off.
metrics = ""

[control]
# The control plane ("http://HOST:PORT"), set by `x0t node join`: renews the certificate,
# takes policy and revocations as they are pushed, reports status and healing events.
# "" = standalone on the state directory's certificate and policy.
url = ""
report_interval = 5.0
poll_interval = 10.0

[discovery]
# Find neighbours on the same link by IPv6 link-local multicast beacons (they carry only
# a certificate fingerprint; a beacon starts a handshake, never trust). Needs an IPv6
# listen address such as "[::]:7100".
enabled = false
port = 7099
interval = 5.0
interfaces = []   # [] = every interface with an IPv6 link-local address

[log]
format = "json"   # json | console
level = "info"    # debug | info | warning | error
"""


def _toml_str(value: str) -> str:
    """``value`` as the body of a TOML basic string (between the quotes)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def render_template(
    name: str, state_dir: str, listen: list[str], peers: list[str], metrics: str = ""
) -> str:
    def q(items: list[str]) -> str:
        return ", ".join(f'"{_toml_str(i)}"' for i in items)

    text = TEMPLATE.format(
        name=_toml_str(name), state_dir=_toml_str(state_dir), listen=q(listen), peers=q(peers)
    )
    if metrics:
        text = text.replace('metrics = ""', f'metrics = "{_toml_str(metrics)}"')
    return text


__all__ = [
    "ConfigError",
    "NodeSettings",
    "format_host_port",
    "load_settings",
    "parse_host_port",
    "render_template",
    "settings_from_text",
]
