"""Errors in each protocol's own JSON shape, for that protocol's routes only.

KoboldAI clients expect `{"detail": {"msg", "type"}}` and OpenAI clients `{"error": {"message",
"type", "code"}}`; the game API keeps `{"detail": "one line"}` (app.py). `shaped_route` makes an
APIRoute class that catches the game's errors, HTTP errors (401 from the token check) and bad
bodies inside the route and renders them with the protocol's `render`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pydantic
from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from aidungeon.core.errors import AIDungeonError
from aidungeon.server.app import status_for

# render(status, message) -> the JSON body
Render = Callable[[int, str], dict[str, Any]]


class ProtocolError(AIDungeonError):
    """A request a raw-text API cannot serve as sent (an empty prompt, one longer than the window)."""


def shaped_route(render: Render) -> type[APIRoute]:
    """An APIRoute class whose errors are bodies made by `render`."""

    class ShapedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def shaped(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as err:
                    answer = _answer(err, request)
                    if answer is None:
                        raise
                    status, message, headers = answer
                    return JSONResponse(render(status, message), status_code=status, headers=headers)

            return shaped

    return ShapedRoute


def _answer(err: Exception, request: Request) -> tuple[int, str, dict[str, str]] | None:
    """(status, one line, headers) for an error a client caused or may retry; None for a bug."""
    if isinstance(err, AIDungeonError):
        status, headers = status_for(err, request)
        return status, str(err), headers
    if isinstance(err, HTTPException):
        return err.status_code, str(err.detail), dict(err.headers or {})
    if isinstance(err, RequestValidationError | pydantic.ValidationError):
        return 422, validation_line(list(err.errors())), {}
    return None


def validation_line(errors: list[Any]) -> str:
    """Pydantic's errors as one line: `temperature: Input should be ...; n: ...`."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "the request body is not valid"
