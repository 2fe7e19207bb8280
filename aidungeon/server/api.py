"""The game API: stories and their turns, over REST and Server-Sent Events.

Each route is thin: it checks the caller, turns the body into a call on `Games` (the same game
session and turn pipeline as the terminal), and answers JSON, or an SSE stream of the events
the terminal renders. Errors are raised as the game's exceptions and mapped once, in `app.py`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from aidungeon.core.cancel import CancelToken
from aidungeon.core.errors import SaveError
from aidungeon.game.events import Event
from aidungeon.server.access import Caller, caller
from aidungeon.server.bridge import ThreadStream
from aidungeon.server.db import ANONYMOUS
from aidungeon.server.games import Answer, TurnCost
from aidungeon.server.schemas import (
    Created,
    Line,
    NewStory,
    SettingChoice,
    StoryDetail,
    StorySummary,
    StoryTurn,
    event_json,
)
from aidungeon.server.state import ServerState, server
from aidungeon.server.store import StoryRow
from aidungeon.storage import saves
from aidungeon.storage.interop.exporters import export_story
from aidungeon.storage.interop.importers import import_bytes
from aidungeon.storage.prompts import custom_story

router = APIRouter(prefix="/api", tags=["game"])
Who = Annotated[Caller, Depends(caller)]
State = Annotated[ServerState, Depends(server)]

# A client's key for one line (a UUID is 36 characters): printable ASCII, as the header allows.
TurnKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=64,
        pattern=r"^[!-~]+$",
        description="the line's own key: the same line sent again with it is answered, never played twice",
    ),
]
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_MEDIA = {"md": "text/markdown", "txt": "text/plain", "html": "text/html", "save": "application/json"}


class TooManyStories(SaveError):
    """The player has as many stories as the server keeps for one player."""


@router.get("/settings", response_model=list[SettingChoice])
def list_settings(state: State, who: Who) -> list[SettingChoice]:
    """The settings a new story can start from, with their characters."""
    return [
        SettingChoice(id=s.id, title=s.title, description=s.description, characters=[c.name for c in s.characters])
        for s in state.games.settings
    ]


@router.post("/stories", status_code=201, response_model=Created)
def create_story(body: NewStory, state: State, who: Who) -> Created:
    """A new story from a setting, character and name, or from a custom opening. No turn is
    played yet: the first turn (an empty line) writes the story's first continuation."""
    _check_room(state, who)
    if body.prompt is not None:
        story = custom_story(body.prompt)
    else:
        story = state.games.from_setting(body.setting or "", body.character or "1", body.name or "")
    return Created(id=state.games.create(who.owner_id, story))


@router.get("/stories", response_model=list[StorySummary])
def list_stories(state: State, who: Who) -> list[StorySummary]:
    """Your stories, the most recently played first."""
    return [_summary(row) for row in state.games.store(who.owner_id).rows()]


@router.get("/stories/{story_id}", response_model=StoryDetail)
def get_story(story_id: str, state: State, who: Who) -> StoryDetail:
    """One of your stories: its current path of turns, memory, note and settings."""
    store = state.games.store(who.owner_id)
    row = store.row(story_id)
    data, _warnings = store.slot(story_id).read()
    story = data.story
    return StoryDetail(
        **_summary(row).model_dump(),
        opening=story.opening,
        player_name=story.player_name,
        memory=list(story.memory),
        author_note=story.author_note,
        path=[StoryTurn(action=t.action, result=t.result) for t in story.path()],
        settings=data.settings,
    )


@router.delete("/stories/{story_id}", status_code=204)
def delete_story(story_id: str, state: State, who: Who) -> Response:
    """Delete one of your stories (refused while one of its turns runs)."""
    state.games.claim(story_id)
    try:
        state.games.store(who.owner_id).delete(story_id)
        state.games.forget(story_id)
    finally:
        state.games.release(story_id)
    return Response(status_code=204)


@router.get("/stories/{story_id}/export")
def export(
    story_id: str, state: State, who: Who, format: Annotated[Literal["md", "txt", "html", "save"], Query()] = "md"
) -> Response:
    """The story as Markdown, text or a web page, or `save`: the save document itself, which the
    terminal game loads from its saves folder and `aidungeon import` reads."""
    data, _warnings = state.games.store(who.owner_id).slot(story_id).read()
    body = saves.encode_save(data) if format == "save" else export_story(data.story, format).encode("utf-8")
    filename = f"story-{story_id}.{'json' if format == 'save' else format}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(body, media_type=_MEDIA[format], headers=headers)


@router.post("/stories/import", status_code=201, response_model=list[Created])
async def import_story(
    request: Request, state: State, who: Who, filename: Annotated[str, Query(max_length=200)] = "upload.json"
) -> list[Created]:
    """Import a story from the request body: an aidungeon save document, or a save of AI Dungeon 2,
    Clover Edition, KoboldAI or the AI Dungeon web app (one file may hold several stories)."""
    raw = await request.body()
    return await run_in_threadpool(_import, raw, filename, state, who)


def _import(raw: bytes, filename: str, state: ServerState, who: Caller) -> list[Created]:
    if _is_save_document(raw):
        data, _warnings = saves.decode_save(raw, filename)
        _check_room(state, who)
        return [Created(id=state.games.import_save(who.owner_id, data))]
    stories, _notes = import_bytes(raw, filename)
    created = []
    for story in stories:
        _check_room(state, who)
        created.append(Created(id=state.games.create(who.owner_id, story)))
    return created


@router.post(
    "/stories/{story_id}/turns",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "the turn's events as SSE"}},
)
async def play(story_id: str, line: Line, state: State, who: Who, key: TurnKey = None) -> StreamingResponse:
    """Play one line exactly as typed in the terminal (an action, `/retry`, `/undo`, ...). The
    answer is a stream of Server-Sent Events: each `data:` is an event `{"kind", "text"}` as the
    terminal renders it, and a final `event: end` says the turn is over and saved; its data is what
    the generation cost (`new_tokens`, `prefill_tokens`: zeros for a line that generated nothing).

    Send each line with its own `Idempotency-Key` header and send the same line again, with the
    same key, when its stream broke before `event: end` (a server or replica died): a line that
    had changed the story is not played twice. The answer is then what it showed (without the
    streamed pieces) and an `end` with `"replayed": true`, or, for an action saved without its
    result, that result drawn now. Any replica answers: the key is stored with the story."""
    if who.owner_id != ANONYMOUS:  # the rate is per token; with tokens off the one player is local
        state.rate.take(who.key)
    await run_in_threadpool(state.games.store(who.owner_id).row, story_id)  # 404 before anything starts
    state.games.claim(story_id)
    try:
        answer: Answer = await run_in_threadpool(state.games.answer, who.owner_id, story_id, line.text, key)
        if answer.replay is not None:
            state.games.release(story_id)
            return StreamingResponse(_replayed(answer.replay), media_type="text/event-stream", headers=_SSE_HEADERS)
        state.queue.admit()
    except BaseException:
        state.games.release(story_id)
        raise
    cancel, cost = CancelToken(), TurnCost()
    stream: ThreadStream[Event] = ThreadStream(
        state.pool,
        lambda: state.games.play(who.owner_id, story_id, answer.line, cancel, cost, key),
        cancel,
        on_done=state.queue.done,
    )
    return StreamingResponse(_sse(stream, cost), media_type="text/event-stream", headers=_SSE_HEADERS)


async def _replayed(events: list[dict[str, object]]) -> AsyncIterator[str]:
    """A line played already, answered again: what it showed, then an `end` that cost nothing."""
    for event in events:
        yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
    yield f"event: end\ndata: {json.dumps({**dataclasses.asdict(TurnCost()), 'replayed': True})}\n\n"


async def _sse(stream: ThreadStream[Event], cost: TurnCost) -> AsyncIterator[str]:
    # Frames end with "\n\n" only (never "\r\n"): some clients' parsers split on "\n" alone.
    try:
        async for event in stream.items():
            yield f"data: {json.dumps(event_json(event), ensure_ascii=False)}\n\n"
    except Exception as err:  # the game raises nothing it does not turn into an event; this is a last line
        yield f"data: {json.dumps({'kind': 'error', 'text': f'the turn failed: {err}'})}\n\n"
    yield f"event: end\ndata: {json.dumps(dataclasses.asdict(cost))}\n\n"


def _check_room(state: ServerState, who: Caller) -> None:
    if state.games.store(who.owner_id).count() >= state.limits.max_stories:
        raise TooManyStories(f"you have {state.limits.max_stories} stories, the most one player may keep; delete one")


def _is_save_document(raw: bytes) -> bool:
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False  # the importers say what is wrong with it
    return isinstance(doc, dict) and doc.get("format") == saves.FORMAT


def _summary(row: StoryRow) -> StorySummary:
    return StorySummary(
        id=row.id,
        title=row.title,
        turns=row.turns,
        model=row.model,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
