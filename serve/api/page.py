"""GET /: the web page (prompt to picture, with progress, previews and cancel), and its two assets.

The page is package data (`serve/web/`): plain HTML, CSS and JavaScript, no build step and nothing
fetched from elsewhere (the Content-Security-Policy below forbids it, so a slip shows up at once).
It is a static shell and needs no key to load: everything it shows comes from the public API
(models, jobs, job events, cancel, files), called with the key the user types, so with auth on
nothing on it works without a valid key.
"""

from __future__ import annotations

import html
from functools import cache
from importlib import resources

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from serve.api.deps import ApiDeps, deps
from serve.errors import NotFound

router = APIRouter()

ASSETS = {"page.css": "text/css; charset=utf-8", "page.js": "text/javascript; charset=utf-8"}
# Same origin only; images may also be blob: URLs (files fetched with the key) and data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self' blob:; base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a redeploy's page is seen at once
}


@cache
def _asset(name: str) -> str:
    return resources.files("serve.web").joinpath(name).read_text(encoding="utf-8")


def _enabled(api: ApiDeps) -> None:
    if not api.config.gateway.web_page:
        raise NotFound("the web page is turned off on this server (gateway.web_page)")


@router.get("/", include_in_schema=False)
async def page(request: Request, api: ApiDeps = Depends(deps)) -> Response:
    _enabled(api)
    # The page's URLs are relative to <base>: it works under any route prefix (root_path).
    base = html.escape(request.scope.get("root_path", "").rstrip("/") + "/", quote=True)
    body = _asset("index.html").replace("{{BASE_HREF}}", base)
    return Response(body, media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/ui/{name}", include_in_schema=False)
async def asset(name: str, api: ApiDeps = Depends(deps)) -> Response:
    _enabled(api)
    if name not in ASSETS:
        raise NotFound(f"no page asset {name!r}")
    return Response(_asset(name), media_type=ASSETS[name], headers=HEADERS)
