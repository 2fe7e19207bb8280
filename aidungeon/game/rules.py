"""The rules a turn plays by, as strategies chosen with `RuleSet`.

`GUARD` is the game's own: stop rules while generating, `cleanup.pipeline`, candidates ranked
by `guard.rank`, and automatic retries when the best result loops. `BASELINE` is AI Dungeon 2's
(cut at ">" and at the last fragment, nothing else), for the coherence benchmark. `RAW` keeps
the text exactly as generated, for random-weight speed runs. The turn pipeline (`turn.py`)
asks the rules; the rules know nothing of engines or saves.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from aidungeon.core import cleanup, guard
from aidungeon.core.guard import Scored
from aidungeon.model.protocol import StopRule

# (raw text, cleaned text, mean log-probability) per candidate, in drawing order.
Drafts = Sequence[tuple[str, str, float]]


class RuleSet(enum.Enum):
    GUARD = "guard"
    BASELINE = "baseline"
    RAW = "raw"


class Rules(Protocol):
    # Whether a best result that loops back on recent ones is drawn again with livelier sampling.
    retries_loops: bool
    ranks_by_action: bool  # may put the candidate that answers the action first (turn.py)

    def stop_rule(self, player_name: str | None) -> StopRule | None: ...

    def clean(self, text: str, *, recent: Sequence[str], player_name: str | None) -> str: ...

    def rank(self, drafts: Drafts, *, recent: Sequence[str], player_name: str | None) -> list[Scored]:
        """Every draft scored, in the order the player should get them (best first)."""
        ...


class GuardRules:
    retries_loops = True
    ranks_by_action = True

    def stop_rule(self, player_name: str | None) -> StopRule:
        """Stop generating where the model starts a player turn or emits a special token."""

        def stop(text: str) -> int | None:
            cuts = [cleanup.find_player_turn(text, player_name=player_name), cleanup.find_special_token(text)]
            found = [c for c in cuts if c is not None]
            return min(found) if found else None

        return stop

    def clean(self, text: str, *, recent: Sequence[str], player_name: str | None) -> str:
        return cleanup.pipeline(text, recent=recent, player_name=player_name)

    def rank(self, drafts: Drafts, *, recent: Sequence[str], player_name: str | None) -> list[Scored]:
        return guard.rank(drafts, recent=recent, player_name=player_name)


class _InDrawingOrder:
    """Rules without ranking: candidates keep their drawing order (scored only for the record)."""

    retries_loops = False
    ranks_by_action = False

    def stop_rule(self, player_name: str | None) -> StopRule | None:
        return None

    def rank(self, drafts: Drafts, *, recent: Sequence[str], player_name: str | None) -> list[Scored]:
        scored = guard.rank(drafts, recent=recent, player_name=player_name)
        return sorted(scored, key=lambda s: list(drafts).index((s.raw, s.text, s.mean_logprob)))


class BaselineRules(_InDrawingOrder):
    def clean(self, text: str, *, recent: Sequence[str], player_name: str | None) -> str:
        return cleanup.aidungeon2_rules(text)


class RawRules(_InDrawingOrder):
    def clean(self, text: str, *, recent: Sequence[str], player_name: str | None) -> str:
        # Exactly as generated (whitespace too), so it reads back as the same ids.
        return text if text.strip() else ""


def rules_for(rule_set: RuleSet) -> Rules:
    strategies: dict[RuleSet, Rules] = {
        RuleSet.GUARD: GuardRules(),
        RuleSet.BASELINE: BaselineRules(),
        RuleSet.RAW: RawRules(),
    }
    return strategies[rule_set]
