"""The installed `aidungeon` command run as a player runs it through a pipe: no terminal, plain text.

Every run gets the test's own AIDUNGEON_HOME (the autouse fixture sets it in the environment the
child inherits). Games run on the trained tiny model, so each play run costs a model load.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aidungeon.core.story import Candidate
from aidungeon.storage import saves
from aidungeon.storage.prompts import custom_story

REPO = Path(__file__).resolve().parents[2]
IMPORTS = REPO / "tests" / "data" / "imports"
ESCAPE = "\x1b"


def command() -> list[str]:
    """The installed console script (falls back to `python -m aidungeon` in an uninstalled checkout)."""
    script = shutil.which("aidungeon")
    return [script] if script else [sys.executable, "-m", "aidungeon"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("FORCE_COLOR", "CLICOLOR_FORCE", "NO_COLOR", "COLUMNS", "LINES"):
        env.pop(name, None)
    env["TERM"] = "xterm-256color"  # colour would be possible on a terminal; a pipe must still get none
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def aidungeon(*args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        cwd=REPO,
    )


def assert_clean(run: subprocess.CompletedProcess[str]) -> None:
    """Exit 0, no traceback, no escape codes in either stream."""
    both = run.stdout + run.stderr
    assert run.returncode == 0, both
    assert "Traceback" not in both, both
    assert ESCAPE not in both, repr(both)


def assert_one_line_error(run: subprocess.CompletedProcess[str], *, contains: str) -> None:
    assert run.returncode != 0
    assert "Traceback" not in run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("aidungeon: ") and contains in lines[0], lines[0]
    assert ESCAPE not in run.stderr


def home() -> Path:
    return Path(os.environ["AIDUNGEON_HOME"])


def read(name: str) -> saves.SaveData:
    data, _warnings = saves.read_save(home() / "saves", name)
    return data


# -- instant answers -------------------------------------------------------------------------


def test_help_and_version_answer_at_once() -> None:
    start = time.perf_counter()
    shown = aidungeon("--help")
    version = aidungeon("--version")
    elapsed = time.perf_counter() - start
    assert_clean(shown)
    assert_clean(version)
    assert "--prompt" in shown.stdout and "--load" in shown.stdout and "doctor" in shown.stdout
    assert re.fullmatch(r"aidungeon \d+\.\d+\.\d+\S*\n", version.stdout)
    assert elapsed < 10, f"--help and --version took {elapsed:.1f} s"


def test_help_and_version_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from aidungeon.cli import app as cli\n"
        "cli.build_parser()\n"
        "for argv in (['--help'], ['--version']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'tokenizers'))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env(), cwd=REPO
    )
    assert run.returncode == 0, run.stderr
    assert "HEAVY []" in run.stderr, run.stderr


# -- playing through a pipe ------------------------------------------------------------------


def test_a_piped_game_saves_and_loads(trained_model_dir: Path) -> None:
    model = str(trained_model_dir)
    first = aidungeon(
        "--prompt", "You are in a dark cave.", "--model", model, "--seed", "1",
        stdin="look around\n/undo\n/save x\n/quit\n",
    )  # fmt: skip
    assert_clean(first)
    out = first.stdout
    assert "You are in a dark cave." in out
    assert "> You look around." in out
    assert "Undone: You look around." in out
    assert "Saved as x" in out
    assert "Resume with: aidungeon --load x" in out
    saved = read("x")
    assert saved.model == model
    assert saved.settings["sampling"]["seed"] == 1
    assert [t.action for t in saved.story.path()] == [""]  # the opening's continuation; the action was undone
    opening_result = saved.story.path()[0].result
    assert opening_result and opening_result in out

    second = aidungeon("--load", "x", stdin="go north\n/quit\n")
    assert_clean(second)
    assert opening_result in second.stdout  # the recap shows where the story stood
    assert "> You go north." in second.stdout
    resumed = read("x")
    assert [t.action for t in resumed.story.path()] == ["", "You go north."]
    assert resumed.story.path()[1].result
    assert resumed.model == model  # the model came from the save

    # --load with no name resumes the newest save: x was written last (seconds after the autosave)
    latest = aidungeon("--load", stdin="/print\n/quit\n")
    assert_clean(latest)
    assert "> You go north." in latest.stdout
    assert "Saved as x." in latest.stdout


def test_a_piped_game_from_a_setting(trained_model_dir: Path) -> None:
    run = aidungeon(
        "--setting", "fantasy", "--character", "knight", "--name", "Bob", "--model", str(trained_model_dir),
        stdin="/remember Bob fears spiders.\n/quit\n",
    )  # fmt: skip
    assert_clean(run)
    assert "Bob" in run.stdout
    (info,) = saves.list_saves(home() / "saves")
    data = read(info.name)
    assert data.story.player_name == "Bob"
    assert "Bob fears spiders." in data.story.memory
    assert data.story.path() and data.story.path()[0].result


def test_the_menu_through_a_pipe(trained_model_dir: Path) -> None:
    run = aidungeon("--model", str(trained_model_dir), "--seed", "2", stdin="1\n1\nAsh\nlook around\n/quit\n")
    assert_clean(run)
    out = run.stdout
    assert "Pick a setting" in out and "Custom" in out
    assert "Pick a character" in out
    assert "What is your character's name? Ash" in out
    assert "> You look around." in out
    (info,) = saves.list_saves(home() / "saves")
    story = read(info.name).story
    assert story.player_name == "Ash"
    assert [t.action for t in story.path()][-1] == "You look around."


def test_a_bad_menu_answer_asks_again(trained_model_dir: Path) -> None:
    run = aidungeon("--model", str(trained_model_dir), stdin="99\nnope\n")
    assert run.returncode == 0  # input ended in the menu: nothing to save, a quiet exit
    assert "Traceback" not in run.stdout + run.stderr
    assert run.stdout.count("choose 1-") == 2


def test_a_custom_opening_through_the_menu(trained_model_dir: Path) -> None:
    run = aidungeon(
        "--model", str(trained_model_dir), "--seed", "1",
        stdin="custom\nYou wake in a cell.\nThe door is open.\n\n/quit\n",
    )  # fmt: skip
    assert_clean(run)
    assert "an empty line to finish" in run.stdout
    (info,) = saves.list_saves(home() / "saves")
    assert read(info.name).story.opening == "You wake in a cell.\nThe door is open."


def test_load_with_no_name_picks_the_newest_even_within_one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """saved_at is kept to the second; two saves within one second must still resume the newer one."""
    from datetime import UTC, datetime

    frozen = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)

    class SameSecond(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return frozen

    monkeypatch.setattr(saves, "datetime", SameSecond)
    write_save("adventure")
    write_save("x")
    assert saves.latest_save(home() / "saves") == "x"


# -- clear errors ----------------------------------------------------------------------------


def test_load_of_a_missing_save_is_one_line() -> None:
    run = aidungeon("--load", "nosuch")
    assert_one_line_error(run, contains="nosuch")
    assert run.stdout == ""


def test_load_with_no_saves_is_one_line() -> None:
    assert_one_line_error(aidungeon("--load"), contains="no saved adventures")


def test_a_missing_model_is_one_line() -> None:
    run = aidungeon("--prompt", "You are in a cave.", "--model", "/nonexistent")
    assert_one_line_error(run, contains="/nonexistent")
    # The opening needs no model: it is shown while the model loads (here, fails to).
    assert run.stdout.strip() == "You are in a cave."


def test_unknown_setting_and_character_are_one_line() -> None:
    assert_one_line_error(aidungeon("--setting", "nosuch"), contains="nosuch")
    assert_one_line_error(aidungeon("--setting", "fantasy", "--character", "nosuch", "--name", "B"), contains="nosuch")
    assert_one_line_error(aidungeon("--name", "Bob"), contains="--setting")


# -- management subcommands ------------------------------------------------------------------


def write_save(name: str) -> None:
    story = custom_story("You are in a dark cave.")
    story.append("You look around.")
    story.add_candidates([Candidate(text="Water drips <somewhere> & echoes.")])
    saves.write_save(home() / "saves", name, saves.SaveData(story=story, model="gpt2", settings={}))


def test_saves_list_and_remove() -> None:
    empty = aidungeon("saves")
    assert_clean(empty)
    assert "No saved adventures yet." in empty.stdout
    write_save("x")
    write_save("a-much-longer-save-name-that-must-stay-whole")
    listed = aidungeon("saves")
    assert_clean(listed)
    assert "a-much-longer-save-name-that-must-stay-whole" in listed.stdout
    assert re.search(r"\bx\b", listed.stdout)
    removed = aidungeon("saves", "rm", "x", "--yes")
    assert_clean(removed)
    assert "Removed x." in removed.stdout
    assert not saves.save_path(home() / "saves", "x").exists()
    assert_one_line_error(aidungeon("saves", "rm", "x", "--yes"), contains="x")


def test_saves_rm_asks_first() -> None:
    write_save("x")
    kept = subprocess.run(
        [*command(), "saves", "rm", "x"], input="n\n", capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert kept.returncode != 0
    assert "Kept." in kept.stdout
    assert saves.save_path(home() / "saves", "x").exists()


@pytest.mark.parametrize("file", sorted(p.name for p in IMPORTS.glob("*.json")))
def test_import(file: str) -> None:
    run = aidungeon("import", str(IMPORTS / file))
    assert_clean(run)
    assert "Imported " in run.stdout
    assert saves.list_saves(home() / "saves")


def test_import_under_a_name_then_export(tmp_path: Path) -> None:
    assert_clean(aidungeon("import", str(IMPORTS / "clover.json"), "--name", "clover"))
    target = tmp_path / "f.html"
    run = aidungeon("export", "clover", "--format", "html", "-o", str(target))
    assert_clean(run)
    html = target.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html.lower()


def test_export_escapes_html_and_writes_markdown_to_stdout(tmp_path: Path) -> None:
    write_save("x")
    target = tmp_path / "f.html"
    assert_clean(aidungeon("export", "x", "--format", "html", "-o", str(target)))
    html = target.read_text(encoding="utf-8")
    assert "&lt;somewhere&gt; &amp; echoes." in html and "<somewhere>" not in html
    markdown = aidungeon("export", "x", "-o", "-")  # the default is now the exports folder
    assert_clean(markdown)
    assert "You are in a dark cave." in markdown.stdout
    assert_one_line_error(aidungeon("export", "nosuch"), contains="nosuch")


def test_models_and_doctor() -> None:
    models = aidungeon("models")
    assert_clean(models)
    for preset in ("smollm2-135m", "gpt2", "gpt2-xl"):
        assert preset in models.stdout
    doctor = aidungeon("doctor")
    assert_clean(doctor)
    for word in ("torch", "transformers", "device", "memory", "weight layouts", str(home())):
        assert word in doctor.stdout, word


@pytest.mark.parametrize(
    "stdin",
    [
        pytest.param("/quit\n", id="setting menu"),
        pytest.param("exit\n", id="setting menu, bare word"),
        pytest.param("1\n/q\n", id="character menu"),
        pytest.param("1\n1\n/exit\n", id="name"),
        pytest.param("custom\n/quit\n\n", id="opening"),
    ],
)
def test_quit_leaves_the_start_menu(trained_model_dir: Path, stdin: str) -> None:
    run = aidungeon("--model", str(trained_model_dir), stdin=stdin + "1\n1\nAsh\nlook around\n/quit\n")
    assert run.returncode == 0
    assert "Traceback" not in run.stdout + run.stderr
    assert "choose 1-" not in run.stdout  # the quit was not taken for a bad answer
    assert saves.list_saves(home() / "saves") == []  # nothing was played after it


def test_a_character_may_be_named_quit(trained_model_dir: Path) -> None:
    run = aidungeon("--model", str(trained_model_dir), "--seed", "2", stdin="1\n1\nQuit\nlook around\n/quit\n")
    assert_clean(run)
    (info,) = saves.list_saves(home() / "saves")
    assert read(info.name).story.player_name == "Quit"
