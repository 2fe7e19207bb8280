"""The bench's own detectors on hand-written turns: each finds its glitch and leaves clean prose alone."""

from __future__ import annotations

import pytest

from aidungeon.bench.detectors import (
    Shown,
    detect,
    empty,
    evaluate,
    first_person,
    fragment,
    identity_drift,
    ignored_action,
    junk,
    loop,
    player_marker,
    plays_player,
    repeat_recent,
    repetition,
    validated,
)


def shown(text: str, action: str = "You look around.", *, recent: tuple[str, ...] = (), name: str = "Bob") -> Shown:
    return Shown(action=action, text=text, recent=recent, player_name=name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I stood there for a moment, unsure.", True),
        ("It looks like we're on the right track.", True),
        ("The path winds on. Our camp is far behind.", True),
        ('The old man smiles. "I know what you seek."', False),
        ("You stand in a cold hall. The US flag hangs there.", False),
        ("You walk on. The wind howls through the trees.", False),
    ],
)
def test_first_person(text: str, expected: bool) -> None:
    assert first_person(shown(text)) is expected


@pytest.mark.parametrize(
    ("text", "action", "expected"),
    [
        ("You say what a beast.", "You look around.", True),
        ('"Howdy, fellow," you said with a grin.', "You look around.", True),
        ("You told her everything about the map.", "You look around.", True),
        ("Bob asks the guard where the king is.", "You look around.", True),
        ('You ask, "Is anyone here?" Silence answers.', 'You say "Is anyone here?"', False),
        ("You see a door. A voice says hello.", "You look around.", False),
        ('The guard says, "Move along."', "You look around.", False),
    ],
)
def test_plays_player(text: str, action: str, expected: bool) -> None:
    assert plays_player(shown(text, action)) is expected


@pytest.mark.parametrize(
    ("text", "action", "expected"),
    [
        ("I'm glad to share some tales with you.", "You eat the moon.", True),
        ("You see a dusty room with a broken chair.", "You look around.", False),
        ("You unsheathe your blade and wait.", "You draw your weapon.", False),
        ("The door creaks as it swings wide.", "You open the nearest door.", False),
        ("The guard laughs at the sky.", "You open the nearest door.", True),
        ("The wind howls.", "", False),
    ],
)
def test_ignored_action(text: str, action: str, expected: bool) -> None:
    assert ignored_action(shown(text, action)) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("You are Zorbithrax Ironfist, lord of the north.", True),
        ("Your name is Tam, and you serve the king.", True),
        ("You are Bob, a knight of Aldmere.", False),
        ("You are alone in the dark.", False),
        ('"You are Tam," she says.', False),
    ],
)
def test_identity_drift(text: str, expected: bool) -> None:
    assert identity_drift(shown(text)) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("You walk in, or perhaps something else entirely!", False),
        ("You wait.\nor perhaps something else entirely!", True),
        ("You look for a clue. To find out what would be most fitting.", True),
        ("You open the door and\nThe room is dark.", True),
        ("You open the door. The room is dark.", False),
        ('The guard shouts, "Halt!" You stop.', False),
    ],
)
def test_fragment(text: str, expected: bool) -> None:
    assert fragment(shown(text)) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Now it may happen. Now it can indeed happen.", True),
        ("You see the old tower on the hill. Far off, you see the old tower on the hill again.", True),
        ("You walk into the hall. A fire burns in the grate.", False),
    ],
)
def test_repetition(text: str, expected: bool) -> None:
    assert repetition(shown(text)) is expected


def test_the_earlier_checks() -> None:
    old = "You walk down the long corridor and find a locked iron door at its end."
    assert player_marker(shown("You wait.\n> open the door"))
    assert not player_marker(shown("You wait. The clock reads 3 > 2."))
    assert junk(shown("You read on. Visit https://example.com for more."))
    assert junk(shown("You wait.<|im_end|>"))
    assert not junk(shown("You wait by the fire."))
    assert loop(shown("You walk down the long corridor and find a locked iron door at the end.", recent=(old,)))
    assert not loop(shown("A rat scurries past your feet.", recent=(old,)))
    assert repeat_recent(
        shown("A rat runs. You walk down the long corridor and find a locked iron door at its end.", recent=(old,))
    )
    assert not repeat_recent(shown("A rat runs past.", recent=(old,)))
    assert empty(shown("")) and not empty(shown("You wait."))


def test_a_clean_turn_has_no_verdict() -> None:
    turn = shown("You see a narrow corridor lit by torches. At its end, a wooden door stands ajar.")
    assert not any(detect(turn).values())


def test_evaluate_counts_precision_and_recall_and_skips_unlabelled() -> None:
    records = [
        {"action": "You look around.", "text": "I see a door.", "labels": {"first_person": True}},
        {"action": "You look around.", "text": "You see a door.", "labels": {"first_person": True}},
        {"action": "You look around.", "text": "We see a door.", "labels": {"first_person": False}},
        {"action": "You look around.", "text": "My door.", "labels": {"first_person": None}},
    ]
    score = evaluate(records)["first_person"]
    assert (score.true_pos, score.false_pos, score.false_neg, score.labelled) == (1, 1, 1, 2)
    assert score.precision == 0.5 and score.recall == 0.5
    assert not score.validated and "first_person" not in validated(evaluate(records))


def test_a_continuation_may_run_on_in_lower_case() -> None:
    assert not fragment(shown("see a fire burning. You wait.", action=""))
    assert fragment(shown("see a fire burning. You wait."))


@pytest.mark.parametrize(
    ("text", "action", "expected"),
    [
        ("The air is thick with smoke. The ground shimmers.", "You look around.", False),
        ("A cart rolls past.", "You wait.", False),
        ("Yes, we did enjoy dancing, dear friend.", "You dance on the table.", False),
        ("As you walk down the hallway, a lantern burns.", "You follow the sound.", False),
        ('The old man shrugs. "Nothing happened."', 'You say "Tell me about the war."', False),
        ("A cart rolls past.", 'You say "Tell me about the war."', True),
    ],
)
def test_open_actions_and_speech_are_answered_otherwise(text: str, action: str, expected: bool) -> None:
    assert ignored_action(shown(text, action)) is expected


def test_a_trailing_off_sentence_may_go_on_in_lower_case() -> None:
    assert not fragment(shown("They have something else going on here... you're sure of it."))


@pytest.mark.parametrize(
    ("text", "action", "expected"),
    [
        ("You turned around, grabbed a cup of tea, and walked away.", "You light a fire.", True),
        ("You mentioned your plans ahead.", "You throw a rock.", True),
        ("You just told me you don't remember me.", "You wait.", True),
        ("Can you explain more about it?", "You check your supplies.", False),
        ("You said you meant no harm, but the guard frowns.", 'You say "We mean no harm."', False),
        ("You dance until the candles burn low.", "You dance on the table.", False),
        ("You need to run before the guards come.", "You wait.", False),
    ],
)
def test_moves_and_words_written_for_the_player(text: str, action: str, expected: bool) -> None:
    assert plays_player(shown(text, action)) is expected


def test_mine_the_pronoun_is_first_person_and_the_noun_is_not() -> None:
    assert first_person(shown("Someone else will have mine tomorrow."))
    assert not first_person(shown("You enter the mine. A mine cart waits."))


def test_a_title_is_not_the_name() -> None:
    assert identity_drift(shown("You are Captain Vor'Thraxys, Lord Commander.", name="Anne"))
    assert not identity_drift(shown("You are Captain Anne of the Crimson Gull.", name="Anne"))


def test_an_act_the_player_might_do_later_is_not_written_for_them() -> None:
    assert not plays_player(shown("You can use a map before you leave.", "You ask for directions."))


def test_a_detector_needs_enough_labelled_glitches_to_be_validated() -> None:
    records = [{"action": "", "text": "Now it may happen. Now it can indeed happen.", "labels": {"repetition": True}}]
    score = evaluate(records)["repetition"]
    assert score.precision == 1.0 and score.recall == 1.0
    assert not score.validated


@pytest.mark.parametrize(
    ("text", "action", "expected"),
    [
        ("With a great sword, you fired an arrow across the room.", "You draw your weapon.", True),
        ("You slammed down a huge beam.", "You steal the lantern.", True),
        ("You climbed to the top of the wall.", "You climb up.", False),
        ("As you passed the rail, you saw the captain.", "You walk forward carefully.", False),
        ("You noticed a light in the window.", "You look around.", False),
        ("You reached the gate at dusk.", "You walk forward carefully.", False),
    ],
)
def test_past_tense_moves_the_player_did_not_choose(text: str, action: str, expected: bool) -> None:
    assert plays_player(shown(text, action)) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("You write on the wall. The White Lion.", True),
        ("A beautiful lamp that has been passed down in your family.", True),
        ("The object... You cannot tell what it is.", True),
        ("The ground shimmers with shadow. The enemy ships flee.", False),
        ("That shows how brave you are.", False),
        ("You smile. (laughs) you never knew.", False),
        ('"A fine blade," the smith says.', False),
    ],
)
def test_a_noun_phrase_standing_alone_is_a_fragment(text: str, expected: bool) -> None:
    assert fragment(shown(text)) is expected
