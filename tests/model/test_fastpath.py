"""The lean decode step gives the logits and cache that transformers' forward gives, for GPT-2 and
Llama-family models (Llama, Qwen2 with its biases, Mistral) in every layout the loader makes
(fp32 prepacked, bf16 with 4-bit layers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_packing import snap_to_grid  # pytest puts tests/ on the path
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    StaticCache,
)
from transformers.pytorch_utils import Conv1D

from aidungeon.core.config import Sampling
from aidungeon.model.cpu.fastpath import Gpt2Step, Group, LlamaStep, lean_decoder
from aidungeon.model.cpu.packing import Int4Linear, int4_supported
from aidungeon.model.engine import Engine
from aidungeon.model.loader import LoadedModel, load_model
from aidungeon.storage.paths import default_paths

PREFILL = 20
STEPS = 8
GREEDY = Sampling(temperature=0.0, max_new_tokens=12)


def _snap_linears(model: torch.nn.Module) -> None:
    """Put every projection on a 4-bit grid, as a converted Q4 GGUF has it."""
    for module in model.modules():
        if isinstance(module, Conv1D):
            module.weight.data = snap_to_grid(module.weight.data.t()).t().contiguous()
        elif isinstance(module, torch.nn.Linear) and module.weight.shape[1] % 32 == 0:
            module.weight.data = snap_to_grid(module.weight.data)


FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def llama_dir(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama-family model (grouped-query attention, tied head; Qwen2's q/k/v have
    biases) on a 4-bit grid, saved in fp16."""
    config_class, model_class = FAMILIES[request.param]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        sliding_window=None,
    )
    torch.manual_seed(0)
    model = model_class(config)
    with torch.no_grad():
        for module in model.modules():  # random init leaves biases at zero: make them count
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_()
    _snap_linears(model)
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model.to(torch.float16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def grid_gpt2_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    _snap_linears(model)
    folder = tmp_path_factory.mktemp("grid-gpt2")
    model.to(torch.float16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def _load(folder: Path, dtype: str, tmp_path: Path) -> LoadedModel:
    return load_model(str(folder), default_paths({"AIDUNGEON_HOME": str(tmp_path)}), device="cpu", dtype=dtype)


def _decode_both_ways(loaded: LoadedModel) -> tuple[list[torch.Tensor], list[torch.Tensor], StaticCache, StaticCache]:
    """Prefill, then feed the same tokens through transformers' forward and the lean step."""
    model, step = loaded.model, loaded.decoder
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (1, PREFILL + STEPS), generator=generator)
    caches = [StaticCache(config=model.config, max_cache_len=64) for _ in range(2)]
    expected, got = [], []
    with torch.inference_mode():
        for cache in caches:
            model(input_ids=ids[:, :PREFILL], cache=cache, use_cache=True)
        for position in range(PREFILL, PREFILL + STEPS):
            token = ids[:, position]
            out = model(input_ids=token[:, None], cache=caches[0], use_cache=True)
            expected.append(out.logits[:, -1].float())
            got.append(step(token, [Group(caches[1], prefix=position)]).float())
    return expected, got, caches[0], caches[1]


def _assert_same_decoding(loaded: LoadedModel, *, tolerance: float) -> None:
    expected, got, reference_cache, lean_cache = _decode_both_ways(loaded)
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape
        torch.testing.assert_close(have, want, atol=tolerance, rtol=tolerance)
        assert torch.equal(have.argmax(-1), want.argmax(-1))
    assert int(reference_cache.get_seq_length()) == PREFILL + STEPS
    for mine, theirs in zip(lean_cache.layers, reference_cache.layers, strict=True):
        torch.testing.assert_close(mine.keys.float(), theirs.keys.float(), atol=tolerance, rtol=tolerance)
        torch.testing.assert_close(mine.values.float(), theirs.values.float(), atol=tolerance, rtol=tolerance)


def test_gpt2_fp32_decodes_as_transformers_does(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = _load(tiny_model_dir, "float32", tmp_path)
    assert isinstance(loaded.decoder, Gpt2Step)
    _assert_same_decoding(loaded, tolerance=1e-4)


def test_llama_models_in_fp32_decode_as_transformers_does(llama_dir: Path, tmp_path: Path) -> None:
    loaded = _load(llama_dir, "float32", tmp_path)
    assert isinstance(loaded.decoder, LlamaStep)
    _assert_same_decoding(loaded, tolerance=1e-4)


needs_int4 = pytest.mark.skipif(not int4_supported(), reason="this torch has no CPU int4 kernel")


@needs_int4
def test_4bit_llama_models_decode_as_transformers_does(llama_dir: Path, tmp_path: Path) -> None:
    loaded = _load(llama_dir, "bfloat16", tmp_path)
    assert loaded.packed_layers > 0 and isinstance(loaded.decoder, LlamaStep)
    # bf16 attention sums in a different order over the used slots than over the masked cache.
    _assert_same_decoding(loaded, tolerance=0.05)


@needs_int4
def test_4bit_gpt2_decodes_as_transformers_does(grid_gpt2_dir: Path, tmp_path: Path) -> None:
    loaded = _load(grid_gpt2_dir, "bfloat16", tmp_path)
    assert loaded.packed_layers > 0 and isinstance(loaded.decoder, Gpt2Step)
    _assert_same_decoding(loaded, tolerance=0.05)


@needs_int4
def test_llama_4bit_projections_run_as_one_product(llama_dir: Path, tmp_path: Path) -> None:
    loaded = _load(llama_dir, "bfloat16", tmp_path)
    calls = 0
    kernel = torch._weight_int4pack_mm_for_cpu

    def counting(*args: object) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return kernel(*args)

    layers = loaded.model.config.num_hidden_layers
    cache = StaticCache(config=loaded.model.config, max_cache_len=64)
    with torch.inference_mode():
        loaded.model(input_ids=torch.tensor([[5, 6, 7]]), cache=cache, use_cache=True)
        torch._weight_int4pack_mm_for_cpu = counting
        try:
            loaded.decoder(torch.tensor([8]), [Group(cache, prefix=3)])
        finally:
            torch._weight_int4pack_mm_for_cpu = kernel
    # q/k/v stacked, o, gate/up stacked, down: 4 products a layer instead of 7, and the head.
    assert isinstance(loaded.model.lm_head, Int4Linear)
    assert calls == 4 * layers + 1


def test_other_models_keep_transformers_forward() -> None:
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, add_cross_attention=True)
    assert lean_decoder(GPT2LMHeadModel(config)) is None
    windowed = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    assert windowed.sliding_window is not None and lean_decoder(MistralForCausalLM(windowed)) is None
    assert lean_decoder(torch.nn.Linear(2, 2)) is None


def test_unpacked_loading_keeps_transformers_forward(tiny_model_dir: Path, tmp_path: Path) -> None:
    paths = default_paths({"AIDUNGEON_HOME": str(tmp_path)})
    assert load_model(str(tiny_model_dir), paths, device="cpu", pack=False).decoder is None


def test_the_engine_generates_the_same_text_with_the_lean_step(trained_model_dir: Path, tmp_path: Path) -> None:
    loaded = _load(trained_model_dir, "float32", tmp_path)
    lean = Engine.for_model(loaded)
    plain = Engine(loaded.model, loaded.tokenizer, window=loaded.window)
    assert lean.step is not None and plain.step is None
    prompt = lean.encode("You stand at the gate of the old keep. The guard looks at you.")
    (first,) = lean.generate(prompt, GREEDY).run()
    assert first.token_ids == plain.generate(prompt, GREEDY).run()[0].token_ids
    # The next turn reuses the cache the lean step filled.
    follow = prompt + first.token_ids + lean.encode(" You ask about the tower.")
    again = lean.generate(follow, GREEDY)
    (second,) = again.run()
    (expected,) = plain.generate(follow, GREEDY).run()
    assert again.stats.cache_hit and second.token_ids == expected.token_ids
    assert second.mean_logprob == pytest.approx(expected.mean_logprob, abs=1e-5)
