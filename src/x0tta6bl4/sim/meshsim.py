"""The real mesh in the simulator: credentials for every node, a node factory that builds
``HealingNode(MeshNode)`` cores, and global views (live meshes, next-hop paths) that only
the simulator can take, since it sees every node at once: :func:`route_path` (the
routing view) and :func:`trace_path` (what a packet would meet: down links, partitions,
dead nodes, loops) return a :class:`~.types.PathResult`. ``meshrun`` builds the public
``MeshRun`` on them; the scenarios' probes are in ``runner``.

Real cryptography throughout: a real ML-DSA-65 CA signs a real X.509-SVID per node, and
the nodes run the real hybrid handshake. Keys come from the seed, so simultaneous-open
tie-breaks and every trace are reproducible; ML-DSA signatures and ML-KEM encapsulations
draw from OpenSSL, which changes ciphertext bytes between runs but nothing a trace
records.
"""

from __future__ import annotations

import datetime
import random
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from cryptography import x509

from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.healing import HealingConfig, HealingEvent, HealingLoop, HealingNode
from x0tta6bl4.identity.ca import CertificateAuthority
from x0tta6bl4.identity.cert import NodeCertificate
from x0tta6bl4.identity.crl import RevocationList, RevokedEntry
from x0tta6bl4.identity.types import CertVerifier
from x0tta6bl4.identity.verify import make_verifier
from x0tta6bl4.mesh.node import MeshConfig, MeshNode, node_id
from x0tta6bl4.sansio import Core
from x0tta6bl4.sim.engine import NodeFactory, Simulator
from x0tta6bl4.sim.secrets import SeededSecretsForSimulation
from x0tta6bl4.sim.topology import Topology
from x0tta6bl4.sim.types import PathResult, derive_rng

EPOCH = 1_800_000_000.0
"""Wall-clock POSIX time at virtual time 0 (certificates are issued for it)."""
TRUST_DOMAIN = "sim.x0tta6bl4.mesh"


@dataclass(frozen=True, slots=True)
class SimCredential:
    cert_der: bytes
    static_private: HybridPrivateKey
    not_after: float


@dataclass
class MeshWorld:
    """A CA and one credential per node name."""

    trust_domain: str
    credentials: dict[str, SimCredential]
    verifier: CertVerifier
    epoch: float = EPOCH
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    ca: CertificateAuthority | None = field(default=None, repr=False)

    def revocation_list(self, revoked: Iterable[str], *, version: int, at: float) -> RevocationList:
        """A list signed by the world's CA, ``version``, revoking the certificates of the
        nodes ``revoked``, issued at virtual time ``at``; for ``RevocationListUpdated``.
        Nothing is persisted: the world is shared (cached), and its verifier keeps the
        list it was built with, so each node holds only what it is given."""
        if self.ca is None:
            raise ValueError("this world has no CA to sign a revocation list")
        now = self.epoch + at
        entries = [
            RevokedEntry(
                NodeCertificate.from_der(self.credentials[n].cert_der).serial,
                float(int(now)),
                x509.ReasonFlags.key_compromise,
            )
            for n in revoked
        ]
        return self.ca.sign_revocation_list(version, entries, now)

    def issue(
        self,
        name: str,
        *,
        at: float,
        validity: float,
        static: HybridPrivateKey | None = None,
    ) -> SimCredential:
        """A certificate for ``name`` signed by the world's CA at virtual time ``at``,
        valid ``validity`` seconds: for the node's own keys (a short-lived certificate, a
        renewal), or for another static key ``static``; for ``MeshSim.credentials`` and
        ``CertificateRenewed``. Recorded in the world's CA inventory only."""
        if self.ca is None:
            raise ValueError("this world has no CA to issue certificates")
        held = self.credentials[name]
        key = held.static_private if static is None else static
        cert = self.ca.issue(
            name,
            (),
            key.public_key(),
            NodeCertificate.from_der(held.cert_der).signing_key,
            now=self.epoch + at,
            validity=datetime.timedelta(seconds=validity),
            unique_ipv4=False,
        )
        return SimCredential(cert.der, key, cert.not_after)


_WORLDS: dict[tuple[tuple[str, ...], int], MeshWorld] = {}


def build_world(names: Iterable[str], seed: int) -> MeshWorld:
    """Issue certificates for ``names`` (cached per process: ML-DSA signing ~1 ms each)."""
    key = (tuple(sorted(names)), seed)
    world = _WORLDS.get(key)
    if world is not None:
        return world
    tmp = tempfile.TemporaryDirectory(prefix="x0t-sim-ca-")
    ca = CertificateAuthority.init(tmp.name, TRUST_DOMAIN, now=EPOCH - 3600)
    creds: dict[str, SimCredential] = {}
    for name in key[0]:
        rng = derive_rng(seed, "credential", name)
        static = HybridPrivateKey.generate(rng.randbytes)
        signing = SigningKey.generate(rng.randbytes)
        cert = ca.issue(
            name, (), static.public_key(), signing.public_key(), now=EPOCH, unique_ipv4=False
        )
        creds[name] = SimCredential(cert.der, static, cert.not_after)
    crl = ca.revocation_list()
    # One verification cache for the whole world: each certificate's signature is
    # checked once per process instead of once per neighbour; outcomes are identical.
    verifier = make_verifier(ca.bundle(), lambda: crl)
    world = MeshWorld(TRUST_DOMAIN, creds, verifier, EPOCH, tmp, ca)
    _WORLDS[key] = world
    return world


@dataclass
class MeshSim:
    """Collects what the nodes report, for summaries."""

    world: MeshWorld
    topology: Topology
    healing: bool = True
    mesh_config: MeshConfig | None = None
    healing_config: HealingConfig | None = None
    healing_events: list[tuple[str, HealingEvent]] = field(default_factory=list)
    # Extra observers every node's loop reports to (the CLI passes the Prometheus
    # recorders of observability.metrics; sim/ itself does not import them).
    on_event: Callable[[HealingEvent], None] | None = None
    on_cycle: Callable[[Mapping[str, float]], None] | None = None
    # A node built from another MeshNode class, by name: a compromised or instrumented
    # node in an otherwise honest mesh (a hostile relay in the security tests).
    node_types: Mapping[str, type[MeshNode]] = field(default_factory=dict)
    # Nodes start knowing every name (the simulator's convenience); False is what a real
    # agent knows: neighbours' names from their certificates, others' ids from routing.
    directory: bool = True
    # Credentials some nodes start with instead of the world's (``MeshWorld.issue``: a
    # short-lived certificate, say).
    credentials: Mapping[str, SimCredential] = field(default_factory=dict)

    def factory(self) -> NodeFactory:
        neighbours = {n: sorted(self.topology.neighbours(n)) for n in self.topology.nodes}
        directory = list(self.topology.nodes) if self.directory else []
        world = self.world

        def make(name: str, rng: random.Random, now: float) -> Core:
            cred = self.credentials.get(name) or world.credentials[name]
            node = self.node_types.get(name, MeshNode)(
                name,
                cred.cert_der,
                cred.static_private,
                world.verifier,
                rng=rng,
                # the simulation's explicit switch: seeded "secrets", for reproducibility
                secrets=SeededSecretsForSimulation(rng.getrandbits(64)),
                wall_offset=world.epoch,
                trust_domain=world.trust_domain,
                cert_not_after=cred.not_after,
                neighbours=neighbours[name],
                directory=directory,
                config=self.mesh_config,
            )
            if not self.healing:
                return node

            def record(ev: HealingEvent, _name: str = name) -> None:
                self.healing_events.append((_name, ev))
                if self.on_event is not None:
                    self.on_event(ev)

            loop = HealingLoop(
                node,
                rng=rng,
                config=self.healing_config,
                on_event=record,
                on_cycle=self.on_cycle,
            )
            return HealingNode(node, loop)

        return make


def mesh_of(core: Core | None) -> MeshNode | None:
    if isinstance(core, HealingNode):
        inner = core.node
        return inner if isinstance(inner, MeshNode) else None
    return core if isinstance(core, MeshNode) else None


def meshes(sim: Simulator) -> dict[str, MeshNode]:
    out: dict[str, MeshNode] = {}
    for name in sim.nodes:
        if sim.is_alive(name):
            m = mesh_of(sim.core(name))
            if m is not None:
                out[name] = m
    return out


def path(nodes: dict[str, MeshNode], src: str, dst: str) -> list[str] | None:
    """Follow next hops from ``src`` toward ``dst``; None if it ends without arriving.

    A cycle would be a protocol bug; it raises, so every caller checks loop freedom."""
    result = route_path(nodes, src, dst)
    if result.kind == "loop":
        raise AssertionError(f"routing loop toward {dst}: {list(result.hops)}")
    return list(result.hops) if result.kind == "ok" else None


def _walk(
    nodes: Mapping[str, MeshNode],
    src: str,
    dst: str,
    step_ok: Callable[[str, str], bool] | None = None,
) -> PathResult:
    # One walk for both views: ``step_ok(a, b)`` says whether a packet can cross a -> b.
    if src not in nodes:
        return PathResult("dead_node", (src,))
    dst_id = node_id(dst)
    hops = [src]
    seen = {src}
    cur = src
    for _ in range(len(nodes) + 1):  # a walk longer than the node count has looped
        if cur == dst:
            return PathResult("ok", tuple(hops))
        nxt = nodes[cur].router.next_hop(dst_id)
        if nxt is None:
            return PathResult("no_route", tuple(hops))
        hops.append(nxt)
        if nxt in seen:
            return PathResult("loop", tuple(hops))
        if step_ok is not None and not step_ok(cur, nxt):
            return PathResult("dead_link", tuple(hops))
        if nxt not in nodes:
            return PathResult("dead_node", tuple(hops))
        seen.add(nxt)
        cur = nxt
    raise AssertionError("unreachable: a walk this long revisits a node")  # pragma: no cover


def route_path(nodes: Mapping[str, MeshNode], src: str, dst: str) -> PathResult:
    """The routing view: follow next hops from ``src`` toward ``dst`` through the running
    ``nodes``, whatever the links underneath are doing (see :func:`trace_path` for the
    packet's view). Ends ``ok``, ``no_route``, ``loop`` or ``dead_node`` (a next hop
    not in ``nodes``; ``hops`` ends with it)."""
    return _walk(nodes, src, dst)


def trace_path(
    sim: Simulator, src: str, dst: str, nodes: Mapping[str, MeshNode] | None = None
) -> PathResult:
    """Where a packet from ``src`` to ``dst`` would go now: next hops as in
    :func:`route_path`, and each step must also cross a link that exists, is up and is
    not cut by a partition (else ``dead_link``, ``hops`` ending with the node it could
    not reach) to a running node (else ``dead_node``). A routing loop is a result
    (``loop``), not an exception. Pass ``nodes`` (:func:`meshes`) when tracing many
    paths at one instant."""
    net = sim.net

    def crossable(a: str, b: str) -> bool:
        return net.has_link(a, b) and net.is_up(a, b) and not net.partitioned(a, b)

    return _walk(meshes(sim) if nodes is None else nodes, src, dst, crossable)


def sample_pairs(names: list[str], k: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    n = len(names)
    if n * (n - 1) <= k:
        return [(a, b) for a in names for b in names if a != b]
    pairs: set[tuple[str, str]] = set()
    while len(pairs) < k:
        a, b = rng.sample(names, 2)
        pairs.add((a, b))
    return sorted(pairs)
