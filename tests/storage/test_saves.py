"""Save files: exact round trips, damaged and foreign files, backups, names, listing, migrations."""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aidungeon.core.errors import SaveError, StoryError
from aidungeon.core.story import Candidate, Story, WorldEntry
from aidungeon.storage import saves
from aidungeon.storage.saves import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SaveData,
    autosave_name,
    delete_save,
    latest_save,
    list_saves,
    read_save,
    sanitize_name,
    save_path,
    write_save,
)

SETTINGS: dict[str, dict[str, Any]] = {"sampling": {"temperature": 0.8, "top_p": 0.9}, "context": {"note_depth": 3}}


def make_story(turns: int = 3, title: str = "Fantasy knight") -> Story:
    story = Story(
        opening="You are a knight of Larion. «Ünïcødé» 日本語 🐉",
        title=title,
        pin_opening=True,
        memory=["The dragon lives on the mountain."],
        author_note="Keep it grim.",
        world=[WorldEntry(keys=["dragon", "wyrm"], text="The dragon is old.", constant=True)],
    )
    for i in range(turns):
        story.append(f"You take step {i}.")
        story.add_candidates([Candidate(f"Result {i}.", seed=i, sampling={"temperature": 0.8}, score=-1.5)])
    return story


def make_data(story: Story | None = None) -> SaveData:
    return SaveData(story=story or make_story(), model="smollm2-135m", settings=SETTINGS)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def set_saved_at(path: Path, stamp: str) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["saved_at"] = stamp
    path.write_text(json.dumps(doc), encoding="utf-8")


# -- round trips ---------------------------------------------------------------------------------


def test_round_trip_is_exact(tmp_path: Path) -> None:
    data = make_data()
    data.story.undo()  # a redo stack and a second branch make the tree non-trivial
    data.story.append("You turn back.")
    data.story.add_candidates([Candidate("A."), Candidate("B.")], choose=1)
    path = write_save(tmp_path, "My Knight", data)
    assert path == tmp_path / "my-knight.json"
    loaded, warnings = read_save(tmp_path, "My Knight")
    assert warnings == []
    assert loaded.story.to_dict() == data.story.to_dict()
    assert loaded.story == data.story
    assert (loaded.model, loaded.settings) == (data.model, data.settings)
    assert read_save(path)[0].story == data.story


def test_file_holds_the_documented_header(tmp_path: Path) -> None:
    path = write_save(tmp_path, "knight", make_data())
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "aidungeon-save"
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["app_version"] == "0.1.0"
    assert doc["model"] == "smollm2-135m"
    assert doc["settings"] == SETTINGS
    assert datetime.fromisoformat(doc["saved_at"]).utcoffset() == UTC.utcoffset(None)
    assert "日本語" in path.read_text(encoding="utf-8")  # readable by hand, not \u-escaped


def test_lone_surrogates_round_trip(tmp_path: Path) -> None:
    story = make_story(1)
    story.alter("broken \ud800 text \udfff end")
    write_save(tmp_path, "odd", make_data(story))
    assert read_save(tmp_path, "odd")[0].story == story


# Only one kind of lone surrogate: a high and a low one side by side would load back as the character
# they encode together (JSON's rule), which is not a round-trip failure of ours.
_EXTRA_CHARS = ["\ud800", "\x00", "\n", "\r", "\t", "\u2028", '"', "\\", "🐉", "\u0301"]
texts = st.text(alphabet=st.one_of(st.characters(), st.sampled_from(_EXTRA_CHARS)), max_size=24)
json_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts)
candidates = st.builds(
    Candidate,
    text=texts,
    seed=st.none() | st.integers(min_value=0, max_value=2**64),
    sampling=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
    score=st.none() | st.floats(allow_nan=False),
)
world_entries = st.builds(WorldEntry, keys=st.lists(texts, max_size=3), text=texts, constant=st.booleans())
operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), texts),
        st.tuples(st.just("add"), st.lists(candidates, min_size=1, max_size=3), st.none() | st.integers(0, 5)),
        st.tuples(st.just("undo")),
        st.tuples(st.just("redo")),
        st.tuples(st.just("switch"), st.integers(0, 100)),
        st.tuples(st.just("alter"), texts),
        st.tuples(st.just("choose"), st.integers(0, 5)),
        st.tuples(st.just("discard")),
    ),
    max_size=40,
)


def play(story: Story, ops: list[tuple[Any, ...]]) -> Story:
    for op in ops:
        try:
            if op[0] == "append":
                story.append(op[1])
            elif op[0] == "add":
                story.add_candidates(op[1], choose=None if op[2] is None else op[2] % len(op[1]))
            elif op[0] in ("undo", "redo", "discard"):
                {"undo": story.undo, "redo": story.redo, "discard": story.discard_last}[op[0]]()
            elif op[0] == "switch" and story.turns:
                story.switch_branch(sorted(story.turns)[op[1] % len(story.turns)])
            elif op[0] == "alter":
                story.alter(op[1])
            elif op[0] == "choose" and story.last is not None and story.last.candidates:
                story.choose(op[1] % len(story.last.candidates))
        except StoryError:
            pass  # an action the story refuses (undo with no turns, ...) is part of normal play
    return story


@settings(max_examples=120, deadline=None)
@given(
    opening=texts,
    title=texts,
    player=texts,
    pin=st.booleans(),
    memory=st.lists(texts, max_size=3),
    note=texts,
    world=st.lists(world_entries, max_size=3),
    ops=operations,
    model=texts,
)
def test_random_stories_round_trip_exactly(
    opening: str,
    title: str,
    player: str,
    pin: bool,
    memory: list[str],
    note: str,
    world: list[WorldEntry],
    ops: list[tuple[Any, ...]],
    model: str,
) -> None:
    story = Story(opening=opening, title=title, player_name=player, pin_opening=pin, memory=memory)
    story.set_author_note(note)  # the door for the note's text: it is cleaned there
    story.world = world
    play(story, ops)
    expected = story.to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        write_save(Path(tmp), "prop", SaveData(story, model, SETTINGS))
        loaded, warnings = read_save(Path(tmp), "prop")
    assert warnings == []
    assert loaded.story.to_dict() == expected
    assert loaded.story == story
    assert loaded.model == model


# -- damaged and foreign files -------------------------------------------------------------------

_GOOD_HEADER = {"format": "aidungeon-save", "schema_version": 1, "saved_at": "2024-01-01T00:00:00+00:00"}
_BAD_FILES: dict[str, tuple[bytes, str]] = {
    "garbage": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe\xfd binary", "is damaged: it is not text"),
    "words": (b"hello, this is not a save at all", "is not valid JSON"),
    "empty": (b"", "is empty"),
    "blank": (b"  \n\n", "is empty"),
    "foreign": (b'{"foo": 1}', "is not an aidungeon save"),
    "list": (b"[1, 2, 3]", "is not an aidungeon save"),
    "string": (b'"just a string"', "is not an aidungeon save"),
    "newer": (json.dumps({**_GOOD_HEADER, "schema_version": 7, "story": {}}).encode(), "newer aidungeon (schema 7)"),
    "schema-text": (json.dumps({**_GOOD_HEADER, "schema_version": "1"}).encode(), "schema_version"),
    "no-story": (json.dumps(_GOOD_HEADER).encode(), "holds no story"),
    "bad-tree": (
        json.dumps(
            {**_GOOD_HEADER, "story": {"opening": "x", "turns": [{"id": 1, "parent": 5, "action": "a"}], "head": 1}}
        ).encode(),
        "its story is invalid",
    ),
    "bad-turns": (json.dumps({**_GOOD_HEADER, "story": {"opening": "x", "turns": ["a"]}}).encode(), "story is invalid"),
    "deep": (b"{" + b'"a":[' * 100_000, "damaged"),
}


@pytest.mark.parametrize("kind", sorted(_BAD_FILES))
def test_bad_file_gives_one_clear_line_and_stays_unchanged(tmp_path: Path, kind: str) -> None:
    raw, expected = _BAD_FILES[kind]
    path = tmp_path / "story.json"
    path.write_bytes(raw)
    before = snapshot(tmp_path)

    for load in (lambda: read_save(tmp_path, "story"), lambda: read_save(path)):
        with pytest.raises(SaveError) as err:
            load()
        assert expected in str(err.value)
        assert "story.json" in str(err.value)
        assert "\n" not in str(err.value)
    assert snapshot(tmp_path) == before

    with pytest.raises(SaveError) as err:
        write_save(tmp_path, "story", make_data())
    assert "story.json" in str(err.value)
    assert "newer" in str(err.value) if kind == "newer" else "untouched" in str(err.value)
    assert snapshot(tmp_path) == before  # no backup, no temp file, the player's bytes intact


def test_newer_schema_message_says_to_update(tmp_path: Path) -> None:
    (tmp_path / "future.json").write_bytes(_BAD_FILES["newer"][0])
    with pytest.raises(SaveError, match=r"made by a newer aidungeon \(schema 7\); update aidungeon to load it"):
        read_save(tmp_path, "future")


def test_truncation_at_every_cut_point_is_reported(tmp_path: Path) -> None:
    story = make_story(2)
    story.alter('a "quoted"\nline with \\ and 🐉 and \u00e9')
    raw = write_save(tmp_path, "whole", make_data(story)).read_bytes()
    cut_path = tmp_path / "cut.json"
    for cut in range(1, len(raw.rstrip())):
        cut_path.write_bytes(raw[:cut])
        with pytest.raises(SaveError) as err:
            read_save(cut_path)
        assert "cut.json is damaged: it was cut short" in str(err.value), (cut, raw[:cut][-20:])


# -- backups -------------------------------------------------------------------------------------


def test_backup_keeps_the_previous_version_and_is_used_when_main_is_damaged(tmp_path: Path) -> None:
    first = make_story(2)
    write_save(tmp_path, "knight", make_data(first))
    second = make_story(3)
    path = write_save(tmp_path, "knight", make_data(second))
    assert read_save(tmp_path / "knight.json.bak")[0].story == first

    path.write_bytes(path.read_bytes()[:100])
    before = snapshot(tmp_path)
    loaded, warnings = read_save(tmp_path, "knight")
    assert loaded.story == first
    assert len(warnings) == 1
    assert warnings[0].startswith("knight.json is damaged: it was cut short; loaded the backup from 20")
    assert warnings[0].endswith("UTC")
    assert snapshot(tmp_path) == before


def test_missing_main_falls_back_to_backup(tmp_path: Path) -> None:
    write_save(tmp_path, "knight", make_data(make_story(1)))
    write_save(tmp_path, "knight", make_data(make_story(2)))
    (tmp_path / "knight.json").unlink()
    loaded, warnings = read_save(tmp_path, "knight")
    assert len(loaded.story.turns) == 1
    assert "knight.json is missing; loaded the backup" in warnings[0]


def test_damaged_main_and_backup_give_one_error(tmp_path: Path) -> None:
    (tmp_path / "knight.json").write_bytes(b"{")
    (tmp_path / "knight.json.bak").write_bytes(b"junk")
    with pytest.raises(SaveError, match=r"knight.json is damaged.*the backup is unusable too"):
        read_save(tmp_path, "knight")


def test_newer_main_never_falls_back_to_an_older_backup(tmp_path: Path) -> None:
    write_save(tmp_path, "knight", make_data())
    os.replace(tmp_path / "knight.json", tmp_path / "knight.json.bak")
    (tmp_path / "knight.json").write_bytes(_BAD_FILES["newer"][0])
    with pytest.raises(SaveError, match="newer aidungeon"):
        read_save(tmp_path, "knight")


def test_replace_damaged_sets_the_file_aside(tmp_path: Path) -> None:
    (tmp_path / "knight.json").write_bytes(b'{"format": "aidungeon-save", "sch')
    write_save(tmp_path, "knight", make_data(), replace_damaged=True)
    assert (tmp_path / "knight.json.damaged").read_bytes() == b'{"format": "aidungeon-save", "sch'
    assert read_save(tmp_path, "knight") == (make_data(), [])
    assert not (tmp_path / "knight.json.bak").exists()


def test_saving_unchanged_content_keeps_the_older_backup(tmp_path: Path) -> None:
    write_save(tmp_path, "knight", make_data(make_story(1)))
    write_save(tmp_path, "knight", make_data(make_story(2)))
    write_save(tmp_path, "knight", make_data(make_story(2)))
    assert len(read_save(tmp_path / "knight.json.bak")[0].story.turns) == 1


def test_stale_temp_files_are_cleaned_and_fresh_ones_kept(tmp_path: Path) -> None:
    stale, fresh = tmp_path / ".knight.json.abc.tmp", tmp_path / ".knight.json.xyz.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    write_save(tmp_path, "knight", make_data())
    assert not stale.exists()
    assert fresh.exists()


def test_refuses_to_save_an_inconsistent_story(tmp_path: Path) -> None:
    story = make_story(1)
    story.turns[1].chosen = 5
    with pytest.raises(SaveError, match="inconsistent"):
        write_save(tmp_path, "knight", make_data(story))
    assert list(tmp_path.iterdir()) == []


def test_unsaveable_values_and_unwritable_folders_are_save_errors(tmp_path: Path) -> None:
    story = make_story(1)
    story.turns[1].candidates[0].sampling["bad"] = {1, 2}
    with pytest.raises(SaveError, match="cannot be saved"):
        write_save(tmp_path, "knight", make_data(story))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SaveError, match="could not write"):
        write_save(blocker, "knight", make_data())


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("../x", "x"),
        ("../../etc/passwd", "etc-passwd"),
        ("/etc/passwd", "etc-passwd"),
        ("a/b", "a-b"),
        ("a\\b", "a-b"),
        ("C:\\Windows\\system32", "c-windows-system32"),
        ("con", "con_"),
        ("NUL", "nul_"),
        ("com1", "com1_"),
        ("x.json", "x-json"),
        (".hidden", "hidden"),
        ("a..b", "a-b"),
        ("  Fantasy   Knight  ", "fantasy-knight"),
        ("under_score", "under_score"),
        ("Ünïcødé Knight", "ünïcødé-knight"),
        ("日本語の冒険", "日本語の冒険"),
        ("नमस्ते", "नमस्ते"),
        ("ｆｕｌｌ／ｗｉｄｔｈ", "full-width"),
        ("a\x00b", "a-b"),
        ("x" * 200, "x" * 64),
    ],
)
def test_sanitize_name_table(tmp_path: Path, name: str, stem: str) -> None:
    assert sanitize_name(name) == stem
    assert save_path(tmp_path, name) == tmp_path / f"{stem}.json"


@pytest.mark.parametrize("name", ["", "   ", ".", "..", "...", "../..", "///", "\\\\", "___", "\u0301", "🐉🐉"])
def test_names_that_sanitise_to_nothing_are_refused(name: str) -> None:
    with pytest.raises(SaveError, match="not a usable save name"):
        sanitize_name(name)


@settings(max_examples=300, deadline=None)
@given(name=st.text(alphabet=st.one_of(st.characters(), st.sampled_from(list("./\\:~ .-_"))), max_size=80))
def test_sanitized_names_never_leave_the_folder(name: str) -> None:
    folder = Path("/saves")
    try:
        stem = sanitize_name(name)
    except SaveError:
        return
    assert stem == sanitize_name(stem)
    assert not any(c in stem for c in "/\\:\x00.") and not stem.startswith("-")
    assert 0 < len(stem) <= 64 and len(f".{stem}.json.bak.12345678.tmp".encode()) < 255
    assert save_path(folder, name).parent == folder
    assert os.path.normpath(folder / stem) == str(folder / stem)


def test_autosave_name_comes_from_the_title_and_avoids_taken_names(tmp_path: Path) -> None:
    story = make_story(1, title="Fantasy: The Knight!")
    assert autosave_name(tmp_path, story) == "fantasy-the-knight"
    write_save(tmp_path, "fantasy-the-knight", make_data(story))
    assert autosave_name(tmp_path, story) == "fantasy-the-knight-2"
    assert autosave_name(tmp_path, make_story(1, title="")) == "adventure"


# -- the saves folder ----------------------------------------------------------------------------


def test_list_saves_newest_first_and_skips_what_it_cannot_read(tmp_path: Path) -> None:
    for name, turns, stamp in [
        ("old", 1, "2023-01-01T00:00:00+00:00"),
        ("new", 3, "2025-06-01T12:00:00+00:00"),
        ("mid", 2, "2024-01-01T00:00:00Z"),
    ]:
        set_saved_at(write_save(tmp_path, name, make_data(make_story(turns, title=name.upper()))), stamp)
    (tmp_path / "garbage.json").write_bytes(b"\x00\x01")
    (tmp_path / "foreign.json").write_text('{"foo": 1}')
    (tmp_path / "future.json").write_bytes(_BAD_FILES["newer"][0])
    (tmp_path / "folder.json").mkdir()
    (tmp_path / ".mid.json.abcd1234.tmp").write_bytes(b'{"half')
    (tmp_path / "notes.txt").write_text("hello")

    infos = list_saves(tmp_path)
    assert [info.name for info in infos] == ["new", "mid", "old"]
    assert [info.turns for info in infos] == [3, 2, 1]
    assert [info.title for info in infos] == ["NEW", "MID", "OLD"]
    assert infos[0].path == tmp_path / "new.json"
    assert infos[0].model == "smollm2-135m"
    assert infos[0].saved_at == datetime(2025, 6, 1, 12, tzinfo=UTC)
    assert latest_save(tmp_path) == "new"


def test_list_saves_includes_a_save_recoverable_from_its_backup(tmp_path: Path) -> None:
    write_save(tmp_path, "knight", make_data(make_story(1)))
    path = write_save(tmp_path, "knight", make_data(make_story(2)))
    path.write_bytes(b"{")
    assert [(info.name, info.turns) for info in list_saves(tmp_path)] == [("knight", 1)]


def test_empty_or_missing_folder_has_no_saves(tmp_path: Path) -> None:
    assert list_saves(tmp_path / "nowhere") == []
    assert latest_save(tmp_path) is None


def test_missing_save_names_close_matches(tmp_path: Path) -> None:
    with pytest.raises(SaveError, match="has no saves yet"):
        read_save(tmp_path, "knight")
    write_save(tmp_path, "knight", make_data())
    with pytest.raises(SaveError, match=r"there is no save named 'kngiht'; did you mean 'knight'\?"):
        read_save(tmp_path, "kngiht")
    with pytest.raises(SaveError, match="does not exist"):
        read_save(tmp_path / "other.json")
    with pytest.raises(SaveError, match="is a folder"):
        read_save(tmp_path)


def test_delete_save_removes_main_and_backup(tmp_path: Path) -> None:
    write_save(tmp_path, "knight", make_data(make_story(1)))
    write_save(tmp_path, "knight", make_data(make_story(2)))
    write_save(tmp_path, "other", make_data())
    delete_save(tmp_path, "Knight")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]
    with pytest.raises(SaveError, match="no save named"):
        delete_save(tmp_path, "knight")


# -- migrations ----------------------------------------------------------------------------------

V0_SAVE = {
    "format": "aidungeon-save",
    "schema_version": 0,
    "saved_at": "2023-05-01T09:30:00+00:00",
    "model": "gpt2",
    "settings": {"sampling": {"temperature": 0.7}},
    "story": {
        "title": "Old draft",
        "opening": "You wake in a cell.",
        "memory": "You are a prisoner.\n\nThe guard is asleep.",
        "author_note": "Escape story.",
        "world": [{"keys": "guard, keys", "text": "The guard keeps the keys on his belt."}],
        "actions": ["You look around.", "You reach for the keys.", "You wait."],
        "results": ["Straw covers the floor.", "Your fingers brush cold iron."],
    },
}


def test_migrations_cover_every_schema() -> None:
    assert len(MIGRATIONS) == SCHEMA_VERSION


def test_v0_save_is_upgraded_to_a_tree(tmp_path: Path) -> None:
    raw = json.dumps(V0_SAVE).encode()
    (tmp_path / "draft.json").write_bytes(raw)
    loaded, warnings = read_save(tmp_path, "draft")
    assert warnings == ["draft.json was made by an older aidungeon (schema 0); it was upgraded"]
    story = loaded.story
    assert (story.title, story.opening, story.author_note) == ("Old draft", "You wake in a cell.", "Escape story.")
    assert story.memory == ["You are a prisoner.", "The guard is asleep."]
    assert story.world == [WorldEntry(keys=["guard", "keys"], text="The guard keeps the keys on his belt.")]
    assert [(t.action, t.result) for t in story.path()] == [
        ("You look around.", "Straw covers the floor."),
        ("You reach for the keys.", "Your fingers brush cold iron."),
        ("You wait.", ""),
    ]
    assert [t.parent for t in story.path()] == [None, 1, 2]
    assert (loaded.model, loaded.settings) == ("gpt2", {"sampling": {"temperature": 0.7}})

    # Saving the upgraded story writes the current schema and keeps the original file as the backup.
    write_save(tmp_path, "draft", loaded)
    assert json.loads((tmp_path / "draft.json").read_bytes())["schema_version"] == SCHEMA_VERSION
    assert (tmp_path / "draft.json.bak").read_bytes() == raw
    assert read_save(tmp_path, "draft") == (loaded, [])


def test_v0_save_that_cannot_be_upgraded_is_damaged(tmp_path: Path) -> None:
    broken = {**V0_SAVE, "story": {"title": "no opening"}}
    (tmp_path / "draft.json").write_text(json.dumps(broken))
    with pytest.raises(SaveError, match=r"draft.json is damaged: it could not be upgraded from schema 0"):
        read_save(tmp_path, "draft")


def test_schema_constant_is_what_the_module_writes() -> None:
    assert saves.SCHEMA_VERSION == 1


def test_write_new_file_never_overwrites_or_follows_a_link(tmp_path) -> None:
    from aidungeon.storage.paths import write_new_file

    target = tmp_path / "elsewhere.txt"
    target.write_text("precious")
    link = tmp_path / "story.md"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        write_new_file(link, b"export")
    write_new_file(link, b"export", force=True)
    assert target.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "export"
    with pytest.raises(ValueError, match="not a valid file name"):
        write_new_file(tmp_path / "a\0b", b"x")
    write_new_file(tmp_path / "new.md", b"fresh")
    assert (tmp_path / "new.md").read_text() == "fresh"
