"""CORS for some paths only: the KoboldAI and OpenAI APIs answer pages of any origin, as
koboldcpp does, while the game API (stories a page could delete) keeps the browser's same-origin
rule. Bearer tokens are never sent by browsers on their own, so `*` exposes no player's stories.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send


class PathCORS:
    """Starlette's CORS middleware for paths under `prefixes`; every OPTIONS there gets 200."""

    def __init__(self, app: ASGIApp, *, prefixes: tuple[str, ...]) -> None:
        self.app, self.prefixes = app, prefixes
        self.cors = CORSMiddleware(app, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"], max_age=600)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if scope["method"] == "OPTIONS" and b"access-control-request-method" not in headers:
            # Not a browser's preflight (which the middleware answers), but koboldcpp answers it too.
            allow = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "*"}
            await Response(status_code=200, headers=allow)(scope, receive, send)
            return
        await self.cors(scope, receive, send)
