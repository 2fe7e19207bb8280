"""`aidungeon bench serve` against a live server: the counts add up and the verdict follows them."""

from __future__ import annotations

import argparse

import pytest

from aidungeon.bench.serve import _held, serve_bench
from tests.server.conftest import Server

pytestmark = pytest.mark.server


def test_the_bench_drives_players_and_counts_every_turn(live: tuple[str, Server]) -> None:
    url, _made = live
    args = argparse.Namespace(url=url, token=None, players=[1, 3], turns=2, think=0.05)
    results = serve_bench(args, "fake")
    points = results["runs"]["as is"]
    assert [p["players"] for p in points] == [1, 3]
    assert [p["turns"] for p in points] == [2, 6]
    for point in points:
        assert point["error_count"] == 0
        assert 0 < point["ttft_p50_s"] <= point["ttft_p95_s"] < point["turn_p50_s"] * 10
        assert point["tok_s"] > 0
    assert results["held"]["as is"] == 3


def test_players_held_is_the_largest_clean_point_within_the_limit() -> None:
    points = [
        {"players": 1, "ttft_p95_s": 0.2, "error_count": 0, "turns": 5},
        {"players": 4, "ttft_p95_s": 0.9, "error_count": 0, "turns": 20},
        {"players": 8, "ttft_p95_s": 1.4, "error_count": 0, "turns": 40},
        {"players": 16, "ttft_p95_s": 0.5, "error_count": 2, "turns": 70},
    ]
    assert _held(points) == 4
