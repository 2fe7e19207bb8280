"""Packed weight layouts compute what the plain layers compute: 4-bit repacking only for weights
on a 4-bit group grid, oneDNN prepacking for every other linear layer."""

from __future__ import annotations

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from aidungeon.model.cpu.packing import (
    GROUP,
    KERNEL_MAX_ROWS,
    Int4Linear,
    PrepackedLinear,
    fit_grid,
    int4_supported,
    onednn_bf16_supported,
    onednn_supported,
    repack_4bit,
)

needs_int4 = pytest.mark.skipif(not int4_supported(), reason="this torch has no CPU int4 kernel")
needs_onednn = pytest.mark.skipif(not onednn_supported(), reason="this torch has no oneDNN")


def grid_weight(out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    """Weights as a Q4_1 GGUF holds them: per group of 32, `min + step * q` with q in 0..15,
    each group using its full range (as llama.cpp's quantizer does), stored in fp16."""
    generator = torch.Generator().manual_seed(seed)
    groups = in_features // GROUP
    codes = torch.randint(0, 16, (out_features, groups, GROUP), generator=generator)
    codes[..., 0], codes[..., 1] = 0, 15
    step = torch.rand(out_features, groups, 1, generator=generator) * 0.01 + 1e-3
    lowest = -torch.rand(out_features, groups, 1, generator=generator) * 0.1
    return (lowest + step * codes).reshape(out_features, in_features).half().float()


def test_a_grid_weight_is_recovered_to_fp16_precision() -> None:
    weight = grid_weight(64, 128)
    fitted = fit_grid(weight)
    assert fitted is not None
    codes, step, lowest = fitted
    rebuilt = (codes.reshape(64, -1, GROUP).float() * step[..., None] + lowest[..., None]).reshape(64, 128)
    torch.testing.assert_close(rebuilt, weight, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(
    "weight",
    [
        torch.randn(64, 128),  # an ordinary float weight
        grid_weight(64, 96)[:, :90],  # inputs not a multiple of the group size
        grid_weight(64, 128).bfloat16().float() + torch.randn(64, 128) * 1e-3,  # near a grid, not on it
    ],
    ids=["float", "ragged", "off-grid"],
)
def test_weights_off_a_grid_are_refused(weight: torch.Tensor) -> None:
    assert fit_grid(weight) is None


def test_a_grid_beyond_the_sampled_rows_is_checked_in_full() -> None:
    weight = grid_weight(256, 64)
    weight[200] = torch.randn(64)
    assert fit_grid(weight) is None


@pytest.mark.parametrize("rows", [1, KERNEL_MAX_ROWS, KERNEL_MAX_ROWS + 1, 100])
@needs_int4
def test_int4_linear_matches_the_dense_layer(rows: int) -> None:
    weight = grid_weight(96, 128)
    dense = torch.nn.Linear(128, 96)
    dense.weight.data = weight
    packed = Int4Linear(*fit_grid(weight), dense.bias, torch.bfloat16)
    x = torch.randn(2, rows, 128)
    expected = dense(x).detach()
    with torch.inference_mode():
        got = packed(x.bfloat16()).float()
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.02)
    torch.testing.assert_close(packed.dequantized().float(), weight, atol=2e-3, rtol=1e-2)


@needs_int4
@pytest.mark.parametrize("rows", [1, 3, KERNEL_MAX_ROWS + 1])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("sizes", [(64, 128, 64), (64, 32, 96)], ids=["block-aligned", "unaligned"])
def test_stacked_layers_give_each_layers_output(rows: int, with_bias: bool, sizes: tuple[int, ...]) -> None:
    layers = []
    for number, (size, seed) in enumerate(zip(sizes, (0, 1, 3), strict=True)):  # seed 2 falls off the grid in fp16
        bias = torch.randn(size) if with_bias and number != 1 else None
        layers.append(Int4Linear(*fit_grid(grid_weight(size, 128, seed=seed)), bias, torch.bfloat16))
    x = torch.randn(rows, 128, dtype=torch.bfloat16)
    with torch.inference_mode():
        alone = [layer(x) for layer in layers]
        stacked = Int4Linear.stacked(layers)
        together = stacked(x).split(list(sizes), dim=-1)
        after = [layer(x) for layer in layers]
    for got, again, expected in zip(together, after, alone, strict=True):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
        torch.testing.assert_close(again, expected, atol=0, rtol=0)


@needs_int4
def test_stacked_layers_share_codes_that_are_block_aligned() -> None:
    layers = [
        Int4Linear(*fit_grid(grid_weight(size, 128, seed=seed)), None, torch.bfloat16)
        for size, seed in [(64, 0), (128, 1)]
    ]
    stacked = Int4Linear.stacked(layers)
    start = stacked.packed.data_ptr()
    end = start + stacked.packed.numel() * stacked.packed.element_size()
    for layer in layers:
        assert start <= layer.packed.data_ptr() < end
        assert layer.nibbles.data_ptr() >= stacked.nibbles.data_ptr()


@needs_int4
def test_decode_bytes_are_a_quarter_of_bf16_plus_scales() -> None:
    packed = Int4Linear(*fit_grid(grid_weight(96, 128)), None, torch.bfloat16)
    weight_bytes = 96 * 128 // 2
    scale_bytes = 96 * (128 // GROUP) * 2 * 2
    assert packed.decode_bytes() == weight_bytes + scale_bytes


@needs_int4
def test_repack_replaces_only_grid_layers_linear_and_conv1d() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 32), Conv1D(64, 32))
    model[0].weight.data = grid_weight(64, 64, seed=1)
    model[2].weight.data = grid_weight(64, 32, seed=2).t().contiguous()  # Conv1D holds (in, out)
    x = torch.randn(3, 64)
    expected = model(x).detach()
    assert repack_4bit(model, torch.bfloat16) == 2
    assert [type(m).__name__ for m in model] == ["Int4Linear", "Linear", "Int4Linear"]
    model.to(torch.bfloat16)
    with torch.inference_mode():
        got = model(x.bfloat16()).float()
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.05)


def snap_to_grid(weight: torch.Tensor) -> torch.Tensor:
    """Round a (out, in) weight onto a 4-bit group grid, as a Q4_1 quantizer does."""
    out_features, in_features = weight.shape
    groups = weight.reshape(out_features, -1, GROUP)
    lowest = groups.amin(-1, keepdim=True)
    step = (groups.amax(-1, keepdim=True) - lowest) / 15
    return (lowest + step * torch.round((groups - lowest) / step)).reshape(out_features, in_features)


@pytest.fixture(scope="module")
def grid_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny GPT-2 with its layers snapped to a 4-bit grid and saved in fp16, like a converted GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for module in model.modules():
        if isinstance(module, Conv1D):
            module.weight.data = snap_to_grid(module.weight.data.t()).t().contiguous()
    folder = tmp_path_factory.mktemp("grid-model")
    model.to(torch.float16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


@needs_int4
def test_the_loader_repacks_a_grid_model_for_bf16_on_the_cpu(grid_model_dir, tmp_path) -> None:
    from aidungeon.model.loader import load_model
    from aidungeon.storage.paths import default_paths

    paths = default_paths({"AIDUNGEON_HOME": str(tmp_path)})
    packed = load_model(str(grid_model_dir), paths, device="cpu", dtype="bfloat16")
    full = load_model(str(grid_model_dir), paths, device="cpu", dtype="float32")
    layers = packed.model.config.n_layer * 4  # c_attn, c_proj, c_fc, mlp c_proj
    assert packed.packed_layers == layers
    assert (packed.dtype, full.dtype, full.packed_layers) == ("bfloat16", "float32", 0)
    ids = torch.tensor([packed.tokenizer.encode("You are a knight in a ruined castle.")])
    with torch.inference_mode():
        got = torch.log_softmax(packed.model(input_ids=ids).logits.float(), -1)
        expected = torch.log_softmax(full.model(input_ids=ids).logits.float(), -1)
    torch.testing.assert_close(got, expected, atol=0.1, rtol=0.05)
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 64), (2, 7, 64), (40, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_prepacked_linear_matches_f_linear(dtype, shape, bias) -> None:
    if dtype == torch.bfloat16 and not onednn_bf16_supported():
        pytest.skip("oneDNN prepacks bf16 only with AVX-512 or AVX-NE-CONVERT")
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 48, bias=bias).to(dtype)
    x = torch.randn(shape, dtype=dtype)
    packed = PrepackedLinear(dense.weight, dense.bias)
    with torch.inference_mode():
        got, expected = packed(x), dense(x)
    assert got.shape == expected.shape and got.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


@needs_onednn
def test_the_loader_prepacks_every_layer_and_the_logits_stay(tiny_model_dir, tmp_path) -> None:
    from aidungeon.model.loader import load_model
    from aidungeon.storage.paths import default_paths

    paths = default_paths({"AIDUNGEON_HOME": str(tmp_path)})
    packed = load_model(str(tiny_model_dir), paths, device="cpu", dtype="float32")
    plain = load_model(str(tiny_model_dir), paths, device="cpu", dtype="float32", pack=False)
    kinds = {type(m).__name__ for m in packed.model.modules()}
    assert "PrepackedLinear" in kinds and "Conv1D" not in kinds
    assert isinstance(packed.model.get_output_embeddings(), PrepackedLinear)
    assert "PrepackedLinear" not in {type(m).__name__ for m in plain.model.modules()}
    ids = torch.tensor([packed.tokenizer.encode("You are a knight in a ruined castle.")])
    with torch.inference_mode():
        torch.testing.assert_close(packed.model(input_ids=ids).logits, plain.model(input_ids=ids).logits)
