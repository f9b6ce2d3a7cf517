"""The agent's configuration: the template ``x0t node init`` writes loads, ``X0T_*``
overrides the file, and every wrong field stops the agent with one sentence that names
the field and where it came from (the file, or the environment variable)."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from x0tta6bl4.node.config import (
    DEFAULT_PORT,
    ConfigError,
    format_host_port,
    load_settings,
    parse_host_port,
    render_template,
    settings_from_text,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No X0T_* variable of the caller's shell leaks into these tests."""
    for key in list(os.environ):
        if key.upper().startswith("X0T_"):
            monkeypatch.delenv(key)


def _write(tmp_path: Path, body: str, name: str = "node.toml") -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(body, encoding="utf-8")
    return p


MINIMAL = 'name = "web-1"\nstate_dir = "/var/lib/x0t/web-1"\n'


def _one_sentence(msg: str) -> None:
    """What a user sees: one line, no pydantic report, no traceback."""
    assert "\n" not in msg, msg
    assert "validation error" not in msg and "pydantic.dev" not in msg, msg
    assert "Traceback" not in msg
    assert len(msg) < 300, msg


# -- the template ----------------------------------------------------------------------


def test_rendered_template_loads_with_every_value(tmp_path: Path) -> None:
    text = render_template(
        "web-1",
        "state",
        ["127.0.0.1:7100", "[::1]:7101"],
        ["198.18.0.2:7100", "[fd00::2]:7100"],
        metrics="127.0.0.1:9470",
    )
    s = load_settings(_write(tmp_path, text))
    assert s.name == "web-1"
    assert s.state_dir == tmp_path / "state"  # relative to the file
    assert s.listen_addrs == [("127.0.0.1", 7100), ("::1", 7101)]
    assert s.peer_addrs == [("198.18.0.2", 7100), ("fd00::2", 7100)]
    assert s.api.metrics == "127.0.0.1:9470"
    assert s.api_socket == tmp_path / "state" / "agent.sock"
    # the documented defaults
    assert s.hello_interval == 0.1
    assert s.datagram_size == 1280 and s.runtime().datagram_size == 1280
    assert (s.tun.enabled, s.tun.name, s.tun.mtu, s.tun.ipv4, s.tun.deny_tcp) == (
        False,
        "x0t0",
        1280,
        False,
        "drop",
    )
    assert (s.log.format, s.log.level, s.policy_file) == ("json", "info", "")


def test_template_without_peers_or_metrics_loads(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, render_template("a", str(tmp_path), ["[::1]:7100"], [])))
    assert s.peers == [] and s.api.metrics == ""
    assert s.listen_addrs == [("::1", 7100)]


_toml_text = st.text(st.characters(codec="utf-8"), max_size=40)  # no lone surrogates


@given(name=_toml_text, sd=_toml_text, listen=st.lists(_toml_text, max_size=3), m=_toml_text)
def test_template_quotes_any_string_it_is_given(
    name: str, sd: str, listen: list[str], m: str
) -> None:
    # A state directory called 'q"uote' or 'C:\nodes' once made a file that did not parse.
    data = tomllib.loads(render_template(name, sd, listen, listen, metrics=m))
    assert (data["name"], data["state_dir"], data["listen"], data["peers"]) == (
        name,
        sd,
        listen,
        listen,
    )
    assert data["api"]["metrics"] == m


def test_template_with_a_quote_and_backslash_in_the_state_dir_loads(tmp_path: Path) -> None:
    sd = tmp_path / 'q"uote\\dir'
    s = load_settings(_write(tmp_path, render_template("a", str(sd), ["127.0.0.1:7100"], [])))
    assert s.state_dir == sd


# -- state_dir ---------------------------------------------------------------------------


def test_relative_state_dir_is_relative_to_the_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = _write(tmp_path, 'name = "a"\nstate_dir = "../st"\n', "conf/node.toml")
    assert load_settings(cfg).state_dir == tmp_path / "st"
    # and a path relative to the cwd, given to load_settings, still finds the file
    assert load_settings(Path("../conf/node.toml")).state_dir == tmp_path / "st"


def test_absolute_state_dir_is_kept(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path, MINIMAL)).state_dir == Path("/var/lib/x0t/web-1")


# -- the environment ---------------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _write(tmp_path, MINIMAL + '[tun]\nenabled = true\nname = "mesh0"\n')
    monkeypatch.setenv("X0T_NAME", "web-2")
    monkeypatch.setenv("X0T_API__METRICS", "127.0.0.1:9470")
    monkeypatch.setenv("X0T_TUN__MTU", "9000")
    monkeypatch.setenv("X0T_LISTEN", '["[::1]:7200"]')
    s = load_settings(cfg)
    assert s.name == "web-2"
    assert s.api.metrics == "127.0.0.1:9470"
    assert s.listen_addrs == [("::1", 7200)]
    # a nested variable changes one field; the file's other [tun] fields stay
    assert (s.tun.enabled, s.tun.name, s.tun.mtu) == (True, "mesh0", 9000)


def test_environment_alone_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X0T_NAME", "solo")
    monkeypatch.setenv("X0T_STATE_DIR", "/srv/solo")
    s = load_settings(None)
    assert (s.name, s.state_dir) == ("solo", Path("/srv/solo"))
    monkeypatch.delenv("X0T_NAME")
    with pytest.raises(ConfigError, match=r"^the environment: field 'name': Field required$"):
        load_settings(None)


def test_a_bad_environment_value_names_the_variable_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _write(tmp_path, MINIMAL + "[tun]\nmtu = 1400\n")
    monkeypatch.setenv("X0T_TUN__MTU", "12")
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg)
    msg = str(ei.value)
    _one_sentence(msg)
    assert msg.startswith("environment variable X0T_TUN__MTU: field 'tun.mtu': "), msg
    assert "1280" in msg


def test_a_non_json_list_in_the_environment_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pydantic-settings raises its own SettingsError here; it used to escape as a traceback
    monkeypatch.setenv("X0T_LISTEN", "[::1]:7100")
    with pytest.raises(ConfigError) as ei:
        load_settings(_write(tmp_path, MINIMAL))
    msg = str(ei.value)
    _one_sentence(msg)
    assert "listen" in msg and "X0T_LISTEN='[" in msg


# -- one sentence per wrong field ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ('hello_interval = "fast"', "hello_interval", "valid number"),
        ("hello_interval = 0", "hello_interval", "greater than or equal to 0.02"),
        ("datagram_size = 1200", "datagram_size", "greater than or equal to 1280"),
        ("datagram_size = 9000", "datagram_size", "less than or equal to 8952"),
        ("name = 5", "name", "valid string"),
        ('name = ""', "name", "at least 1"),
        ("bogus = 1", "bogus", "Extra inputs"),
        ('listen = ["1.2.3:7"]', "listen", "not an IP address"),
        ('listen = "127.0.0.1:7100"', "listen", "valid list"),
        ("listen = []", "listen", "at least 1"),
        ('peers = ["198.18.0.1:70000"]', "peers", "0..65535"),
        ('peers = ["db.example:7100"]', "peers", "not an IP address"),
        ("[tun]\nmtu = 1279", "tun.mtu", "greater than or equal to 1280"),
        ("[tun]\nmtu = 65536", "tun.mtu", "less than or equal to 65535"),
        ('[tun]\nmtu = "big"', "tun.mtu", "valid integer"),
        ('[tun]\nipv4 = "100.64.0.1"', "tun.ipv4", "derives from its identity"),
        ("[tun]\nipv4 = 3", "tun.ipv4", "valid boolean"),
        ('[tun]\ndeny_tcp = "reject"', "tun.deny_tcp", "match pattern"),
        ('[tun]\nname = "sixteen-chars-xx"', "tun.name", "at most 15"),
        ("[tun]\nnope = 1", "tun.nope", "Extra inputs"),
        ('[api]\nmetrics = "nowhere"', "api.metrics", "not an IP address"),
        ('[api]\nmetrics = "127.0.0.1:99999"', "api.metrics", "0..65535"),
        ('[log]\nlevel = "loud"', "log.level", "match pattern"),
        ("tun = 5", "tun", "valid dictionary"),
    ],
)
def test_a_wrong_field_fails_in_one_sentence_naming_field_and_file(
    tmp_path: Path, body: str, field: str, says: str
) -> None:
    base = 'state_dir = "/srv/a"\n' if body.startswith("name") else MINIMAL
    cfg = _write(tmp_path, base + body + "\n")
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg)
    msg = str(ei.value)
    _one_sentence(msg)
    assert msg.startswith(f"{cfg}: field '{field}': "), msg
    assert says in msg, msg


@pytest.mark.parametrize(
    ("body", "field"),
    [('name = "a"', "state_dir"), ('state_dir = "/x"', "name")],
)
def test_a_missing_required_field_is_named(tmp_path: Path, body: str, field: str) -> None:
    cfg = _write(tmp_path, body + "\n")
    with pytest.raises(ConfigError, match=rf"^{cfg}: field '{field}': Field required$"):
        load_settings(cfg)


def test_several_wrong_fields_name_the_first_and_count_the_rest(tmp_path: Path) -> None:
    cfg = _write(tmp_path, MINIMAL + "bogus = 1\n[tun]\nmtu = 1\n[log]\nlevel = 'x'\n")
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg)
    msg = str(ei.value)
    _one_sentence(msg)
    assert msg.endswith("(and 2 more)"), msg


def test_the_overlay_ipv4_address_is_switched_on_not_chosen(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path, MINIMAL + "[tun]\nipv4 = true\n")).tun.ipv4 is True
    assert load_settings(_write(tmp_path, MINIMAL)).tun.ipv4 is False


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    cfg = _write(tmp_path, MINIMAL + "hello_interval = = 1\n")
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg)
    msg = str(ei.value)
    _one_sentence(msg)
    assert msg.startswith(f"{cfg}: not valid TOML: ") and "line 3" in msg, msg


def test_missing_file(tmp_path: Path) -> None:
    cfg = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=rf"^{cfg}: no such configuration file$"):
        load_settings(cfg)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read: "):
        load_settings(tmp_path)  # a directory
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg)
    assert str(ei.value).startswith(f"{cfg}: cannot read: ")
    _one_sentence(str(ei.value))


def test_settings_from_text_checks_before_anything_is_written(tmp_path: Path) -> None:
    cfg = tmp_path / "not-yet.toml"
    text = render_template("a", "st", ["nonsense:1"], [])
    with pytest.raises(ConfigError, match=rf"^{cfg}: field 'listen': "):
        settings_from_text(text, cfg)
    assert not cfg.exists()
    s = settings_from_text(render_template("a", "st", ["127.0.0.1:1"], []), cfg)
    assert s.state_dir == tmp_path / "st"


# -- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7100", ("127.0.0.1", 7100)),
        ("198.18.0.1", ("198.18.0.1", DEFAULT_PORT)),
        ("[::1]:7100", ("::1", 7100)),
        ("[fd00::1]:1", ("fd00::1", 1)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("::1", ("::1", DEFAULT_PORT)),
        # without brackets the last group is part of the address, never a port
        ("::1:7100", ("::1:7100", DEFAULT_PORT)),
        ("[fe80::1%eth0]:9", ("fe80::1%eth0", 9)),
        ("localhost:80", ("localhost", 80)),
        ("  127.0.0.1:0  ", ("127.0.0.1", 0)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
    ],
)
def test_parse_host_port_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[::1", "missing ']'"),
        ("[::1]x", "expected ':PORT'"),
        ("[::1]:x", "port must be a number"),
        ("[]:5", "no host"),
        (":5", "no host"),
        ("", "no host"),
        ("127.0.0.1:65536", "port must be a number"),
        ("127.0.0.1:-1", "port must be a number"),
        ("127.0.0.1:+5", "port must be a number"),
        ("127.0.0.1:\u0665", "port must be a number"),  # ARABIC-INDIC DIGIT FIVE
        ("127.0.0.1:\u00b2", "port must be a number"),  # SUPERSCRIPT TWO
        ("db.example:7100", "not an IP address"),
        ("1.2.3:7", "not an IP address"),
        ("1.2.3.4:5:6", "not an IP address"),
    ],
)
def test_parse_host_port_refuses(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_host_port(text)


def _parse_or_value_error(text: str) -> None:
    try:
        host, port = parse_host_port(text)
    except ValueError:
        return
    assert 0 <= port <= 65535
    assert host == "localhost" or ipaddress.ip_address(host)


@given(st.text(max_size=60))
def test_parse_host_port_only_ever_raises_value_error(text: str) -> None:
    _parse_or_value_error(text)


@given(st.text(alphabet="0123456789abcdef:.[]%lohstx \u0665\u00b2", max_size=30))
def test_parse_host_port_on_address_like_text(text: str) -> None:
    _parse_or_value_error(text)


@given(st.ip_addresses(), st.integers(0, 65535))
def test_format_then_parse_round_trips(ip: ipaddress.IPv4Address, port: int) -> None:
    addr = (str(ip), port)
    text = format_host_port(addr)
    assert parse_host_port(text) == addr
    assert parse_host_port(text, default_port=1) == addr  # an explicit port wins


@given(st.ip_addresses(), st.integers(0, 65535))
def test_a_bare_host_takes_the_default_port(ip: ipaddress.IPv4Address, port: int) -> None:
    assert parse_host_port(str(ip), default_port=port) == (str(ip), port)
