"""Bad input gets a 4xx naming what was wrong, never a 5xx."""

from __future__ import annotations


def test_a_lone_surrogate_in_a_body_is_a_422_naming_the_field(control) -> None:  # type: ignore[no-untyped-def]
    r = control.client.post(
        "/v1/enroll/challenge",
        content=b'{"static_key": "\\ud800"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code in (400, 422), r.text
    assert "static_key" in r.json()["detail"]


def test_a_wrong_type_names_the_field(control) -> None:  # type: ignore[no-untyped-def]
    r = control.client.post("/v1/policies/validate", json={"source": 5}, headers=control.auth())
    assert r.status_code == 422
    assert r.json()["detail"].startswith("source:")


def test_nan_in_a_body_is_a_422_not_a_500(control) -> None:  # type: ignore[no-untyped-def]
    r = control.client.post(
        "/v1/policies/validate",
        content=b'{"source": NaN}',
        headers={"content-type": "application/json", **control.auth()},
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("source:")


def test_the_openapi_document_describes_the_422_body_sent(control) -> None:  # type: ignore[no-untyped-def]
    schema = control.client.get("/openapi.json").json()
    body = schema["components"]["schemas"]["HTTPValidationError"]
    assert body["properties"]["detail"]["type"] == "string"
