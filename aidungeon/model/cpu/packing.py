"""Weight layouts for fast CPU decoding: 4-bit groups where they lose nothing, oneDNN's
prepacked layout for every other linear layer.

Decoding one token reads every weight once, and on the CPU that read, not arithmetic, is what
each matrix-vector product waits for; torch's default kernels for one row reach a fraction of
the memory bandwidth. Two layouts do better, both with kernels that ship inside torch.

**4-bit groups.** Models converted from a 4-bit GGUF (the default model
ships as Q4_1) hold weights that lie on a 4-bit grid: in each group of 32 inputs, every value
is `min + step * q` with q in 0..15. Such a layer can be stored as those 4-bit codes, a step and
a minimum per group, and multiplied by torch's int4 CPU kernel (`_weight_int4pack_mm_for_cpu`),
reading a quarter of the bytes of bf16 for exactly the same weights (to fp16 rounding).

A layer whose weights are not on such a grid is left as it is: 4-bit packing never trades
quality for speed. The kernel is fast for a few rows (decoding) but its cost grows faster with
the rows than a bf16 product's, so long inputs (the whole story after a window drop) dequantize
the layer's codes and use an ordinary product; dequantizing the default model costs ~0.15 s.

**oneDNN prepacked.** Every other linear layer gets its weight reordered once into oneDNN's
blocked layout and multiplied by oneDNN (`torch.ops.mkldnn._linear_pointwise`), as
torch.compile's CPU freezing pass does: measured 1.25-2.3x faster than `F.linear` for one row,
in fp32 and bf16, and faster for long inputs too. Nothing about the weights changes.

**8-bit head (opt-in).** The output layer is a model's largest (SmolLM2's 49,152 x 576 is 57 MB
in bf16, a fifth of a decode step) and, for the default model, not on a 4-bit grid (it ships
as Q8_0). `Int8Head` keeps it as 8-bit codes with a scale per output row and multiplies through
fbgemm's int8 kernel (its input split in two 8-bit parts, so only the weights lose bits): half
of bf16's bytes, but the logits move a little. This is the one layout here that
trades output for speed, so the loader uses it only for a model whose quantized head passed the
quality check in benchmarks/RESULTS.md (`benchmarks/head_quality.py`).

All are measured in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

GROUP = 32
LEVELS = 15
# A weight further than this fraction of its group's step from the grid means the layer was
# not 4-bit quantized; fp16 rounding of grid weights stays below 0.01 (measured 0.008).
GRID_TOLERANCE = 0.05
SAMPLE_ROWS = 64
# Up to about this many rows the int4 kernel beats dequantize-then-multiply in bf16: measured on
# SmolLM2, prefilling 130 tokens takes 0.30 s through the kernel and 0.33 s dequantized, 400
# tokens 0.81 s and 0.69 s.
KERNEL_MAX_ROWS = 160


def int4_supported() -> bool:
    """Whether this torch has the CPU int4 kernel, in a vectorized build: ATen vectorizes it for
    AVX2 and AVX-512 except under MSVC; elsewhere it is a scalar loop slower than bf16."""
    present = hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_convert_weight_to_int4pack_for_cpu")
    vectorized = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") and sys.platform != "win32"
    return present and vectorized


def fit_grid(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The 4-bit codes (out, in), steps and minimums (out, in/32) of a weight on a 4-bit group
    grid, or None when it is not on one (or its input size is not a multiple of 32)."""
    out_features, in_features = weight.shape
    if in_features % GROUP:
        return None
    # Most layers of most models are not on a grid: a few rows tell, without a full-size copy.
    if out_features > SAMPLE_ROWS and fit_grid(weight[:SAMPLE_ROWS]) is None:
        return None
    groups = weight.float().reshape(out_features, in_features // GROUP, GROUP)
    lowest = groups.amin(dim=-1)
    step = (groups.amax(dim=-1) - lowest) / LEVELS
    safe_step = torch.where(step > 0, step, torch.ones_like(step))
    codes = torch.round((groups - lowest[..., None]) / safe_step[..., None]).clamp(0, LEVELS)
    error = (codes * step[..., None] + lowest[..., None] - groups).abs() / safe_step[..., None]
    if float(error.max()) > GRID_TOLERANCE:
        return None
    return codes.to(torch.uint8).reshape(out_features, in_features), step, lowest


class Int4Linear(torch.nn.Module):
    """A drop-in for a linear layer whose weights lie on a 4-bit group grid (see `fit_grid`)."""

    # Buffers, registered in __init__ (declared here for the type checker).
    packed: torch.Tensor
    scale_zero: torch.Tensor
    nibbles: torch.Tensor
    step: torch.Tensor
    lowest: torch.Tensor

    def __init__(
        self,
        codes: torch.Tensor,
        step: torch.Tensor,
        lowest: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        # The kernel's own layout, and its `(q - 8) * scale + zero` form of `min + step * q`.
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1))
        scale_zero = torch.stack([step, lowest + 8 * step], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("scale_zero", scale_zero.to(dtype))
        # Two codes per byte for dequantizing: the kernel's layout is blocked and undocumented.
        self.register_buffer("nibbles", codes[:, 0::2] | (codes[:, 1::2] << 4))
        self.register_buffer("step", step.to(dtype))
        self.register_buffer("lowest", lowest.to(dtype))
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().to(dtype), requires_grad=False)

    @classmethod
    def stacked(cls, layers: Sequence[Int4Linear]) -> Int4Linear:
        """One layer giving the outputs of `layers` (same input) side by side, from one kernel call.

        The layers then keep views of its codes, so they are not stored twice. The kernel's
        layout interleaves rows in blocks (64 on AVX-512), so a layer keeps its own packed codes
        where its rows do not start and end on a block boundary."""
        bias = None
        if any(layer.bias is not None for layer in layers):
            bias = torch.cat(
                [torch.zeros(layer.out_features) if layer.bias is None else layer.bias for layer in layers]
            )
        stacked = cls(
            torch.cat([layer.codes() for layer in layers]),
            torch.cat([layer.step for layer in layers]).float(),
            torch.cat([layer.lowest for layer in layers]).float(),
            bias,
            layers[0].step.dtype,
        )
        # The layers' own scales, not ones recomputed from their rounded steps.
        stacked.scale_zero = torch.cat([layer.scale_zero for layer in layers], dim=1).contiguous()
        start = 0
        for layer in layers:
            rows = slice(start, start + layer.out_features)
            if torch.equal(stacked.packed[rows], layer.packed):
                layer.packed = stacked.packed[rows]
            layer.nibbles, layer.step, layer.lowest = stacked.nibbles[rows], stacked.step[rows], stacked.lowest[rows]
            start = rows.stop
        return stacked

    def codes(self) -> torch.Tensor:
        """The 4-bit codes (out, in), one per byte."""
        return torch.stack([self.nibbles & 15, self.nibbles >> 4], dim=-1).reshape(self.out_features, self.in_features)

    def dequantized(self) -> torch.Tensor:
        """The weight (out, in) in the layer's dtype."""
        codes = self.codes().reshape(self.out_features, -1, GROUP)
        weight = codes.to(self.step.dtype) * self.step[..., None] + self.lowest[..., None]
        return weight.reshape(self.out_features, self.in_features)

    def decode_bytes(self) -> int:
        """Bytes one decoding step reads: the packed codes and their scales (not the nibbles)."""
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scale_zero))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.step.dtype)
        if rows.shape[0] <= KERNEL_MAX_ROWS:
            out = torch._weight_int4pack_mm_for_cpu(rows, self.packed, GROUP, self.scale_zero)
        else:
            out = torch.nn.functional.linear(rows, self.dequantized())
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def onednn_supported() -> bool:
    """Whether this torch was built with oneDNN and has the prepacked linear ops."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def onednn_bf16_supported() -> bool:
    """Whether oneDNN can prepack bf16 weights here: it needs AVX-512 (bw, vl, dq) or AVX-NE-CONVERT,
    and refuses on an AVX2-only CPU, where a bf16 layer keeps torch's own product instead."""
    return onednn_supported() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PrepackedLinear(torch.nn.Module):
    """A drop-in for a dense linear layer with its weight in oneDNN's prepacked layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # An opaque oneDNN tensor, so a plain attribute: `.to()` and state dicts must not touch it.
        # The 1 tells oneDNN to pick the layout for one row at a time, the decoding case.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)

    def decode_bytes(self) -> int:
        return self.out_features * self.in_features * self.packed.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def int8_head_supported() -> bool:
    """Whether this torch has fbgemm's dynamic int8 linear ops (x86 builds; quantized tensors are
    deprecated in torch, so a later release may drop them, and the head then stays bf16) and the
    CPU multiplies 8-bit codes with 32-bit sums (VNNI): without it fbgemm's pair sums are 16-bit
    and can saturate on full 8-bit inputs."""
    ops = torch.ops.quantized
    vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)
    return (
        "fbgemm" in torch.backends.quantized.supported_engines
        and hasattr(ops, "linear_prepack")
        and hasattr(ops, "linear_dynamic")
        and bool(vnni())
    )


# The grid fbgemm quantizes an input on when its range is [-1, 1]: multiples of this step.
INPUT_STEP = 2.0 / 255
INPUT_LEVELS = 127


class Int8Head(torch.nn.Module):
    """A drop-in for a linear layer with int8 weights (one scale per output row) through fbgemm,
    for the output layer: it returns fp32 logits, which is what sampling uses anyway.

    fbgemm quantizes its input to 8 bits with one range for the whole input tensor. That alone
    moved the default model's choices too far (the quality check in benchmarks/RESULTS.md), and
    would make a row's logits depend on the other rows of its batch (other players). So:
    - each row is scaled to a peak of 1, and two extra input columns, -1 and +1 against zero
      weights, pin the range to [-1, 1]: every row is quantized on the same grid, whatever else
      is in the batch;
    - each row goes in twice: once rounded onto that grid (which fbgemm then holds exactly),
      once as what the rounding left, scaled up to its own peak of 1. The two products, scaled
      back and added, carry about 16 bits of the input, so only the weights are 8-bit. Two rows
      cost about what one does: the product reads the weights once for all rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        dense = weight.detach().float()
        scales = (dense.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        codes = torch.round(dense / scales[:, None]).clamp(-127, 127)
        # The two range-pinning columns meet zero weights, so they add nothing to the product.
        padded = torch.cat([codes, codes.new_zeros(self.out_features, 2)], dim=1) * scales[:, None]
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            # Deprecated in torch (see `int8_head_supported`); a player need not read about it.
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch.quantize_per_channel(padded, scales.double(), zero_points, 0, torch.qint8)
        # Added after scaling back, not inside fbgemm's product (which is scaled afterwards).
        self.bias = None if bias is None else bias.detach().float().clone()
        # An opaque fbgemm object, so a plain attribute, as in `PrepackedLinear`. The engine is
        # torch's global setting; the packed object keeps fbgemm's kernel whatever it says later.
        engine = torch.backends.quantized.engine
        torch.backends.quantized.engine = "fbgemm"
        try:
            self.packed = torch.ops.quantized.linear_prepack(quantized, None)
        finally:
            torch.backends.quantized.engine = engine
        # A plain attribute, not a buffer: casting the model to bf16 must leave it fp32.
        self.ends = torch.tensor([[-1.0, 1.0]])

    def decode_bytes(self) -> int:
        """Bytes one decoding step reads: a byte a weight and a 4-byte scale a row."""
        return self.out_features * (self.in_features + 2 + 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        count = rows.shape[0]
        peak = _peaks(rows)
        scaled = rows / peak
        high = torch.round(scaled / INPUT_STEP).clamp(-INPUT_LEVELS, INPUT_LEVELS) * INPUT_STEP
        rest = scaled - high
        rest_peak = _peaks(rest)
        both = torch.cat([high, rest / rest_peak])
        pinned = torch.cat([both, self.ends.expand(2 * count, 2)], dim=-1)
        out = torch.ops.quantized.linear_dynamic(pinned, self.packed, False)
        logits = out[:count] * peak + out[count:] * (rest_peak * peak)
        if self.bias is not None:
            logits = logits + self.bias
        return logits.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _peaks(rows: torch.Tensor) -> torch.Tensor:
    """Each row's largest magnitude (rows, 1), never zero."""
    return rows.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def quantize_head(model: torch.nn.Module) -> bool:
    """Put an `Int8Head` in place of the model's output layer, a dense one (call it before
    `prepack_dense`, and before casting to a lower precision: it reads the stored weights);
    returns whether it did. A tied head leaves the input embeddings as they are."""
    if not int8_head_supported():
        return False
    head = model.get_output_embeddings()  # type: ignore[operator]
    weight = None if head is None else _weight_out_in(head)
    if weight is None or weight.device.type != "cpu":
        return False
    model.set_output_embeddings(Int8Head(weight, getattr(head, "bias", None)))  # type: ignore[operator]
    log.info("output layer in 8 bits (fbgemm)")
    return True


def prepack_dense(model: torch.nn.Module) -> int:
    """Give every remaining dense linear layer (LM head included) oneDNN's prepacked layout; return
    how many. A head tied to the input embeddings gets its own copy; the table stays for lookups."""
    if not onednn_supported():
        return 0

    dtypes = (torch.float32, torch.bfloat16) if onednn_bf16_supported() else (torch.float32,)

    def prepacked(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Module | None:
        dense = weight.device.type == "cpu" and weight.dtype in dtypes
        return PrepackedLinear(weight, bias) if dense else None

    replaced = _replace_linears(model, prepacked)
    log.info("prepacked %d linear layers for oneDNN", replaced)
    return replaced


def repack_4bit(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Replace each linear layer whose weights lie on a 4-bit group grid with an `Int4Linear`
    computing in `dtype`; return how many were replaced. Call it before casting the model to
    a lower precision, or bf16 rounding moves the weights off their grid."""
    if not int4_supported():
        return 0

    def repacked(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Module | None:
        fitted = fit_grid(weight)
        return None if fitted is None else Int4Linear(*fitted, bias, dtype)

    replaced = _replace_linears(model, repacked)
    log.info("repacked %d linear layers into 4-bit groups", replaced)
    return replaced


def _replace_linears(
    model: torch.nn.Module, make: Callable[[torch.Tensor, torch.Tensor | None], torch.nn.Module | None]
) -> int:
    """Put `make(weight as (out, in), bias)` in place of each linear layer it returns a module for."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            weight = _weight_out_in(child)
            new = None if weight is None else make(weight, getattr(child, "bias", None))
            if new is not None:
                setattr(parent, name, new)
                replaced += 1
    return replaced


def _weight_out_in(module: torch.nn.Module) -> torch.Tensor | None:
    """A linear layer's weight as (out, in): nn.Linear, or transformers' Conv1D (GPT-2), which
    stores it as (in, out)."""
    if type(module) is torch.nn.Linear:
        return module.weight.detach()
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor):
        return weight.detach().t()
    return None
