"""The web page: `GET /` and its few static files, shipped inside the package (no build step, no CDN).

The page (`static/index.html`, `app.css`, `app.js`) plays through the game API exactly as any
other client does; this module only serves the files, each with a strict Content-Security-Policy
(scripts and styles from this server only, no inline code, no frames), so that story text can
never run as code even if a bug inserted it as markup. It adds no API route, knows nothing of
stories or players, and reads the files once, on first use.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Response

STATIC_DIR = Path(__file__).with_name("static")

# Only these files are served, so no request path ever reaches the file system.
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files, revalidated on every load: a new version of the game is seen at once.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


def _file(name: str) -> Response:
    media = _FILES.get(name)
    if media is None:
        raise HTTPException(status_code=404, detail=f"no file {name!r} here")
    return Response(_read(name), media_type=media, headers=_HEADERS)


@router.get("/")
def page() -> Response:
    """The game's web page."""
    return _file("index.html")


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    """One of the page's script, style sheet or icon."""
    return _file(name)
