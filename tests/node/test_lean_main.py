"""The lean agent entry point leaves the system OpenSSL out only when nothing will speak
TLS: an https control plane, a tracing exporter or ``/metrics`` keeps it."""

from __future__ import annotations

import json

from x0tta6bl4.node.__main__ import needs_system_openssl


def _settings(url: str) -> str:
    return json.dumps({"name": "a", "state_dir": "/tmp/a", "control": {"url": url}})


def test_no_control_plane_and_no_tracing_needs_no_tls() -> None:
    assert not needs_system_openssl(_settings(""), tracing=False)
    assert not needs_system_openssl(json.dumps({"name": "a"}), tracing=False)


def test_a_plain_http_control_plane_needs_no_tls() -> None:
    assert not needs_system_openssl(_settings("http://127.0.0.1:8080"), tracing=False)


def test_an_https_control_plane_keeps_tls_whatever_the_case() -> None:
    assert needs_system_openssl(_settings("https://cp.example:8443"), tracing=False)
    assert needs_system_openssl(_settings("HTTPS://cp.example"), tracing=False)


def test_tracing_keeps_tls_for_its_exporter() -> None:
    assert needs_system_openssl(_settings(""), tracing=True)


def test_serving_metrics_keeps_tls_which_prometheus_client_imports() -> None:
    settings = json.dumps({"name": "a", "api": {"metrics": "127.0.0.1:9100"}})
    assert needs_system_openssl(settings, tracing=False)


def test_settings_it_cannot_read_keep_tls_and_are_left_to_the_real_parser() -> None:
    assert needs_system_openssl("{not json", tracing=False)
    assert needs_system_openssl(json.dumps({"control": "x"}), tracing=False)
    assert needs_system_openssl(json.dumps({"control": {"url": 5}}), tracing=False)
