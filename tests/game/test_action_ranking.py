"""With `/set action_ranking on`, of a turn's equally clean candidates the game shows the one the
action explains best: the one whose opening the engine finds likelier after the action than after
"You wait.". Off by default (benchmarks/RESULTS.md, #14: more turns that make no sense)."""

from __future__ import annotations

from support.fake_engine import FakeEngine
from support.sessions import make_session, only, run

from aidungeon.game import turn as turn_module

DRAWN = [
    "A raven lands on the sill and watches you.",
    "The old man takes your coin and smiles.",
    "The wind howls through the empty hall.",
]


def coin_scores(prompt: str, text: str) -> float:
    """A text about the old man is likelier after an action about him; everything else is even.
    (The fake tokenizer is a character a token, so only a text's first SCORED_TOKENS letters count.)"""
    return 2.0 if "old man" in prompt and "old man" in text else 0.0


def shown_after(engine: FakeEngine, *settings: str, save_name: str = "t") -> str:
    game = make_session(engine, candidates=3, save_name=save_name)
    for setting in settings:
        run(game, setting)
    return only(run(game, "give the old man a coin"), "result").text


ON = "/set action_ranking on"


def test_the_candidate_that_answers_the_action_is_shown() -> None:
    engine = FakeEngine([DRAWN], scores=coin_scores)
    assert shown_after(engine, ON) == DRAWN[1]  # the guard alone would show the first: all score alike
    prompt, rows = engine.scored[0]
    assert "You give the old man a coin." in prompt and rows == [t[: turn_module.SCORED_TOKENS] for t in DRAWN]
    assert "You wait." in engine.scored[1][0]


def test_the_others_stay_for_retry_in_the_guards_order() -> None:
    engine = FakeEngine([DRAWN], scores=coin_scores)
    game = make_session(engine, candidates=3)
    run(game, ON)
    run(game, "give the old man a coin")
    assert [c.text for c in game.story.last.candidates] == [DRAWN[1], DRAWN[0], DRAWN[2]]


def test_a_flawed_candidate_is_not_shown_for_answering_the_action() -> None:
    drawn = [DRAWN[0], "The old man and the", DRAWN[2]]  # a fragment: the guard ranks it last
    assert shown_after(FakeEngine([drawn], scores=coin_scores), ON) == DRAWN[0]


def test_off_by_default_or_without_scores_the_guards_choice_is_shown() -> None:
    engine = FakeEngine([DRAWN], scores=coin_scores)
    assert shown_after(engine) == DRAWN[0]
    assert engine.scored == []  # off costs nothing
    assert (
        shown_after(FakeEngine([DRAWN], scores=coin_scores), ON, "/set action_ranking off", save_name="v") == DRAWN[0]
    )
    assert (
        shown_after(FakeEngine([DRAWN]), ON, save_name="u") == DRAWN[0]
    )  # an engine that cannot score, as a remote one


def test_a_turn_without_an_action_and_a_single_candidate_are_not_scored() -> None:
    engine = FakeEngine([DRAWN, DRAWN], scores=coin_scores)
    game = make_session(engine, candidates=3)
    run(game, ON)
    assert only(run(game, ""), "result").text == DRAWN[0]  # the story goes on: no action to answer
    run(game, "/set candidates 1")
    run(game, "give the old man a coin")
    assert engine.scored == []
