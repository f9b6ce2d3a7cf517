"""The agent's settings once validated: plain dataclasses, no pydantic.

``x0t node run`` validates the configuration with pydantic-settings (``config.py``) and
then replaces itself with ``python -m x0tta6bl4.node`` carrying the validated values as
JSON. The running agent so never imports pydantic, pydantic-settings, typer or rich,
about 16 MB of resident memory it would otherwise hold for its whole life.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from x0tta6bl4.channel.constants import DEFAULT_MAX_DATAGRAM

DEFAULT_PORT = 7100

HostPort = tuple[str, int]


def parse_host_port(text: str, default_port: int = DEFAULT_PORT) -> HostPort:
    """``"198.18.0.1:7100"``, ``"[fd00::1]:7100"``, ``"::1"`` or a bare host."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']' after an IPv6 address")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':PORT' after ']'")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{text!r}: no host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    if port_text:
        # ASCII digits only: str.isdigit() is also true of other scripts' digits and of
        # superscripts, which int() takes or chokes on
        if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: port must be a number in 0..65535")
        return host, int(port_text)
    return host, default_port


def format_host_port(addr: HostPort) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class RunTun:
    enabled: bool = False
    name: str = "x0t0"
    mtu: int = 1280
    ipv4: bool = False
    deny_tcp: str = "drop"


@dataclass(frozen=True, slots=True)
class RunApi:
    socket: str = ""
    metrics: str = ""


@dataclass(frozen=True, slots=True)
class RunDiscovery:
    enabled: bool = False
    port: int = 7099
    interval: float = 5.0
    interfaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RunControl:
    url: str = ""
    report_interval: float = 5.0
    poll_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class RunLog:
    format: str = "json"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class RunSettings:
    """What ``NodeSettings`` validated, as the agent reads it."""

    name: str
    state_dir: Path
    listen: tuple[str, ...] = (f"127.0.0.1:{DEFAULT_PORT}",)
    peers: tuple[str, ...] = ()
    hello_interval: float = 0.1
    datagram_size: int = DEFAULT_MAX_DATAGRAM
    policy_file: str = ""
    tun: RunTun = field(default_factory=RunTun)
    api: RunApi = field(default_factory=RunApi)
    log: RunLog = field(default_factory=RunLog)
    discovery: RunDiscovery = field(default_factory=RunDiscovery)
    control: RunControl = field(default_factory=RunControl)

    @property
    def listen_addrs(self) -> list[HostPort]:
        return [parse_host_port(a) for a in self.listen]

    @property
    def peer_addrs(self) -> list[HostPort]:
        return [parse_host_port(a) for a in self.peers]

    @property
    def api_socket(self) -> Path:
        return Path(self.api.socket) if self.api.socket else self.state_dir / "agent.sock"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSettings:
        return cls(
            name=str(d["name"]),
            state_dir=Path(d["state_dir"]),
            listen=tuple(d.get("listen", ())),
            peers=tuple(d.get("peers", ())),
            hello_interval=float(d.get("hello_interval", 0.1)),
            datagram_size=int(d.get("datagram_size", DEFAULT_MAX_DATAGRAM)),
            policy_file=str(d.get("policy_file", "")),
            tun=RunTun(**d.get("tun", {})),
            api=RunApi(**d.get("api", {})),
            log=RunLog(**d.get("log", {})),
            discovery=RunDiscovery(
                **{
                    **d.get("discovery", {}),
                    "interfaces": tuple(d.get("discovery", {}).get("interfaces", ())),
                }
            ),
            control=RunControl(**d.get("control", {})),
        )

    def to_json(self) -> str:
        d = asdict(self)
        d["state_dir"] = str(self.state_dir)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> RunSettings:
        return cls.from_dict(json.loads(text))


__all__ = ["RunSettings", "format_host_port", "parse_host_port"]
