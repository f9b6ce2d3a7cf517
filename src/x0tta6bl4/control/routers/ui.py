"""``/ui/``: the live topology page, static files shipped in the package (no build step).

The page and its files hold no data, so they are public; everything it shows comes from
the API (``/v1/topology``, ``/v1/events``, ``/v1/nodes/{name}``) with the viewer key the
user gives the page. Every answer carries a strict Content-Security-Policy (scripts,
styles and connections from this origin only, no inline code, no framing), so a name
or tag that slipped markup into the data could not run in an operator's browser.

Caching: the page, ``app.js`` and ``style.css`` are revalidated on every load (``no-cache``
with an ETag; an unchanged file costs a 304), so an upgrade shows at the next reload;
files under ``vendor/`` carry their version in the name and are cached for a year.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse

router = APIRouter(tags=["ui"], include_in_schema=False)

WEB_DIR: Final = Path(__file__).resolve().parent.parent / "web"

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
REVALIDATE: Final = "no-cache"
IMMUTABLE: Final = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str
    cache_control: str


def _load_assets(root: Path) -> dict[str, Asset]:
    """Every servable file under ``root`` by its path relative to it. Read once: a
    dozen small files (the graph library is the largest, about 430 kB)."""
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        content_type = CONTENT_TYPES.get(path.suffix)
        if not path.is_file() or content_type is None:
            continue
        rel = path.relative_to(root).as_posix()
        body = path.read_bytes()
        assets[rel] = Asset(
            body,
            content_type,
            '"' + hashlib.sha256(body).hexdigest()[:32] + '"',
            IMMUTABLE if rel.startswith("vendor/") else REVALIDATE,
        )
    return assets


_ASSETS: dict[str, Asset] | None = None


def assets() -> dict[str, Asset]:
    global _ASSETS
    if _ASSETS is None:
        _ASSETS = _load_assets(WEB_DIR)
    return _ASSETS


def _answer(request: Request, name: str) -> Response:
    asset = assets().get(name)
    if asset is None:
        raise HTTPException(404, detail=f"asset: no file {name!r} in the topology page")
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": asset.cache_control}
    if asset.etag in (t.strip() for t in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


@router.get("/ui", summary="The topology page (public; redirects to /ui/)")
async def ui_redirect() -> RedirectResponse:
    # Relative asset and API paths in the page resolve against /ui/, not /.
    return RedirectResponse("/ui/", status_code=308)


@router.get("/ui/", summary="The live topology page (public; its data needs a viewer key)")
async def ui_index(request: Request) -> Response:
    return _answer(request, "index.html")


@router.get("/ui/{asset:path}", summary="The page's scripts, styles and vendored library")
async def ui_asset(
    request: Request,
    asset: Annotated[str, PathParam(max_length=200, description="A file of the page.")],
) -> Response:
    return _answer(request, asset)
