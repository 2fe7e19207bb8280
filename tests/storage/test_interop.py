"""Imports from other games (one hand-written file per format) and exports to md, txt and html."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aidungeon.core.errors import SaveError
from aidungeon.core.story import Candidate, Story, WorldEntry
from aidungeon.storage.interop import EXPORT_FORMATS, detect_format, export_story, import_file

DATA = Path(__file__).parents[1] / "data" / "imports"


def turns_of(story: Story) -> list[tuple[str, str]]:
    return [(turn.action, turn.result) for turn in story.path()]


# -- detection -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "fmt"),
    [
        ("aidungeon2.json", "aidungeon2"),
        ("clover.json", "clover"),
        ("koboldai.json", "koboldai"),
        ("koboldai_united.json", "koboldai"),
        ("aidungeon_web.json", "aidungeon-web"),
    ],
)
def test_detect_format(file: str, fmt: str) -> None:
    assert detect_format(json.loads((DATA / file).read_text(encoding="utf-8"))) == fmt


def test_web_export_shapes_are_detected() -> None:
    adventure = {"title": "x", "actions": [{"text": "a", "type": "story"}]}
    assert detect_format({"stories": [adventure]}) == "aidungeon-web"
    assert detect_format(adventure) == "aidungeon-web"
    assert detect_format([adventure]) == "aidungeon-web"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"foo": 1, "bar": 2}, "found bar, foo"),
        ([1, 2, 3], "JSON list"),
        ("text", "JSON str"),
        (None, "JSON NoneType"),
    ],
)
def test_unknown_format_is_one_clear_error(data: object, why: str) -> None:
    with pytest.raises(SaveError) as err:
        detect_format(data, source="mystery.json")
    message = str(err.value)
    assert message.startswith("mystery.json is not a save format aidungeon can import (")
    assert why in message
    assert "\n" not in message


def test_own_saves_are_pointed_to_load() -> None:
    with pytest.raises(SaveError, match="already an aidungeon save; load it"):
        detect_format({"format": "aidungeon-save", "schema_version": 1})


def test_import_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SaveError, match="cannot read"):
        import_file(tmp_path / "missing.json")
    (tmp_path / "notes.json").write_text("not json at all")
    with pytest.raises(SaveError, match=r"notes\.json is not JSON"):
        import_file(tmp_path / "notes.json")
    (tmp_path / "odd.json").write_text('{"foo": 1}')
    with pytest.raises(SaveError, match=r"odd\.json is not a save format aidungeon can import"):
        import_file(tmp_path / "odd.json")
    (tmp_path / "bad.json").write_text('{"story_start": "x", "actions": "oops", "results": []}')
    with pytest.raises(
        SaveError, match=r"bad\.json looks like an AI Dungeon 2 save but cannot be read: actions should be"
    ):
        import_file(tmp_path / "bad.json")


# -- AI Dungeon 2 --------------------------------------------------------------------------------


def test_import_aidungeon2() -> None:
    (story,), notes = import_file(DATA / "aidungeon2.json")
    assert story.title == "aidungeon2"
    assert story.opening == (
        "You are Bob, a knight living in the kingdom of Larion. You enter the forest. The trees close in behind you."
    )
    assert story.pin_opening is True
    assert story.memory == ["Bob is afraid of wolves.", "The dragon lives on Larion's mountain."]
    assert story.author_note == ""
    assert story.world == []
    assert turns_of(story) == [
        ("You draw your sword.", "The blade glints in the dim light."),
        ("", "A wolf howls somewhere to the north."),
        ('You say "Who goes there?"', 'A voice answers: "Only a friend."'),
    ]
    story.validate()
    assert notes == ["AI Dungeon 2 fields not imported: rating, uuid"]


def test_aidungeon2_numeric_memory_and_uneven_lists_are_noted(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"story_start": "Go.", "context": "", "actions": ["> a", "> b"], "results": ["A"]}))
    (story,), _ = import_file(path)
    assert story.pin_opening is False
    assert turns_of(story) == [("a", "A"), ("b", "")]
    path.write_text(json.dumps({"story_start": "Go.", "memory": 10, "actions": ["> a"], "results": ["A", "B"]}))
    (story,), notes = import_file(path)
    assert turns_of(story) == [("a", "A"), ("", "B")]
    assert any("1 actions but 2 results" in note for note in notes)
    assert any("memory 10 is a number of remembered turns" in note for note in notes)


# -- Clover Edition ------------------------------------------------------------------------------


def test_import_clover() -> None:
    (story,), notes = import_file(DATA / "clover.json")
    assert story.title == "alice-heist"
    assert story.opening == "You are Alice, a thief in the city of Zail."
    assert story.pin_opening is True
    assert story.memory == ["Alice owes the guild 300 gold."]
    assert turns_of(story) == [
        ("You pick the lock.", "The lock clicks open."),
        ("You slip inside.", "The room is dark and smells of candle wax."),
    ]
    assert notes == ["Clover Edition fields not imported: gamestate"]


# -- KoboldAI ------------------------------------------------------------------------------------


def test_import_koboldai() -> None:
    (story,), notes = import_file(DATA / "koboldai.json")
    assert story.title == "koboldai"
    assert story.opening == "The ship drifted into the harbour at dawn."
    assert story.pin_opening is False
    assert story.memory == ["Captain Mara commands the ship Gull."]
    assert story.author_note == "Keep the tone tense."
    assert turns_of(story) == [
        ("", "The crew was silent."),
        ("You order the anchor dropped.", "The chain rattles into the water."),
        ("", "Gulls wheel overhead."),
    ]
    anchor = story.path()[1]
    assert [c.text for c in anchor.candidates] == ["The chain rattles into the water.", "The anchor will not budge."]
    assert anchor.chosen == 0
    assert story.world == [
        WorldEntry(keys=["Mara", "captain"], text="Mara is a stern captain.", constant=False),
        WorldEntry(keys=["Gull"], text="The Gull is a two-masted brig.", constant=True),
    ]
    assert notes == [
        "world info 'Gull': secondary keys (ship, deck) were not imported",
        "world info 'Gull': its comment was not imported",
        "KoboldAI fields not imported: savedsettings",
    ]


def test_import_koboldai_united() -> None:
    (story,), notes = import_file(DATA / "koboldai_united.json")
    assert story.title == "Harbour Night"
    assert story.opening == "Rain fell on the harbour."
    assert story.memory == []
    assert story.author_note == "Noir style."
    assert turns_of(story) == [("You light a cigarette.", "The match flares and dies.")]
    assert [c.text for c in story.path()[0].candidates] == ["The match flares and dies.", "The match will not light."]
    assert story.world == [WorldEntry(keys=["Sam", "detective"], text="Sam is a tired detective.")]
    assert notes == []


def test_koboldai_actions_as_an_index_dict(tmp_path: Path) -> None:
    path = tmp_path / "lite.json"
    path.write_text(json.dumps({"prompt": "Start.", "actions": {"1": " Two.", "0": "> Do one.\n"}}))
    (story,), _ = import_file(path)
    assert turns_of(story) == [("Do one.", "Two.")]


# -- AI Dungeon web ------------------------------------------------------------------------------


def test_import_aidungeon_web_list() -> None:
    (mill, heist), notes = import_file(DATA / "aidungeon_web.json")
    assert mill.title == "The Haunted Mill"
    assert mill.opening == "The old mill stands at the end of the lane."
    assert mill.memory == ["You are a ghost hunter named Lee."]
    assert mill.author_note == "Spooky, slow."
    assert mill.world == [
        WorldEntry(keys=["mill", "wheel"], text="The mill wheel has not turned in forty years."),
        WorldEntry(keys=["Lee", "hunter"], text="Lee carries a brass lantern."),
    ]
    assert turns_of(mill) == [
        ("You push open the door.", "The hinges scream."),
        ('You say "Hello?"', "Something answers from the loft."),
        ("Lee climbs the ladder slowly.", "At the top, a pale light flickers."),
        ("", "A cold wind blows."),
    ]
    assert heist.title == "<script>alert(1)</script> Heist"
    assert heist.opening == "The vault door is ten feet thick."
    assert turns_of(heist) == [("You crack the safe.", "It opens with a sigh.")]
    assert notes == ["'The Haunted Mill': AI Dungeon fields not imported: undoneWindow"]


def test_import_aidungeon_web_stories_object(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    adventure = {
        "title": "Cards",
        "prompt": "A deck lies on the table.",
        "actions": [{"text": "A deck lies on the table.", "type": "story"}, {"text": "It hums.", "type": "see"}],
        "storyCards": [{"keys": "deck", "value": "The deck is cursed.", "type": "item"}],
        "description": "A short one.",
    }
    path.write_text(json.dumps({"stories": [adventure, {"title": "scenario without actions"}]}))
    (story,), notes = import_file(path)
    assert story.opening == "A deck lies on the table."
    assert turns_of(story) == [("", "It hums.")]
    assert story.world == [WorldEntry(keys=["deck"], text="The deck is cursed.")]
    assert "entry 2 is not an adventure and was skipped" in notes
    assert "'Cards': actions of type see were imported as story text" in notes
    assert "'Cards': AI Dungeon fields not imported: description" in notes


# -- export --------------------------------------------------------------------------------------


def export_sample() -> Story:
    story = Story(
        opening="The <script>alert('x')</script> gate opens.\n\nA second paragraph.",
        title="Gate & Key",
        memory=["Remember the key."],
        author_note="Tense.",
        world=[WorldEntry(keys=["gate"], text="The gate is iron.", constant=True)],
    )
    story.append("You step *through* the gate.")
    story.add_candidates([Candidate("Cold air greets you. # not a heading"), Candidate("Unchosen text.")])
    story.append('You say "hello" & wave.')
    story.add_candidates([Candidate("Nobody answers <b>at all</b>.")])
    return story


def test_export_txt() -> None:
    text = export_story(export_sample(), "txt")
    assert text.startswith("Gate & Key\n\nThe <script>alert('x')</script> gate opens.")
    assert "> You step *through* the gate.\n\nCold air greets you. # not a heading" in text
    assert '> You say "hello" & wave.\n\nNobody answers <b>at all</b>.' in text
    assert "Unchosen text." not in text
    assert "-- Memory --\nRemember the key." in text
    assert "-- World info --\ngate (always): The gate is iron." in text


def test_export_md() -> None:
    text = export_story(export_sample(), "MD")
    assert text.startswith("# Gate & Key\n\n")
    assert r"The \<script\>alert('x')\</script\> gate opens." in text
    assert r"> You step \*through\* the gate." in text
    assert r"Cold air greets you. \# not a heading" in text
    assert r"Nobody answers \<b\>at all\</b\>." in text
    assert "## Author's note\n\n- Tense." in text


def test_export_html_is_one_escaped_self_contained_file() -> None:
    story = export_sample()
    page = export_story(story, "html")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<style>") == 1
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<title>Gate &amp; Key</title>" in page
    assert '<p class="action">You step *through* the gate.</p>' in page
    assert '<p class="action">You say &quot;hello&quot; &amp; wave.</p>' in page
    assert '<p class="story">Nobody answers &lt;b&gt;at all&lt;/b&gt;.</p>' in page
    assert "p.action" in page
    assert "<details>" in page and "Remember the key." in page
    assert "http" not in page.replace('name="viewport"', "")  # nothing fetched from elsewhere
    for turn in story.path():
        assert turn.result.split("<")[0] in page


def test_export_imported_story_contains_every_turn() -> None:
    _, heist = import_file(DATA / "aidungeon_web.json")[0]
    for fmt in EXPORT_FORMATS:
        text = export_story(heist, fmt)
        assert "You crack the safe." in text
        assert "It opens with a sigh." in text


def test_unknown_export_format() -> None:
    with pytest.raises(SaveError, match=r"unknown export format 'pdf'; use md, txt, html"):
        export_story(export_sample(), "pdf")
