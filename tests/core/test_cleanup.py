"""Table tests for `aidungeon.core.cleanup`: exact model output -> exact text shown."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aidungeon.core.cleanup import (
    balance_quotes,
    cut_player_turn,
    cut_special_tokens,
    cut_trailing_fragment,
    drop_repeated_sentences,
    find_junk,
    find_player_turn,
    find_special_token,
    narrate_in_second_person,
    normalize_whitespace,
    pipeline,
    remove_junk,
    repeated_sentences,
    similarity,
)
from aidungeon.core.text import is_fragment, split_sentences

PLAYER_TURN_CASES = [
    # GPT-2 fine-tunes on AI Dungeon transcripts write the next "> action" themselves.
    (
        "The goblin snarls and lunges at you.\n> You attack the goblin\nThe goblin dies.",
        None,
        "The goblin snarls and lunges at you.",
    ),
    ("The guard nods. > You walk past him.", None, "The guard nods."),
    ('"Go on," he says. > You walk past him.', None, '"Go on," he says.'),
    ("> You attack the goblin\nThe goblin dies.", None, ""),
    ("   > look\nThe room is dark.", None, ""),
    ('The door opens.\n\nYou say "Hello?"\nNo one answers.', None, "The door opens."),
    ("The merchant frowns.\nYou ask him about the price.", None, "The merchant frowns."),
    ("The merchant frowns.\nYou reply that you have no money.", None, "The merchant frowns."),
    ("The merchant frowns.\n  You shout at him.", None, "The merchant frowns."),
    ("The merchant frowns.\nYou tell him to leave.", None, "The merchant frowns."),
    ("The terminal blinks.\nYou type 'help'.", None, "The terminal blinks."),
    ("The merchant frowns.\nYou: how much?", None, "The merchant frowns."),
    # Narration in second person on a new paragraph is the story, not the player.
    ("The door opens.\n\nYou see a dark corridor.", None, "The door opens.\n\nYou see a dark corridor."),
    ("The door opens.\nYou sayonara nobody.", None, "The door opens.\nYou sayonara nobody."),
    # The result may itself open with what you say.
    ('You say "Hi" and the guard waves back.', None, 'You say "Hi" and the guard waves back.'),
    ("The value is > 3 coins.", None, "The value is > 3 coins."),
    # The player's name speaking, chat style or in third person.
    ("The orc roars.\nAria: I draw my sword.", "Aria", "The orc roars."),
    ("The orc roars.\nAria says she is ready.", "Aria", "The orc roars."),
    ("Aria: I draw my sword.\nThe orc roars.", "Aria", ""),
    ("The orc roars at Aria.\nAriana says hi.", "Aria", "The orc roars at Aria.\nAriana says hi."),
    ("The orc roars.\nAria: I draw my sword.", None, "The orc roars.\nAria: I draw my sword."),
    ("The orc roars.\nAria: I draw my sword.", "  ", "The orc roars.\nAria: I draw my sword."),
    ("The orc roars.\nDr. Who: run!", "Dr. Who", "The orc roars."),  # names are escaped, not regexes
    # Words put in the player's mouth past the first sentence (the default model's, from the gold
    # set): cut at that sentence, with whatever came after it.
    (
        'The flame burns bright. "It\'s a gift," you sigh. "A child\'s life." He raises his hand.',
        None,
        "The flame burns bright.",
    ),
    ('She asked you how. You nodded, "Just like I am. Just like how they say."', None, "She asked you how."),
    ('The guard looks up. "Run! Now!" you shout. He runs.', None, "The guard looks up."),
    ('She reads it. You hold it high and say, "What happens now?" She looks at you.', None, "She reads it."),
    ('The man turns. And you say to him: "Go away." He leaves.', None, "The man turns."),
    ("The man turns. \u201cGo away,\u201d you whisper.", None, "The man turns."),
    # Not the player's words: someone else's speech, "you" inside a quote, "you" as the object,
    # a new sentence after a closed quote, and the first sentence telling back what was said.
    ('The man turns. You smile and she says, "Hello."', None, 'The man turns. You smile and she says, "Hello."'),
    (
        'The scroll burns. You step back as Yara smiles and says, "Run."',
        None,
        'The scroll burns. You step back as Yara smiles and says, "Run."',
    ),
    (
        'The scroll burns. You step back named Yara smiles and says, "Run."',
        None,
        'The scroll burns. You step back named Yara smiles and says, "Run."',
    ),
    (
        'The scroll burns. You watch while it glows and say, "Run."',
        None,
        'The scroll burns. You watch while it glows and say, "Run."',
    ),
    (
        'The man turns. "You said you would come," he says.',
        None,
        'The man turns. "You said you would come," he says.',
    ),
    (
        'A woman stands there. She looks at you with blue eyes and said "I brought you here."',
        None,
        'A woman stands there. She looks at you with blue eyes and said "I brought you here."',
    ),
    (
        'The guard looks up. "Fine." You nod. He lets you in.',
        None,
        'The guard looks up. "Fine." You nod. He lets you in.',
    ),
    ('"Beware of the hall," you repeat as you walk in.', None, '"Beware of the hall," you repeat as you walk in.'),
]


@pytest.mark.parametrize(("text", "name", "expected"), PLAYER_TURN_CASES)
def test_cut_player_turn(text: str, name: str | None, expected: str) -> None:
    assert cut_player_turn(text, player_name=name) == expected


@pytest.mark.parametrize(("text", "name", "expected"), PLAYER_TURN_CASES)
def test_find_player_turn_agrees_with_cut(text: str, name: str | None, expected: str) -> None:
    index = find_player_turn(text, player_name=name)
    assert (index is None) == (expected == text)
    if index is not None:
        assert text[:index].rstrip() == expected


SPECIAL_TOKEN_CASES = [
    (
        "You walk into the tavern. The barkeep nods.<|endoftext|>Some junk",
        "You walk into the tavern. The barkeep nods.",
    ),
    ("The innkeeper smiles and hands you a key.<|im_end|>", "The innkeeper smiles and hands you a key."),
    (
        "The innkeeper smiles.<|im_end|>\n<|im_start|>user\nI go upstairs<|im_end|>",
        "The innkeeper smiles.",
    ),
    ("The cave is cold.<|eot_id|><|start_header_id|>user", "The cave is cold."),
    ("The cave is cold. <|im", "The cave is cold."),  # a stream stopped inside a token
    ("The wind howls.</s><s>[INST] continue [/INST]", "The wind howls."),
    ("The wind howls. [INST] What next? [/INST]", "The wind howls."),
    ("The wind howls.<end_of_turn>\n<start_of_turn>user", "The wind howls."),
    ("The wind howls.\nuser\nI look around.\nassistant\nYou see a tree.", "The wind howls."),
    ("The wind howls.\nUser: I look around.", "The wind howls."),
    ("The wind howls.\n\n### Instruction:\nWrite a poem.", "The wind howls."),
    ("<|endoftext|>", ""),
    ("The user of the staff must be careful.", "The user of the staff must be careful."),
    ("The assistant cook waves.", "The assistant cook waves."),
    ("A sign reads: <Keep out>.", "A sign reads: <Keep out>."),
]


@pytest.mark.parametrize(("text", "expected"), SPECIAL_TOKEN_CASES)
def test_cut_special_tokens(text: str, expected: str) -> None:
    assert cut_special_tokens(text) == expected
    assert (find_special_token(text) is None) == (expected == text)


JUNK_CASES = [
    ("Visit http://example.com for more", "Visit"),
    ("The wizard vanishes. See https://fanfic.example.org/story/12 for part two.", "The wizard vanishes. See"),
    ("The wizard vanishes. Go to www.example.com now.", "The wizard vanishes. Go to"),
    ("The dragon sleeps.\n\nChapter 3\n\nThe next morning", "The dragon sleeps."),
    ("The dragon sleeps.\nCHAPTER IV: The Cave", "The dragon sleeps."),
    ("The dragon sleeps.\nChapter Three", "The dragon sleeps."),
    ("The dragon sleeps.\nComments (12)\nGreat story!", "The dragon sleeps."),
    ("The dragon sleeps.\nPosted by admin at 3:14 PM", "The dragon sleeps."),
    ("The dragon sleeps.\nAdvertisement\nBuy now", "The dragon sleeps."),
    ("The dragon sleeps.\nClick here to read the next part", "The dragon sleeps."),
    ("The dragon sleeps.\nRead more »", "The dragon sleeps."),
    ("The dragon sleeps.\nCopyright 2019 Example Inc.", "The dragon sleeps."),
    ("The dragon sleeps. © 2019 Example Inc.", "The dragon sleeps."),
    ("The dragon sleeps.\nA/N: thanks for reading!", "The dragon sleeps."),
    ("The dragon sleeps.\n### Part 2", "The dragon sleeps."),
    ("The dragon sleeps.\n```python\nprint('hi')\n```", "The dragon sleeps."),
    ("The dragon sleeps.<br>Next", "The dragon sleeps."),
    ('The dragon sleeps.</p>\n<div class="ad">', "The dragon sleeps."),
    # The same words inside prose are prose.
    ("You read more of the scroll.", "You read more of the scroll."),
    ("The chapter house is quiet.", "The chapter house is quiet."),
    ("The comments of the crowd sting.", "The comments of the crowd sting."),
    ("You click here and there on the lock.", "You click here and there on the lock."),
    ("A #1 bestseller lies on the desk.", "A #1 bestseller lies on the desk."),
    ("He grins. <3", "He grins. <3"),
]


@pytest.mark.parametrize(("text", "expected"), JUNK_CASES)
def test_remove_junk(text: str, expected: str) -> None:
    assert remove_junk(text) == expected


@pytest.mark.parametrize(("text", "expected"), JUNK_CASES)
def test_find_junk_agrees_with_cut(text: str, expected: str) -> None:
    index = find_junk(text)
    assert (index is None) == (expected == text)
    if index is not None:
        assert text[:index].rstrip() == expected


FRAGMENT_CASES = [
    ("The goblin dies. You take its", "The goblin dies."),
    ('He says "Welcome to the', ""),  # no complete sentence: "" and the caller regenerates
    ("The goblin dies.", "The goblin dies."),
    ("The goblin dies.   \n", "The goblin dies."),
    ('"Run!" she screams. The', '"Run!" she screams.'),
    ('She looks at you. "Run!"', 'She looks at you. "Run!"'),
    ("She looks at you. “Run!”", "She looks at you. “Run!”"),
    ('She whispers "run"', ""),  # a closing quote only ends a sentence after . ! ?
    ("He waits...", "He waits..."),
    ("He waits… and then", "He waits…"),
    ("Is it over? It is! And yet", "Is it over? It is!"),
    ("You meet Mr. Smith at the gate. He bows to", "You meet Mr. Smith at the gate."),
    ("You meet Mr. Smith", ""),
    ("Dr. Jones and St. Peter pray. Then", "Dr. Jones and St. Peter pray."),
    ("Bring herbs, e.g. sage. Also", "Bring herbs, e.g. sage."),
    ("It costs 3.5 gold. You", "It costs 3.5 gold."),
    ("(He smiles.) Then he", "(He smiles.)"),
    ("No. He shakes his", "No."),
    ("The door opens.\n\nYou see", "The door opens."),
    ("", ""),
    ("   ", ""),
]


@pytest.mark.parametrize(("text", "expected"), FRAGMENT_CASES)
def test_cut_trailing_fragment(text: str, expected: str) -> None:
    assert cut_trailing_fragment(text) == expected


IS_FRAGMENT_CASES = [
    ("The goblin dies.", False),
    ("The goblin dies. You take its", True),
    ('"Run!"', False),
    ('"run"', True),
    ("He waits...", False),
    ("You meet Mr.", True),
    ("The goblin dies.  ", False),
    ("", False),
    ("Where?!", False),
]


@pytest.mark.parametrize(("text", "expected"), IS_FRAGMENT_CASES)
def test_is_fragment(text: str, expected: bool) -> None:
    assert is_fragment(text) is expected


SPLIT_CASES = [
    ("The goblin dies. You take its sword.", ["The goblin dies.", "You take its sword."]),
    ('He says, "Hello there." Then he leaves!', ['He says, "Hello there."', "Then he leaves!"]),
    ("You meet Mr. Smith. He bows", ["You meet Mr. Smith.", "He bows"]),
    ("Wait... what?", ["Wait...", "what?"]),
    ("A title\nThe story begins.", ["A title", "The story begins."]),
    ("  One.\n\n  Two.  ", ["One.", "Two."]),
    ("", []),
]


@pytest.mark.parametrize(("text", "expected"), SPLIT_CASES)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


BALANCE_CASES = [
    ('He says "Welcome to the castle.', 'He says "Welcome to the castle."'),
    ('He says "Welcome to the castle.  ', 'He says "Welcome to the castle."'),
    ('He says "Welcome', 'He says "Welcome"'),
    ('The door creaks open. "', "The door creaks open."),
    ('The door creaks open. "  ', "The door creaks open."),
    ('"Hi," she says. "Come in.', '"Hi," she says. "Come in."'),
    ('"Hi," she says.', '"Hi," she says.'),
    ('Hello there," says the guard.', 'Hello there," says the guard.'),  # stray closer: left alone
    ("She says “Come in.", "She says “Come in.”"),
    ("She says “", "She says"),
    ("She says “Hi.” He nods.", "She says “Hi.” He nods."),
    ('She says “Hi.” He says "Come in.', 'She says “Hi.” He says "Come in."'),
    ('He mutters, —"Never.', 'He mutters, —"Never."'),
    ("“Wait. “Why?", "“Wait. “Why?””"),  # every open curly quote is closed
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), BALANCE_CASES)
def test_balance_quotes(text: str, expected: str) -> None:
    assert balance_quotes(text) == expected


RECENT = ["You enter the cave.", "The cave is dark and cold. Water drips from the ceiling."]

REPEAT_CASES = [
    ("The cave is dark and cold. A bat flies past you.", RECENT, "A bat flies past you."),
    ("THE CAVE IS DARK  AND COLD! A bat flies past you.", RECENT, "A bat flies past you."),
    ("Water drips from the ceiling", RECENT, ""),
    ("A bat flies past you. A bat flies past you.", [], "A bat flies past you."),
    ("A bat flies past you. You duck. A bat flies past you.", [], "A bat flies past you. You duck."),
    ("You enter the cave. It is quiet.", RECENT, "It is quiet."),  # four words are enough to drop
    ("He nods. He nods. He nods.", [], "He nods. He nods. He nods."),  # under four words: kept
    ("The bat screeches. The bat screeches.", [], "The bat screeches. The bat screeches."),
    (
        "A bat flies past you.\n\nA bat flies past you. You duck under it.",
        [],
        "A bat flies past you.\n\nYou duck under it.",
    ),
    (
        "The cave is dark and cold.\n\nA bat flies past you.",
        RECENT,
        "A bat flies past you.",
    ),
    ("A bat flies past you.", RECENT, "A bat flies past you."),
    ("The cave is dark and warm. A bat flies.", RECENT, "The cave is dark and warm. A bat flies."),
]


@pytest.mark.parametrize(("text", "recent", "expected"), REPEAT_CASES)
def test_drop_repeated_sentences(text: str, recent: list[str], expected: str) -> None:
    assert drop_repeated_sentences(text, recent) == expected


REPEATED_LIST_CASES = [
    ("The cave is dark and cold. A bat flies past you.", RECENT, ["The cave is dark and cold."]),
    ("A bat flies past you. A bat flies past you!", [], ["A bat flies past you!"]),
    ("He nods. He nods.", [], []),
    ("Something new happens here.", RECENT, []),
]


@pytest.mark.parametrize(("text", "recent", "expected"), REPEATED_LIST_CASES)
def test_repeated_sentences(text: str, recent: list[str], expected: list[str]) -> None:
    assert repeated_sentences(text, recent) == expected


SIMILARITY_CASES = [
    ("The cave is dark.", "the cave, is DARK", 1.0),
    ("", "", 1.0),
    ("The cave is dark.", "", 0.0),
    ("The cave is dark.", "A bat flies past.", 0.0),
    ("one two three four", "one two three five", 0.75),
]


@pytest.mark.parametrize(("a", "b", "expected"), SIMILARITY_CASES)
def test_similarity(a: str, b: str, expected: float) -> None:
    assert similarity(a, b) == pytest.approx(expected)
    assert similarity(b, a) == pytest.approx(expected)


WHITESPACE_CASES = [
    ("  The goblin dies.  ", "The goblin dies."),
    ("The  goblin\t\tdies.", "The goblin dies."),
    ("The goblin dies .", "The goblin dies."),
    ("Wait , what ?! Stop ; now :", "Wait, what?! Stop; now:"),
    ("One.\r\nTwo.", "One.\nTwo."),
    ("One.\r\n\r\n\r\n\r\nTwo.", "One.\n\nTwo."),
    ("One.\n\n\n\nTwo.", "One.\n\nTwo."),
    ("One.  \n   \n  Two.", "One.\n\nTwo."),
    ("One.\rTwo.", "One.\nTwo."),
    ("A\u00a0wide\u2003gap.", "A wide gap."),
    ("He waits ...", "He waits..."),
    ("\n\n", ""),
]


@pytest.mark.parametrize(("text", "expected"), WHITESPACE_CASES)
def test_normalize_whitespace(text: str, expected: str) -> None:
    assert normalize_whitespace(text) == expected


PIPELINE_CASES = [
    # GPT-2 style: the model plays the player on a new "> " line.
    (
        "The goblin snarls and lunges at you.\n> You attack the goblin\nThe goblin dies.",
        [],
        None,
        "The goblin snarls and lunges at you.",
    ),
    (
        " You walk into the tavern.  The barkeep nods.<|endoftext|>Some junk",
        [],
        None,
        "You walk into the tavern. The barkeep nods.",
    ),
    ('He says "Welcome to the', [], None, ""),
    ("Visit http://example.com for more", [], None, ""),
    # SmolLM2-Instruct: the answer, then the end-of-turn token and a made-up next turn.
    (
        'The innkeeper smiles. "Room three," she says.<|im_end|>\n<|im_start|>user\nI go upstairs',
        [],
        None,
        'The innkeeper smiles. "Room three," she says.',
    ),
    ("The innkeeper hands you a key and points to the stairs<|im_end|>", [], None, ""),
    (
        'The old man leans closer. "The king is dead. His son rules now, and he',
        [],
        None,
        'The old man leans closer. "The king is dead."',
    ),
    (
        "The cave is dark and cold. A bat flies past you. It",
        RECENT,
        None,
        "A bat flies past you.",
    ),
    (
        'The door opens.\n\n\nYou see a dark corridor .\nYou say "Hello?"\nNo one answers.',
        [],
        None,
        "The door opens.\n\nYou see a dark corridor.",
    ),
    ("The orc roars .\r\nAria: I draw my sword.\r\nThe orc dies.", [], "Aria", "The orc roars."),
    ("The dragon sleeps.\n\nChapter 3\n\nThe next morning, you wake.", [], None, "The dragon sleeps."),
    ("<|endoftext|>", [], None, ""),
    ("   \n  ", [], None, ""),
    ("The cave is dark and cold.", RECENT, None, ""),
    (
        'She looks at you. "Run!" The walls shake. "',
        [],
        None,
        'She looks at you. "Run!" The walls shake.',
    ),
]


@pytest.mark.parametrize(("text", "recent", "name", "expected"), PIPELINE_CASES)
def test_pipeline(text: str, recent: list[str], name: str | None, expected: str) -> None:
    assert pipeline(text, recent=recent, player_name=name) == expected


@pytest.mark.parametrize("text", [row[3] for row in PIPELINE_CASES if row[3]])
def test_pipeline_is_idempotent_on_its_output(text: str) -> None:
    assert pipeline(text) == text


# Model output is arbitrary text: whatever comes in, what is shown is finished and stable.
_MESSY = st.text(alphabet=list("ab You say I Mr.!?,\"“”'’\n\t>|<#:"), max_size=80)


@settings(max_examples=300, deadline=None)
@given(text=_MESSY, recent=st.lists(_MESSY, max_size=3))
def test_pipeline_output_is_complete_and_stable(text: str, recent: list[str]) -> None:
    out = pipeline(text, recent=recent, player_name="Aria")
    assert out == out.strip()
    if out:
        assert not is_fragment(out)
        assert pipeline(out) == out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I open the door and my torch flickers.", "You open the door and your torch flickers."),
        ('I turn. "I am the king," he says.', 'You turn. "I am the king," he says.'),
        ("The guard looks at me and I freeze.", "The guard looks at you and you freeze."),
        ("You walk on. The road is long.", "You walk on. The road is long."),
        # A sentence already talking to "you" keeps its "I": a voice addressing the player.
        ("I am walking towards you.", "I am walking towards you."),
        ("I open the door. You see a troll. I wave at it.", "You open the door. You see a troll. You wave at it."),
        ('I see you there, and I wave. "I am here," I say.', 'I see you there, and I wave. "I am here," you say.'),
        ('"I am here. I am lost," he says.', '"I am here. I am lost," he says.'),
        ('He says "you there" and I run.', 'He says "you there" and you run.'),  # quoted "you" is not the narration's
    ],
)
def test_narrate_in_second_person(text: str, expected: str) -> None:
    assert narrate_in_second_person(text) == expected
    assert pipeline(text) == expected
