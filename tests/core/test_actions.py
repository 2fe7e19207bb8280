"""Table tests for `aidungeon.core.actions`: exact player line -> exact action."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aidungeon.core.actions import Action, second_person, to_action

DO_CASES = [
    ("look around", "You look around."),
    ("Look around", "You look around."),
    ("I draw my sword", "You draw your sword."),
    ("i draw my sword", "You draw your sword."),
    ("I look at myself in the mirror", "You look at yourself in the mirror."),
    ("give me the key", "You give you the key."),  # the rule is mechanical, as in AI Dungeon 2
    ("I claim the gold as mine", "You claim the gold as yours."),
    ("I enter the old mine", "You enter the old mine."),  # "mine" the noun is left alone
    ("I'm tired", "You're tired."),
    ("I’m tired", "You’re tired."),  # a curly apostrophe stays curly
    ("I am the king", "You are the king."),
    ("I was here first", "You were here first."),
    ("ask where am I", "You ask where are you."),
    ("I've got a plan and I'll use it", "You've got a plan and you'll use it."),
    ("I'd rather run", "You'd rather run."),
    ("we attack the orc with our axes", "We attack the orc with our axes."),
    ("my sword glows", "Your sword glows."),
    ("you open the door", "You open the door."),
    ("YOU open the door", "YOU open the door."),
    ("  open   the \t door  ", "You open the door."),
    ("open the door!", "You open the door!"),
    ("run?", "You run?"),
    ("look around,", "You look around."),
    ("I look. i run. then me too", "You look. You run. then you too."),
    # Quoted words keep their person; the full stop goes inside the closing quote (US style).
    ('I shout "I am here"', 'You shout "I am here."'),
    ('I shout "I am here!"', 'You shout "I am here!"'),
    ('I shout "help', 'You shout "help."'),  # an unclosed quote is closed
    ("I shout “I am here”", "You shout “I am here.”"),
    # Single quotes double as apostrophes, so the stop goes after them.
    ("I whisper 'run'", "You whisper 'run'."),
    ("I visit the kings'", "You visit the kings'."),
    ("> look around", "You look around."),  # a typed prompt marker is dropped
    # A line that already has a subject no command starts with is narration: no "You" in front.
    ("a troll sleeps here", "A troll sleeps here."),
    ("The door creaks open", "The door creaks open."),
    ("it starts to rain and I run", "It starts to rain and you run."),
    ("there is a key under the mat", "There is a key under the mat."),
    ("they attack me", "They attack you."),
    ("that goblin looks hungry", "That goblin looks hungry."),
]


@pytest.mark.parametrize(("line", "expected"), DO_CASES)
def test_do(line: str, expected: str) -> None:
    assert to_action(line) == Action("do", expected)


SAY_CASES = [
    ("say hello there", 'You say "Hello there."'),
    ("Say hello there", 'You say "Hello there."'),
    ("SAY hello", 'You say "Hello."'),
    ("say: hi!", 'You say "Hi!"'),
    ("say, who goes there", 'You say "Who goes there."'),
    ('say "hello"', 'You say "Hello."'),
    ("say I am lost", 'You say "I am lost."'),  # speech keeps its person
    ('"where is the king?"', 'You say "Where is the king?"'),
    ('"where is the king', 'You say "Where is the king."'),
    ('"Hello".', 'You say "Hello."'),
    ("“run”", 'You say "Run."'),
    ('say he said "no"', "You say \"He said 'no'.\""),  # inner double quotes become single
    ('say "I am here" to my friend', 'You say "I am here" to your friend.'),
    ('"hello," I whisper', '"Hello," you whisper.'),
    ('"hello," I whisper to my friend', '"Hello," you whisper to your friend.'),
    ("say hello,", 'You say "Hello."'),
]


@pytest.mark.parametrize(("line", "expected"), SAY_CASES)
def test_say(line: str, expected: str) -> None:
    assert to_action(line) == Action("say", expected)


STORY_CASES = [
    ("!The dragon wakes.", "The dragon wakes."),
    ("  !  The dragon wakes.  ", "The dragon wakes."),
    ("!the dragon wakes", "the dragon wakes"),  # verbatim: no capital, no full stop
    ("!I  am   the dragon", "I  am   the dragon"),  # no person rewrite, spacing kept
    ('!"Halt!" cries the guard.', '"Halt!" cries the guard.'),
]


@pytest.mark.parametrize(("line", "expected"), STORY_CASES)
def test_story(line: str, expected: str) -> None:
    assert to_action(line) == Action("story", expected)


# Empty text means "continue the story"; the mode says what the player started to type.
EMPTY_CASES = [
    ("", Action("do", "")),
    ("   \t ", Action("do", "")),
    (">", Action("do", "")),
    ("!", Action("story", "")),
    ("  !   ", Action("story", "")),
    ("say", Action("say", "")),
    ("say   ", Action("say", "")),
    ('say ""', Action("say", "")),
    ('"', Action("say", "")),
    ('":', Action("say", "")),
]


@pytest.mark.parametrize(("line", "expected"), EMPTY_CASES)
def test_empty_means_continue(line: str, expected: Action) -> None:
    assert to_action(line) == expected


NOT_SAY_CASES = [
    ("sayonara", "You sayonara."),  # "say" must be a whole word
    ("saying goodbye is hard", "You saying goodbye is hard."),
]


@pytest.mark.parametrize(("line", "expected"), NOT_SAY_CASES)
def test_say_needs_whole_word(line: str, expected: str) -> None:
    assert to_action(line) == Action("do", expected)


SECOND_PERSON_CASES = [
    ("I draw my sword", "You draw your sword"),
    ("then I draw my sword", "then you draw your sword"),
    ("Me? Mine? Myself!", "You? Mine? Yourself!"),
    ('I say "I am here"', 'You say "I am here"'),
    ("it is mine. I'm done", "it is yours. You're done"),
    ("Idaho is my home", "Idaho is your home"),  # whole words only
]


@pytest.mark.parametrize(("text", "expected"), SECOND_PERSON_CASES)
def test_second_person(text: str, expected: str) -> None:
    assert second_person(text) == expected


def test_action_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        Action("shout", "You shout.")


@given(st.text(alphabet=list("ab I my me say ! > \"“”'’.,:\t"), max_size=40))
def test_any_line_gives_a_clean_action(line: str) -> None:
    action = to_action(line)
    assert action.text == action.text.strip()
    if action.mode != "story" and action.text:
        assert action.text[0].isupper() or action.text[0] in '"“'
