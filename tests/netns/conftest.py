"""Fixtures for tests that build hosts out of network namespaces (marker ``netns``).

They skip, saying why, unless this is Linux, the user is root and ``ip netns add``
works; with ``X0T_REQUIRE_NETNS=1`` (CI) they fail instead, so a CI run cannot pass by
skipping them.

* ``lab``: an empty :class:`~tests.netns.helpers.Lab`, torn down after the test;
* ``diamond_net``: a lab holding the A-B, A-C, B-D, C-D diamond (forwarding off);
* ``netns_ok``: only the check, for tests that manage their own ``Lab``;
* ``tun_ok``: the check plus ``/dev/net/tun``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.netns.helpers import Diamond, Lab, diamond, reap_stale, unavailable_reason

_checked: list[str | None] = []


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("X0T_REQUIRE_NETNS") == "1":
        pytest.fail(f"X0T_REQUIRE_NETNS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def netns_ok() -> None:
    if not _checked:
        reason = unavailable_reason()
        _checked.append(reason)
        if reason is None:
            reap_stale()
    if _checked[0] is not None:
        _skip_or_fail(_checked[0])


@pytest.fixture
def tun_ok(netns_ok: None) -> None:
    if not os.path.exists("/dev/net/tun"):
        _skip_or_fail("/dev/net/tun is missing (modprobe tun)")


@pytest.fixture
def lab(netns_ok: None) -> Iterator[Lab]:
    """A fresh :class:`Lab`; everything in it is removed after the test, pass or fail."""
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def diamond_net(lab: Lab) -> Diamond:
    """A-B, A-C, B-D, C-D over veths (MTU 1,500, 198.18.1-4.0/24), no IP forwarding."""
    return diamond(lab)
