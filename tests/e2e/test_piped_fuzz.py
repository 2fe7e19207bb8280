"""A piped `aidungeon` fed a thousand random lines: hostile bytes never end the game.

Lines mix actions, invalid UTF-8, control characters and escape sequences, one 100,000-character
line, and every command with random arguments. The game must answer each without a traceback,
exit cleanly at the final /quit, and leave a save that lists and loads. The tiny trained model
with a small token budget keeps a run to a minute or two.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aidungeon.game.commands import REGISTRY

REPO = Path(__file__).resolve().parents[2]
QUIT = {"quit", *REGISTRY["quit"].aliases}
WORDS = ["look", "go", "north", "I", "draw", "my", "sword", "say", "!", '"', "the", "troll", "1", "-3", "x", "0.5"]
HOSTILE = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\x07", b"\x1b[2J", b"\x1b]0;pwned\x07", b"\x9b31m", b"\r"]


def random_line(rng: random.Random) -> bytes:
    kind = rng.random()
    words = [rng.choice(WORDS) for _ in range(rng.randint(0, 6))]
    if kind < 0.35:  # a command, with random arguments
        name = rng.choice(sorted(set(REGISTRY) - QUIT))
        return ("/" + " ".join([name, *words])).encode()
    line = " ".join(words).encode()
    if kind < 0.8:  # hostile bytes spliced in
        for _ in range(rng.randint(1, 3)):
            cut = rng.randint(0, len(line))
            line = line[:cut] + rng.choice(HOSTILE) + line[cut:]
    return line


def fuzz_input(seed: int, count: int) -> bytes:
    rng = random.Random(seed)
    lines = [b"/set max_new_tokens 8", b"/set retries 1"]
    lines += [random_line(rng) for _ in range(count)]
    lines.insert(len(lines) // 2, b"a " * 50_000)  # one 100k-character line
    lines += [b"/save fuzz", b"/quit"]
    # After /alter's edit prompt, the next line is the edit: whatever it is, it is just a line.
    return b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n"


def run(args: list[str], stdin: bytes, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    script = shutil.which("aidungeon")
    command = [script] if script else [sys.executable, "-m", "aidungeon"]
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "COLUMNS", "LINES")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([*command, *args], input=stdin, capture_output=True, timeout=600, env=env, cwd=cwd)


@pytest.mark.slow
def test_random_piped_lines_never_crash_the_game(trained_model_dir: Path, tmp_path: Path) -> None:
    played = run(
        ["--prompt", "You are in a dark cave.", "--model", str(trained_model_dir), "--seed", "3"],
        fuzz_input(seed=11, count=1000),
        tmp_path,
    )
    out, err = played.stdout.decode("utf-8", "replace"), played.stderr.decode("utf-8", "replace")
    assert "Traceback" not in out + err, (out + err)[-3000:]
    assert played.returncode == 0, (out + err)[-3000:]
    assert "\x1b" not in out + err, "an escape sequence reached the output"
    assert "Saved as fuzz" in out

    listed = run(["saves"], b"", tmp_path)
    assert listed.returncode == 0 and b"fuzz" in listed.stdout, listed.stdout + listed.stderr
    again = run(["--load", "fuzz"], b"look around\n/quit\n", tmp_path)
    shown = (again.stdout + again.stderr).decode("utf-8", "replace")
    assert again.returncode == 0 and "Traceback" not in shown, shown[-3000:]
    assert "> You look around." in shown
