"""A node's /metrics over real HTTP: real ``x0t node run`` processes enrolled through a
real ``x0t serve``, scraped the way Prometheus scrapes them (job ``x0tta6bl4-node``)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from x0tta6bl4 import __version__
from x0tta6bl4.node.localcontrol import LocalControlPlane
from x0tta6bl4.node.localmesh import LocalMesh, free_base_port

pytestmark = pytest.mark.slow

NAMES = ["a", "b"]
POLICY = "version 1\nallow from tag:role:m to tag:role:m port msg/7000\n"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Mesh:
    def __init__(self, cp: LocalControlPlane, mesh: LocalMesh, metrics_base: int) -> None:
        self.cp = cp
        self.mesh = mesh
        self.metrics_base = metrics_base

    def scrape(self, name: str) -> Samples:
        i = NAMES.index(name)
        url = f"http://127.0.0.{i + 1}:{self.metrics_base + i}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(self, name: str, metric: str, **labels: str) -> float | None:
        return self.scrape(name).get((metric, tuple(sorted(labels.items()))))


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root: Path = tmp_path_factory.mktemp("metrics")
    udp = free_base_port(len(NAMES))
    tcp = free_base_port(len(NAMES), [socket.SOCK_STREAM], avoid=range(udp, udp + len(NAMES)))
    with LocalControlPlane(root / "control") as cp:
        tags = {n: ["role:m"] for n in NAMES}
        mesh = LocalMesh(
            root / "mesh",
            NAMES,
            [("a", "b")],
            tags=tags,
            policy=POLICY,
            base_port=udp,
            metrics_base_port=tcp,
            control=cp,
        )
        with mesh:
            mesh.create()
            mesh.start_all()
            mesh.wait(mesh.routes_complete, 30.0, "a and b to route to each other")
            yield Mesh(cp, mesh, tcp)


def test_identity_and_mesh_gauges(plane: Mesh) -> None:
    st = plane.mesh.nodes["a"].client.status()
    crl = plane.cp.call("GET", "/v1/crl/version")

    def settled() -> bool:
        s = plane.scrape("a")

        def v(metric: str, **labels: str) -> float | None:
            return s.get((metric, tuple(sorted(labels.items()))))

        return (
            v("x0tta6bl4_build_info", role="node", version=__version__) == 1.0
            and v("x0tta6bl4_neighbours") == 1.0
            and v("x0tta6bl4_sessions", kind="link") == 1.0
            and v("x0tta6bl4_certificate_expiry_timestamp_seconds", role="node")
            == st["cert_not_after"]
            and v("x0tta6bl4_revocation_list_version", role="node") == crl["version"]
            and v("x0tta6bl4_revocation_list_next_update_timestamp_seconds", role="node")
            == crl["next_update"]
            and v("x0tta6bl4_policy_version", role="node") == 1.0
            and v("x0tta6bl4_link_rtt_seconds", peer="b") is not None
        )

    wait_for(settled, "a's gauges to match its state")
    # The control plane's own series are not claimed here.
    assert plane.value("a", "x0tta6bl4_db_pool_size") is None


def test_control_sync_by_channel(plane: Mesh) -> None:
    # Reports go every second (LocalMesh); the stream's hello arrived at connect.
    t0 = time.time()
    wait_for(
        lambda: (
            (
                plane.value("a", "x0tta6bl4_control_last_sync_timestamp_seconds", channel="report")
                or 0
            )
            >= t0
        ),
        "a report accepted after t0",
    )
    stream = plane.value("a", "x0tta6bl4_control_last_sync_timestamp_seconds", channel="stream")
    assert stream is not None and time.time() - 60 < stream <= time.time()


def test_dataplane_counters_follow_sent_messages(plane: Mesh) -> None:
    a, b = plane.mesh.nodes["a"].client, plane.mesh.nodes["b"].client
    got: list[bytes] = []
    listener = b.listen(7000, timeout=5.0)

    def recv() -> None:
        for m in listener:
            got.append(m.data)
            if len(got) == 3:
                return

    th = threading.Thread(target=recv, daemon=True)
    th.start()
    time.sleep(0.3)  # the listener is registered
    metric_p, metric_b = "x0tta6bl4_dataplane_packets_total", "x0tta6bl4_dataplane_bytes_total"
    tx_p = plane.value("a", metric_p, direction="tx") or 0
    tx_b = plane.value("a", metric_b, direction="tx") or 0
    rx_p = plane.value("b", metric_p, direction="rx") or 0
    rx_b = plane.value("b", metric_b, direction="rx") or 0
    payloads = [b"x" * 100, b"y" * 200, b"z" * 300]
    for p in payloads:
        a.send("b", 7000, p)
    th.join(5)
    assert sorted(got) == sorted(payloads)
    wait_for(
        lambda: (
            plane.value("a", metric_p, direction="tx") == tx_p + 3
            and plane.value("a", metric_b, direction="tx") == tx_b + 600
            and plane.value("b", metric_p, direction="rx") == rx_p + 3
            and plane.value("b", metric_b, direction="rx") == rx_b + 600
        ),
        "the data-plane counters to count the three messages",
        timeout=5.0,
    )
    assert (plane.value("a", "x0tta6bl4_sessions", kind="e2e") or 0) >= 1


def test_a_neighbour_that_leaves_takes_its_series_along(plane: Mesh) -> None:
    # Last in this module: b shuts down with SIGTERM and tells a (LEAVE).
    assert plane.value("a", "x0tta6bl4_link_cost", peer="b") is not None
    plane.mesh.terminate("b")
    wait_for(
        lambda: (
            plane.value("a", "x0tta6bl4_link_cost", peer="b") is None
            and plane.value("a", "x0tta6bl4_neighbours") == 0.0
        ),
        "b's link series to go and a's neighbours to drop to 0",
        timeout=5.0,
    )
