"""The management subcommands: models, doctor, saves, import and export.

Each takes the paths and a rich console, prints a short report, and returns an exit code.
Problems are raised as AIDungeonError for the CLI to show as one line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from aidungeon import __version__
from aidungeon.core.errors import AIDungeonError, SaveError
from aidungeon.game.events import Table
from aidungeon.storage import saves
from aidungeon.storage.config_file import load_config
from aidungeon.storage.paths import Paths, write_new_file


def show_models(paths: Paths, console: Any, *, model: str | None = None) -> int:
    """`aidungeon models`: the presets and whether each is on this machine, and the model
    server that `--model openai:URL` (or the config's model) names."""
    from aidungeon.model.loader import PRESETS, is_present
    from aidungeon.ui.terminal.render import print_table

    rows = tuple(
        (preset.name, "yes" if is_present(preset, paths) else "no", preset.description) for preset in PRESETS.values()
    )
    remote = _remote_spec(paths, model)
    if remote:
        rows += (_remote_model_row(remote),)
    footer = (
        "Any local model folder, .gguf file or cached Hugging Face id works too, or a model server: "
        "aidungeon --model openai:http://HOST:PORT/v1[#MODEL]"
    )
    print_table(console, Table("Models", ("preset", "present", "about"), rows, footer))
    return 0


def _remote_spec(paths: Paths, model: str | None) -> str | None:
    """The `openai:` spec given on the command line, else the config's, else None."""
    from aidungeon.model.remote import is_remote

    if model:
        return model if is_remote(model) else None
    try:
        configured = load_config(paths.config_file).app.model
    except AIDungeonError:
        return None  # doctor still reports; playing shows the config's error
    return configured if is_remote(configured) else None


def _remote_rows(spec: str) -> list[tuple[str, str]]:
    """What the server says about itself, or why it could not be asked."""
    from aidungeon.model.remote import RemoteEngine

    try:
        engine = RemoteEngine.connect(spec)
    except AIDungeonError as err:
        return [("remote model", f"{spec}: {err}")]
    try:
        return engine.describe()
    finally:
        engine.close()


def _remote_model_row(spec: str) -> tuple[str, str, str]:
    rows = dict(_remote_rows(spec))
    if "remote server" not in rows:
        return (spec, "no", rows.get("remote model", "unreachable"))
    about = f"{rows['remote model']} on {rows['remote server']}, {rows['remote window']} window"
    return (spec, "yes", about)


def doctor(paths: Paths, console: Any, *, model: str | None = None) -> int:
    """`aidungeon doctor`: what the game sees of this machine, for bug reports (and of the model
    server, when `--model openai:URL` or the config names one)."""
    from aidungeon.model.loader import PRESETS, is_present
    from aidungeon.model.machine import runtime_rows
    from aidungeon.ui.terminal.render import print_table

    remote = _remote_spec(paths, model)
    rows = [
        ("aidungeon", __version__),
        *runtime_rows(),
        ("models present", ", ".join(p.name for p in PRESETS.values() if is_present(p, paths)) or "none yet"),
        *(_remote_rows(remote) if remote else []),
        ("config", str(paths.config_file)),
        ("saves", str(paths.saves_dir)),
        ("stories", str(paths.stories_dir)),
        ("model cache", str(paths.models_dir)),
    ]
    print_table(console, Table("aidungeon doctor", ("what", "value"), tuple(rows)))
    return 0


def manage_saves(paths: Paths, console: Any, action: str, name: str | None, *, yes: bool) -> int:
    """`aidungeon saves` lists; `aidungeon saves rm NAME` removes after asking."""
    if action == "rm":
        if not name:
            raise SaveError("usage: aidungeon saves rm NAME")
        saves.read_save(paths.saves_dir, name)  # fails clearly when there is no such save
        if not yes and not _confirm(console, f"Remove the save {name!r}? This cannot be undone. [y/N] "):
            console.print("Kept.")
            return 1
        saves.delete_save(paths.saves_dir, name)
        console.print(f"Removed {name}.", markup=False)
        return 0
    infos = saves.list_saves(paths.saves_dir)
    if not infos:
        console.print("No saved adventures yet.")
        return 0
    from aidungeon.ui.terminal.render import print_table

    rows = tuple(
        (info.name, info.saved_at.strftime("%Y-%m-%d %H:%M"), str(info.turns), info.model, info.title) for info in infos
    )
    print_table(console, Table("Saves", ("name", "last played", "turns", "model", "title"), rows))
    return 0


def _confirm(console: Any, question: str) -> bool:
    console.print(question, end="", markup=False)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def import_saves(paths: Paths, console: Any, file: Path, name: str | None) -> int:
    """`aidungeon import FILE`: convert another game's save into ours (never over an existing save)."""
    from aidungeon.storage.interop import import_file

    stories, notes = import_file(file)
    for number, story in enumerate(stories, start=1):
        if name:
            target = saves.sanitize_name(name if len(stories) == 1 else f"{name}-{number}")
            if saves.save_path(paths.saves_dir, target).exists():
                raise SaveError(f"a save called {target} exists already; choose another --name")
        else:
            target = saves.autosave_name(paths.saves_dir, story)
        # Locked, so a game that has this name open is not written over behind its back.
        with saves.lock_save(paths.saves_dir, target):
            saves.write_save(paths.saves_dir, target, saves.SaveData(story=story, model="", settings={}))
        console.print(f"Imported {story.title or file.name} as {target} ({len(story.path())} turns)", markup=False)
    for note in notes:
        console.print(f"note: {note}", style="dim", markup=False)
    return 0


STDOUT = Path("-")


def export_save(paths: Paths, console: Any, name: str, fmt: str, output: Path | None, *, force: bool = False) -> int:
    """`aidungeon export NAME`: write a save as md, txt or html.

    It goes to `<data>/exports/<name>.<fmt>` unless `-o FILE` names a file (`-o -`: standard output).
    An existing file is replaced only with `--force`, and a symbolic link is never written through.
    """
    from aidungeon.storage.interop import export_story

    data, _warnings = saves.read_save(paths.saves_dir, name)
    text = export_story(data.story, fmt)
    if output == STDOUT:
        sys.stdout.write(text)
        return 0
    target = output or paths.ensure(paths.data_dir / "exports") / f"{saves.sanitize_name(name)}.{fmt}"
    try:
        write_new_file(target, text.encode("utf-8"), force=force)
    except FileExistsError:
        raise SaveError(_exists_message(target)) from None
    except ValueError as err:
        raise SaveError(str(err)) from None
    except OSError as err:
        raise SaveError(f"could not write {target}: {err.strerror or err}") from None
    console.print(f"Exported {name} to {target}", markup=False)
    return 0


def _exists_message(target: Path) -> str:
    if target.is_symlink():
        return f"{target} is a symbolic link, which is never followed: choose another file with -o"
    if target.is_dir():
        return f"{target} is a folder; name a file with -o"
    return f"{target} exists already; add --force to replace it, or choose another file with -o"
