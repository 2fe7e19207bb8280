"""`aidungeon --server URL` in a real pseudo-terminal (pexpect) against a real `aidungeon serve`
process on the trained tiny model: the menu, three actions, Ctrl-C during a turn (which the server
cancels, leaving the story whole), `/quit`, reconnecting with `--load ID` to the recap, and one
clear line once the server is gone, with the game still answering.

The server runs with the same per-token delay seam as tests/e2e/test_terminal.py, so a Ctrl-C can
land while it generates; the client loads no model at all.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_terminal import LIVE_REDRAW, SLOW_TOKENS, Player, plain
from tests.server.serve_process import ServeProcess, start_serve

pytestmark = [
    pytest.mark.slow,
    pytest.mark.server,
    pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal"),
]
pytest.importorskip("pexpect")


@pytest.fixture
def served(tmp_path: Path, trained_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    seam = tmp_path / "seam"
    seam.mkdir()
    (seam / "sitecustomize.py").write_text(SLOW_TOKENS, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(seam), os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.setenv("AIDUNGEON_TEST_TOKEN_DELAY", "0.03")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    home = tmp_path / "server"
    home.mkdir()
    # A seed makes the server's stories reproducible, as --seed does the local game's e2e run: the
    # tiny model stalls now and then, and a stalled turn is taken back out of the story.
    (home / "config.toml").write_text("[sampling]\nseed = 1\n", encoding="utf-8")
    process = start_serve(home, trained_model_dir)
    yield process
    process.stop()


def client_env(tmp_path: Path) -> dict[str, str]:
    """The player's machine: its own data folder, no seam (nothing generates here)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES")}
    env.pop("AIDUNGEON_TEST_TOKEN_DELAY", None)
    env.update(TERM="xterm-256color", AIDUNGEON_HOME=str(tmp_path / "player"), OMP_NUM_THREADS="1")
    return env


def path_of(url: str, story_id: str) -> list[dict[str, str]]:
    story = httpx.get(f"{url}/api/stories/{story_id}", timeout=30).json()
    return list(story["path"])


def test_the_terminal_plays_a_server_story(served: ServeProcess, tmp_path: Path) -> None:
    url = served.url
    player = Player(["--server", url], client_env(tmp_path))

    # 1. the server's menu: its settings, and a custom opening
    shown = player.start_custom("You are in a dark cave.\nA troll sleeps by the fire.")
    assert "You are in a dark cave." in shown and "A troll sleeps by the fire." in shown
    story_id = httpx.get(f"{url}/api/stories", timeout=30).json()[0]["id"]
    assert path_of(url, story_id)[0]["result"]  # the first continuation, written on the server
    assert httpx.get(f"{url}/api/stories/{story_id}", timeout=30).json()["settings"]["sampling"]["seed"] == 1

    # 2. three actions, streamed from the server, with the client's status bar
    for action, echoed in [
        ("look around", "> You look around."),
        ("I light my torch", "> You light your torch."),
        ("go north", "> You go north."),
    ]:
        assert echoed in plain(player.line(action))
    assert f"story: {story_id}" in plain(player.output) and f"server {url.split('//')[1]}" in plain(player.output)
    whole = path_of(url, story_id)
    assert [t["action"] for t in whole] == ["", "You look around.", "You light your torch.", "You go north."]
    assert all(t["result"] for t in whole)

    # 3. Ctrl-C while the server generates: the server cancels the turn; the story stays whole
    assert "max_new_tokens = 200" in plain(player.line("/set max_new_tokens 200"))
    player.send("open the door\r")
    player.expect("> You open the door.")
    player.expect(LIVE_REDRAW)  # the preview is streaming
    pressed = time.monotonic()
    player.send("\x03")
    stopped = plain(player.prompt())
    assert "Stopped." in stopped and "Traceback" not in stopped
    assert time.monotonic() - pressed < 5  # 200 tokens at 0.03 s would take 6 s more
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/api/health", timeout=30).json()["turns"] and time.monotonic() < deadline:
        time.sleep(0.1)  # the server ends the cancelled turn at its next token, then saves
    after = path_of(url, story_id)
    assert after[:4] == whole and after[-1] == {"action": "You open the door.", "result": ""}

    # 4. /quit names the story to resume
    player.send("/quit\r")
    player.expect("Resume with:")
    assert player.finish() == 0
    assert f"Resume with: aidungeon --server {url} --load {story_id}" in " ".join(plain(player.output).split())
    assert "Traceback" not in plain(player.output)

    # 5. reconnect: the recap, and the stopped turn is finished as a local game finishes it
    again = Player(["--server", url, "--load", story_id, "--no-color"], client_env(tmp_path))
    recap = plain(again.prompt())
    # (compared without line breaks: the 120-column terminal wraps a long line)
    assert "> You go north." in recap and " ".join(whole[-1]["result"].split()) in " ".join(recap.split())
    finished = path_of(url, story_id)
    assert finished[-1]["action"] == "You open the door." and finished[-1]["result"], recap[-1500:]
    assert finished[-1]["result"].splitlines()[0] in recap
    assert "> You look up." in plain(again.line("look up"))

    # 6. the server goes away: one clear line, and the game still answers
    assert served.stop() in (0, -15)
    gone = plain(again.line("look down"))
    assert f"cannot reach the server at {url}: is it running?" in gone and "Traceback" not in gone
    assert "Saved on the server" in plain(again.line("/save"))
    again.send("/quit\r")
    again.expect("Resume with:")
    assert again.finish() == 0
    assert "Traceback" not in again.output
