"""OpenAI completions on `aidungeon serve`: `/v1/models` and `/v1/completions`, thin routes over
raw-text generation (`raw.py`), for openai-python, SillyTavern's text-completion mode and every
client of vLLM's OpenAI server.

Completions stream as `data: {chunk}` events ending with `data: [DONE]`. The engine streams
candidate 0 as it is written; with n > 1 the other candidates come whole, each in one chunk,
when the generation ends, and so do log-probabilities (one chunk per choice, with its
finish_reason). A prompt longer than the window is refused, not cut. Errors are OpenAI's
`{"error": {"message", "type", "param", "code"}}`. Every route takes the caller's bearer token
once the server has players (openai-python always sends one; any key works until then).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from aidungeon.model.protocol import Completion, EngineProtocol, StopReason
from aidungeon.server.access import Caller, caller
from aidungeon.server.bridge import ThreadStream
from aidungeon.server.db import ANONYMOUS
from aidungeon.server.protocols import raw
from aidungeon.server.protocols.errors import shaped_route
from aidungeon.server.protocols.openai_schemas import (
    DEFAULT_MAX_TOKENS,
    Choice,
    CompletionAnswer,
    CompletionBody,
    FinishReason,
    Logprobs,
    ModelCard,
    ModelList,
    Usage,
)
from aidungeon.server.state import ServerState, server

log = logging.getLogger(__name__)

_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded", 503: "server_overloaded"}


def _render(status: int, message: str) -> dict[str, Any]:
    if status == 401:
        kind = "authentication_error"
    elif status == 429:
        kind = "rate_limit_error"
    else:
        kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": _CODES.get(status)}}


router = APIRouter(prefix="/v1", tags=["openai"], route_class=shaped_route(_render))
State = Annotated[ServerState, Depends(server)]
Who = Annotated[Caller, Depends(caller)]
Registry = Annotated[raw.Generations, Depends(raw.generations)]


@dataclass(frozen=True)
class _Ask:
    """One completion request, read: what the answer needs besides the engine's result."""

    body: CompletionBody
    job: raw.RawJob
    prompt: str
    id: str
    created: int
    model: str


@router.get("/models", response_model=ModelList)
def models(state: State, who: Who) -> ModelList:
    """The one model this server runs."""
    card = ModelCard(id=raw.model_name(state), created=int(time.time()), max_model_len=state.games.model.engine.window)
    return ModelList(data=[card])


@router.post(
    "/completions",
    response_model=None,
    responses={200: {"model": CompletionAnswer, "content": {"text/event-stream": {}}}},
)
async def completions(body: CompletionBody, request: Request, state: State, who: Who, registry: Registry) -> Response:
    """Continue `prompt`: `n` choices (the `best_of` likeliest), cut at `stop`, reproducible with
    `seed`, with each token's log-probability when `logprobs` is set; streamed when `stream`."""
    if who.owner_id != ANONYMOUS:  # as for turns: the rate is per token; without tokens the player is local
        state.rate.take(who.key)
    ask = await run_in_threadpool(_read, body, state, who)
    stream = raw.start(state, registry, who, ask.job, f"openai-{uuid.uuid4().hex}")
    if body.stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(_chunks(stream, ask, state), media_type="text/event-stream", headers=headers)
    finished = await raw.collect(stream, request)
    answer = await run_in_threadpool(_answer, ask, finished, state.games.model.engine)
    return JSONResponse(answer.model_dump())


def _read(body: CompletionBody, state: ServerState, who: Caller) -> _Ask:
    engine = state.games.model.engine
    prompt = body.text()
    max_new = min(body.max_tokens or DEFAULT_MAX_TOKENS, raw.MAX_NEW_TOKENS)
    job = raw.RawJob(
        session=raw.session_id("openai", who, body.user or ""),
        prompt_ids=raw.exact_prompt(engine, prompt, max_new=max_new),
        sampling=body.sampling(max_new, engine.window),
        n=body.drawn(),
        stops=body.stops(),
        keep_stop=body.include_stop_str_in_output,
        seed=body.engine_seed(),
    )
    created = int(time.time())
    return _Ask(body, job, prompt, f"cmpl-{uuid.uuid4().hex}", created, raw.model_name(state))


def _answer(ask: _Ask, finished: raw.Finished, engine: EngineProtocol) -> CompletionAnswer:
    completions = finished.result.completions
    if len(completions) > ask.body.n:  # best_of: keep the n likeliest per token, as OpenAI does
        completions = sorted(completions, key=lambda c: c.mean_logprob, reverse=True)[: ask.body.n]
    choices = [_choice(ask, index, c, engine) for index, c in enumerate(completions)]
    return CompletionAnswer(
        id=ask.id, created=ask.created, model=ask.model, choices=choices, usage=_usage(ask, finished)
    )


def _choice(
    ask: _Ask, index: int, completion: Completion, engine: EngineProtocol, *, text: str | None = None
) -> Choice:
    """A choice with the completion's text (or `text`, the part not streamed yet)."""
    body = ask.body
    shown = completion.text if text is None else text
    logprobs = None
    if body.logprobs is not None:
        logprobs = _logprobs(engine, completion, sampled=body.logprobs > 0)
        if body.echo and text is None:
            logprobs = _with_prompt(engine, ask, logprobs)
    if body.echo and text is None:
        shown = ask.prompt + shown
    return Choice(index=index, text=shown, logprobs=logprobs, finish_reason=_reason(completion))


def _usage(ask: _Ask, finished: raw.Finished) -> Usage:
    generated = sum(len(c.token_ids) for c in finished.result.completions)
    prompt = len(ask.job.prompt_ids)
    return Usage(prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated)


def _logprobs(engine: EngineProtocol, completion: Completion, *, sampled: bool) -> Logprobs:
    """The tokens that make up the completion's text (those past a stop's cut left out), each
    with the model's log-probability of it where the engine reported one."""
    ids, scores = completion.token_ids, completion.token_logprobs
    tokens: list[str] = []
    values: list[float | None] = []
    offsets: list[int] = []
    for i, token in enumerate(ids):
        offset = len(engine.decode(ids[:i])) if i else 0
        if offset >= len(completion.text):
            break
        tokens.append(engine.decode([token]))
        values.append(scores[i] if i < len(scores) else None)
        offsets.append(offset)
    top = [{t: v} if v is not None else None for t, v in zip(tokens, values, strict=True)] if sampled else None
    return Logprobs(tokens=tokens, token_logprobs=values, top_logprobs=top, text_offset=offsets)


def _with_prompt(engine: EngineProtocol, ask: _Ask, logprobs: Logprobs) -> Logprobs:
    """Echo: the prompt's tokens first, unscored, and the completion's offsets moved past it."""
    ids = list(ask.job.prompt_ids)
    tokens = [engine.decode([token]) for token in ids]
    offsets = [len(engine.decode(ids[:i])) if i else 0 for i in range(len(ids))]
    shift = len(ask.prompt)
    unscored: list[None] = [None] * len(ids)
    return Logprobs(
        tokens=tokens + logprobs.tokens,
        token_logprobs=[*unscored, *logprobs.token_logprobs],
        top_logprobs=None if logprobs.top_logprobs is None else [*unscored, *logprobs.top_logprobs],
        text_offset=offsets + [shift + o for o in logprobs.text_offset],
    )


async def _chunks(stream: ThreadStream[Any], ask: _Ask, state: ServerState) -> AsyncIterator[str]:
    try:
        if ask.body.echo:
            yield _chunk(ask, [Choice(index=0, text=ask.prompt)])
        async for item in stream.items():
            if isinstance(item, raw.Finished):
                for chunk in await run_in_threadpool(_last_chunks, ask, item, state.games.model.engine):
                    yield chunk
            else:
                yield _chunk(ask, [Choice(index=0, text=item)])
    except Exception as err:  # the stream has begun: an error event, as vLLM sends
        log.warning("an OpenAI stream failed: %s", err)
        yield f"data: {json.dumps(_render(500, f'the generation failed: {err}'))}\n\n"
    yield "data: [DONE]\n\n"


def _last_chunks(ask: _Ask, finished: raw.Finished, engine: EngineProtocol) -> list[str]:
    """Candidate 0's unstreamed end, then each other candidate whole; each with its finish reason
    and log-probabilities; then the usage when the client asked for it."""
    first, *others = finished.result.completions
    chunks = [_chunk(ask, [_choice(ask, 0, first, engine, text=finished.tail)])]
    chunks += [_chunk(ask, [_choice(ask, i, c, engine)]) for i, c in enumerate(others, start=1)]
    if ask.body.stream_options is not None and ask.body.stream_options.include_usage:
        chunks.append(_chunk(ask, [], usage=_usage(ask, finished)))
    return chunks


def _chunk(ask: _Ask, choices: list[Choice], usage: Usage | None = None) -> str:
    answer = CompletionAnswer(id=ask.id, created=ask.created, model=ask.model, choices=choices, usage=usage)
    return f"data: {answer.model_dump_json()}\n\n"


def _reason(completion: Completion) -> FinishReason:
    return "length" if completion.stop_reason is StopReason.LENGTH else "stop"
