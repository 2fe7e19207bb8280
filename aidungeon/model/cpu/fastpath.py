"""A lean one-token decode step for GPT-2 and Llama-family models (SmolLM2, Qwen2, Mistral) on the CPU.

At one token a step, transformers' general forward costs more than the layers' kernels: mask
building, cache bookkeeping, keyword plumbing and a module call per projection. SmolLM2 spends
20 ms a step where its kernels take about 9. This step runs the same modules and weights with
fewer ops:
- one 4-bit product for q, k and v, and one for gate and up, where those layers are 4-bit;
- attention over only the cache's used slots: a single new token attends to every earlier one,
  so it needs no mask;
- the cache written in place through its own `update`;
- modules called through their bound `forward`, skipping nn.Module's hook dispatch (the
  model has no hooks; a step makes some 200 module calls).

Prefill, batches (a growing cache) and other model families keep transformers' forward.
`tests/test_fastpath.py` checks that both give the same logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import StaticCache

from aidungeon.model.cpu.packing import Int4Linear

Projection = Callable[[torch.Tensor], Sequence[torch.Tensor]]

LLAMA_LIKE = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


class DecodeStep(Protocol):
    def __call__(self, token: torch.Tensor, position: int, cache: StaticCache) -> torch.Tensor:
        """Logits (1, vocab) for `token` (shape (1,)) at `position`, with `cache` holding every
        earlier position; the token's keys and values are added to the cache."""
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


def _attend(query: torch.Tensor, cache_layer: Any, position: int, scaling: float) -> torch.Tensor:
    """Attention of one query (1, kv_heads, group, dim) over the cache's first `position + 1` slots."""
    keys = cache_layer.keys[:, :, : position + 1]
    values = cache_layer.values[:, :, : position + 1]
    return F.scaled_dot_product_attention(query, keys, values, scale=scaling)


class LlamaStep:
    def __init__(self, model: Any) -> None:
        body = model.model
        self.embed, self.rotary, self.norm, self.head = body.embed_tokens, body.rotary_emb, body.norm, model.lm_head
        self.layers = [_LlamaLayer(layer, model.config) for layer in body.layers]

    def __call__(self, token: torch.Tensor, position: int, cache: StaticCache) -> torch.Tensor:
        hidden = self.embed(token)
        cos, sin = self.rotary(hidden, torch.tensor([[position]], device=hidden.device))
        for layer, cache_layer in zip(self.layers, cache.layers, strict=True):
            hidden = layer(hidden, cos[0], sin[0], cache_layer, position)
        return self.head(self.norm(hidden))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of heads (n, dim), as transformers' `apply_rotary_pos_emb` computes it."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[:, half:], x[:, :half]), dim=-1) * sin


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
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache_layer: Any, position: int
    ) -> torch.Tensor:
        q, k, v = self.qkv(self.input_norm(hidden))
        # Queries and keys rotate together: (heads + kv_heads, dim).
        rotated = _rotate(torch.cat((q, k), dim=-1).view(-1, self.head_dim), cos, sin)
        q, k = rotated[: self.heads], rotated[self.heads :]
        cache_layer.update(k.view(1, self.kv_heads, 1, -1), v.view(1, self.kv_heads, 1, -1))
        # Query heads that share a key/value head sit side by side: (1, kv_heads, group, dim).
        grouped = q.view(1, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
        attended = _attend(grouped, cache_layer, position, self.scaling)
        hidden = hidden + self.out(attended.reshape(1, self.heads * self.head_dim))
        gate, up = self.gate_up(self.post_norm(hidden))
        return hidden + self.down(self.act(gate) * up)


class Gpt2Step:
    def __init__(self, model: Any) -> None:
        body = model.transformer
        self.tokens, self.positions, self.norm, self.head = body.wte, body.wpe, body.ln_f, model.lm_head
        self.layers = [_Gpt2Layer(block, model.config) for block in body.h]

    def __call__(self, token: torch.Tensor, position: int, cache: StaticCache) -> torch.Tensor:
        hidden = self.tokens(token) + self.positions.weight[position]
        for layer, cache_layer in zip(self.layers, cache.layers, strict=True):
            hidden = layer(hidden, cache_layer, position)
        return self.head(self.norm(hidden))


class _Gpt2Layer:
    def __init__(self, block: Any, config: Any) -> None:
        attention, mlp = block.attn, block.mlp
        self.heads, self.embed_dim = config.num_attention_heads, config.hidden_size
        self.scaling = attention.scaling
        self.norm_1, self.norm_2 = block.ln_1.forward, block.ln_2.forward
        self.qkv, self.out = attention.c_attn.forward, attention.c_proj.forward
        self.up, self.act, self.down = mlp.c_fc.forward, mlp.act.forward, mlp.c_proj.forward

    def __call__(self, hidden: torch.Tensor, cache_layer: Any, position: int) -> torch.Tensor:
        q, k, v = self.qkv(self.norm_1(hidden)).view(3, 1, self.heads, 1, -1)
        cache_layer.update(k, v)
        attended = _attend(q, cache_layer, position, self.scaling)
        hidden = hidden + self.out(attended.reshape(1, self.embed_dim))
        return hidden + self.down(self.act(self.up(self.norm_2(hidden))))
