"""The game on another `aidungeon serve` (game -> server -> engine): the remote engine finds this
server's KoboldAI tokenizer endpoints and plays turns through its OpenAI completions."""

from __future__ import annotations

from aidungeon.game.events import EventKind
from aidungeon.model.remote import RemoteEngine
from tests.server.conftest import Server
from tests.support.sessions import kinds, make_session, run


def test_a_game_plays_on_another_aidungeon_serve(live: tuple[str, Server]) -> None:
    url, made = live
    engine = RemoteEngine.connect(f"openai:{url}/v1")
    try:
        assert engine.decode(engine.encode("You wake in a cave.")) == "You wake in a cave."
        session = make_session(engine)
        for line in ("", "light a torch", "walk north"):
            events = run(session, line)
            assert EventKind.RESULT in kinds(events), events
        assert len([t for t in session.story.path() if t.result]) == 3
        # Every turn reached the server's engine as a raw completion.
        assert len(made.engine.requests) >= 3
    finally:
        engine.close()
