"""Kill test: a writer SIGKILLed at random moments always leaves a save it wrote, loadable as is.

This file is also the child: run as a script, it keeps growing one story and saving it, printing
each version number once `write_save` has returned.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the child runs this file directly

from aidungeon.core.errors import SaveError  # noqa: E402
from aidungeon.core.story import Candidate, Story  # noqa: E402
from aidungeon.storage.saves import SaveData, list_saves, read_save, write_save  # noqa: E402

NAME = "kill"


def step(story: Story, version: int) -> None:
    """Version `version` of the story: one more turn, and now and then a new branch."""
    if version % 5 == 0 and story.head is not None:
        story.undo()
    story.append(f"Action {version}: {'ñ' * (version % 7)}")
    story.add_candidates([Candidate(f"Result {version}. " + "The dragon roars. " * (version % 40), seed=version)])
    story.title = f"kill v{version}"


def build(version: int) -> Story:
    story = Story(opening="A dragon 🐉 waits.", title="kill v0")
    for number in range(1, version + 1):
        step(story, number)
    return story


def version_of(story: Story) -> int:
    return int(story.title.removeprefix("kill v"))


def child(folder: Path) -> None:
    try:
        story = read_save(folder, NAME)[0].story
    except SaveError:
        story = build(0)
    version = version_of(story)
    while True:
        version += 1
        step(story, version)
        write_save(folder, NAME, SaveData(story=story, model="test", settings={}))
        print(version, flush=True)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_killed_writer_always_leaves_a_version_it_wrote(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    deadline = time.monotonic() + 14.0
    kills = 0
    while kills < 15 and time.monotonic() < deadline:
        proc = subprocess.Popen(
            [sys.executable, __file__, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        first = proc.stdout.readline() if proc.stdout else ""
        if not first:
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"the writer died before its first save: {err}")
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
        kills += 1
        confirmed = int([first, *out.split()][-1])

        data, warnings = read_save(tmp_path, NAME)
        version = version_of(data.story)
        context = f"seed {seed}, kill {kills}: confirmed {confirmed}, found {version}"
        assert confirmed <= version <= confirmed + 1, context
        assert warnings == [], context
        assert data.story == build(version), context
        backup = tmp_path / f"{NAME}.json.bak"
        if backup.exists():
            older = read_save(backup)[0].story
            assert version_of(older) <= version, context
            assert older == build(version_of(older)), context
        assert [info.name for info in list_saves(tmp_path)] == [NAME], context
    assert kills >= 3, f"only {kills} kills fitted in the time"


if __name__ == "__main__":
    child(Path(sys.argv[1]))
