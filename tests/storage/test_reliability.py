"""Issue #11, storage part: invalid text, malformed and oversized saves, locks, schema flips, bad settings,
a full disk, leftover temp files, exports that never overwrite or follow links, and paragraph joins.

Names from `saves` are looked up inside each test, so that each test fails on its own (not the whole
file at import) when run against code from before the fixes.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from aidungeon.cli import admin
from aidungeon.core.errors import SaveError
from aidungeon.core.story import Candidate, Story, WorldEntry
from aidungeon.storage import saves
from aidungeon.storage.interop import export_story, import_file, importers
from aidungeon.storage.paths import default_paths
from aidungeon.storage.prompts import load_setting

ROOT = Path(__file__).resolve().parents[2]


def make_story(turns: int = 2, title: str = "Knight") -> Story:
    story = Story(opening="You are a knight.", title=title, memory=["The dragon sleeps."])
    for i in range(turns):
        story.append(f"You take step {i}.")
        story.add_candidates([Candidate(f"Result {i}.", seed=i, sampling={"temperature": 0.8})])
    return story


def save(folder: Path, name: str, turns: int = 2) -> Path:
    data = saves.SaveData(story=make_story(turns), model="tiny", settings={"sampling": {"temperature": 0.8}})
    return saves.write_save(folder, name, data)


def doc_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def all_texts(story: Story) -> list[str]:
    texts = [story.opening, story.title, story.player_name, story.author_note, *story.memory]
    texts += [t for entry in story.world for t in (*entry.keys, entry.text)]
    texts += [t for turn in story.turns.values() for t in (turn.action, *(c.text for c in turn.candidates))]
    return texts


def assert_valid(texts: list[str]) -> None:
    for text in texts:
        text.encode("utf-8")  # what the tokenizer needs: a lone surrogate raises here
        assert not any(ord(c) < 32 and c not in "\n\t" for c in text), repr(text)


# -- 1. invalid text from every door --------------------------------------------------------------


def test_imported_lone_surrogates_and_controls_become_valid_text(tmp_path: Path) -> None:
    file = tmp_path / "odd.json"
    file.write_text(
        json.dumps(
            {
                "story_start": "A door \udcff opens.\x07",
                "context": "Ctx\x1b[31m red",
                "memory": ["mem \ud800"],
                "actions": ["> go \udcff"],
                "results": ["It \x00works."],
            }
        ),
        encoding="ascii",
    )
    stories, _notes = import_file(file)
    assert_valid(all_texts(stories[0]))
    assert "\ufffd" in stories[0].opening and "\x1b" not in stories[0].opening


def test_a_save_that_holds_lone_surrogates_loads_with_valid_text(tmp_path: Path) -> None:
    path = save(tmp_path, "odd")
    doc = doc_of(path)
    doc["story"]["opening"] = "Bad \udcff byte\x01"
    doc["story"]["turns"][0]["action"] = "go \ud800"
    doc["story"]["turns"][0]["candidates"][0]["text"] = "It \udfff ends."
    doc["story"]["world"] = [{"keys": ["k\udcff"], "text": "lore \x1b]0;title\x07", "constant": False}]
    path.write_text(json.dumps(doc), encoding="ascii")  # \udcff written as its JSON escape, as a bad writer would
    story = saves.read_save(tmp_path, "odd")[0].story
    assert_valid(all_texts(story))
    assert story.opening == "Bad \ufffd byte"
    # ... and it saves and plays on: the next autosave and the next turn take it as it is.
    saves.write_save(tmp_path, "odd", saves.SaveData(story=story, model="tiny", settings={}))
    story.append("look")


def test_story_mutators_clean_what_they_are_given() -> None:
    story = make_story(1)
    story.append("say \udcff hi\x1b[2J")
    story.add_candidates([Candidate("a\x00b \ud800")])
    story.alter("altered \x07\udcff")
    story.remember("remember \x1b[1mthis\udcff")
    story.set_author_note("note\x00 \ud800")
    story.world.append(WorldEntry(keys=["k\x00"], text="w\udcff"))
    assert_valid(all_texts(story))


def test_story_files_are_cleaned(tmp_path: Path) -> None:
    file = tmp_path / "odd.toml"
    file.write_text(
        'title = "Odd\\u0007 world"\nopening = "Start \\u001b[31mred"\n'
        '[[characters]]\nname = "Knight\\u0000"\n'
        '[[world]]\nkeys = ["k\\u0001ey"]\ntext = "lore\\u0008"\n',
        encoding="utf-8",
    )
    setting = load_setting(file)
    texts = [setting.title, setting.characters[0].name, setting.characters[0].opening, setting.world[0].text]
    assert_valid([*texts, *setting.world[0].keys])
    assert setting.characters[0].opening == "Start red"


# -- 4. malformed shapes and deep nesting ---------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sampling", nested(600)),
        ("sampling", {"a": [1, 2]}),
        ("text", 5),
        ("seed", "7"),
        ("score", True),
    ],
)
def test_malformed_candidate_is_damage_and_the_backup_is_used(tmp_path: Path, field: str, value: Any) -> None:
    save(tmp_path, "knight", 1)
    path = save(tmp_path, "knight", 2)
    doc = doc_of(path)
    doc["story"]["turns"][0]["candidates"][0][field] = value
    path.write_text(json.dumps(doc), encoding="utf-8")
    before = snapshot(tmp_path)

    data, warnings = saves.read_save(tmp_path, "knight")
    assert len(data.story.turns) == 1  # the backup
    assert warnings[0].startswith("knight.json is damaged: its story is invalid")
    assert "\n" not in warnings[0] and len(warnings[0]) < 300
    assert snapshot(tmp_path) == before
    saves.write_save(tmp_path, "knight", data, replace_damaged=True)  # the next autosave works
    assert (tmp_path / "knight.json.damaged").read_bytes() == before["knight.json"]


@pytest.mark.parametrize(
    ("where", "value"),
    [("opening", ["a"]), ("memory", "text"), ("pin_opening", "yes"), ("head", "1"), ("world", [{"keys": "a"}])],
)
def test_fields_of_the_wrong_type_are_refused_in_one_line(tmp_path: Path, where: str, value: Any) -> None:
    path = save(tmp_path, "knight")
    doc = doc_of(path)
    doc["story"][where] = value
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(SaveError, match=r"^knight.json is damaged: its story is invalid \([^\n]+\)$"):
        saves.read_save(tmp_path, "knight")


def test_deep_nesting_never_reaches_a_save(tmp_path: Path) -> None:
    story = make_story(1)
    with pytest.raises(ValueError, match="flat table"):
        Story.from_dict({**story.to_dict(), "turns": [{**story.to_dict()["turns"][0], "candidates": [
            {"text": "x", "sampling": nested(600)}
        ]}]})  # fmt: skip


# -- 8. two games, one save -----------------------------------------------------------------------


def test_a_second_lock_on_a_save_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    save(tmp_path, "knight")
    with saves.lock_save(tmp_path, "knight") as lock:
        assert lock.name == "knight"
        with pytest.raises(SaveError) as err:
            saves.lock_save(tmp_path, "Knight")
        message = str(err.value)
        assert "open in another game" in message and "/save NEWNAME" in message and "--load knight" in message
        assert "\n" not in message
    with saves.lock_save(tmp_path, "knight"):  # released: free again
        pass
    assert not (tmp_path / "knight.json.lock").exists()


_HOLDER = """
import sys, time
from pathlib import Path
from aidungeon.storage.saves import lock_save
lock = lock_save(Path(sys.argv[1]), "knight")
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(saves.__dict__.get("fcntl") is None, reason="flock is POSIX")
def test_a_lock_held_by_another_process_is_refused_and_freed_when_it_is_killed(tmp_path: Path) -> None:
    save(tmp_path, "knight")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with pytest.raises(SaveError, match=rf"open in another game \(process {child.pid}\)"):
            saves.lock_save(tmp_path, "knight")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with saves.lock_save(tmp_path, "knight"):  # kill -9 released it
        pass


def test_lock_without_fcntl_uses_an_exclusive_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(saves, "fcntl", None)
    lock = saves.lock_save(tmp_path, "knight")
    assert (tmp_path / "knight.json.lock").read_text().strip() == str(os.getpid())
    (tmp_path / "knight.json.lock").write_text("999999\n")  # as another game would have it
    with pytest.raises(SaveError, match=r"open in another game \(process 999999\).*delete"):
        saves.lock_save(tmp_path, "knight")
    lock.release()
    assert not (tmp_path / "knight.json.lock").exists()


def test_autosave_names_are_reserved_so_two_new_games_never_share_one(tmp_path: Path) -> None:
    story = make_story(0, title="Fantasy knight")
    names = [saves.autosave_name(tmp_path, story) for _ in range(3)]
    assert names == ["fantasy-knight", "fantasy-knight-2", "fantasy-knight-3"]
    with saves.lock_save(tmp_path, names[0]):  # the game takes its reservation over
        saves.write_save(tmp_path, names[0], saves.SaveData(story=story, model="", settings={}))
    assert saves.autosave_name(tmp_path, story) == "fantasy-knight-4"


_NAMER = """
import sys
from pathlib import Path
from aidungeon.core.story import Story
from aidungeon.storage.saves import autosave_name
sys.stdin.readline()  # start together
print(" ".join(autosave_name(Path(sys.argv[1]), Story(opening="x", title="Same")) for _ in range(10)))
"""


def test_games_started_together_choose_different_names(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _NAMER, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    time.sleep(1.0)  # all three have imported and wait on stdin
    outputs = [child.communicate("go\n", timeout=60)[0].split() for child in children]
    names = [name for output in outputs for name in output]
    assert len(names) == 30 and len(set(names)) == 30


def test_a_stale_reservation_is_reclaimed(tmp_path: Path) -> None:
    story = make_story(0, title="Knight")
    assert saves.autosave_name(tmp_path, story) == "knight"
    old = time.time() - 2 * saves.STALE_TEMP_SECONDS
    os.utime(tmp_path / "knight.json.lock", (old, old))
    assert saves.autosave_name(tmp_path, story) == "knight"


def test_a_save_open_in_a_game_cannot_be_deleted(tmp_path: Path) -> None:
    save(tmp_path, "knight")
    with saves.lock_save(tmp_path, "knight"), pytest.raises(SaveError, match="open in another game"):
        saves.delete_save(tmp_path, "knight")
    assert (tmp_path / "knight.json").exists()


# -- 10. a flipped schema number ------------------------------------------------------------------


def test_a_schema_flip_that_would_drop_content_is_refused_and_kept(tmp_path: Path) -> None:
    save(tmp_path, "knight", 1)
    path = save(tmp_path, "knight", 2)
    raw = path.read_bytes()
    flipped = raw.replace(b'"schema_version": 1', b'"schema_version": 0', 1)
    path.write_bytes(flipped)

    data, warnings = saves.read_save(tmp_path, "knight")
    assert len(data.story.turns) == 1  # the backup, not an "upgraded" empty story
    assert "knight.json is damaged: it says schema 0, but upgrading it would lose" in warnings[0]
    with pytest.raises(SaveError, match="untouched"):
        saves.write_save(tmp_path, "knight", data)
    saves.write_save(tmp_path, "knight", data, replace_damaged=True)
    assert (tmp_path / "knight.json.damaged").read_bytes() == flipped  # every turn still there, by hand


# -- 11. bad settings -----------------------------------------------------------------------------


def test_bad_settings_name_the_file_and_fall_back_to_the_backup(tmp_path: Path) -> None:
    save(tmp_path, "knight", 1)
    path = save(tmp_path, "knight", 2)
    doc = doc_of(path)
    doc["settings"] = {"sampling": {"temperature": 9}}
    path.write_text(json.dumps(doc), encoding="utf-8")
    data, warnings = saves.read_save(tmp_path, "knight")
    assert len(data.story.turns) == 1
    assert warnings[0].startswith(
        "knight.json is damaged: its settings are invalid (temperature must be between 0 and 5); loaded the backup"
    )
    (tmp_path / "knight.json.bak").unlink()
    with pytest.raises(SaveError, match=r"^knight.json is damaged: its settings are invalid \(temperature"):
        saves.read_save(tmp_path, "knight")


# -- 12. a full disk ------------------------------------------------------------------------------


def test_a_full_disk_leaves_the_save_and_its_backup_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save(tmp_path, "knight", 1)
    save(tmp_path, "knight", 2)
    before = snapshot(tmp_path)

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(SaveError) as err:
        save(tmp_path, "knight", 3)
    monkeypatch.undo()
    assert str(err.value).startswith(f"could not write {tmp_path / 'knight.json'}: No space left on device")
    assert "\n" not in str(err.value)
    assert snapshot(tmp_path) == before  # main and .bak untouched, no temp file left


def test_the_backup_needs_no_space_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(tmp_path, "knight", 1)
    old_main = (tmp_path / "knight.json").read_bytes()
    written: list[int] = []
    real_write = os.write

    def counting(fd: int, data: Any) -> int:
        written.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting)
    new = save(tmp_path, "knight", 2)
    assert sum(written) == len(new.read_bytes())  # only the new save was written; the .bak is a link
    assert (tmp_path / "knight.json.bak").read_bytes() == old_main


# -- 13. leftover temp files ----------------------------------------------------------------------


def test_opening_a_save_removes_all_its_temp_files(tmp_path: Path) -> None:
    save(tmp_path, "knight")
    mine = [tmp_path / ".knight.json.a1.tmp", tmp_path / ".knight.json.bak.b2.tmp"]
    other = tmp_path / ".queen.json.c3.tmp"
    for file in (*mine, other):
        file.write_bytes(b"half")  # fresh: a killed game's leftovers from a moment ago
    with saves.lock_save(tmp_path, "knight"):
        assert not any(file.exists() for file in mine)
    assert other.exists()  # another save's temp may be a live write


# -- 14. exports ----------------------------------------------------------------------------------


@pytest.fixture
def exported(isolated_home: Path) -> tuple[Path, Console, io.StringIO]:
    paths = default_paths()
    save(paths.saves_dir, "knight")
    out = io.StringIO()
    return paths.data_dir, Console(file=out, width=300), out


def test_export_goes_to_the_exports_folder_and_never_overwrites(exported: tuple[Path, Console, io.StringIO]) -> None:
    data_dir, console, _out = exported
    paths = default_paths()
    assert admin.export_save(paths, console, "knight", "md", None) == 0
    target = data_dir / "exports" / "knight.md"
    assert "You are a knight." in target.read_text(encoding="utf-8")
    target.write_text("mine", encoding="utf-8")
    with pytest.raises(SaveError, match=r"knight.md exists already; add --force"):
        admin.export_save(paths, console, "knight", "md", None)
    assert target.read_text(encoding="utf-8") == "mine"
    admin.export_save(paths, console, "knight", "md", None, force=True)
    assert "You are a knight." in target.read_text(encoding="utf-8")


def test_export_never_follows_a_symlink(exported: tuple[Path, Console, io.StringIO], tmp_path: Path) -> None:
    _data_dir, console, _out = exported
    paths = default_paths()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious", encoding="utf-8")
    link = tmp_path / "link.md"
    link.symlink_to(victim)
    with pytest.raises(SaveError, match="symbolic link"):
        admin.export_save(paths, console, "knight", "md", link)
    admin.export_save(paths, console, "knight", "md", link, force=True)
    assert victim.read_text(encoding="utf-8") == "precious"
    assert not link.is_symlink() and "You are a knight." in link.read_text(encoding="utf-8")


def test_export_refusals_are_one_line(exported: tuple[Path, Console, io.StringIO], tmp_path: Path) -> None:
    _data_dir, console, _out = exported
    paths = default_paths()
    with pytest.raises(SaveError, match="is a folder"):
        admin.export_save(paths, console, "knight", "md", tmp_path)
    with pytest.raises(SaveError, match=r"could not write .*No such file or directory"):
        admin.export_save(paths, console, "knight", "md", tmp_path / "nowhere" / "x.md")


def test_export_to_standard_output_with_dash(
    exported: tuple[Path, Console, io.StringIO], capsys: pytest.CaptureFixture[str]
) -> None:
    _data_dir, console, _out = exported
    assert admin.export_save(default_paths(), console, "knight", "txt", Path("-")) == 0
    assert "You are a knight." in capsys.readouterr().out


# -- 16. size limits ------------------------------------------------------------------------------


def test_an_oversized_save_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path, "knight")
    monkeypatch.setattr(saves, "MAX_SAVE_BYTES", path.stat().st_size - 1)
    with pytest.raises(SaveError, match=r"^knight.json is too large to load"):
        saves.read_save(tmp_path, "knight")
    with pytest.raises(SaveError, match="too large to save"):
        save(tmp_path, "other", 5)


def test_an_oversized_import_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "big.json"
    file.write_text(json.dumps({"story_start": "x" * 1000, "actions": [], "results": []}), encoding="utf-8")
    monkeypatch.setattr(importers, "MAX_IMPORT_BYTES", 500)
    with pytest.raises(SaveError, match=r"^big.json is too large to import"):
        import_file(file)


def test_an_import_with_too_many_actions_is_refused_quickly(tmp_path: Path) -> None:
    file = tmp_path / "kobold.json"
    file.write_text(json.dumps({"prompt": "Go.", "actions": ["Then."] * 1_000_001}), encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(SaveError, match="actions has 1000001 entries"):
        import_file(file)
    assert time.perf_counter() - start < 5


def test_texts_over_the_bound_are_refused(tmp_path: Path) -> None:
    from aidungeon.core.story import MAX_TEXT_CHARS

    path = save(tmp_path, "knight")
    doc = doc_of(path)
    doc["story"]["memory"] = ["x" * (MAX_TEXT_CHARS + 1)]
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(SaveError, match="a memory entry is too long"):
        saves.read_save(tmp_path, "knight")


def test_listing_saves_reads_only_their_heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(tmp_path, "knight", 3)
    old = save(tmp_path, "old", 1)
    doc = doc_of(old)
    del doc["summary"]  # a save from before summaries: still listed, from a full read
    old.write_text(json.dumps(doc), encoding="utf-8")

    calls: list[str] = []
    real = Story.from_dict

    def counted(data: dict[str, Any]) -> Story:
        calls.append(str(data.get("title")))
        return real(data)

    monkeypatch.setattr(Story, "from_dict", staticmethod(counted))
    infos = {info.name: info for info in saves.list_saves(tmp_path)}
    assert (infos["knight"].turns, infos["knight"].title, infos["knight"].model) == (3, "Knight", "tiny")
    assert infos["old"].turns == 1
    assert calls == ["Knight"]  # only the old save's story was parsed


def test_a_save_cut_short_is_not_listed_from_its_head(tmp_path: Path) -> None:
    path = save(tmp_path, "knight")
    path.write_bytes(path.read_bytes()[:-40])
    assert saves.list_saves(tmp_path) == []


# -- 19. exports keep a sentence in one paragraph -------------------------------------------------


def test_exports_join_an_unfinished_sentence_with_its_continuation() -> None:
    story = Story(opening="You sit down. You open the whispering book and", title="Book")
    story.append("")
    story.add_candidates([Candidate("read from it, and the words glow.\n\nThe room darkens.")])
    story.append("close the book")
    story.add_candidates([Candidate("It snaps shut and")])
    story.append("run")
    story.add_candidates([Candidate("You flee.")])
    joined = "You sit down. You open the whispering book and read from it, and the words glow."
    markdown = export_story(story, "md")
    assert joined in markdown
    assert "The room darkens." in markdown.split(joined)[1]
    assert "It snaps shut and\n\n> run" in markdown  # an action in between keeps them apart
    assert f'<p class="story">{joined}</p>' in export_story(story, "html")
    assert joined in export_story(story, "txt")
