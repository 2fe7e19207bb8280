"""The community's protocols on `aidungeon serve`: the KoboldAI API (KoboldAI Lite, SillyTavern,
Agnaistic) and OpenAI completions (openai-python and every client that speaks it).

Both are raw-text generation on the server's one batching engine (`raw.py`), beside the game
API: they share its bounded turn queue, its rate limiter and its players' tokens, but no story.
`routers()` and `CORS_PATHS` are what `aidungeon serve` mounts. Nothing here plays the game.
"""

from __future__ import annotations

from typing import Any

# The paths browsers of any origin may call: KoboldAI Lite is often opened from another origin.
CORS_PATHS = ("/api/v1/", "/api/latest/", "/api/extra/", "/v1/")


def routers() -> tuple[Any, ...]:
    """The KoboldAI and OpenAI routers, for `create_app(state, routers=...)`."""
    from aidungeon.server.protocols import kobold, openai_routes

    return (kobold.router, openai_routes.router)
