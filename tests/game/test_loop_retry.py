"""A turn whose best candidate repeats a recent result is drawn again, livelier, with the repetition
penalty over the story (a loop is the story's own words coming back)."""

from __future__ import annotations

from support.fake_engine import FakeEngine
from support.sessions import make_session, only, run

FIRST = "You can see she's looking at your bag."
AGAIN = "You can see she's looking at you."  # the template filled in anew
NEW = "She hands you the key and runs for the door."


def test_a_loop_is_drawn_again_with_the_penalty_over_the_story() -> None:
    engine = FakeEngine([FIRST, AGAIN, NEW])
    game = make_session(engine, candidates=1)
    run(game, "/set repetition_scope turn")  # a player's choice; the retry still sees the story
    assert only(run(game, "look around"), "result").text == FIRST
    assert only(run(game, "look at her"), "result").text == NEW
    first, looped, again = (request.sampling for request in engine.requests)
    assert first.repetition_scope == looped.repetition_scope == "turn"
    assert again.repetition_scope == "story"
    assert again.temperature > looped.temperature and again.repetition_penalty > looped.repetition_penalty
    assert [turn.result for turn in game.story.path()][-2:] == [FIRST, NEW]


def test_a_new_result_is_kept_at_once() -> None:
    engine = FakeEngine([FIRST, NEW])
    game = make_session(engine, candidates=1)
    run(game, "look around")
    assert only(run(game, "look at her"), "result").text == NEW
    assert len(engine.requests) == 2
