"""`aidungeon bench`: measured speed of real turns on this machine.

It plays one scripted session (the same actions every time) through the real game pipeline
twice in one process: in normal mode (KV cache reused across turns) and in naive mode
(re-encode the whole window every turn, as AI Dungeon 2 and KoboldAI did), and reports
per-turn medians, their ratios, peak memory, startup time, and decode speed against the
memory-bandwidth bound measured in the same run. Ratios from one run are what to compare:
these machines are shared and noisy. `aidungeon bench coherence` lives in `coherence.py`.

With `--concurrency` or `--best-of` it sweeps instead (`sweep_bench`): for each setting, that
many scripted sessions play at once through one engine, drawing that many candidates a turn,
and then the same sessions play one after another on a fresh engine, for the ratio. It
returns results and prints nothing: the CLI shows them.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    parser.add_argument(
        "kind", nargs="?", choices=["speed", "coherence", "serve"], default="speed", help="what to measure"
    )
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
    parser.add_argument(
        "--bf16-head",
        action="store_true",
        help="keep the output layer in bf16 where the model would take an 8-bit one (to measure it)",
    )
    parser.add_argument(
        "--concurrency", type=_int_list, help="sweep: sessions playing at once through one engine, e.g. 1,2,4,8"
    )
    parser.add_argument("--best-of", type=_int_list, help="sweep: candidates drawn a turn, e.g. 1,2,4")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers of 1 or more, got {text!r}")
    return values


@dataclass
class TurnRecord:
    ttft_s: float
    turn_s: float
    prefill_tokens: int
    cache_hit: bool
    decode_tok_s: float
    # Tokens this turn decoded, all candidates together (the sweep's throughput): a turn's
    # candidates decode in step, so its steps times its candidates.
    generated_tokens: int = 0
    # Every attempt gave unusable text (the game said so); its time is still a real turn's.
    stalled: bool = False
    # Attempts after the first (a loop or no usable text): the figures above are the last one's.
    retries: int = 0


def speed_bench(args: argparse.Namespace, paths: Paths, *, started_at: float | None = None) -> dict[str, Any]:
    """Load the model, play the session normally and naively, and gather the figures.
    `started_at` is when the process started (wall clock), for systems without /proc."""
    from aidungeon.model import machine
    from aidungeon.model.loader import load_model

    spec = _model_spec(args, paths)
    loaded = load_model(
        spec, paths, device=args.device, dtype=args.dtype, pack=not args.unpacked, int8_head=not args.bf16_head
    )
    if args.concurrency or args.best_of:
        return sweep_bench(loaded, args)
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


@contextmanager
def scripted_session(
    engine: Any, config: Config, *, name: str, model_name: str, layout: Any, reuse_cache: bool = True, raw: bool = False
) -> Iterator[Any]:
    """A game session on the bench's scripted opening, saving into a throwaway data folder; play
    it with `ACTIONS`. `raw` keeps uncleaned text (random weights write noise)."""
    from aidungeon.core.story import Story
    from aidungeon.game.rules import RuleSet
    from aidungeon.game.start import start_session

    with tempfile.TemporaryDirectory(prefix="aidungeon-bench-") as home:
        yield start_session(
            Story(opening=OPENING, title="bench", pin_opening=True),
            engine,
            config,
            default_paths({"AIDUNGEON_HOME": home}),
            save_name=name,
            model_name=model_name,
            layout=layout,
            reuse_cache=reuse_cache,
            rules=RuleSet.RAW if raw else RuleSet.GUARD,
        )


def play_session(
    loaded: Any,
    config: Config,
    turns: int,
    *,
    reuse_cache: bool,
    raw: bool,
    engine: Any = None,
    name: str = "bench",
) -> list[TurnRecord]:
    """Play the scripted actions (on `engine`, else a fresh one; `name` is the session);
    `raw` keeps uncleaned text (random weights write noise)."""
    from aidungeon.game.events import STALLED, EventKind
    from aidungeon.model.engine import Engine

    engine = engine or Engine.for_model(loaded)
    with scripted_session(
        engine, config, name=name, model_name=loaded.name, layout=loaded.layout, reuse_cache=reuse_cache, raw=raw
    ) as session:
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
                    retries=sum(e.kind is EventKind.RESTART for e in events),
                    generated_tokens=stats.new_tokens * session.turns.candidate_count(config),  # rows decode in step
                )
            )
    return records


def sweep_bench(loaded: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Every (concurrency, best-of) setting: sessions at once through one engine, then the same
    sessions one at a time, each on a fresh engine after one untimed warm-up turn."""
    from aidungeon.model import machine

    turns = args.turns or 6
    rows = []
    for best_of in args.best_of or [1]:
        for concurrency in args.concurrency or [1]:
            config = _bench_config(args, loaded).with_value("candidates", best_of)
            together, together_s, evictions = _play_sessions(loaded, config, turns, concurrency, args, at_once=True)
            apart, apart_s, _ = _play_sessions(loaded, config, turns, concurrency, args, at_once=False)
            rows.append(_sweep_row(concurrency, best_of, together, together_s, apart, apart_s, evictions))
    return {
        **_model_fields(loaded),
        "machine": machine.machine_description(loaded.device),
        "turns": turns,
        "sweep": rows,
    }


def _model_fields(loaded: Any) -> dict[str, Any]:
    """What model ran, and how: the first fields of every speed report."""
    return {
        "model": loaded.name,
        "device": loaded.device,
        "dtype": loaded.dtype,
        "packed_layers": loaded.packed_layers,
        "output_layer": _output_layer(loaded),
    }


def _output_layer(loaded: Any) -> str:
    """The output layer's kind (`PrepackedLinear`: bf16 or fp32 through oneDNN, `Int8Head`: 8-bit)."""
    head = loaded.model.get_output_embeddings()
    return type(head).__name__ if head is not None else "none"


def _bench_config(args: argparse.Namespace, loaded: Any) -> Config:
    return (
        Config()
        .with_value("context_tokens", min(args.context, loaded.window))
        .with_value("max_new_tokens", args.max_new_tokens)
        .with_value("seed", 1234)
    )


def _play_sessions(
    loaded: Any, config: Config, turns: int, sessions: int, args: argparse.Namespace, *, at_once: bool
) -> tuple[list[list[TurnRecord]], float, int]:
    """Play `sessions` scripted sessions at once (threads sharing one engine) or one after
    another; returns each session's turns, the wall time and the engine's evictions."""
    import threading

    from aidungeon.model.engine import Engine

    engine = Engine.for_model(loaded)
    raw = args.random_gpt2 is not None
    play_session(loaded, config, 1, reuse_cache=True, raw=raw, engine=engine, name="warmup")
    records: list[list[TurnRecord]] = [[] for _ in range(sessions)]
    errors: list[BaseException] = []

    def play(number: int) -> None:
        try:
            records[number] = play_session(
                loaded, config, turns, reuse_cache=True, raw=raw, engine=engine, name=f"player{number}"
            )
        except BaseException as err:  # re-raised below, in the bench's thread
            errors.append(err)

    # Every session plays in a thread of its own in both modes, so that the ratio compares
    # batching with no batching and nothing else. Sessions at once on fresh threads against
    # sessions on the bench's own thread also compared a fresh thread's first turns (torch
    # sets up a per-thread OpenMP team then) and read 0.88 at concurrency 1.
    threads = [threading.Thread(target=play, args=(number,)) for number in range(sessions)]
    # The previous setting's engine, its caches and sessions are garbage in reference cycles:
    # collected now, not by a collection that lands inside this setting's timed turns.
    gc.collect()
    start = time.perf_counter()
    if at_once:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for thread in threads:
            thread.start()
            thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return records, elapsed, engine.evictions


def _sweep_row(
    concurrency: int,
    best_of: int,
    together: list[list[TurnRecord]],
    together_s: float,
    apart: list[list[TurnRecord]],
    apart_s: float,
    evictions: int,
) -> dict[str, Any]:
    turns = [r for session in together for r in session]
    alone = [r for session in apart for r in session]
    generated = sum(r.generated_tokens for r in turns)
    aggregate = generated / together_s
    sequential = sum(r.generated_tokens for r in alone) / apart_s
    ttfts = sorted(r.ttft_s for r in turns)
    return {
        "concurrency": concurrency,
        "best_of": best_of,
        "aggregate_decode_tok_s": aggregate,
        "per_session_decode_tok_s": aggregate / concurrency,
        "median_ttft_s": statistics.median(ttfts),
        "p95_ttft_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
        "median_turn_s": statistics.median(r.turn_s for r in turns),
        "prefill_tokens_per_turn": statistics.mean(r.prefill_tokens for r in turns),
        "evictions": evictions,
        "ratio_to_sequential": aggregate / sequential,
        "sequential_decode_tok_s": sequential,
        "sequential_median_ttft_s": statistics.median(r.ttft_s for r in alone),
        "sequential_median_turn_s": statistics.median(r.turn_s for r in alone),
        "sequential_prefill_tokens_per_turn": statistics.mean(r.prefill_tokens for r in alone),
    }


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
        **_model_fields(loaded),
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
