"""`aidungeon bench coherence`: how often players would see the AI go wrong, with and without the guard.

It plays K scripted adventures of T turns (settings, seeds and actions from
`aidungeon/bench/data/coherence.toml`) twice: with the game's guard (cleanup, stop rules, ranked
candidates, loop retries) and with AI Dungeon 2's rules as the baseline (temperature 0.4,
top_k 40, no repetition penalty, cut at ">" and the trailing sentence). Every shown result is
checked with the same detectors the guard uses, and the counts are reported per 100 turns. It
returns the report and prints nothing: the CLI shows it.
"""

from __future__ import annotations

import argparse
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidungeon.core import cleanup, guard
from aidungeon.core.config import Config
from aidungeon.core.errors import ConfigError
from aidungeon.game.rules import RuleSet
from aidungeon.storage.paths import Paths, default_paths

SCRIPT = Path(__file__).resolve().parent / "data" / "coherence.toml"
METRICS = ("hallucinated_player_turns", "fragments", "repeats", "loops", "junk", "empty")


@dataclass
class Tally:
    """Counts over every turn of one mode."""

    turns: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METRICS, 0))
    texts: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def add(self, shown: str, recent: list[str], logprob: float | None, player_name: str | None) -> None:
        self.turns += 1
        if not shown:
            self.counts["empty"] += 1
            return
        self.texts.append(shown)
        if logprob is not None:
            self.logprobs.append(logprob)
        self.counts["hallucinated_player_turns"] += cleanup.find_player_turn(shown, player_name=player_name) is not None
        self.counts["fragments"] += cleanup.is_fragment(shown)
        self.counts["repeats"] += len(cleanup.repeated_sentences(shown, recent))
        self.counts["loops"] += guard.is_loop(shown, recent)
        self.counts["junk"] += guard.has_junk(shown)

    def report(self) -> dict[str, Any]:
        per_100 = {name: 100 * count / self.turns if self.turns else 0.0 for name, count in self.counts.items()}
        mean_logprob = sum(self.logprobs) / len(self.logprobs) if self.logprobs else None
        distinct = guard.distinct_n(self.texts, 2)
        return {**per_100, "turns": self.turns, "distinct_2": distinct, "mean_logprob": mean_logprob}


def load_script(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read the coherence script {path}: {err}") from None


def baseline_config(config: Config) -> Config:
    """AI Dungeon 2's sampling."""
    return (
        config.with_value("temperature", 0.4)
        .with_value("top_k", 40)
        .with_value("top_p", 1.0)
        .with_value("repetition_penalty", 1.0)
        .with_value("candidates", 1)
    )


def play_adventure(
    loaded: Any, config: Config, adventure: dict[str, Any], *, actions: list[str], turns: int, rules: RuleSet
) -> Tally:
    """One scripted adventure: the opening's continuation, then `turns - 1` actions."""
    from aidungeon.game.events import EventKind
    from aidungeon.game.start import start_session
    from aidungeon.model.engine import Engine
    from aidungeon.storage import prompts

    settings, _ = prompts.load_settings()
    setting = prompts.find_setting(settings, adventure["setting"])
    character = setting.character(str(adventure["character"]))
    story = prompts.new_story(prompts.starting_story_parts(setting, character, adventure["name"]), adventure["name"])
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="aidungeon-coherence-") as home:
        session = start_session(
            story,
            Engine.for_model(loaded),
            config.with_value("seed", int(adventure["seed"])),
            default_paths({"AIDUNGEON_HOME": home}),
            save_name="coherence",
            model_name=loaded.name,
            layout=loaded.layout,
            rules=rules,
        )
        lines = [""] + [actions[i % len(actions)] for i in range(turns - 1)]
        for line in lines:
            recent = session.turns.recent_results(session.story)
            before = session.story.last
            events = list(session.handle(line))
            shown = next((e.text for e in events if e.kind is EventKind.RESULT), "")
            if session.story.last is before:  # the turn stalled and was dropped: nothing was shown
                shown = ""
            ranked = session.turns.telemetry.ranked
            logprob = ranked[0].mean_logprob if shown and ranked else None
            tally.add(shown, recent, logprob, story.player_name or None)
    return tally


def run_coherence(
    args: argparse.Namespace, paths: Paths, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Play the scripted adventures in both modes; returns the report. `progress` hears of each
    adventure played."""
    from aidungeon.model.loader import load_model
    from aidungeon.storage.config_file import load_config

    script = load_script(Path(args.script) if args.script else SCRIPT)
    spec = args.model or load_config(paths.config_file).app.model
    loaded = load_model(spec, paths, device=args.device, dtype=args.dtype)
    turns = args.turns or 30
    adventures = script["adventures"][: args.adventures]
    base = Config().with_value("max_new_tokens", args.max_new_tokens)
    if args.context:
        base = base.with_value("context_tokens", min(args.context, loaded.window))
    results: dict[str, Any] = {"model": loaded.name, "device": loaded.device, "dtype": loaded.dtype}
    modes = (("guard", RuleSet.GUARD, base), ("baseline", RuleSet.BASELINE, baseline_config(base)))
    for mode, rules, config in modes:
        total = Tally()
        for adventure in adventures:
            tally = play_adventure(loaded, config, adventure, actions=script["actions"], turns=turns, rules=rules)
            _merge(total, tally)
            if progress is not None:
                progress(f"{mode}: {adventure['setting']} done ({tally.turns} turns)")
        results[mode] = total.report()
    results["adventures"] = len(adventures)
    results["turns_per_adventure"] = turns
    return results


def _merge(total: Tally, part: Tally) -> None:
    total.turns += part.turns
    for name in METRICS:
        total.counts[name] += part.counts[name]
    total.texts += part.texts
    total.logprobs += part.logprobs
