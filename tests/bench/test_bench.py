"""`aidungeon bench` on the tiny models: the figures exist, are consistent, and the JSON has its keys.

Speed and quality targets are measured by the benchmark itself (benchmarks/RESULTS.md), never
asserted here: these checks only make sure the benchmark measures what it says.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from aidungeon.bench.coherence import METRICS, SCRIPT, load_script, play_adventure, run_coherence
from aidungeon.bench.speed import speed_bench
from aidungeon.cli.app import build_parser
from aidungeon.core.config import Config
from aidungeon.game.rules import RuleSet
from aidungeon.model.machine import head_bandwidth
from aidungeon.storage.paths import default_paths

SPEED_KEYS = {
    "model",
    "device",
    "dtype",
    "turns",
    "median_ttft_s",
    "median_turn_s",
    "naive_median_ttft_s",
    "naive_median_turn_s",
    "cache_hit_ratio",
    "decode_tok_s",
    "decode_bound_tok_s",
    "peak_rss_mb",
    "startup_s",
}


def test_speed_bench_reports_every_figure(trained_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["bench", "--model", str(trained_model_dir), "--turns", "4", "--max-new-tokens", "8"]
    )
    results = speed_bench(args, default_paths())
    assert capsys.readouterr().out == "", "the benchmark returns its results; the CLI prints them"
    assert results.keys() >= SPEED_KEYS
    assert results["turns"] == 4 and len(results["per_turn"]) == 4
    # The first timed turn starts a fresh engine: a miss. Later ones reuse the cache, and so does
    # a retried or stalled turn's last attempt, which is the one its figures describe.
    first, *later = results["per_turn"]
    assert first["cache_hit"] is (first["retries"] > 0)
    assert all(turn["retries"] > 0 for turn in results["per_turn"] if turn["stalled"])
    assert all(turn["cache_hit"] for turn in later)
    assert results["median_prefill_tokens"] < results["naive_median_prefill_tokens"]
    assert results["decode_bound_tok_s"] > 0 and results["peak_rss_mb"] > 0 and results["startup_s"] > 0
    samples = results["read_bandwidth_samples_gb_s"]
    assert len(samples) == 2 and results["read_bandwidth_gb_s"] == max(samples)
    assert results["head_bandwidth_gb_s"] > 0 and results["decode_fraction_of_head_bound"] > 0
    # The tiny model's text often fails the guard: such turns are counted, not fatal.
    assert results["stalled_turns"] == sum(turn["stalled"] for turn in results["per_turn"])


def test_coherence_bench_reports_both_modes(trained_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["bench", "coherence", "--model", str(trained_model_dir), "--adventures", "1", "--turns", "3", "--json"]
    )
    heard: list[str] = []
    results = run_coherence(args, default_paths(), progress=heard.append)
    assert capsys.readouterr().out == "", "the benchmark returns its results; the CLI prints them"
    assert [line.split(":")[0] for line in heard] == ["guard", "baseline"]
    json.dumps(results)  # the CLI's --json prints exactly this
    for mode in ("guard", "baseline"):
        assert set(METRICS) | {"turns"} <= results[mode].keys()
        assert results[mode]["turns"] == 3
        assert all(0 <= results[mode][name] <= 100 * 60 for name in METRICS)
    # The guard never shows a player turn or a cut-off sentence.
    assert results["guard"]["hallucinated_player_turns"] == 0
    assert results["guard"]["fragments"] == 0


def test_each_turn_is_judged_against_the_results_shown_before_it(trained_model_dir: Path) -> None:
    from aidungeon.model.loader import load_model

    loaded = load_model(str(trained_model_dir), default_paths(), device="cpu")
    script = load_script(SCRIPT)
    config = Config().with_value("max_new_tokens", 16)
    played = play_adventure(
        loaded, config, script["adventures"][0], actions=script["actions"], turns=8, rules=RuleSet.GUARD
    )
    shown = [turn.text for turn in played]
    assert sum(bool(text) for text in shown) >= 2, f"the tiny model should answer some turns: {shown}"
    for number, turn in enumerate(played):
        assert list(turn.recent) == [text for text in shown[:number] if text][-6:]


def test_the_benchmarks_do_not_import_the_cli() -> None:
    import subprocess
    import sys

    code = (
        "import sys, aidungeon.bench.speed, aidungeon.bench.coherence; "
        "assert not [m for m in sys.modules if m.startswith('aidungeon.cli')], 'bench imports cli'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_decode_reads_the_head_once_whether_tied_or_prepacked() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from aidungeon.model.cpu.packing import onednn_supported, prepack_dense
    from aidungeon.model.machine import decode_weight_bytes

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    every = sum(p.numel() * p.element_size() for p in model.parameters())
    assert decode_weight_bytes(model) == every  # the tied table is the head: read whole, once
    if onednn_supported():
        assert prepack_dense(model) == 5  # attention in and out, MLP up and down, the head
        # The packed copies are read (biases stay parameters), the table only looked up.
        assert decode_weight_bytes(model) == every


class _SlowHead(torch.nn.Module):
    """A head that reads 1 MB (by its own account) in at least 20 ms."""

    in_features = 8

    def decode_bytes(self) -> int:
        return 10**6

    def forward(self, row: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)
        return row


class _ModelWithSlowHead(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(4, 8)
        self.head = _SlowHead()

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head


def test_head_bandwidth_times_the_heads_own_bytes() -> None:
    bandwidth = head_bandwidth(_ModelWithSlowHead(), repeats=2)
    assert 10**6 / 0.2 < bandwidth <= 10**6 / 0.02


SWEEP_KEYS = {
    "concurrency",
    "best_of",
    "aggregate_decode_tok_s",
    "per_session_decode_tok_s",
    "median_ttft_s",
    "p95_ttft_s",
    "median_turn_s",
    "prefill_tokens_per_turn",
    "evictions",
    "ratio_to_sequential",
}


def test_the_sweep_reports_every_setting(trained_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = ["--concurrency", "1,2", "--best-of", "1,2"]
    args = build_parser().parse_args(
        ["bench", "--model", str(trained_model_dir), "--turns", "2", "--max-new-tokens", "6", *sweep]
    )
    results = speed_bench(args, default_paths())
    assert capsys.readouterr().out == ""
    settings = [(row["concurrency"], row["best_of"]) for row in results["sweep"]]
    assert settings == [(1, 1), (2, 1), (1, 2), (2, 2)]
    for row in results["sweep"]:
        assert row.keys() >= SWEEP_KEYS
        assert row["aggregate_decode_tok_s"] == pytest.approx(row["per_session_decode_tok_s"] * row["concurrency"])
        assert 0 < row["median_ttft_s"] <= row["p95_ttft_s"] and row["ratio_to_sequential"] > 0
        assert row["evictions"] == 0
    json.dumps(results)


@pytest.mark.parametrize("bad", ["0", "a,b", ""])
def test_the_sweep_refuses_settings_that_are_not_counts(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--concurrency", bad])
    assert "expected numbers" in capsys.readouterr().err
