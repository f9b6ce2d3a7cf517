"""``/ui/``: the topology page's files as the control plane serves them. Public (no data
in them), with the right content types, caching and a Content-Security-Policy that
allows nothing inline and nothing from another origin; the page itself obeys it (no
inline script, style or handler) and every file it names is served."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from x0tta6bl4.control.routers.ui import CONTENT_SECURITY_POLICY, WEB_DIR


class _Refs(HTMLParser):
    """The files the page loads, and anything inline the policy would refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name, _ in attrs:
            if name.startswith("on") or name == "style":
                self.inline.append(f"<{tag} {name}=...>")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self._in_script = True
            if not a.get("src"):
                self.inline.append("<script> without src")
            else:
                self.refs.append(a["src"] or "")
        if tag == "link" and a.get("href"):
            self.refs.append(a["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline script text")


def test_the_page_is_public_and_locked_down(control: Any) -> None:
    r = control.client.get("/ui/")  # no API key: the page has no data in it
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    policy = dict(p.strip().split(" ", 1) for p in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["default-src"] == "'self'" and policy["script-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-cache"

    refs = _Refs()
    refs.feed(r.text)
    assert refs.inline == [], refs.inline
    assert "app.js" in refs.refs and any(x.startswith("vendor/cytoscape-") for x in refs.refs)
    for ref in refs.refs:
        assert not re.match(r"^[a-z]+:|^//", ref), f"{ref} is not on this origin"
        asset = control.client.get(f"/ui/{ref}")
        assert asset.status_code == 200, ref
        assert asset.content == (WEB_DIR / ref).read_bytes()

    # /ui redirects to /ui/, where relative paths resolve.
    r = control.client.get("/ui", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/ui/"


def test_assets_have_types_and_caching(control: Any) -> None:
    js = control.client.get("/ui/app.js")
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert js.headers["cache-control"] == "no-cache"
    assert js.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # Revalidation: the same ETag costs a 304 with no body.
    again = control.client.get("/ui/app.js", headers={"If-None-Match": js.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert control.client.get("/ui/style.css").headers["content-type"] == "text/css; charset=utf-8"
    assert control.client.get("/ui/favicon.svg").headers["content-type"] == "image/svg+xml"
    vendored = [p.name for p in (WEB_DIR / "vendor").glob("cytoscape-*.min.js")]
    assert len(vendored) == 1
    lib = control.client.get(f"/ui/vendor/{vendored[0]}")
    assert lib.status_code == 200
    assert lib.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert b"Cytoscape Consortium" in lib.content[:400]  # the licence header kept


def test_only_the_pages_files_are_served(control: Any) -> None:
    for path in (
        "/ui/nope.js",
        "/ui/vendor/README.md",  # not a type the page uses
        "/ui/../routers/ui.py",
        "/ui/%2e%2e/routers/ui.py",
        "/ui/vendor/../../app.py",
    ):
        r = control.client.get(path)
        assert r.status_code == 404, (path, r.status_code)
