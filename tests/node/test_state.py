"""The agent's state directory: peers and the routing seqno lease survive a restart, a
corrupt file is reported by name and left exactly as it was, key files readable by others
are refused, and nothing half-written or temporary is ever left behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.node.state import (
    MAX_STATE_FILE,
    PEERS_FILE,
    SEQNO_FILE,
    SEQNO_LEASE,
    StateDir,
    StateError,
    seqno_distance,
)

MOD = 1 << 16


def _newer(a: int, b: int) -> bool:
    """``a`` is newer than ``b`` by RFC 8966's modular comparison."""
    return 0 < seqno_distance(b, a) < MOD // 2


def _state(tmp_path: Path) -> StateDir:
    s = StateDir(tmp_path / "state")
    s.create()
    return s


def _only_expected_files(path: Path, *names: str) -> None:
    assert sorted(os.listdir(path)) == sorted(names)  # no ".peers.json.xxxx" temp files


def test_create_makes_a_private_directory(tmp_path: Path) -> None:
    s = StateDir(tmp_path / "a" / "b")
    s.create()
    assert stat.S_IMODE(s.path.stat().st_mode) == 0o700
    s.create()  # idempotent
    assert s.file("x") == s.path / "x"


# -- peers -------------------------------------------------------------------------------


def test_peers_round_trip_across_a_restart(tmp_path: Path) -> None:
    s = _state(tmp_path)
    assert s.load_peers() == {}  # none yet
    peers = {"db-1": "198.18.0.2:7100", "web-2": "[fd00::2]:7100"}
    s.save_peers(peers)
    assert StateDir(s.path).load_peers() == peers
    s.save_peers({"db-1": "198.18.0.3:7100"})  # replaced, not merged
    assert StateDir(s.path).load_peers() == {"db-1": "198.18.0.3:7100"}
    _only_expected_files(s.path, PEERS_FILE)


@settings(deadline=None, max_examples=40)  # every save is an fsync
@given(st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=8))
def test_any_peers_mapping_round_trips(peers: dict[str, str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        s = StateDir(Path(d))
        s.save_peers(peers)
        assert StateDir(Path(d)).load_peers() == peers
        _only_expected_files(Path(d), PEERS_FILE)


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b"",
        b"\xff\xfe",
        b"null",
        b"[]",
        b'"db-1"',
        b'{"db-1": 7100}',
        b'{"db-1": null}',
        b"[" * 100_000,
        b'{"db-1": ' + b"9" * 5000 + b"}",
    ],
    ids=[
        "truncated",
        "empty",
        "not-utf8",
        "null",
        "list",
        "string",
        "int-address",
        "null-address",
        "deeply-nested",
        "5000-digit-int",
    ],
)
def test_corrupt_peers_is_named_and_left_untouched(tmp_path: Path, content: bytes) -> None:
    s = _state(tmp_path)
    s.file(PEERS_FILE).write_bytes(content)
    with pytest.raises(StateError) as ei:
        s.load_peers()
    msg = str(ei.value)
    assert msg.startswith(f"{s.file(PEERS_FILE)}: corrupt"), msg
    assert "\n" not in msg
    assert s.file(PEERS_FILE).read_bytes() == content


# -- files -------------------------------------------------------------------------------


def test_oversize_file_is_refused_by_name(tmp_path: Path) -> None:
    s = _state(tmp_path)
    big = b" " * (MAX_STATE_FILE + 1)
    s.file(PEERS_FILE).write_bytes(big)
    with pytest.raises(StateError, match=rf"^{s.file(PEERS_FILE)}: larger than {MAX_STATE_FILE}"):
        s.load_peers()
    assert s.file(PEERS_FILE).stat().st_size == MAX_STATE_FILE + 1
    s.file(PEERS_FILE).write_bytes(b" " * MAX_STATE_FILE)  # exactly the limit
    with pytest.raises(StateError, match="corrupt"):  # read, then found not to be JSON
        s.load_peers()


def test_read_reports_missing_and_unreadable_files(tmp_path: Path) -> None:
    s = _state(tmp_path)
    with pytest.raises(StateError, match=r"node\.crt: missing \(run 'x0t node init'"):
        s.read("node.crt")
    assert s.read("node.crt", required=False) is None
    (s.path / "adir").mkdir()
    with pytest.raises(StateError, match=r"adir: cannot read: "):
        s.read("adir")


def test_write_is_atomic_with_the_mode_asked(tmp_path: Path) -> None:
    s = _state(tmp_path)
    s.write("secret", b"k" * 32)
    assert stat.S_IMODE(s.file("secret").stat().st_mode) == 0o600  # the default
    s.write("public", b"p", 0o644)
    assert stat.S_IMODE(s.file("public").stat().st_mode) == 0o644
    s.write("secret", b"new")
    assert s.read("secret") == b"new"
    _only_expected_files(s.path, "secret", "public")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o700 | 0o001])
def test_key_files_readable_by_group_or_others_are_refused(tmp_path: Path, mode: int) -> None:
    s = _state(tmp_path)
    s.write("node.key", b"k")
    s.write("node-static.key", b"k")
    s.check_key_modes(("node.key", "node-static.key", "absent.key"))  # 0600: fine
    os.chmod(s.file("node-static.key"), mode)
    with pytest.raises(StateError) as ei:
        s.check_key_modes(("node.key", "node-static.key"))
    msg = str(ei.value)
    assert msg.startswith(f"{s.file('node-static.key')}: private key readable by others")
    assert f"mode {mode:o}" in msg and "chmod 600" in msg


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    s = _state(tmp_path)
    for i, mode in enumerate((0o600, 0o400, 0o700)):
        s.write(f"k{i}", b"k")
        os.chmod(s.file(f"k{i}"), mode)
    s.check_key_modes(("k0", "k1", "k2"))


# -- the routing seqno lease -------------------------------------------------------------


def test_fresh_directory_has_no_start_seqno(tmp_path: Path) -> None:
    s = _state(tmp_path)
    assert s.start_seqno() is None
    assert not s.file(SEQNO_FILE).exists()  # nothing written until the router has a seqno


def test_restart_continues_past_the_lease(tmp_path: Path) -> None:
    s = _state(tmp_path)
    s.observe_seqno(1000)
    lease = json.loads(s.file(SEQNO_FILE).read_bytes())["lease"]
    assert lease == 1000 + SEQNO_LEASE
    start = StateDir(s.path).start_seqno()
    assert start is not None and start == lease + 1
    # the restart's own lease is on disk before the router may use `start`
    assert json.loads(s.file(SEQNO_FILE).read_bytes())["lease"] == start + SEQNO_LEASE
    _only_expected_files(s.path, SEQNO_FILE)


def test_lease_is_not_rewritten_on_every_bump(tmp_path: Path) -> None:
    s = _state(tmp_path)
    s.observe_seqno(100)
    before = s.file(SEQNO_FILE).stat().st_mtime_ns, s.file(SEQNO_FILE).stat().st_ino
    for seqno in range(100, 100 + SEQNO_LEASE // 2 + 1):  # up to half the lease used
        s.observe_seqno(seqno)
    after = s.file(SEQNO_FILE).stat().st_mtime_ns, s.file(SEQNO_FILE).stat().st_ino
    assert before == after  # one write for 33 seqnos
    s.observe_seqno(100 + SEQNO_LEASE // 2 + 1)
    assert json.loads(s.file(SEQNO_FILE).read_bytes())["lease"] > 100 + SEQNO_LEASE


@pytest.mark.parametrize("last", [65_470, 65_500, 65_534, 65_535, 0])
def test_restart_after_wrap_around_is_newer(tmp_path: Path, last: int) -> None:
    s = _state(tmp_path)
    for seqno in range(last - 40, last + 1):
        s.observe_seqno(seqno % MOD)
    start = StateDir(s.path).start_seqno()
    assert start is not None and 0 <= start < MOD
    assert _newer(start, last % MOD)


_ops = st.lists(
    st.one_of(
        st.integers(0, 3 * SEQNO_LEASE),  # the router bumps by this much, then reports
        st.just("restart"),  # kill -9 and start again on the same directory
    ),
    max_size=60,
)


@settings(deadline=None, max_examples=60)  # every lease is an fsync
@given(first=st.integers(0, MOD - 1), ops=_ops)
def test_every_restart_starts_newer_than_every_seqno_observed(
    first: int, ops: list[int | str]
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        s = StateDir(Path(d))
        assert s.start_seqno() is None
        seqno = first
        s.observe_seqno(seqno)
        observed = [seqno]
        for op in ops:
            if op == "restart":
                s = StateDir(Path(d))
                start = s.start_seqno()
                assert start is not None
                # total travel stays under half the seqno space, so "newer" is well defined
                assert all(_newer(start, o) for o in observed), (start, observed)
                seqno = start
            else:
                assert isinstance(op, int)
                seqno = (seqno + op) % MOD
            s.observe_seqno(seqno)
            observed.append(seqno)
        _only_expected_files(Path(d), SEQNO_FILE)


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b"\xff",
        b"null",
        b"[1]",
        b"{}",
        b'{"lease": null}',
        b'{"lease": "12"}',
        b'{"lease": 1.0}',
        b'{"lease": true}',
        b'{"lease": -1}',
        b'{"lease": 65536}',
        b'{"lease": ' + b"9" * 5000 + b"}",
    ],
)
def test_corrupt_seqno_is_named_and_left_untouched(tmp_path: Path, content: bytes) -> None:
    s = _state(tmp_path)
    s.file(SEQNO_FILE).write_bytes(content)
    with pytest.raises(StateError) as ei:
        s.start_seqno()
    msg = str(ei.value)
    assert msg.startswith(f"{s.file(SEQNO_FILE)}: corrupt"), msg
    assert "\n" not in msg
    assert s.file(SEQNO_FILE).read_bytes() == content


def test_seqno_distance_is_modular() -> None:
    assert seqno_distance(10, 12) == 2
    assert seqno_distance(65_535, 1) == 2
    assert seqno_distance(12, 10) == MOD - 2
    assert seqno_distance(7, 7) == 0
