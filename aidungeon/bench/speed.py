"""`aidungeon bench`: measured speed of real turns on this machine.

It plays one scripted session (the same actions every time) through the real game pipeline
twice in one process: in normal mode (KV cache reused across turns) and in naive mode
(re-encode the whole window every turn, as AI Dungeon 2 and KoboldAI did), and reports
per-turn medians, their ratios, peak memory, startup time, and decode speed against the
memory-bandwidth bound measured in the same run. Ratios from one run are what to compare:
these machines are shared and noisy. `aidungeon bench coherence` lives in `coherence.py`. It
returns results and prints nothing: the CLI shows them.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidungeon.core.config import Config
from aidungeon.storage.paths import Paths, default_paths

ACTIONS = (
    "look around",
    "walk toward the old tower",
    "I draw my sword",
    'say "Who goes there?"',
    "search the ground for tracks",
    "climb the crumbling stairs",
    "open the iron door",
    "light a torch",
    "ask the stranger about the dragon",
    "follow the river north",
)
OPENING = (
    "You are Aria, a ranger of the northern woods. You carry a longbow, a hunting knife and a map "
    "your father drew before he vanished. For three days you have followed the tracks of a beast "
    "that no hunter in the village could name. Tonight the tracks lead to the ruins of an old tower, "
    "and you"
)


WARMUP_TURNS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", choices=["speed", "coherence"], default="speed", help="what to measure")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model spec (default: the configured model)")
    source.add_argument("--random-gpt2", choices=["124M", "355M"], help="a random-weight GPT-2 of that shape")
    parser.add_argument("--turns", type=int, default=None, help="turns per session (speed: 20, coherence: 30)")
    parser.add_argument("--adventures", type=int, default=6, help="coherence: scripted adventures to play")
    parser.add_argument("--context", type=int, default=1024, help="window in tokens (default 1024)")
    parser.add_argument("--script", help="coherence: the scripted adventures (default: those shipped in the package)")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument(
        "--unpacked", action="store_true", help="keep torch's own weight layout on the CPU (to measure packing)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


@dataclass
class TurnRecord:
    ttft_s: float
    turn_s: float
    prefill_tokens: int
    cache_hit: bool
    decode_tok_s: float
    # Every attempt gave unusable text (the game said so); its time is still a real turn's.
    stalled: bool = False


def speed_bench(args: argparse.Namespace, paths: Paths, *, started_at: float | None = None) -> dict[str, Any]:
    """Load the model, play the session normally and naively, and gather the figures.
    `started_at` is when the process started (wall clock), for systems without /proc."""
    from aidungeon.model import machine
    from aidungeon.model.loader import load_model

    spec = _model_spec(args, paths)
    loaded = load_model(spec, paths, device=args.device, dtype=args.dtype, pack=not args.unpacked)
    start = process_start_time() or started_at
    startup_s = time.time() - start if start is not None else 0.0
    turns = args.turns or 20
    config = (
        Config()
        .with_value("context_tokens", min(args.context, loaded.window))
        .with_value("max_new_tokens", args.max_new_tokens)
        .with_value("seed", 1234)
        .with_value("candidates", 1)
    )
    raw = args.random_gpt2 is not None
    # On the project's VM the same read measures ~35 or ~65 GB/s depending on the process's
    # history, so it is taken before and after the sessions, and the bound uses the faster.
    bandwidths = [machine.read_bandwidth(loaded.device)]
    # Untimed turns first: kernel selection, allocator growth and GPU clocks settle in them.
    play_session(loaded, config, WARMUP_TURNS, reuse_cache=True, raw=raw)
    normal = play_session(loaded, config, turns, reuse_cache=True, raw=raw)
    naive = play_session(loaded, config, turns, reuse_cache=False, raw=raw)
    bandwidths.append(machine.read_bandwidth(loaded.device))
    weight_bytes = machine.decode_weight_bytes(loaded.model)
    return summarize(
        loaded,
        normal,
        naive,
        weight_bytes=weight_bytes,
        bandwidths=bandwidths,
        head_bandwidth=machine.head_bandwidth(loaded.model),
        machine=machine.machine_description(loaded.device),
        startup_s=startup_s,
    )


def _model_spec(args: argparse.Namespace, paths: Paths) -> str:
    if args.random_gpt2 is None:
        from aidungeon.storage.config_file import load_config

        return args.model or load_config(paths.config_file).app.model
    from aidungeon.model.tiny import adventure_corpus, build_model_dir

    folder = paths.cache_dir / "bench" / f"random-gpt2-{args.random_gpt2}"
    if not (folder / "config.json").is_file():
        build_model_dir(folder, shape=args.random_gpt2, texts=adventure_corpus(200))
    return str(folder)


def play_session(loaded: Any, config: Config, turns: int, *, reuse_cache: bool, raw: bool) -> list[TurnRecord]:
    """Play the scripted actions; `raw` keeps uncleaned text (random weights write noise)."""
    from aidungeon.core.story import Story
    from aidungeon.game.events import STALLED, EventKind
    from aidungeon.game.rules import RuleSet
    from aidungeon.game.start import start_session
    from aidungeon.model.engine import Engine

    engine = Engine.for_model(loaded)
    with tempfile.TemporaryDirectory(prefix="aidungeon-bench-") as home:
        session = start_session(
            Story(opening=OPENING, title="bench", pin_opening=True),
            engine,
            config,
            default_paths({"AIDUNGEON_HOME": home}),
            save_name="bench",
            model_name=loaded.name,
            layout=loaded.layout,
            reuse_cache=reuse_cache,
            rules=RuleSet.RAW if raw else RuleSet.GUARD,
        )
        records = []
        for number in range(turns):
            start = time.perf_counter()
            events = list(session.handle(ACTIONS[number % len(ACTIONS)]))
            elapsed = time.perf_counter() - start
            errors = [e for e in events if e.kind is EventKind.ERROR]
            if any(e.data != STALLED for e in errors):
                raise RuntimeError(f"bench turn {number + 1} failed: {errors[0].text}")
            stats = session.turns.telemetry.stats
            assert stats is not None  # every turn drew at least once
            records.append(
                TurnRecord(
                    ttft_s=stats.ttft_s,
                    turn_s=elapsed,
                    prefill_tokens=stats.prefill_tokens,
                    cache_hit=stats.cache_hit,
                    decode_tok_s=stats.decode_tok_s,
                    stalled=bool(errors),
                )
            )
    return records


def summarize(
    loaded: Any,
    normal: list[TurnRecord],
    naive: list[TurnRecord],
    *,
    weight_bytes: int,
    bandwidths: list[float],
    head_bandwidth: float,
    machine: str,
    startup_s: float,
) -> dict[str, Any]:
    def median(records: list[TurnRecord], field: str) -> float:
        return statistics.median(getattr(r, field) for r in records)

    decode = median(normal, "decode_tok_s")
    bandwidth = max(bandwidths)
    bound = bandwidth / weight_bytes
    return {
        "model": loaded.name,
        "device": loaded.device,
        "dtype": loaded.dtype,
        "packed_layers": loaded.packed_layers,
        "machine": machine,
        "turns": len(normal),
        "median_ttft_s": median(normal, "ttft_s"),
        "median_turn_s": median(normal, "turn_s"),
        "naive_median_ttft_s": median(naive, "ttft_s"),
        "naive_median_turn_s": median(naive, "turn_s"),
        "ttft_ratio": median(normal, "ttft_s") / median(naive, "ttft_s"),
        "turn_ratio": median(normal, "turn_s") / median(naive, "turn_s"),
        "cache_hit_ratio": sum(r.cache_hit for r in normal) / len(normal),
        "stalled_turns": sum(r.stalled for r in normal),
        "median_prefill_tokens": median(normal, "prefill_tokens"),
        "naive_median_prefill_tokens": median(naive, "prefill_tokens"),
        "decode_tok_s": decode,
        "naive_decode_tok_s": median(naive, "decode_tok_s"),
        "decode_bound_tok_s": bound,
        "decode_fraction_of_bound": decode / bound,
        "weight_mb": weight_bytes / 2**20,
        "read_bandwidth_gb_s": bandwidth / 1e9,
        "read_bandwidth_samples_gb_s": [b / 1e9 for b in bandwidths],
        "head_bandwidth_gb_s": head_bandwidth / 1e9,
        "decode_fraction_of_head_bound": decode * weight_bytes / head_bandwidth,
        "peak_rss_mb": peak_rss_mb(),
        "startup_s": startup_s,
        "per_turn": [vars(r) for r in normal],
    }


def peak_rss_mb() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return usage / 2**20 if sys.platform == "darwin" else usage / 2**10


def process_start_time() -> float | None:
    """When this process started (wall clock), from /proc on Linux; None elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
