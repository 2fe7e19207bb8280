"""What the model room can tell about this machine: versions, devices, memory bandwidth, and
the bytes one decode step reads. The benchmark and `aidungeon doctor` use it; it decides nothing.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

import torch
import transformers


def decode_weight_bytes(model: Any) -> int:
    """Bytes of weights one decode step reads: every parameter and every 4-bit layer's packed
    codes, except that an input embedding table not doubling as the LM head is only looked up
    (one row), not read whole."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(m.decode_bytes() for m in model.modules() if hasattr(m, "decode_bytes"))
    table = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if getattr(head, "weight", None) is not table:
        total -= table.numel() * table.element_size()
    return total


def read_bandwidth(device: str, size_mb: int = 256, repeats: int = 5) -> float:
    """Memory read bandwidth in bytes/s: the best of a few full reads of a large tensor."""
    data = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32, device=device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        data.sum()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best


def head_bandwidth(model: Any, repeats: int = 5) -> float:
    """Bytes/s at which the LM head, in the layout decoding uses, reads its weights for one row.

    The head is the model's largest layer and larger than any CPU cache, so this is what the
    one-row product itself reaches here: the ceiling the read bandwidth above cannot show."""
    head = model.get_output_embeddings()
    parameter = next(model.parameters())
    weight = getattr(head, "weight", None)
    size = head.decode_bytes() if weight is None else weight.numel() * weight.element_size()
    row = torch.zeros(1, 1, head.in_features, dtype=parameter.dtype, device=parameter.device)
    best = float("inf")
    with torch.inference_mode():
        head(row)
        for _ in range(repeats):
            _sync(parameter.device.type)
            start = time.perf_counter()
            head(row)
            _sync(parameter.device.type)
            best = min(best, time.perf_counter() - start)
    return size / best


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def machine_description(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, {torch.get_num_threads()} threads"


def runtime_rows() -> list[tuple[str, str]]:
    """Python, torch, transformers and the device the game would pick, for `aidungeon doctor`."""
    from aidungeon.model.cpu.packing import int4_supported, onednn_supported
    from aidungeon.model.loader import available_bytes, choose_device

    device = choose_device("auto")
    free = available_bytes(device)
    offered = (("4-bit groups", int4_supported()), ("oneDNN prepacked", onednn_supported()))
    layouts = [name for name, present in offered if present]
    return [
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("torch", torch.__version__),
        ("transformers", transformers.__version__),
        ("device", device + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else "")),
        ("free memory", f"{free / 2**30:.1f} GiB" if free is not None else "unknown"),
        ("cpu threads", str(torch.get_num_threads())),
        ("weight layouts", ", ".join(layouts) or "none (plain torch layers)"),
    ]
