"""Shared test fixtures: an isolated data folder for every test and tiny offline models.

The model folders are built from scratch (no downloads) and cached under pytest's cache folder,
keyed by a hash of everything that goes into them, so a second run reuses them; `pytest
--cache-clear` or `-p no:cacheprovider` rebuilds. Tests must treat the folders as read-only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STORIES_DIR = REPO / "stories"
BUILDER = REPO / "aidungeon" / "model" / "tiny.py"

# The recipes: how many corpus adventures, how many training steps. Part of the cache key.
TINY_RECIPE = {"shape": "tiny", "corpus": 200, "corpus_seed": 1, "seed": 0, "train_steps": 0}
TRAINED_RECIPE = {"shape": "tiny", "corpus": 300, "corpus_seed": 0, "seed": 0, "train_steps": 200}
BUILD_THREADS = 1  # on a shared 2-core machine one thread trains the tiny model fastest: no oversubscription


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every test at its own data folder and forbid the hub from reaching the network."""
    home = tmp_path / "home"
    monkeypatch.setenv("AIDUNGEON_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return home


def story_texts() -> list[str]:
    """The raw text of the shipped story files (whatever is there now; may be none)."""
    return [path.read_text(encoding="utf-8") for path in sorted(STORIES_DIR.glob("*.toml"))]


def _cache_key(recipe: dict[str, int | str], texts: list[str]) -> str:
    import tokenizers
    import torch
    import transformers

    digest = hashlib.sha256()
    for part in (BUILDER.read_text(encoding="utf-8"), repr(sorted(recipe.items())), *texts):
        digest.update(part.encode("utf-8") + b"\0")
    for version in (torch.__version__, transformers.__version__, tokenizers.__version__):
        digest.update(version.encode() + b"\0")
    return digest.hexdigest()[:16]


def _is_complete(folder: Path) -> bool:
    wanted = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return all((folder / name).is_file() for name in wanted)


def _build(folder: Path, recipe: dict[str, int | str], texts: list[str]) -> None:
    import torch

    from aidungeon.model.tiny import build_model_dir

    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        build_model_dir(
            folder,
            shape=str(recipe["shape"]),
            texts=texts,
            seed=int(recipe["seed"]),
            train_steps=int(recipe["train_steps"]),
        )
    finally:
        torch.set_num_threads(threads)


def _cached_build(
    request: pytest.FixtureRequest, name: str, recipe: dict[str, int | str], texts: list[str]
) -> Path | None:
    """Build into pytest's cache (atomically, via rename) or reuse a finished build; None without a cache."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return None
    root = Path(cache.mkdir("aidungeon-tiny-models"))
    target = root / f"{name}-{_cache_key(recipe, texts)}"
    if not _is_complete(target):
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        _build(staging, recipe, texts)
        try:
            staging.rename(target)
        except OSError:  # another session finished first (or a broken leftover is in the way)
            shutil.rmtree(staging, ignore_errors=True)
            if not _is_complete(target):
                raise
    _prune(root, name, keep=target)
    return target


def _prune(root: Path, name: str, *, keep: Path) -> None:
    """Remove builds of `name` made from older sources."""
    for stale in root.glob(f"{name}-*"):
        if stale != keep:
            shutil.rmtree(stale, ignore_errors=True)


def _model_dir(
    request: pytest.FixtureRequest,
    factory: pytest.TempPathFactory,
    name: str,
    recipe: dict[str, int | str],
    texts: Callable[[], list[str]],
) -> Path:
    materialized = texts()
    cached = _cached_build(request, name, recipe, materialized)
    if cached is not None:
        return cached
    folder = factory.mktemp(name)
    _build(folder, recipe, materialized)
    return folder


def _tiny_texts() -> list[str]:
    from aidungeon.model.tiny import adventure_corpus

    return story_texts() + adventure_corpus(int(TINY_RECIPE["corpus"]), seed=int(TINY_RECIPE["corpus_seed"]))


def _trained_texts() -> list[str]:
    from aidungeon.model.tiny import adventure_corpus

    return adventure_corpus(int(TRAINED_RECIPE["corpus"]), seed=int(TRAINED_RECIPE["corpus_seed"]))


@pytest.fixture(scope="session")
def tiny_model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny GPT-2 with a BPE tokenizer trained on the stories and the adventure corpus."""
    return _model_dir(request, tmp_path_factory, "tiny", TINY_RECIPE, _tiny_texts)


@pytest.fixture(scope="session")
def trained_model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 trained for a few seconds on the adventure corpus: it writes sentences and `> You` turns."""
    return _model_dir(request, tmp_path_factory, "trained", TRAINED_RECIPE, _trained_texts)


def pytest_configure(config: pytest.Config) -> None:
    """Set process-wide switches before torch or the hub libraries are imported and read them.

    No test may download. Tiny models gain nothing from a second thread, and on a shared 2-core
    machine an oversubscribed OpenMP pool made sampling 15-20x slower, so tests default to one.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
