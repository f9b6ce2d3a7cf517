"""API-key text: every key the service creates is one it accepts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from x0tta6bl4.control.auth import new_api_key, parse_api_key


def test_every_new_key_parses_back_to_its_id() -> None:
    # base64url secrets contain "_" about half the time; each must still parse
    for _ in range(200):
        text, key_id, _hash = new_api_key()
        parsed = parse_api_key(text)
        assert parsed is not None and parsed[0] == key_id


@given(st.text(max_size=200))
def test_parse_never_raises(text: str) -> None:
    parsed = parse_api_key(text)
    assert parsed is None or text.startswith("x0tk_")
