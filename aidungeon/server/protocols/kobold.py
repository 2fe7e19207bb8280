"""The KoboldAI API on `aidungeon serve`: thin routes over raw-text generation (`raw.py`).

What KoboldAI Lite, SillyTavern and Agnaistic call, in koboldcpp 1.76's shapes (SERVING.md):
generate (whole, or streamed as SSE events framed with "\\n" only, `finish_reason` the string
"null" until the last event, no [DONE]), abort by genkey (a stream whose client goes away is
aborted too), tokencount, the version and config endpoints. `/api/extra/version` claims
"KoboldCpp" 1.76: clients gate SSE streaming on that exact name and version, so claiming it is a
compatibility convention (the README says so), not a claim to be koboldcpp.

Bodies are read as JSON whatever their content type (curl -d sends a form type), and fields this
server lacks are ignored. The informational GETs are open; generating, aborting and counting
tokens take the caller's bearer token once the server has players. Errors are
`{"detail": {"msg", "type"}}`, koboldcpp's shape.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from aidungeon.core.errors import ConfigError
from aidungeon.model.protocol import Completion, StopReason
from aidungeon.server.access import Caller, caller
from aidungeon.server.bridge import ThreadStream
from aidungeon.server.db import ANONYMOUS
from aidungeon.server.limits import Overloaded
from aidungeon.server.protocols import raw
from aidungeon.server.protocols.errors import shaped_route
from aidungeon.server.protocols.kobold_schemas import (
    DEFAULT_MAX_LENGTH,
    AbortAnswer,
    DetokenizeBody,
    Detokenized,
    GenerateAnswer,
    GenerateBody,
    GenkeyBody,
    KoboldResult,
    ResultText,
    ResultValue,
    TokenCount,
    TokenCountBody,
    Version,
)
from aidungeon.server.state import ServerState, server

log = logging.getLogger(__name__)

# The KoboldAI API version at which Lite sends stop sequences (>= 1.2.2), and the koboldcpp
# release whose API this one follows (Lite streams over SSE from 1.40).
API_VERSION = "1.2.5"
KOBOLDCPP_VERSION = "1.76"
# koboldcpp's words for a full server; SillyTavern retries a 503 on its own.
BUSY = "Server is busy; please try again later."

_KINDS = {401: "unauthorized", 404: "not_found", 413: "too_large", 429: "rate_limited", 503: "service_unavailable"}


def _render(status: int, message: str) -> dict[str, Any]:
    kind = _KINDS.get(status, "bad_input" if status < 500 else "server_error")
    return {"detail": {"msg": message, "type": kind}}


router = APIRouter(tags=["koboldai"], route_class=shaped_route(_render))
State = Annotated[ServerState, Depends(server)]
Who = Annotated[Caller, Depends(caller)]
Registry = Annotated[raw.Generations, Depends(raw.generations)]


M = TypeVar("M", bound=BaseModel)


def _json_body(model: type[M]) -> Any:
    """A dependency reading the body as `model` from JSON, whatever its content type."""

    async def read(request: Request) -> M:
        return model.model_validate_json(await request.body() or b"{}")

    return Depends(read)


def _documented(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


Generate = Annotated[GenerateBody, _json_body(GenerateBody)]


# -- what the clients ask before they connect -------------------------------------------------


@router.get("/api/v1/model", response_model=ResultText)
def model(state: State) -> ResultText:
    """The model's name: KoboldAI Lite counts itself connected once this answers."""
    return ResultText(result=raw.model_name(state))


@router.get("/api/v1/info/version", response_model=ResultText)
def api_version() -> ResultText:
    """The KoboldAI API version (Lite sends stop sequences from 1.2.2)."""
    return ResultText(result=API_VERSION)


@router.get("/api/extra/version", response_model=Version)
def extra_version() -> Version:
    """Claims koboldcpp 1.76, a compatibility convention: clients stream over SSE only for it."""
    return Version(result="KoboldCpp", version=KOBOLDCPP_VERSION)


@router.get("/api/v1/config/max_context_length", response_model=ResultValue)
@router.get("/api/extra/true_max_context_length", response_model=ResultValue)
def max_context_length(state: State) -> ResultValue:
    """The model's window, in tokens."""
    return ResultValue(value=state.games.model.engine.window)


@router.get("/api/v1/config/max_length", response_model=ResultValue)
def max_length(state: State) -> ResultValue:
    """Tokens generated when a request does not say."""
    return ResultValue(value=min(DEFAULT_MAX_LENGTH, state.games.model.engine.window - 1))


# -- generating -------------------------------------------------------------------------------


@router.post("/api/v1/generate", response_model=GenerateAnswer, openapi_extra=_documented(GenerateBody))
@router.post("/api/latest/generate", response_model=GenerateAnswer, include_in_schema=False)
async def generate(body: Generate, request: Request, state: State, who: Who, registry: Registry) -> GenerateAnswer:
    """Continue `prompt` (after `memory`); the whole text comes at the end. An abort by genkey
    ends it early with the text so far; a client that goes away aborts it."""
    finished = await raw.collect(await _start(body, state, who, registry), request)
    first = finished.result.completions[0]
    return GenerateAnswer(results=[KoboldResult(text=first.text, finish_reason=_reason(first))])


@router.post(
    "/api/extra/generate/stream",
    response_class=StreamingResponse,
    openapi_extra=_documented(GenerateBody),
    responses={200: {"content": {"text/event-stream": {}}, "description": "one `event: message` per piece"}},
)
async def generate_stream(body: Generate, state: State, who: Who, registry: Registry) -> StreamingResponse:
    """The same, streamed: `event: message` / `data: {"token", "finish_reason"}` per piece, the
    reason "null" until the last event; then the stream closes. Closing it aborts the generation."""
    stream = await _start(body, state, who, registry)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_events(stream), media_type="text/event-stream", headers=headers)


@router.post("/api/extra/abort", response_model=AbortAnswer, openapi_extra=_documented(GenkeyBody))
async def abort(body: Annotated[GenkeyBody, _json_body(GenkeyBody)], who: Who, registry: Registry) -> AbortAnswer:
    """Stop your generation `genkey` (all of yours without one): its generate call or stream
    then ends at once with the text so far."""
    found = registry.abort(who.key, body.genkey or "")
    return AbortAnswer(success="true" if found else "false", done="true")


@router.post("/api/extra/tokencount", response_model=TokenCount, openapi_extra=_documented(TokenCountBody))
async def tokencount(body: Annotated[TokenCountBody, _json_body(TokenCountBody)], state: State, who: Who) -> TokenCount:
    """How many tokens `prompt` is for this model, and their ids."""
    ids = await run_in_threadpool(state.games.model.engine.encode, body.prompt)
    return TokenCount(value=len(ids), ids=ids)


@router.post("/api/extra/detokenize", response_model=Detokenized, openapi_extra=_documented(DetokenizeBody))
async def detokenize(
    body: Annotated[DetokenizeBody, _json_body(DetokenizeBody)], state: State, who: Who
) -> Detokenized:
    """The text of token ids (koboldcpp's endpoint; another aidungeon uses it as its remote
    engine's tokenizer). Ids the tokenizer cannot read are a 400."""
    try:
        text = await run_in_threadpool(state.games.model.engine.decode, body.ids)
    except (OverflowError, ValueError, TypeError, IndexError):
        raise ConfigError("a token id is outside the model's vocabulary") from None
    return Detokenized(result=text)


async def _start(body: GenerateBody, state: State, who: Caller, registry: raw.Generations) -> ThreadStream[Any]:
    if who.owner_id != ANONYMOUS:  # as for turns: the rate is per token; without tokens the player is local
        state.rate.take(who.key)
    job = await run_in_threadpool(_job, body, state, who)
    try:
        return raw.start(state, registry, who, job, body.genkey or f"anon-{uuid.uuid4().hex}")
    except Overloaded as err:
        raise Overloaded(BUSY if not state.queue.draining else str(err)) from None


def _job(body: GenerateBody, state: ServerState, who: Caller) -> raw.RawJob:
    """The body as an engine job: memory kept, the prompt's start cut to fit `max_context_length`."""
    engine = state.games.model.engine
    ids, max_new = raw.fit_prompt(
        engine,
        body.prompt,
        memory=body.memory or "",
        context=body.max_context_length or engine.window,
        max_new=body.max_length if body.max_length is not None else DEFAULT_MAX_LENGTH,
    )
    return raw.RawJob(
        session=raw.session_id("kobold", who),
        prompt_ids=ids,
        sampling=body.sampling(max_new, engine.window),
        stops=body.stops(),
        keep_stop=not body.trim_stop,
        seed=body.seed(),
    )


async def _events(stream: ThreadStream[Any]) -> AsyncIterator[str]:
    try:
        async for item in stream.items():
            if isinstance(item, raw.Finished):
                yield _event(item.tail, _reason(item.result.completions[0]))
            else:
                yield _event(item, "null")
    except Exception as err:  # the stream has begun: the last event says what went wrong
        log.warning("a KoboldAI stream failed: %s", err)
        yield _event("", "stop", error=str(err))


def _event(token: str, finish_reason: str, **extra: str) -> str:
    # "\n" only: KoboldAI Lite parses /^event: (.*)\ndata: (.*)\n\n/m, which "\r\n" breaks.
    return f"event: message\ndata: {json.dumps({'token': token, 'finish_reason': finish_reason, **extra})}\n\n"


def _reason(completion: Completion) -> Literal["stop", "length"]:
    return "length" if completion.stop_reason is StopReason.LENGTH else "stop"
