"""Enrollment and renewal through the service's HTTP API, on SQLite and PostgreSQL: the
happy paths, every refusal (4xx naming the part, never 5xx, nothing written), the race
for a single-use token, and renewal's checks (revoked, expired, wrong name or tags)."""

from __future__ import annotations

import asyncio
import base64
import os
import time

import httpx
import pytest
from sqlalchemy import func, select, update

from tests.control.enroll_helpers import (
    NodeKeys,
    attempt,
    build_sealed,
    create_token,
    enroll_ok,
    enroll_public,
    get_challenge,
    renew,
    signed_post,
)
from x0tta6bl4.api.enroll import (
    Challenge,
    b64,
    make_inner,
    open_response,
    renew_after,
)
from x0tta6bl4.control.enroll import make_ticket, ticket_key
from x0tta6bl4.control.models import AuditEntry, Certificate, JoinToken, Node, PolicyVersion
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.identity.bundle import TrustBundle
from x0tta6bl4.identity.cert import NodeCertificate
from x0tta6bl4.identity.crl import RevocationList
from x0tta6bl4.identity.request import CertificateRequest
from x0tta6bl4.identity.verify import verify_node_certificate
from x0tta6bl4.policy.signed import SignedPolicy


def _run(control, fn):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        async with control.ctx.db.session() as s:
            out = await fn(s)
            await s.commit()
            return out

    return control.client.portal.call(go)


def _count(control, model, *where) -> int:  # type: ignore[no-untyped-def]
    return _run(
        control, lambda s: _scalar(s, select(func.count()).select_from(model).where(*where))
    )


async def _scalar(s, stmt):  # type: ignore[no-untyped-def]
    return (await s.execute(stmt)).scalar_one()


def _uses(control, token_id: str) -> int:
    return _run(
        control, lambda s: _scalar(s, select(JoinToken.uses).where(JoinToken.id == token_id))
    )


# --- the happy path ------------------------------------------------------------------------


def test_enroll_issues_a_certificate_for_the_nodes_own_keys(control) -> None:  # type: ignore[no-untyped-def]
    key = control.client.get("/v1/enroll/key").json()
    assert key["fingerprint"] == control.ctx.ca.enroll_fingerprint
    t = create_token(control, name_pattern="web-*", tags=["role:web"])
    a = attempt(control.client, t["token"], "web-1", ["role:web"])
    assert a.status == 200, a.body
    assert set(a.body) == {"sealed"}  # nothing readable on the wire
    res = a.result()
    bundle = TrustBundle.from_pem(res.bundle.encode())
    crl = RevocationList.from_pem(res.crl.encode(), bundle)
    cert = NodeCertificate.from_pem(res.certificate.encode())
    ident = verify_node_certificate(cert.der, bundle, crl, time.time())
    assert ident.name == "web-1" and cert.tags == ("role:web",)
    assert cert.static_key == a.keys.static.public_key()
    assert cert.signing_key == a.keys.signing.public_key()
    assert res.policy is None and res.peers == []
    assert res.control_url == "http://testserver"
    assert res.renew_after == pytest.approx(renew_after(cert.not_before, cert.not_after))
    assert time.time() < res.renew_after < cert.not_after
    serial = format(cert.serial, "x")

    async def rows(s):  # type: ignore[no-untyped-def]
        node = (await s.execute(select(Node).where(Node.name == "web-1"))).scalar_one()
        c = (await s.execute(select(Certificate).where(Certificate.serial == serial))).scalar_one()
        audit = (
            (await s.execute(select(AuditEntry).where(AuditEntry.action == "node.enroll")))
            .scalars()
            .one()
        )
        return node, c, audit

    node, row, audit = _run(control, rows)
    assert (node.status, node.current_serial, node.tags) == ("active", serial, ["role:web"])
    assert row.status == "valid" and row.node_name == "web-1"
    assert audit.actor == f"token:{t['id']}" and audit.target == "web-1"
    assert _uses(control, t["id"]) == 1


def test_enroll_answer_carries_the_current_policy_and_bootstrap_peers(control) -> None:  # type: ignore[no-untyped-def]
    enroll_ok(control, "relay-1")
    signed = SignedPolicy.sign(
        "version 3\nallow from any to any port udp/53\n", control.ctx.ca.ca._key
    ).to_bytes()

    async def setup(s):  # type: ignore[no-untyped-def]
        s.add(
            PolicyVersion(
                version=3, source="", signed=signed, created_at=time.time(), created_by="t"
            )
        )
        await s.execute(
            update(Node)
            .where(Node.name == "relay-1")
            .values(endpoints=["198.51.100.7:7100"], last_seen=time.time())
        )
        for i in range(20):  # more than the 16 an answer carries
            s.add(
                Node(
                    name=f"old-{i}",
                    spiffe_id=f"spiffe://x/node/old-{i}",
                    tags=[],
                    status="revoked" if i == 0 else "active",
                    created_at=0.0,
                    endpoints=[f"198.51.100.{i + 10}:7100"],
                    last_seen=1.0,
                )
            )

    _run(control, setup)
    res, _ = enroll_ok(control, "web-2")
    assert base64.b64decode(res.policy or "") == signed
    assert len(res.peers) == 16
    assert res.peers[0].name == "relay-1" and res.peers[0].address == "198.51.100.7:7100"
    assert "old-0" not in {p.name for p in res.peers} and "web-2" not in {p.name for p in res.peers}


def test_the_same_node_may_enroll_again_with_the_same_keys(control) -> None:  # type: ignore[no-untyped-def]
    res, keys = enroll_ok(control, "web-1")
    again, _ = enroll_ok(control, "web-1", keys=keys)
    a = NodeCertificate.from_pem(res.certificate.encode())
    b = NodeCertificate.from_pem(again.certificate.encode())
    assert a.serial != b.serial and a.static_key == b.static_key


# --- refusals: 4xx naming what is wrong, nothing written ----------------------------------


def _nothing_written(control, token_id: str | None = None) -> None:  # type: ignore[no-untyped-def]
    assert _count(control, Certificate) == 0
    assert _count(control, Node) == 0
    assert _count(control, AuditEntry, AuditEntry.action == "node.enroll") == 0
    if token_id is not None:
        assert _uses(control, token_id) == 0


def test_bad_tokens_are_refused(control) -> None:  # type: ignore[no-untyped-def]
    from x0tta6bl4.api.enroll import JoinTokenText

    t = JoinTokenText.parse(create_token(control)["token"])
    fp = control.ctx.ca.enroll_fingerprint
    wrong_secret = str(JoinTokenText(t.token_id, JoinTokenText.new(fp).secret, fp))
    unknown = str(JoinTokenText.new(fp))
    other_cp = str(JoinTokenText(t.token_id, t.secret, "ab" * 32))
    for text, status, words in (
        (wrong_secret, 403, "unknown token or wrong secret"),
        (unknown, 403, "unknown token or wrong secret"),
        (other_cp, 403, "another control plane"),
        ("x0tj1.not-a-token", 400, "token:"),
    ):
        a = attempt(control.client, text, "n1")
        assert a.status == status and words in a.detail, (text, a.status, a.body)
    _nothing_written(control, t.token_id)


def test_an_expired_ticket_is_refused(control) -> None:  # type: ignore[no-untyped-def]
    tok = create_token(control)
    keys = NodeKeys()
    ct, shared = keys.static.public_key().encapsulate()
    stale = make_ticket(
        ticket_key(control.ctx.ca.enroll_key),
        shared,
        keys.static.public_key().to_bytes(),
        int(time.time()) - 1,
    )
    ch = Challenge(ciphertext=b64(ct), ticket=b64(stale), expires_at=time.time() - 1)
    a = attempt(control.client, tok["token"], "n1", keys=keys, challenge=ch, shared=shared)
    assert a.status == 400 and "ticket: expired" in a.detail
    forged = Challenge(ciphertext=b64(ct), ticket=b64(os.urandom(100)), expires_at=0)
    a = attempt(control.client, tok["token"], "n1", keys=keys, challenge=forged, shared=shared)
    assert a.status == 400 and "ticket" in a.detail
    _nothing_written(control, tok["id"])


def test_possession_of_the_static_key_is_proven(control) -> None:  # type: ignore[no-untyped-def]
    tok = create_token(control, max_uses=5)
    victim = HybridPrivateKey.generate()
    # A challenge for my key, a CSR naming someone else's static key.
    a = attempt(control.client, tok["token"], "n1", csr_static=victim.public_key())
    assert a.status == 403 and "another static key" in a.detail
    # A challenge for the victim's key, which I cannot decapsulate: a guessed secret.
    keys = NodeKeys(static=victim)
    ch, _ = get_challenge(control.client, victim)
    a = attempt(control.client, tok["token"], "n1", keys=keys, challenge=ch, shared=os.urandom(32))
    assert a.status == 403 and "proof" in a.detail
    _nothing_written(control, tok["id"])


def test_a_key_certified_to_another_node_is_refused(control) -> None:  # type: ignore[no-untyped-def]
    _, keys = enroll_ok(control, "web-1")
    tok = create_token(control)
    a = attempt(control.client, tok["token"], "web-2", keys=keys)
    assert a.status == 409 and "web-1" in a.detail
    assert _uses(control, tok["id"]) == 0  # the transaction rolled back, use included


def test_a_name_held_by_other_keys_or_revoked_is_refused(control) -> None:  # type: ignore[no-untyped-def]
    enroll_ok(control, "web-1")
    tok = create_token(control, max_uses=3)
    a = attempt(control.client, tok["token"], "web-1")
    assert a.status == 409 and "already enrolled with other keys" in a.detail

    async def revoke(s):  # type: ignore[no-untyped-def]
        await s.execute(update(Node).where(Node.name == "web-1").values(status="revoked"))

    _run(control, revoke)
    a = attempt(control.client, tok["token"], "web-1")
    assert a.status == 409 and "revoked; choose another name" in a.detail
    assert _uses(control, tok["id"]) == 0


def test_a_request_sealed_to_another_key_is_refused(control) -> None:  # type: ignore[no-untyped-def]
    tok = create_token(control)
    other = HybridPrivateKey.generate().public_key()
    a = attempt(control.client, tok["token"], "n1", seal_to=other)
    assert a.status == 400 and "not sealed to this control plane" in a.detail
    _nothing_written(control, tok["id"])


def test_garbage_is_a_4xx_never_a_5xx(control) -> None:  # type: ignore[no-untyped-def]
    pub = enroll_public(control.client)
    tok = create_token(control)["token"]
    keys = NodeKeys()
    ch, shared = get_challenge(control.client, keys.static)
    csr = CertificateRequest.build("n1", [], keys.static.public_key(), keys.signing)
    good = make_inner(tok, csr, ch, shared, os.urandom(32))

    def sealed_json(raw: bytes) -> dict[str, str]:
        from x0tta6bl4.crypto import hpke

        return {"sealed": b64(hpke.seal(pub, raw, b"x0tta6bl4 enroll v1"))}

    inner_variants = [
        b"",
        b"not json",
        b"[]",
        b'{"token": 1}',
        b"\xff\xfe",
        good.model_copy(update={"csr": "junk"}).model_dump_json().encode(),
        good.model_copy(update={"csr": good.csr.replace("MII", "MIJ", 1)})
        .model_dump_json()
        .encode(),
        good.model_copy(update={"proof": "A" * 43 + "="}).model_dump_json().encode(),
        good.model_copy(update={"ticket": "AAAA"}).model_dump_json().encode(),
        good.model_copy(update={"response_key": "AAAA"}).model_dump_json().encode(),
        good.model_copy(update={"response_key": "A" * 44}).model_dump_json().encode(),
        good.model_copy(update={"response_key": "A" * 42 + "=="}).model_dump_json().encode(),
        good.model_copy(update={"proof": "A" * 44}).model_dump_json().encode(),
        good.model_copy(update={"ticket": "A" * 5}).model_dump_json().encode(),
        good.model_copy(update={"token": "x0tj1." + "a" * 200}).model_dump_json().encode(),
        good.model_dump_json().replace("}", ',"extra":1}').encode(),
    ]
    bodies: list[object] = [
        None,
        {},
        {"sealed": ""},
        {"sealed": "!!!"},
        {"sealed": "AAAA"},
        {"sealed": "A" * 70_000},
        {"sealed": 12},
        ["sealed"],
        {"sealed": b64(os.urandom(2000))},
        *[sealed_json(v) for v in inner_variants],
    ]
    for body in bodies:
        r = control.client.post("/v1/enroll", json=body)
        assert 400 <= r.status_code < 500, (body if not isinstance(body, dict) else "", r.text)
        assert r.json()["detail"], r.text
    r = control.client.post(
        "/v1/enroll", content=b"\x00\x01", headers={"content-type": "application/json"}
    )
    assert 400 <= r.status_code < 500
    for body in (
        {},
        {"static_key": "A"},
        {"static_key": "A" * 1624},  # right length, not a valid key
        {"static_key": b64(os.urandom(1216))},
        {"static_key": b64(b"\x00" * 1216)},
    ):
        r = control.client.post("/v1/enroll/challenge", json=body)
        assert 400 <= r.status_code < 500, (body, r.text)
    _nothing_written(control)


# --- the race for a single-use token ------------------------------------------------------


def test_exactly_one_of_concurrent_enrollments_wins_a_single_use_token(control) -> None:  # type: ignore[no-untyped-def]
    tok = create_token(control)
    bodies = [build_sealed(control.client, tok["token"], f"race-{i}")[0] for i in range(6)]
    app = control.client.app

    async def race() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            rs = await asyncio.gather(*(c.post("/v1/enroll", json=b) for b in bodies))
        return [r.status_code for r in rs]

    statuses = control.client.portal.call(race)
    assert sorted(statuses) == [200] + [403] * 5, statuses
    assert _uses(control, tok["id"]) == 1
    assert _count(control, Certificate) == 1 and _count(control, Node) == 1


# --- renewal ------------------------------------------------------------------------------


def test_renewal_issues_a_new_certificate_and_keeps_the_old_one_valid(control) -> None:  # type: ignore[no-untyped-def]
    res, keys = enroll_ok(control, "web-1", ["role:web"])
    old = NodeCertificate.from_pem(res.certificate.encode())
    r = renew(control.client, old, keys)
    assert r.status_code == 200, r.text
    body = r.json()
    new = NodeCertificate.from_pem(body["certificate"].encode())
    bundle = TrustBundle.from_pem(body["bundle"].encode())
    crl = RevocationList.from_pem(body["crl"].encode(), bundle)
    verify_node_certificate(new.der, bundle, crl, time.time())
    assert new.serial != old.serial and (new.name, new.tags) == ("web-1", ("role:web",))
    assert body["renew_after"] == pytest.approx(renew_after(new.not_before, new.not_after))
    node = _run(control, lambda s: _scalar(s, select(Node).where(Node.name == "web-1")))
    assert node.current_serial == format(new.serial, "x")
    assert _count(control, Certificate, Certificate.status == "valid") == 2
    assert _count(control, AuditEntry, AuditEntry.action == "node.renew") == 1
    # The old certificate still signs requests; new keys may come with a renewal.
    rotated = NodeKeys()
    r = renew(control.client, old, keys, new_keys=rotated)
    assert r.status_code == 200, r.text
    newest = NodeCertificate.from_pem(r.json()["certificate"].encode())
    assert newest.static_key == rotated.static.public_key()


def test_renewal_refuses_another_name_or_other_tags(control) -> None:  # type: ignore[no-untyped-def]
    res, keys = enroll_ok(control, "web-1", ["role:web"])
    cert = NodeCertificate.from_pem(res.certificate.encode())
    r = renew(control.client, cert, keys, name="web-2")
    assert r.status_code == 403 and "web-2" in r.json()["detail"]
    r = renew(control.client, cert, keys, tags=["role:web", "role:db"])
    assert r.status_code == 403 and "tags must be exactly" in r.json()["detail"]
    r = renew(control.client, cert, keys, tags=[])
    assert r.status_code == 403
    other = NodeKeys()
    enroll_ok(control, "db-1", keys=other)
    r = renew(control.client, cert, keys, new_keys=other)
    assert r.status_code == 409 and "db-1" in r.json()["detail"]
    r = signed_post(control.client, "/v1/renew", {"csr": "junk"}, keys.signing, cert.serial)
    assert r.status_code == 400 and "csr" in r.json()["detail"]
    assert _count(control, AuditEntry, AuditEntry.action == "node.renew") == 0


def test_renewal_needs_a_current_unrevoked_certificate(control) -> None:  # type: ignore[no-untyped-def]
    from cryptography import x509

    res, keys = enroll_ok(control, "web-1")
    cert = NodeCertificate.from_pem(res.certificate.encode())
    csr = CertificateRequest.build("web-1", [], keys.static.public_key(), keys.signing)
    r = control.client.post("/v1/renew", json={"csr": csr.pem.decode()})
    assert r.status_code == 401 and "not signed" in r.json()["detail"]

    # A certificate of the same node that lived one second.
    async def short(s):  # type: ignore[no-untyped-def]
        return await control.ctx.ca.issue(
            s,
            "web-1",
            [],
            keys.static.public_key(),
            keys.signing.public_key(),
            now=time.time(),
            lifetime_s=1,
        )

    old = _run(control, short)
    time.sleep(max(0.0, old.not_after - time.time()) + 0.2)
    r = renew(control.client, old, keys)
    assert r.status_code == 401 and "expired" in r.json()["detail"]

    async def revoke(s):  # type: ignore[no-untyped-def]
        await control.ctx.ca.revoke_in(
            s, [format(cert.serial, "x")], x509.ReasonFlags.key_compromise, time.time()
        )

    _run(control, revoke)
    control.ctx.cert_cache.clear()  # what the pusher does on every replica after a revocation
    r = renew(control.client, cert, keys)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert "key_compromise" in r.json()["detail"] or "keyCompromise" in r.json()["detail"]


def test_an_answer_opens_only_under_its_response_key(control) -> None:  # type: ignore[no-untyped-def]
    from x0tta6bl4.api.enroll import EnvelopeError

    tok = create_token(control)
    body, _keys, response_key = build_sealed(control.client, tok["token"], "n1")
    r = control.client.post("/v1/enroll", json=body)
    assert r.status_code == 200
    with pytest.raises(EnvelopeError):
        open_response(os.urandom(32), r.json())
    assert open_response(response_key, r.json()).certificate


def test_the_race_over_real_http_from_threads(control_settings) -> None:  # type: ignore[no-untyped-def]
    """The same race on a served control plane: separate connections, separate threads;
    also two tokens racing for one new name."""
    import threading

    from tests.control.live import running_control_plane

    with running_control_plane(control_settings) as live:
        single = live.create_token()["token"]
        t1, t2 = live.create_token()["token"], live.create_token()["token"]
        bodies = [build_sealed(live.http, single, f"race-{i}")[0] for i in range(8)]
        bodies += [build_sealed(live.http, t, "same-name")[0] for t in (t1, t2)]
        barrier = threading.Barrier(len(bodies))
        statuses: list[int] = [0] * len(bodies)

        def post(i: int) -> None:
            with httpx.Client(base_url=live.url, timeout=60) as c:
                barrier.wait()
                statuses[i] = c.post("/v1/enroll", json=bodies[i]).status_code

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(statuses[:8]) == [200] + [403] * 7, statuses
        assert sorted(statuses[8:]) == [200, 409], statuses


def test_any_sealed_inner_request_gets_a_4xx_or_200_never_a_5xx(control) -> None:  # type: ignore[no-untyped-def]
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from x0tta6bl4.crypto import hpke

    pub = enroll_public(control.client)
    tok = create_token(control, max_uses=10_000)["token"]
    keys = NodeKeys()
    ch, shared = get_challenge(control.client, keys.static)
    csr = CertificateRequest.build("n1", [], keys.static.public_key(), keys.signing)
    good = make_inner(tok, csr, ch, shared, os.urandom(32)).model_dump()
    b64_44 = st.text(alphabet="AB+/", min_size=42, max_size=44).map(
        lambda t: (t + "==")[:44]
    ) | st.binary(min_size=30, max_size=34).map(b64)
    field = {
        "token": st.sampled_from([tok, tok[:-1] + "x", "x0tj1.", tok.upper()]),
        "csr": st.sampled_from([good["csr"], good["csr"][:200], "", "-----BEGIN"]),
        "ticket": st.sampled_from([good["ticket"], "AAAA"]) | st.binary(max_size=120).map(b64),
        "proof": st.sampled_from([good["proof"]]) | b64_44,
        "response_key": st.sampled_from([good["response_key"]]) | b64_44,
    }

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.fixed_dictionaries(field))
    def check(inner: dict[str, str]) -> None:
        import json

        raw = hpke.seal(pub, json.dumps(inner).encode(), b"x0tta6bl4 enroll v1")
        r = control.client.post("/v1/enroll", json={"sealed": b64(raw)})
        assert r.status_code < 500, (inner, r.text)
        assert r.status_code == 200 or r.json()["detail"]

    check()


def test_a_name_whose_overlay_ipv4_address_is_taken_is_refused(control) -> None:  # type: ignore[no-untyped-def]
    # Nodes compute each other's 100.64.0.0/10 addresses from their names (22 bits), so
    # the service refuses the rare second name that lands on an active node's address.
    from tests.identity.helpers import names_sharing_an_ipv4_address
    from x0tta6bl4.identity.cert import node_spiffe_id
    from x0tta6bl4.identity.overlay import overlay_ipv4

    td = control.ctx.ca.ca.trust_domain
    first, second = names_sharing_an_ipv4_address(td)
    addr = overlay_ipv4(node_spiffe_id(td, first))
    enroll_ok(control, first)
    tok = create_token(control)
    a = attempt(control.client, tok["token"], second)
    assert a.status == 409, a.body
    assert f"would share the overlay IPv4 address {addr} with node {first!r}" in a.detail
    assert _uses(control, tok["id"]) == 0
    assert attempt(control.client, tok["token"], second + "x").status == 200
