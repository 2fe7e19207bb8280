"""`aidungeon bench`: runs the benchmarks in `aidungeon.bench` and shows their results.

The benchmarks return figures and print nothing; this module prints them, as a table or as JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from aidungeon.game.events import Table
from aidungeon.storage.paths import Paths


def run_bench(args: argparse.Namespace, paths: Paths, console: Any, *, started_at: float) -> int:
    """Run the benchmark `args.kind` names and print its results; `started_at` is when the process started."""
    if args.kind == "serve":
        from aidungeon.bench.serve import serve_bench
        from aidungeon.cli.models import absolute_if_local, session_config

        model = args.model or session_config(args, paths).app.model
        results = serve_bench(args, absolute_if_local(model))
        show = print_serve
    elif args.kind == "coherence":
        from aidungeon.bench.coherence import run_coherence

        progress = None if args.json else lambda line: console.print(line, markup=False)
        results = run_coherence(args, paths, progress=progress)
        show = print_coherence
    else:
        from aidungeon.bench.speed import speed_bench

        results = speed_bench(args, paths, started_at=started_at)
        show = print_sweep if "sweep" in results else print_speed
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        show(results, console)
    return 0


def print_speed(results: dict[str, Any], console: Any) -> None:
    from aidungeon.ui.terminal.render import print_table

    packed = f", {results['packed_layers']} layers in 4 bits" if results["packed_layers"] else ""
    console.print(f"{results['model']} on {results['device']} ({results['dtype']}{packed}), {results['machine']}")
    rows = tuple(
        (
            str(number),
            f"{record['ttft_s']:.3f}",
            f"{record['turn_s']:.2f}",
            str(record["prefill_tokens"]),
            "yes" if record["cache_hit"] else "no",
            f"{record['decode_tok_s']:.1f}",
        )
        for number, record in enumerate(results["per_turn"], start=1)
    )
    columns = ("turn", "ttft s", "turn s", "prefill tokens", "cache hit", "decode tok/s")
    print_table(console, Table(f"Per turn, {results['turns']} turns", columns, rows))
    lines = [
        f"median time to first token {results['median_ttft_s']:.3f} s "
        f"(naive {results['naive_median_ttft_s']:.3f} s, ratio {results['ttft_ratio']:.3f})",
        f"median turn {results['median_turn_s']:.2f} s (naive {results['naive_median_turn_s']:.2f} s, "
        f"ratio {results['turn_ratio']:.3f})",
        f"cache hits {results['cache_hit_ratio']:.0%}, stalled turns {results['stalled_turns']}",
        f"decode {results['decode_tok_s']:.1f} tok/s, bound {results['decode_bound_tok_s']:.1f} tok/s "
        f"({results['weight_mb']:.0f} MB of weights at {results['read_bandwidth_gb_s']:.1f} GB/s, the faster of "
        f"{' and '.join(f'{b:.1f}' for b in results['read_bandwidth_samples_gb_s'])}): "
        f"{results['decode_fraction_of_bound']:.2f} of the bound",
        f"the LM head's one-row product reads at {results['head_bandwidth_gb_s']:.1f} GB/s: decode is "
        f"{results['decode_fraction_of_head_bound']:.2f} of reading every weight at that speed",
        f"peak RSS {results['peak_rss_mb']:.0f} MB, startup {results['startup_s']:.2f} s",
    ]
    for line in lines:
        console.print(line, markup=False)


def print_sweep(results: dict[str, Any], console: Any) -> None:
    from aidungeon.ui.terminal.render import print_table

    console.print(f"{results['model']} on {results['device']} ({results['dtype']}), {results['machine']}")
    columns = (
        "sessions",
        "best of",
        "decode tok/s",
        "per session",
        "ttft median / p95 s",
        "turn s",
        "prefill/turn",
        "evictions",
        "vs one at a time",
    )
    rows = tuple(
        (
            str(row["concurrency"]),
            str(row["best_of"]),
            f"{row['aggregate_decode_tok_s']:.1f}",
            f"{row['per_session_decode_tok_s']:.1f}",
            f"{row['median_ttft_s']:.3f} / {row['p95_ttft_s']:.3f}",
            f"{row['median_turn_s']:.2f}",
            f"{row['prefill_tokens_per_turn']:.0f}",
            str(row["evictions"]),
            f"{row['ratio_to_sequential']:.2f}x",
        )
        for row in results["sweep"]
    )
    print_table(console, Table(f"Sessions at once, {results['turns']} turns each", columns, rows))


def print_serve(results: dict[str, Any], console: Any) -> None:
    from aidungeon.ui.terminal.render import print_table

    columns = ("players", "turns", "ttft p50 / p95 s", "turn p50 s", "shown tok/s", "503s", "errors")
    for mode, points in results["runs"].items():
        rows = tuple(
            (
                str(p["players"]),
                str(p["turns"]),
                f"{p['ttft_p50_s']:.3f} / {p['ttft_p95_s']:.3f}",
                f"{p['turn_p50_s']:.2f}",
                f"{p['tok_s']:.1f}",
                str(p["busy_503"]),
                str(p["error_count"]),
            )
            for p in points
        )
        title = f"{results['model']}, {mode}: {results['turns']} turns a player, think {results['think_s']:.1f} s"
        print_table(console, Table(title, columns, rows))
    for mode, held in results["held"].items():
        console.print(f"{mode}: {held} players held at p95 time to first token <= 1 s", markup=False)
    if "held_ratio" in results:
        console.print(f"batched holds {results['held_ratio']:.1f}x the players of one turn at a time", markup=False)
    for mode, points in results["runs"].items():
        for error in (e for p in points for e in p["errors"]):
            console.print(f"{mode}: {error}", markup=False)


def print_coherence(results: dict[str, Any], console: Any) -> None:
    from aidungeon.bench.coherence import TABLE
    from aidungeon.ui.terminal.render import print_table

    rows = tuple((name, _fmt(results["guard"][name]), _fmt(results["baseline"][name])) for name in TABLE)
    title = f"Coherence, {results['model']} on {results['device']}: rates 0-1, guard counts per 100 turns"
    print_table(console, Table(title, ("measure", "guard", "baseline (AI Dungeon 2 rules)"), rows))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
