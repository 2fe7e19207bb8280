"""The session's promises from issue #11, on the scripted fake engine: what the player types
never crashes the game, a failed command changes nothing, exports stay in their folder, and a
failed save is said once and remembered."""

from __future__ import annotations

import gc
import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from support.fake_engine import FakeEngine
from support.sessions import kinds, make_session, only, run, saved_story

from aidungeon.core.errors import SaveError
from aidungeon.core.story import Story
from aidungeon.game.session import MAX_LINE_CHARS, Session
from aidungeon.storage import saves
from aidungeon.storage.paths import default_paths
from aidungeon.storage.slots import FileSlot
from aidungeon.ui.terminal.render import Renderer
from aidungeon.ui.terminal.repl import Terminal, play, status_line


@pytest.fixture
def game() -> Session:
    return make_session(FakeEngine())


def one_error(events: list) -> str:
    assert kinds(events) == ["error"], events
    assert "\n" not in events[0].text
    return events[0].text


def exports() -> Path:
    return default_paths().data_dir / "exports"


# -- numbers (#11.2) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ["/branch ²", "/branch 1e3", "/branch -1", "/forget ²", "/memory ² x", "/world remove ³", "/branch " + "9" * 5000],
)
def test_every_numeric_argument_is_one_clear_line(game: Session, line: str) -> None:
    run(game, "/remember A fact.")
    run(game, "/world add key: Text.")
    before = game.story.to_dict()
    text = one_error(run(game, line))
    assert "not a number" in text or "there is no" in text
    assert game.story.to_dict() == before


# -- lines in (#11.16) -----------------------------------------------------------------------


def test_a_line_over_the_bound_is_one_line_and_changes_nothing(game: Session) -> None:
    before = game.story.to_dict()
    for line in ("x" * (MAX_LINE_CHARS + 1), "/remember " + "y" * 100_000, "/note " + "z" * 20_000):
        assert "limit" in one_error(run(game, line))
    assert game.story.to_dict() == before


def test_every_line_is_cleaned_before_it_enters_the_story(game: Session) -> None:
    run(game, "look \x1b[31maround\x07 the \udcff cave")
    run(game, "/remember The \x00key\x1b]0;title\x07 is gold.")
    action = game.story.path()[0].action
    assert "\x1b" not in action and "\x07" not in action and "\udcff" not in action
    assert "\ufffd" in action
    assert game.story.memory == ["The key is gold."]
    saved_story(game)  # valid UTF-8 all the way to the file


# -- /remember checks first (#11.25) ---------------------------------------------------------


def test_an_entry_that_does_not_fit_the_window_is_refused_and_turns_go_on(game: Session) -> None:
    run(game, "/set context_tokens 256")
    text = one_error(run(game, "/remember " + "A long fact. " * 40))
    assert "no room" in text
    assert game.story.memory == [] and saved_story(game)["memory"] == []
    assert kinds(run(game, "/world add *: " + "Lore. " * 60)) == ["error"]
    assert "result" in kinds(run(game, "look around"))


# -- status bar and /context agree (#11.20) ----------------------------------------------------


def test_the_status_bar_counts_what_context_counts_after_undo_and_alter(game: Session) -> None:
    for line in ("look around", "open the door", "/undo", "/alter It is quiet now."):
        run(game, line)
        footer = only(run(game, "/context"), "table").data.footer
        tokens = footer.split("] ")[1].split(" of ")[0]
        assert f" {tokens}/" in status_line(game), (line, footer, status_line(game))


# -- /branches shows actions (#11.21) -----------------------------------------------------------


def test_branches_show_the_last_action(game: Session) -> None:
    run(game, "look around")
    run(game, "/undo")
    run(game, "open the door")
    rows = only(run(game, "/branches"), "table").data.rows
    assert [row[2] for row in rows] == ["You look around.", "You open the door."]


# -- /save over another adventure (#11.9) -------------------------------------------------------


def test_save_refuses_another_adventures_name_without_force(game: Session) -> None:
    other = make_session(FakeEngine(), story=Story(opening="Another tale."), save_name="beta")
    run(other, "/save")
    other.close()  # an adventure open in another game is refused outright (tests/storage)
    beta = saves.read_save(default_paths().saves_dir, "beta")[0].story.to_dict()
    for line in ("/save beta", "/save BETA"):
        assert "/save" in one_error(run(game, line)) and "--force" in run(game, line)[0].text
    assert saves.read_save(default_paths().saves_dir, "beta")[0].story.to_dict() == beta
    assert game.save_name == "t"
    run(game, "/save t")  # its own name: fine
    assert only(run(game, "/save Beta --force"), "info").text.startswith("Saved as beta")
    assert game.save_name == "beta" and saved_story(game) == game.story.to_dict()


# -- a failed /load changes nothing (#11.7) -----------------------------------------------------


def test_a_load_with_settings_out_of_range_changes_nothing(game: Session) -> None:
    beta = saves.SaveData(
        story=Story(opening="BETA's story."), model="fake", settings={"sampling": {"temperature": 99}}
    )
    saves.write_save(default_paths().saves_dir, "beta", beta)
    run(game, "look around")
    before, config = game.story.to_dict(), game.config
    assert "temperature" in one_error(run(game, "/load beta"))
    assert game.story.to_dict() == before and game.config == config and game.save_name == "t"
    run(game, "open the door")
    assert saved_story(game)["opening"] == game.story.opening
    assert "BETA" not in json.dumps(saved_story(game))


# -- /export (#11.3, #11.14) ----------------------------------------------------------------------


def test_export_goes_to_the_exports_folder_only(game: Session, tmp_path: Path) -> None:
    run(game, "look around")
    assert only(run(game, "/export md"), "info").text.endswith(str(exports() / "t.md"))
    assert only(run(game, "/export html story"), "info").text.endswith("story.html")
    assert (exports() / "story.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    for target in ("../../x", str(tmp_path / "abs.md"), "~/x.md", "sub/x.md", ".."):
        assert "aidungeon export" in one_error(run(game, f"/export md {target}"))
    assert not (tmp_path / "abs.md").exists() and not (default_paths().data_dir / "x.md").exists()


def test_export_with_a_nul_byte_is_no_crash(game: Session) -> None:
    events = run(game, "/export md a\x00b")
    assert kinds(events) == ["info"], events
    assert (exports() / "ab.md").is_file()


def test_export_never_overwrites_without_force_nor_follows_a_link(game: Session, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious", encoding="utf-8")
    exports().mkdir(parents=True)
    (exports() / "t.md").symlink_to(victim)
    assert "--force" in one_error(run(game, "/export md"))
    run(game, "/export txt")
    assert "--force" in one_error(run(game, "/export txt t"))
    assert kinds(run(game, "/export md --force")) == ["info"]
    assert victim.read_text(encoding="utf-8") == "precious"
    assert not (exports() / "t.md").is_symlink()


# -- saves that fail (#11.12, #11.26) ------------------------------------------------------------


def test_a_turn_whose_save_fails_is_shown_then_one_line_says_so(game: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: FileSlot, data: saves.SaveData) -> str:
        raise SaveError(f"could not write {self.path}: No space left on device")

    with monkeypatch.context() as disk_full:
        disk_full.setattr(FileSlot, "write", full)
        events = run(game, "look around")
    assert kinds(events)[-2:] == ["result", "error"]
    assert "No space left on device" in events[-1].text
    assert game.keeper.unsaved
    run(game, "open the door")
    assert not game.keeper.unsaved and saved_story(game) == game.story.to_dict()


def _play_piped(session: Session, lines: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    out = io.StringIO()
    terminal = Terminal(Renderer(Console(file=out, width=200)), history=None, interactive=False)
    return play(session, terminal, recap_shown=True), out.getvalue()


@pytest.mark.parametrize("ending", ["", "/quit\n"])
def test_unsaved_turns_at_the_end_exit_non_zero_with_a_clear_line(
    game: Session, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    monkeypatch.setattr(FileSlot, "write", lambda self, data: (_ for _ in ()).throw(SaveError("disk full")))
    code, out = _play_piped(game, "look around\n" + ending, monkeypatch)
    assert code == 1
    assert "could not be saved" in out and "disk full" in out and "Traceback" not in out


def test_a_game_whose_saves_work_exits_zero(game: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = _play_piped(game, "look around\n", monkeypatch)
    assert code == 0 and "Saved as t" in out


def test_an_abandoned_turn_is_never_saved_by_the_garbage_collector(game: Session) -> None:
    run(game, "look around")
    path = default_paths().saves_dir / "t.json"
    before = path.read_bytes()
    events = game.handle("open the door")
    next(events), next(events)  # the action, the first piece
    events.close()
    del events
    gc.collect()
    assert path.read_bytes() == before


# -- one game per save (#11.8) ----------------------------------------------------------------------


def test_a_save_open_in_one_game_is_refused_to_another_until_it_closes() -> None:
    first = make_session(FakeEngine(), save_name="shared")
    run(first, "look around")
    with pytest.raises(SaveError, match="open in another game"):
        make_session(FakeEngine(), save_name="shared")
    loader = make_session(FakeEngine(), save_name="loader")
    assert "open in another game" in only(run(loader, "/load shared"), "error").text
    assert loader.save_name == "loader"
    first.close()
    assert only(run(loader, "/load shared"), "info").text == "Loaded shared."


# -- a result the player has read is on disk (kill -9 right after it is shown loses nothing) -------


def test_a_result_is_saved_before_it_is_shown(game: Session) -> None:
    shown = 0
    for event in game.handle("look around"):
        if event.kind == "result":
            # The UI draws the result now; the generator has not been resumed since.
            assert saved_story(game) == game.story.to_dict()
            assert event.text in json.dumps(saved_story(game), ensure_ascii=False)
            shown += 1
    assert shown == 1
