"""Every on-disk location the game uses, derived from one data folder.

`AIDUNGEON_HOME` overrides the folder (tests always set it). Without it, config lives in the
platform's config folder, saves and stories in its data folder, and models in its cache folder.
Nothing is created at import time; callers create the folder they write to.
"""

from __future__ import annotations

import os
import secrets
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
    home = (os.environ if env is None else env).get(HOME_ENV)
    if home:
        root = Path(home).expanduser()
        return Paths(config_dir=root, data_dir=root, cache_dir=root / "cache")
    return Paths(
        config_dir=Path(platformdirs.user_config_dir(APP_NAME)),
        data_dir=Path(platformdirs.user_data_dir(APP_NAME)),
        cache_dir=Path(platformdirs.user_cache_dir(APP_NAME)),
    )


def write_temp(path: Path, data: bytes) -> Path:
    """Write `data` to a new temp file beside `path`, fsynced, and return the temp file's path.

    Nothing else changes: if the write fails (a full disk), the temp file is removed and the
    error raised, and `path` is as it was. The caller moves the temp into place (`os.replace`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _write_all(fd: int, data: bytes) -> None:
    # os.write may write less than asked (signals, pipes, quotas); loop until all of it is down.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old file or the new one.

    The bytes go to a temp file in the same folder, which is fsynced, renamed over `path`
    with `os.replace`, and then the folder itself is fsynced so the rename survives power loss.
    """
    tmp = write_temp(path, data)
    move_into_place(tmp, path)


def move_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished temp file `tmp` over `path` and make the rename durable; `tmp` is removed on failure."""
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def keep_copy(source: Path, target: Path, data: bytes) -> None:
    """Make `target` hold `source`'s bytes (`data`), atomically, before `source` is replaced.

    A hard link writes no data, so a backup still works on a full disk; where the file system has
    no hard links the bytes are copied with `atomic_write`. Either way `target` is swapped in whole.
    """
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.link(source, tmp)
    except (OSError, NotImplementedError):
        atomic_write(target, data)
        return
    move_into_place(tmp, target)


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
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)  # a half-written export is worse than none
        raise
    os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make renames in `folder` survive a power cut (where the platform can open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms (Windows) cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
