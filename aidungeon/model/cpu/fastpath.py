"""A lean one-token decode step for GPT-2 and Llama-family models (SmolLM2, Qwen2, Mistral) on the CPU,
for a batch of rows that each have their own length.

At one token a step, transformers' general forward costs more than the layers' kernels: mask
building, cache bookkeeping, keyword plumbing and a module call per projection. SmolLM2 spends
20 ms a step where its kernels take about 9. This step runs the same modules and weights with
fewer ops, and takes every decoding row of the engine in one call:
- one product per projection for all rows; q, k and v in one 4-bit product and gate and up in
  another, where those layers are 4-bit (decode reads every weight once, whatever the rows);
- attention per row over only its used slots: a single new token attends to every earlier one,
  so it needs no mask, and rows of different lengths need no padding;
- best-of-n rows (a `Group` with a `Suffix`) share their prompt's keys and values: attention
  over the shared prefix runs once for all n queries, over each row's own suffix separately,
  and the two are merged by their log-sum-exps, so the prefix is never copied;
- keys and values written in place at each row's position;
- modules called through their bound `forward`, skipping nn.Module's hook dispatch (the
  model has no hooks; a step makes some 200 module calls).

It does not prefill, sample or keep track of lengths (the engine does); other model families
keep transformers' forward. `tests/model/test_fastpath.py` checks that both give the same logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import StaticCache

from aidungeon.model.cpu.packing import Int4Linear

Projection = Callable[[torch.Tensor], Sequence[torch.Tensor]]

LLAMA_LIKE = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


@dataclass
class Suffix:
    """The keys and values best-of-n rows hold past their shared prefix: per layer (rows,
    kv_heads, capacity, head_dim), row i being candidate i's own tokens."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def like(cls, cache: StaticCache, rows: int, capacity: int) -> Suffix:
        """Room for `rows` rows of `capacity` tokens, shaped and typed as `cache`'s layers."""

        def empty(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.new_zeros((rows, tensor.shape[1], capacity, tensor.shape[3]))

        layers: list[Any] = list(cache.layers)
        return cls([empty(layer.keys) for layer in layers], [empty(layer.values) for layer in layers])

    @property
    def rows(self) -> int:
        return int(self.keys[0].shape[0])

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass
class Group:
    """The rows of one request in a decode step.

    `cache` holds the first `prefix` positions. Without a suffix the group is one row whose new
    token goes into `cache` at `prefix`. With one, the group is `suffix.rows` rows sharing those
    positions; row i's later tokens are in suffix row i, and its new token goes there at `offset`."""

    cache: StaticCache
    prefix: int
    suffix: Suffix | None = None
    offset: int = 0

    @property
    def rows(self) -> int:
        return 1 if self.suffix is None else self.suffix.rows

    @property
    def position(self) -> int:
        """The new tokens' position in the sequence (for rotary or position embeddings)."""
        return self.prefix + (self.offset if self.suffix is not None else 0)


class DecodeStep(Protocol):
    def __call__(self, tokens: torch.Tensor, groups: Sequence[Group]) -> torch.Tensor:
        """Logits (rows, vocab) for `tokens` (rows,), one per row of `groups` in order; each
        token's keys and values are written at its row's position."""
        ...


def lean_decoder(model: Any) -> DecodeStep | None:
    """The lean step for this model, or None where transformers' forward must be used."""
    kind, config = type(model).__name__, getattr(model, "config", None)
    if config is None:
        return None
    if kind == "GPT2LMHeadModel" and not config.add_cross_attention and not config.reorder_and_upcast_attn:
        return Gpt2Step(model)
    # Qwen2 and Mistral are Llama's layers with biases or another rotary setting; a sliding
    # window would limit attention to recent tokens, which this step does not do.
    if kind in LLAMA_LIKE and getattr(config, "sliding_window", None) is None:
        return LlamaStep(model)
    return None


def _projections(layers: Sequence[torch.nn.Module]) -> Projection:
    """Outputs of several projections of one input: one kernel call when they are all 4-bit."""
    int4 = [layer for layer in layers if isinstance(layer, Int4Linear)]
    if len(int4) == len(layers):
        stacked = Int4Linear.stacked(int4).forward
        sizes = [layer.out_features for layer in int4]
        return lambda x: stacked(x).split(sizes, dim=-1)
    forwards = [layer.forward for layer in layers]
    return lambda x: [forward(x) for forward in forwards]


def _positions(groups: Sequence[Group], device: torch.device) -> torch.Tensor:
    """Each row's position, (rows,)."""
    return torch.tensor([g.position for g in groups for _ in range(g.rows)], device=device)


def attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, groups: Sequence[Group], index: int, scaling: float
) -> torch.Tensor:
    """Write each row's key and value (rows, kv_heads, dim) into layer `index` of its group's
    cache, then attend each row's query (rows, kv_heads, group, dim) over its used slots; returns
    (rows, kv_heads * group * dim)."""
    outputs = []
    start = 0
    for group in groups:
        rows = slice(start, start + group.rows)
        outputs.append(_attend_group(query[rows], key[rows], value[rows], group, index, scaling))
        start = rows.stop
    attended = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return attended.reshape(query.shape[0], -1)


def _attend_group(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, group: Group, index: int, scaling: float
) -> torch.Tensor:
    layer: Any = group.cache.layers[index]
    if group.suffix is None:
        layer.keys[0, :, group.prefix] = key[0]
        layer.values[0, :, group.prefix] = value[0]
        used = group.prefix + 1
        return F.scaled_dot_product_attention(query, layer.keys[:, :, :used], layer.values[:, :, :used], scale=scaling)
    keys, values, offset = group.suffix.keys[index], group.suffix.values[index], group.offset
    keys[:, :, offset] = key
    values[:, :, offset] = value
    rows, kv_heads, per_head, dim = query.shape
    # All rows' queries against the shared prefix in one call: (1, kv_heads, rows * group, dim).
    stacked = query.transpose(0, 1).reshape(1, kv_heads, rows * per_head, dim)
    shared, shared_lse = _flash(stacked, layer.keys[:, :, : group.prefix], layer.values[:, :, : group.prefix], scaling)
    shared = shared.view(kv_heads, rows, per_head, dim).transpose(0, 1)
    shared_lse = shared_lse.view(kv_heads, rows, per_head).transpose(0, 1)
    own, own_lse = _flash(query, keys[:, :, : offset + 1], values[:, :, : offset + 1], scaling)
    # Softmax over both parts = each part's softmax weighted by its share of the total mass.
    top = torch.maximum(shared_lse, own_lse)
    shared_weight, own_weight = (shared_lse - top).exp(), (own_lse - top).exp()
    merged = shared.float() * shared_weight[..., None] + own.float() * own_weight[..., None]
    return (merged / (shared_weight + own_weight)[..., None]).to(query.dtype)


def _flash(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and the log-sum-exp of its scores (fp32), from torch's CPU flash kernel:
    the only SDPA kernel that returns the log-sum-exp, which merging two parts needs."""
    output, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, keys, values, 0.0, False, attn_mask=None, scale=scaling
    )[:2]
    return output, lse


class LlamaStep:
    def __init__(self, model: Any) -> None:
        body = model.model
        self.embed, self.rotary, self.norm, self.head = body.embed_tokens, body.rotary_emb, body.norm, model.lm_head
        self.layers = [_LlamaLayer(layer, model.config) for layer in body.layers]

    def __call__(self, tokens: torch.Tensor, groups: Sequence[Group]) -> torch.Tensor:
        hidden = self.embed(tokens)
        cos, sin = self.rotary(hidden, _positions(groups, hidden.device)[None])
        # (rows, 1, dim): one rotation per row, shared by that row's heads.
        cos, sin = cos[0][:, None], sin[0][:, None]
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, cos, sin, groups, index)
        return self.head(self.norm(hidden))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of heads (rows, n, dim), as transformers' `apply_rotary_pos_emb` computes it."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class _LlamaLayer:
    def __init__(self, layer: Any, config: Any) -> None:
        attention, mlp = layer.self_attn, layer.mlp
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scaling = attention.head_dim, attention.scaling
        self.input_norm, self.post_norm = layer.input_layernorm.forward, layer.post_attention_layernorm.forward
        self.qkv = _projections([attention.q_proj, attention.k_proj, attention.v_proj])
        self.out = attention.o_proj.forward
        self.gate_up = _projections([mlp.gate_proj, mlp.up_proj])
        self.down, self.act = mlp.down_proj.forward, mlp.act_fn.forward

    def __call__(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, groups: Sequence[Group], index: int
    ) -> torch.Tensor:
        rows = hidden.shape[0]
        q, k, v = self.qkv(self.input_norm(hidden))
        # Queries and keys rotate together: (rows, heads + kv_heads, dim).
        rotated = _rotate(torch.cat((q, k), dim=-1).view(rows, -1, self.head_dim), cos, sin)
        q, k = rotated[:, : self.heads], rotated[:, self.heads :]
        # Query heads that share a key/value head sit side by side: (rows, kv_heads, group, dim).
        grouped = q.reshape(rows, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
        values = v.view(rows, self.kv_heads, self.head_dim)
        attended = attend(grouped, k, values, groups, index, self.scaling)
        hidden = hidden + self.out(attended)
        gate, up = self.gate_up(self.post_norm(hidden))
        return hidden + self.down(self.act(gate) * up)


class Gpt2Step:
    def __init__(self, model: Any) -> None:
        body = model.transformer
        self.tokens, self.positions, self.norm, self.head = body.wte, body.wpe, body.ln_f, model.lm_head
        self.layers = [_Gpt2Layer(block, model.config) for block in body.h]

    def __call__(self, tokens: torch.Tensor, groups: Sequence[Group]) -> torch.Tensor:
        hidden = self.tokens(tokens) + self.positions.weight[_positions(groups, tokens.device)]
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, groups, index)
        return self.head(self.norm(hidden))


class _Gpt2Layer:
    def __init__(self, block: Any, config: Any) -> None:
        attention, mlp = block.attn, block.mlp
        self.heads, self.embed_dim = config.num_attention_heads, config.hidden_size
        self.scaling = attention.scaling
        self.norm_1, self.norm_2 = block.ln_1.forward, block.ln_2.forward
        self.qkv, self.out = attention.c_attn.forward, attention.c_proj.forward
        self.up, self.act, self.down = mlp.c_fc.forward, mlp.act.forward, mlp.c_proj.forward

    def __call__(self, hidden: torch.Tensor, groups: Sequence[Group], index: int) -> torch.Tensor:
        rows = hidden.shape[0]
        q, k, v = self.qkv(self.norm_1(hidden)).view(rows, 3, self.heads, -1).unbind(1)
        attended = attend(q[:, :, None], k, v, groups, index, self.scaling)
        hidden = hidden + self.out(attended)
        return hidden + self.down(self.act(self.up(self.norm_2(hidden))))
