"""Kill the game with SIGKILL at random moments and check that nothing it showed is lost.

Each round starts `aidungeon` on one adventure (the first round creates it, later rounds
`--load` it), pipes actions in, and kills the process after a random delay: while loading,
while generating, while saving or while idle. Afterwards the save must load, and every line
of story text the game printed must be in the saved story.

    python benchmarks/kill9.py --kills 50 [--model DIR] [--seed 1]

Without --model it builds the tiny trained GPT-2 the tests use (offline, a few seconds).
Prints one JSON object: rounds, kills, shown lines checked, shown lines lost, failed loads.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aidungeon.storage import saves

OPENING = "You are a knight in a ruined castle."
ACTIONS = ["look around", "open the door", "say hello", "draw your sword", "", "climb the stairs", "/retry"]


def build_model(folder: Path) -> Path:
    from aidungeon.model.tiny import adventure_corpus, build_model_dir

    build_model_dir(folder, shape="tiny", texts=adventure_corpus(300, seed=0), seed=0, train_steps=200)
    return folder


def run_round(command: list[str], env: dict[str, str], rng: random.Random) -> tuple[str, bool]:
    """One game process, killed after a random delay; returns what it printed and whether it was killed."""
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: child.stdout.read(1), b"")))  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + rng.uniform(2.0, 25.0)
    assert child.stdin is not None
    try:
        while time.monotonic() < deadline and child.poll() is None:
            child.stdin.write((rng.choice(ACTIONS) + "\n").encode())
            child.stdin.flush()
            time.sleep(min(rng.uniform(0.0, 1.5), max(0.0, deadline - time.monotonic())))
    except BrokenPipeError:
        pass
    killed = child.poll() is None
    if killed:
        os.kill(child.pid, signal.SIGKILL)
    child.wait()
    reader.join()
    return b"".join(chunks).decode("utf-8", "replace"), killed


def story_lines(output: str) -> list[str]:
    """The lines of story text a piped game printed (not prompts, echoes or notices)."""
    complete = output if output.endswith("\n") else output.rsplit("\n", 1)[0]  # a line cut by the kill
    lines = []
    for line in complete.splitlines():
        text = line.strip()
        notice = (">", "!", "(", "... ", "Loading ", "Stopped", "Saved as", "aidungeon:", "Out of memory")
        if not text or text.startswith(notice):
            continue
        lines.append(text)
    return lines


def saved_text(folder: Path, name: str) -> str:
    data, _warnings = saves.read_save(folder, name)
    story = data.story
    parts = [story.opening, *(c.text for t in story.turns.values() for c in t.candidates)]
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill9-"))
    model = args.model or build_model(work / "model")
    home = work / "home"
    home.mkdir()
    (home / "config.toml").write_text("[sampling]\nmax_new_tokens = 40\n")  # short turns: more saves per second
    env = {**os.environ, "AIDUNGEON_HOME": str(home), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "aidungeon", "--model", str(model)]
    report = {"rounds": 0, "kills": 0, "shown_lines": 0, "lost_lines": 0, "failed_loads": 0, "lost": []}
    while report["kills"] < args.kills:
        name = saves.latest_save(home / "saves")
        command = [*base, "--load", name] if name else [*base, "--prompt", OPENING]
        output, killed = run_round(command, env, rng)
        report["rounds"] += 1
        report["kills"] += killed
        name = saves.latest_save(home / "saves")
        if name is None:  # killed before the first save: nothing was shown either
            continue
        try:
            text = saved_text(home / "saves", name)
        except Exception as err:  # any failure to load is what this run counts
            report["failed_loads"] += 1
            report["lost"].append(f"load failed: {err}")
            continue
        for line in story_lines(output):
            report["shown_lines"] += 1
            if line not in text:
                report["lost_lines"] += 1
                report["lost"].append(line)
    print(json.dumps(report, indent=2))
    return 0 if not report["lost_lines"] and not report["failed_loads"] else 1


if __name__ == "__main__":
    sys.exit(main())
