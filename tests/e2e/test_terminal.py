"""The installed `aidungeon` in a real pseudo-terminal (pexpect), played as a new player would.

prompt_toolkit asks the terminal where the cursor is (CPR, ESC [6n) before it draws a prompt; a
real terminal answers, so these tests answer too, which also makes the bottom status bar appear.
A prompt is ready when prompt_toolkit switches bracketed paste on (ESC [?2004h).

The tiny model writes a whole turn in a few milliseconds, far too fast to press Ctrl-C during
it, so the child runs with a `sitecustomize` (on PYTHONPATH) that sleeps a little per generated
token inside the engine's decoding loop, where a Ctrl-C on a real model lands.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from aidungeon.core.story import Candidate
from aidungeon.storage import saves
from aidungeon.storage.prompts import custom_story

pexpect = pytest.importorskip("pexpect")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal"),
]

CPR_REQUEST = "\x1b[6n"
CPR_ANSWER = "\x1b[1;1R"  # the cursor is at the top: the whole screen is free below it
PROMPT_READY = "\x1b[?2004h"
LIVE_REDRAW = "\x1b[2K"
TIMEOUT = 30

SLOW_TOKENS = '''
"""Test seam: sleep per generated token, inside the engine's loop, so Ctrl-C can land mid-generation."""
import importlib.abc, importlib.util, os, sys, time

DELAY = float(os.environ.get("AIDUNGEON_TEST_TOKEN_DELAY") or 0)


class SlowEngine(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "aidungeon.model.engine":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            advance = module.Engine._advance  # fails loudly if the engine's per-token step is renamed

            def slow_advance(self, *args, **kwargs):
                time.sleep(DELAY)
                return advance(self, *args, **kwargs)

            module.Engine._advance = slow_advance

        spec.loader.exec_module = exec_module
        return spec


if DELAY > 0:
    sys.meta_path.insert(0, SlowEngine())
'''


def colour_codes(text: str) -> list[str]:
    """SGR sequences that set a foreground or background colour (bold, italic, reverse are fine)."""
    found = []
    for match in re.finditer(r"\x1b\[([0-9;]*)m", text):
        params = [int(p) for p in match.group(1).split(";") if p.isdigit()]
        if any(30 <= p <= 49 or 90 <= p <= 107 for p in params):
            found.append(match.group(0))
    return found


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|[\r\x08]", "", text)


class Player:
    """One `aidungeon` in a pseudo-terminal, with everything it wrote kept in `output`."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        script = shutil.which("aidungeon")
        command, argv = (script, list(args)) if script else (sys.executable, ["-m", "aidungeon", *args])
        self.child = pexpect.spawn(
            command, argv, env=env, encoding="utf-8", dimensions=(40, 120), timeout=TIMEOUT, echo=True
        )
        self.output = ""

    def expect(self, text: str) -> str:
        """Wait for `text` (answering cursor-position requests meanwhile); return what came before it."""
        before = ""
        while True:
            index = self.child.expect_exact([CPR_REQUEST, text])
            before += self.child.before
            self.output += self.child.before + self.child.after
            if index == 1:
                return before
            self.child.send(CPR_ANSWER)

    def expect_plain(self, text: str) -> None:
        """Wait for `text` on the screen, however the terminal's redraws split it with escape
        codes (under load, prompt_toolkit draws typed "tem" and completed "perature" apart)."""
        seen, deadline = "", time.monotonic() + TIMEOUT
        while text not in plain(seen):
            assert time.monotonic() < deadline, f"{text!r} never showed: {seen[-300:]!r}"
            try:
                chunk = self.child.read_nonblocking(4096, timeout=1)
            except pexpect.TIMEOUT:
                continue
            if CPR_REQUEST in chunk:
                self.child.send(CPR_ANSWER)
            seen += chunk
            self.output += chunk

    def prompt(self) -> str:
        return self.expect(PROMPT_READY)

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def start_custom(self, opening: str) -> str:
        """From the start menu, pick "custom" and type the multi-line `opening` (lines split at
        newlines: Enter adds a line, Esc+Enter finishes); returns what the game then showed."""
        self.expect("Pick a setting")
        self.expect("Custom - write your own opening")
        self.prompt()
        self.send("custom\r")
        self.expect("Write the opening")
        self.prompt()
        self.send(opening.replace("\n", "\r") + "\x1b\r")
        return plain(self.prompt())

    def line(self, text: str) -> str:
        """Type a line at a ready prompt, and wait for the next prompt; returns what was shown."""
        self.send(text + "\r")
        return self.prompt()

    def finish(self) -> int:
        while True:
            index = self.child.expect_exact([CPR_REQUEST, pexpect.EOF])
            self.output += self.child.before
            if index == 1:
                break
            self.child.send(CPR_ANSWER)
        self.child.close()
        return self.child.exitstatus


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    seam = tmp_path / "seam"
    seam.mkdir()
    (seam / "sitecustomize.py").write_text(SLOW_TOKENS, encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES")}
    environment.update(
        TERM="xterm-256color",
        PYTHONPATH=os.pathsep.join(p for p in (str(seam), os.environ.get("PYTHONPATH", "")) if p),
        OMP_NUM_THREADS="1",
    )
    return environment


def read(name: str) -> saves.SaveData:
    data, _warnings = saves.read_save(Path(os.environ["AIDUNGEON_HOME"]) / "saves", name)
    return data


def test_a_new_player_plays_stops_and_resumes(trained_model_dir: Path, env: dict[str, str]) -> None:
    player = Player(["--model", str(trained_model_dir), "--seed", "1"], dict(env, AIDUNGEON_TEST_TOKEN_DELAY="0.04"))

    # 1. the menu: pick "custom"; 2. a multi-line opening (Enter adds a line, Esc+Enter finishes)
    shown = player.start_custom("You are in a dark cave.\nA troll sleeps by the fire.")
    assert "You are in a dark cave." in shown and "A troll sleeps by the fire." in shown

    # 3. three actions, each answered and followed by a status bar
    for action, echoed in [
        ("look around", "> You look around."),
        ("I light my torch", "> You light your torch."),
        ("go north", "> You go north."),
    ]:
        assert echoed in plain(player.line(action))
    # the status bar: model (a folder shows its name), device, tokens of the budget, speed, save
    status = re.search(r"(\S+) · cpu · (\d+)/(\d+) tokens · [\d.]+ tok/s · save: \S+", plain(player.output))
    assert status is not None, plain(player.output)[-2000:]
    assert status.group(1) == trained_model_dir.name
    assert 0 < int(status.group(2)) <= int(status.group(3))

    # 4. /undo and 5. /save x
    assert "Undone: You go north." in plain(player.line("/undo"))
    assert "Saved as x" in plain(player.line("/save x"))

    # 6. Ctrl-C during a generation: the story keeps the action, the game keeps answering
    assert "max_new_tokens = 200" in plain(player.line("/set max_new_tokens 200"))
    player.send("open the door\r")
    player.expect("> You open the door.")
    # Ctrl-C once the preview is streaming: the live display redraws its line (erase line) only
    # after it has started and drawn the first pieces.
    player.expect(LIVE_REDRAW)
    player.send("\x03")
    stopped = plain(player.prompt())
    assert "Stopped." in stopped and "Traceback" not in stopped
    assert read("x").story.last.action == "You open the door."
    assert not read("x").story.last.result
    shown = plain(player.line("/retry"))
    assert "Traceback" not in shown and "error" not in shown.lower()
    assert read("x").story.last.result

    # Ctrl-C at the prompt gives a hint
    player.send("\x03")
    assert "Ctrl-D or /quit saves and quits" in plain(player.prompt())

    # 7. /quit
    player.send("/quit\r")
    player.expect("Resume with: aidungeon --load x")
    assert player.finish() == 0
    assert "Traceback" not in plain(player.output)
    assert colour_codes(player.output), "with colour on, the game should use some (checks the detector too)"
    story = read("x").story
    assert [t.action for t in story.path()] == [
        "",
        "You look around.",
        "You light your torch.",
        "You open the door.",
    ]
    assert all(t.result for t in story.path())
    assert len(story.leaves()) == 2  # the undone "go north" stays as a branch
    history = (Path(os.environ["AIDUNGEON_HOME"]) / "history.txt").read_text(encoding="utf-8")
    assert "+look around" in history and "+/save x" in history  # kept for the next session

    # 8. relaunch with --load x (and --no-color): the story continues; Ctrl-D saves and quits
    again = Player(["--load", "x", "--no-color"], env)
    recap = plain(again.prompt())
    assert story.path()[-1].result.splitlines()[0] in recap
    assert "> You look up." in plain(again.line("look up"))
    again.send("\x04")
    again.expect("Resume with: aidungeon --load x")
    assert again.finish() == 0
    assert colour_codes(again.output) == []
    resumed = read("x").story
    assert [t.action for t in resumed.path()][-1] == "You look up."
    assert resumed.path()[-1].result


def test_no_color_env_and_the_prompt_keys(trained_model_dir: Path, env: dict[str, str]) -> None:
    story = custom_story("You stand at the gate of a ruined keep.")
    story.append("You knock.")
    story.add_candidates([Candidate(text="Nobody answers.")])
    saves.write_save(
        Path(os.environ["AIDUNGEON_HOME"]) / "saves",
        "keep",
        saves.SaveData(story=story, model=str(trained_model_dir), settings={}),
    )
    player = Player(["--load", "keep"], dict(env, NO_COLOR="1"))
    assert "Nobody answers." in plain(player.prompt())
    player.send("\x03")  # Ctrl-C at the prompt: a hint, nothing else
    assert "Ctrl-D or /quit saves and quits" in plain(player.prompt())
    player.send("/he\t")  # Tab completes a command
    player.expect_plain("/help")
    player.send("\r")
    assert "/retry" in plain(player.prompt())
    player.send("/set tem\t")  # and a setting's name
    player.expect_plain("temperature")
    assert "temperature = 0.5" in plain(player.line(" 0.5"))
    player.send("\x04")  # Ctrl-D saves and quits
    player.expect("Saved as keep")
    assert player.finish() == 0
    assert colour_codes(player.output) == []
    assert "Traceback" not in player.output
    assert read("keep").story.path()[-1].result == "Nobody answers."


@pytest.mark.parametrize("leave", ["\x03", "\x04", "/quit\r"], ids=["ctrl-c", "ctrl-d", "quit"])
def test_leaving_the_menu_while_the_model_loads_exits_cleanly(
    leave: str, trained_model_dir: Path, env: dict[str, str]
) -> None:
    """The model loads in a thread while the menu is up; leaving at once must not abort the process."""
    for _attempt in range(3):
        player = Player(["--model", str(trained_model_dir)], env)
        player.expect("Pick a setting")
        player.prompt()
        player.send(leave)
        status = player.finish()
        shown = plain(player.output)
        assert status in (0, 130), shown[-2000:]
        assert player.child.signalstatus is None, shown[-2000:]
        for crash in ("terminate called", "Aborted", "Traceback"):
            assert crash not in shown, shown[-2000:]
