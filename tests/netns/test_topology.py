"""The namespace helpers themselves: the diamond forms, the underlay does not forward,
blackholes drop and lift, processes run inside, and nothing outlives a lab."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.netns import helpers
from tests.netns.helpers import (
    TAG,
    Diamond,
    Lab,
    NetnsCommandError,
    _which,
    diamond,
    list_netns,
    pair,
    reap_stale,
    wait_for_line,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


def test_diamond_neighbours_reach_each_other(diamond_net: Diamond) -> None:
    d = diamond_net
    for key, link in d.links.items():
        res = link.a.ns.ping(link.b.ip, count=1, timeout=2.0)
        assert res.ok, f"{key}: {link.a.ns.short} cannot ping {link.b.ip}"
        back = link.b.ns.ping(link.a.ip, count=1, timeout=2.0)
        assert back.ok, f"{key}: {link.b.ns.short} cannot ping {link.a.ip}"
    for ns in d.nodes():
        assert ns.read_sysctl("net.ipv4.ip_forward") == "0"
        out = ns.ip("-o", "link", "show").stdout
        assert "mtu 1500" in out
    assert d.addr("a", "b") == d.links["ab"].a.ip
    assert d.addr("d", "c") == d.links["cd"].b.ip


def test_a_cannot_reach_d_through_the_underlay(diamond_net: Diamond) -> None:
    d = diamond_net
    d_addrs = [d.addr("d", "b"), d.addr("d", "c")]
    for addr in d_addrs:  # no route at all
        assert not d.a.ping(addr, count=1, timeout=0.5).ok
    # Even routed via B and C, the relays do not forward: only a mesh agent will.
    d.a.ip("route", "add", "198.18.3.0/24", "via", str(d.addr("b", "a")))
    d.a.ip("route", "add", "198.18.4.0/24", "via", str(d.addr("c", "a")))
    d.d.ip("route", "add", "198.18.1.0/24", "via", str(d.addr("b", "d")))
    d.d.ip("route", "add", "198.18.2.0/24", "via", str(d.addr("c", "d")))
    for addr in d_addrs:
        assert not d.a.ping(addr, count=2, timeout=0.5, interval=0.1).ok


def test_the_same_routes_work_once_b_forwards(lab: Lab) -> None:
    # the control experiment for the test above: the routes are right, forwarding is off
    d = diamond(lab)
    d.b.sysctl("net.ipv4.ip_forward", 1)
    d.a.ip("route", "add", "198.18.3.0/24", "via", str(d.addr("b", "a")))
    d.d.ip("route", "add", "198.18.1.0/24", "via", str(d.addr("b", "d")))
    assert d.a.ping(d.addr("d", "b"), count=1, timeout=2.0).ok


def test_a_python_process_runs_inside_the_namespace(lab: Lab) -> None:
    a, b, _link = pair(lab)
    out = a.python("import json, socket; print(json.dumps(socket.if_nameindex()))")
    names = {name for _, name in json.loads(out.stdout)}
    assert names == {"lo", "to-b"}
    # a long-running one, stopped by the lab
    proc = b.python_popen("import time; print('up', flush=True); time.sleep(60)")
    assert wait_for_line(proc, 10) == "up"
    assert proc.poll() is None
    with pytest.raises(NetnsCommandError, match="boom"):
        a.python("raise SystemExit('boom')")


def test_blackhole_drops_a_link_and_restore_lifts_it(lab: Lab) -> None:
    if _which("nft") is None:
        pytest.skip("nftables' `nft` is not installed")
    d = diamond(lab)
    ab, ac = d.links["ab"], d.links["ac"]
    assert d.a.ping(ab.b.ip, timeout=2.0).ok
    lab.blackhole(ab)
    assert not d.a.ping(ab.b.ip, count=2, timeout=0.5, interval=0.1).ok
    assert not d.b.ping(ab.a.ip, count=1, timeout=0.5).ok
    assert d.a.ping(ac.b.ip, timeout=2.0).ok  # the other link is untouched
    lab.restore(ab)
    assert d.a.ping(ab.b.ip, timeout=2.0).ok
    # one way: only B's side drops (A's ping dies on the way in); A holds no rule
    lab.blackhole(ab, "a->b")
    assert not d.a.ping(ab.b.ip, count=1, timeout=0.5).ok
    assert "drop" in d.b.run("nft", "list", "ruleset").stdout
    assert "x0t_blackhole" not in d.a.run("nft", "list", "ruleset").stdout
    lab.restore(ab)
    assert d.a.ping(ab.b.ip, timeout=2.0).ok


def test_teardown_leaves_nothing_behind(netns_ok: None) -> None:
    before = set(list_netns())
    with Lab() as lab:
        d = diamond(lab)
        mine = set(lab.namespaces())
        assert mine <= set(list_netns())
        assert all(name.startswith(lab.prefix) for name in mine)
        started = d.c.python_popen("import time; time.sleep(60)")
        # a process started behind the lab's back (not via popen) is killed too
        stray = subprocess.Popen(d.d.argv("sleep", "60"))
    assert started.poll() is not None
    assert stray.wait(5) is not None
    after = set(list_netns())
    assert not (mine & after)
    # whatever other runs did meanwhile, no namespace of ours appeared or stayed
    assert not {n for n in after - before if n.startswith(lab.prefix)}
    ifaces = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "to-a" not in ifaces and "to-b" not in ifaces  # veths never touched the host


def test_teardown_happens_on_failure_too(netns_ok: None) -> None:
    names: list[str] = []
    with pytest.raises(RuntimeError, match="test failed"), Lab() as lab:
        diamond(lab)
        names = lab.namespaces()
        raise RuntimeError("test failed")
    assert len(names) == 4
    assert not set(names) & set(list_netns())


def test_reap_stale_removes_only_namespaces_of_dead_runs(netns_ok: None) -> None:
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    stale = f"{TAG}-{dead_pid}-abcdef-a"
    subprocess.run(["ip", "netns", "add", stale], check=True, capture_output=True)
    try:
        with Lab() as lab:
            lab.add("a")
            assert stale not in reap_stale()  # too young: maybe a run in another pid ns
            gone = reap_stale(min_age=0.0)
            assert stale in gone
            assert lab.namespaces()[0] in list_netns()  # ours is alive: kept
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
    assert stale not in list_netns()


def test_addresses_outside_the_test_range_are_refused(lab: Lab) -> None:
    a, b = lab.add("a"), lab.add("b")
    with pytest.raises(ValueError, match=r"198\.18\.0\.0/15"):
        lab.link(a, b, "10.0.0.0/24")


def test_ping_without_iputils_uses_the_python_echo(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _b, link = pair(lab)
    monkeypatch.setattr(helpers, "_which", lambda tool: None if tool == "ping" else "/x")
    res = a.ping(link.b.ip, count=2, timeout=1.0, interval=0.05)
    assert (res.sent, res.received, len(res.rtts_ms)) == (2, 2, 2)
    assert all(0 < rtt < 1000 for rtt in res.rtts_ms)
    assert not a.ping("198.18.9.9", count=1, timeout=0.2).ok  # no route: no answer
