"""The web view: a static page served by the Tiled server itself.

``tiled_config/*.yml`` lists ``tomolive.server.web:router`` under ``routers:``; Tiled mounts it at
``/custom``, so the page is ``<server>/custom/tomolive/``. The page holds no data and no key:
it reads everything through Tiled's own API. Opened as ``...?api_key=KEY``, Tiled's
``move_api_key`` turns the key into an HttpOnly cookie (as Tiled's own UI does) and the
page's script drops it from the address bar.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from tiled.server.authentication import move_api_key

PATH = "/custom/tomolive/"
HEADERS = {
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self'",
}

router = APIRouter(prefix="/tomolive", include_in_schema=False)


def web_url(server_uri: str) -> str:
    """Address of the web view on the Tiled server at ``server_uri``."""
    return server_uri.rstrip("/") + PATH


def _static(name: str, media_type: str) -> Response:
    content = (files("tomolive.server") / "static" / name).read_bytes()
    return Response(content, media_type=media_type, headers=HEADERS)


@router.get("/")
async def page(_: None = Depends(move_api_key)) -> Response:
    """The page; ``?api_key=`` becomes Tiled's API-key cookie."""
    return _static("index.html", "text/html; charset=utf-8")


@router.get("/view.js")
async def script() -> Response:
    """The page's script."""
    return _static("view.js", "text/javascript; charset=utf-8")
