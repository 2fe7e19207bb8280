"""What a player gets from the README and the wheel: the install line works without a GPU, the
test command is CI's, and the wheel holds every package and its data.

The wheel is built offline from a copy of the source (no build isolation, no index), so the
test needs nothing beyond the test environment and leaves the checkout untouched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUBPACKAGES = ("core", "game", "storage", "model", "model/cpu", "ui", "ui/terminal", "cli", "bench", "server")


def first_block(readme: str) -> list[str]:
    """The command lines of the README's first code block, comments dropped."""
    block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL)
    assert block is not None
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_installs_the_cpu_torch_first_in_a_venv_and_tests_as_ci_does() -> None:
    commands = first_block((REPO / "README.md").read_text(encoding="utf-8"))
    joined = " && ".join(commands)
    assert "python3 -m venv .venv" in joined and ". .venv/bin/activate" in joined
    cpu_torch = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert cpu_torch in joined
    # Before the game's own install, or pip resolves torch from PyPI: the ~5 GB CUDA build.
    assert joined.index(cpu_torch) < joined.index("pip install .")
    assert joined.index(". .venv/bin/activate") < joined.index(cpu_torch)
    ci_test = [line for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines() if "pytest" in line]
    readme_test = commands[-1].split("&&")[-1].strip()
    assert ci_test == [readme_test]
    assert "3.11" in (REPO / "README.md").read_text(encoding="utf-8").split("## Playing")[0]


@pytest.mark.slow
def test_the_wheel_holds_every_package_the_stories_and_the_bench_data(tmp_path: Path) -> None:
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(REPO / "aidungeon", source / "aidungeon", ignore=ignore)
    shutil.copytree(REPO / "stories", source / "stories", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    out = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "Package would be ignored" not in build.stdout + build.stderr
    (wheel,) = out.glob("aidungeon-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "aidungeon/bench/data/coherence.toml" in names
    assert {f"aidungeon/server/static/{p.name}" for p in (REPO / "aidungeon" / "server" / "static").iterdir()} <= names
    stories = {name for name in names if re.fullmatch(r"aidungeon/stories/[^/]+\.toml", name)}
    assert {f"aidungeon/stories/{p.name}" for p in (REPO / "stories").glob("*.toml")} <= stories and stories
    for package in ("", *SUBPACKAGES):
        init = "/".join(part for part in ("aidungeon", package, "__init__.py") if part)
        assert init in names, init
    # Every module of the source is in the wheel.
    modules = {str(p.relative_to(REPO)) for p in (REPO / "aidungeon").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)
