"""The LAN discovery beacon: 39 bytes, decoded strictly; anything else is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from x0tta6bl4.errors import DecodeError
from x0tta6bl4.node.discovery import BEACON_SIZE, Beacon, decode_beacon


def test_a_beacon_round_trips() -> None:
    b = Beacon(bytes(range(32)), 7100)
    assert len(b.encode()) == BEACON_SIZE
    assert decode_beacon(b.encode()) == b


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "bytes"),
        (Beacon(bytes(32), 7100).encode()[:-1], "bytes"),
        (b"XXXX" + Beacon(bytes(32), 7100).encode()[4:], "not an x0tta6bl4 beacon"),
        (Beacon(bytes(32), 7100).encode()[:4] + b"\x02" + bytes(34), "version 2"),
        (Beacon(bytes(32), 0).encode(), "port 0"),
    ],
)
def test_malformed_beacons_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode_beacon(data)


@given(st.binary(max_size=80))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    try:
        b = decode_beacon(data)
    except DecodeError:
        return
    assert b.encode() == data


def test_discovery_without_an_ipv6_listen_address_is_a_config_error(tmp_path: Path) -> None:
    from x0tta6bl4.node.config import ConfigError, settings_from_text

    text = 'name = "a"\nstate_dir = "s"\nlisten = ["127.0.0.1:7100"]\n[discovery]\nenabled = true\n'
    with pytest.raises(ConfigError, match=r"x\.toml: discovery.enabled needs an IPv6 listen"):
        settings_from_text(text, tmp_path / "x.toml")
    ok = text.replace('"127.0.0.1:7100"', '"[::]:7100"')
    assert settings_from_text(ok, tmp_path / "x.toml").discovery.enabled
