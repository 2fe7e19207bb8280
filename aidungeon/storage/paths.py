"""Every on-disk location the game uses, derived from one data folder.

`AIDUNGEON_HOME` overrides the folder (tests always set it). Without it, config lives in the
platform's config folder, saves and stories in its data folder, and models in its cache folder.
Nothing is created at import time; callers create the folder they write to.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "aidungeon"
HOME_ENV = "AIDUNGEON_HOME"


@dataclass(frozen=True)
class Paths:
    """The folders the game reads and writes."""

    config_dir: Path
    data_dir: Path
    cache_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def saves_dir(self) -> Path:
        return self.data_dir / "saves"

    @property
    def stories_dir(self) -> Path:
        return self.data_dir / "stories"

    @property
    def history_file(self) -> Path:
        return self.data_dir / "history.txt"

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    def ensure(self, folder: Path) -> Path:
        """Create `folder` (one of ours) if needed and return it."""
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def default_paths(env: dict[str, str] | None = None) -> Paths:
    """The paths for this user: everything under $AIDUNGEON_HOME when set, else platformdirs."""
    env = os.environ if env is None else env
    home = env.get(HOME_ENV)
    if home:
        root = Path(home).expanduser()
        return Paths(config_dir=root, data_dir=root, cache_dir=root / "cache")
    return Paths(
        config_dir=Path(platformdirs.user_config_dir(APP_NAME)),
        data_dir=Path(platformdirs.user_data_dir(APP_NAME)),
        cache_dir=Path(platformdirs.user_cache_dir(APP_NAME)),
    )


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old file or the new one.

    The bytes go to a temp file in the same folder, which is fsynced, renamed over `path`
    with `os.replace`, and then the folder itself is fsynced so the rename survives power loss.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_new_file(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write an export or other file the player asked for, never following a symlink.

    An existing file is replaced (atomically, the link itself if it is one) only with `force`;
    otherwise `FileExistsError`. A path with a NUL byte or a folder that is not there raises
    `ValueError` or `OSError` like any other bad path: callers turn them into one clear line.
    """
    if "\0" in str(path):
        raise ValueError(f"{str(path)!r} is not a valid file name")
    if not force and (path.exists() or path.is_symlink()):
        raise FileExistsError(path)
    if force:
        atomic_write(path, data)  # os.replace swaps a planted link for the file, never writes through it
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms (Windows) cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
