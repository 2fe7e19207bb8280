"""The 8-bit output layer (`packing.Int8Head`): logits close to the dense head's for 1..8 rows,
each row quantized on its own (a batch's other rows never change it), and a model with it
decoding through the lean step as through transformers' forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, StaticCache

from aidungeon.model.cpu.fastpath import Group, lean_decoder
from aidungeon.model.cpu.packing import Int4Linear, Int8Head, int8_head_supported, quantize_head

pytestmark = pytest.mark.skipif(not int8_head_supported(), reason="this torch has no fbgemm int8 kernels")

VOCAB, DIM = 1000, 64


def _weight(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(VOCAB, DIM, generator=generator) * 0.05


def _hidden(rows: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, DIM, generator=generator)


@pytest.mark.parametrize("rows", range(1, 9))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_head_logits_are_close_to_the_dense_heads(rows: int, dtype: torch.dtype) -> None:
    weight, hidden = _weight(), _hidden(rows).to(dtype)
    hidden[:, 3] *= 20  # an outlier dimension, as real hidden states have: inputs must keep their bits
    head = Int8Head(weight, None)
    got = head(hidden[None])  # (1, rows, dim), as transformers' forward calls it
    assert got.shape == (1, rows, VOCAB) and got.dtype == torch.float32
    got = got[0]
    want = hidden.float() @ weight.T
    # Only the weights are 8-bit: against the same 8-bit weights the inputs lose almost nothing.
    scales = weight.abs().amax(dim=1, keepdim=True) / 127
    same_weights = hidden.float() @ (torch.round(weight / scales) * scales).T
    assert float(((got - same_weights).norm(dim=-1) / same_weights.norm(dim=-1)).max()) < 1e-3
    assert float(((got - want).norm(dim=-1) / want.norm(dim=-1)).max()) < 0.01


def test_a_bias_is_added() -> None:
    weight, bias = _weight(), torch.linspace(-1, 1, VOCAB)
    hidden = _hidden(3)
    got = Int8Head(weight, bias)(hidden)
    without = Int8Head(weight, None)(hidden)
    torch.testing.assert_close(got - without, bias.expand(3, -1), atol=1e-4, rtol=1e-4)


def test_each_row_is_quantized_alone_whatever_else_is_in_the_batch() -> None:
    head = Int8Head(_weight(), None)
    hidden = _hidden(6)
    # A row a hundred times larger would widen a shared input range and coarsen the others.
    hidden[3] *= 100
    together = head(hidden)
    alone = torch.cat([head(hidden[i : i + 1]) for i in range(6)])
    assert torch.equal(together, alone)
    assert torch.equal(head(hidden[[0, 1, 2, 4, 5]]), together[[0, 1, 2, 4, 5]])


def test_the_head_reads_half_of_bf16s_bytes() -> None:
    head = Int8Head(_weight(), None)
    assert head.decode_bytes() < 0.55 * VOCAB * DIM * 2


def _teacher_forced_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits[0].float()


def test_a_trained_model_keeps_its_choices_with_the_8bit_head(trained_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(trained_model_dir).eval()
    ids = torch.randint(5, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(2))
    dense = _teacher_forced_logits(model, ids)
    table = model.get_input_embeddings().weight.detach().clone()
    assert quantize_head(model)
    assert isinstance(model.get_output_embeddings(), Int8Head)
    assert torch.equal(model.get_input_embeddings().weight, table)  # lookups keep the exact table
    quantized = _teacher_forced_logits(model, ids)
    agreement = float((dense.argmax(-1) == quantized.argmax(-1)).float().mean())
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(quantized, -1), torch.log_softmax(dense, -1), log_target=True, reduction="batchmean"
    )
    assert agreement >= 0.95
    assert float(kl) < 0.01


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_the_lean_step_with_the_8bit_head_gives_transformers_logits(trained_model_dir: Path, rows: int) -> None:
    model = AutoModelForCausalLM.from_pretrained(trained_model_dir).eval()
    assert quantize_head(model)
    step = lean_decoder(model)
    assert step is not None
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(5, model.config.vocab_size, (1, 5 + 2 * i), generator=generator) for i in range(rows)]
    tokens = torch.randint(5, model.config.vocab_size, (rows,), generator=generator)
    with torch.inference_mode():
        expected, groups = [], []
        for prompt, token in zip(prompts, tokens, strict=True):
            ours, theirs = (StaticCache(config=model.config, max_cache_len=32) for _ in range(2))
            model(input_ids=prompt, cache=ours, use_cache=True)
            model(input_ids=prompt, cache=theirs, use_cache=True)
            expected.append(model(input_ids=token.view(1, 1), cache=theirs, use_cache=True).logits[0, -1])
            groups.append(Group(ours, prefix=prompt.shape[1]))
        got = step(tokens, groups)
    assert got.shape == (rows, model.config.vocab_size)
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-4, rtol=1e-4)


def test_a_head_already_in_4_bits_keeps_them() -> None:
    codes = torch.randint(0, 16, (64, 32), dtype=torch.uint8)
    layer = Int4Linear(codes, torch.full((64, 1), 0.01), torch.full((64, 1), -0.08), None, torch.bfloat16)

    class Model(torch.nn.Module):
        def get_output_embeddings(self) -> torch.nn.Module:
            return layer

    assert not quantize_head(Model())
