"""The coherence bench's verdict over played turns: clean-turn and action-followed rates, and
the clean-turn rate early and late in a long adventure (no model needed)."""

from __future__ import annotations

from aidungeon.bench.coherence import TABLE, Played, judge, tally
from aidungeon.bench.detectors import DETECTORS, VALIDATED

CLEAN = "You see a narrow corridor lit by torches."
FIRST_PERSON = "I see a narrow corridor lit by torches."


def played(number: int, text: str, action: str = "You look around.") -> Played:
    return Played("fantasy", "Bob", number, action, text, (), None)


def test_clean_turns_count_only_validated_glitches() -> None:
    assert "first_person" in VALIDATED
    report = judge([played(1, CLEAN, ""), played(2, FIRST_PERSON), played(3, CLEAN), played(4, CLEAN)])
    assert report["clean_turn_rate"] == 0.75
    assert report["detectors_per_100"]["first_person"] == 25.0
    assert report["validated"] == list(VALIDATED)


def test_the_strict_clean_rate_counts_every_detector_validated_or_not() -> None:
    ignored = played(3, "A cart rolls past.", "You open the door.")  # only the unvalidated ignored_action fires
    report = judge([played(1, CLEAN), played(2, FIRST_PERSON), ignored, played(4, CLEAN)])
    assert "ignored_action" not in VALIDATED
    assert report["clean_turn_rate"] == 0.75
    assert report["clean_turn_rate_every_detector"] == 0.5
    assert report["clean_turn_rate_every_detector_1_20"] == 0.5


def test_action_followed_counts_action_turns_only() -> None:
    turns = [played(1, "The wind howls.", ""), played(2, CLEAN), played(3, "A cart rolls past.", "You open the door.")]
    assert judge(turns)["action_followed_rate"] == 0.5


def test_long_play_reports_the_first_and_last_twenty_turns() -> None:
    # Clean early, first person from turn 81 on: the drift shows as the difference.
    turns = [played(n, CLEAN if n <= 80 else FIRST_PERSON) for n in range(1, 101)]
    report = judge(turns)
    assert report["clean_turn_rate_1_20"] == 1.0
    assert report["clean_turn_rate_81_100"] == 0.0
    assert judge(turns[:30])["clean_turn_rate_81_100"] is None


def test_the_report_lists_what_the_clean_turn_rate_rests_on() -> None:
    report = judge([played(1, CLEAN, ""), played(2, FIRST_PERSON)])
    assert report["counted_detectors"] == ", ".join(VALIDATED)
    assert set(report["unvalidated"]) == set(DETECTORS) - set(VALIDATED)
    assert report["action_followed_validated"] == ("ignored_action" in VALIDATED)


def test_the_cli_table_finds_every_row_in_a_report() -> None:
    turns = [played(n, CLEAN) for n in range(1, 4)]
    report = {**tally(turns).report(), **judge(turns)}
    assert set(TABLE) <= report.keys()
    assert report["clean_turn_rate_1_20"] == 1.0 and report["clean_turn_rate_81_100"] is None
