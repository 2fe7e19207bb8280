"""The turn pipeline: action -> context -> engine request -> cleanup -> rank -> keep.

`TurnPipeline.act` (and `retry`, `begin`) puts the action into the story; `play` draws
candidates for the story's last turn, streams the first, cleans and ranks them by the session's
rules and keeps the best (the rest serve /retry). An empty batch, or one whose best result
loops, is drawn again with livelier sampling, at most MAX_ATTEMPTS times; running out of memory
draws fewer candidates, then uses a smaller window. A cancelled turn keeps the story as it was
before the result; a model server that fails (BackendError) leaves it as it was before the
line. It does not save (the session does, at the end of the turn) and knows nothing of commands
or terminals.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Generator
from dataclasses import dataclass, field

from aidungeon.core import guard
from aidungeon.core.actions import to_action
from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Config, Sampling
from aidungeon.core.context import Context, Layout, build
from aidungeon.core.errors import BackendError, OutOfMemoryError, StoryError
from aidungeon.core.guard import Scored
from aidungeon.core.story import Candidate, Story
from aidungeon.game.events import STALLED, Event, EventKind, recap
from aidungeon.game.ids import PromptIds
from aidungeon.game.rules import RuleSet, rules_for
from aidungeon.model.protocol import EngineProtocol, GenerationStats, Request

# How many times an empty or unusable result is regenerated before the player is told.
MAX_ATTEMPTS = 3
# How many recent results cleanup and the drift guard compare a new result with.
RECENT_RESULTS = 6
# A window smaller than this many tokens leaves no room for a story.
MIN_BUDGET = 32
# How much of each candidate the action ranking scores: its opening, where an action is answered
# or not. On the default model's held-out turns, 24 tokens chose as the whole text did on 56 of
# 66 turns, at a third of the cost (benchmarks/RESULTS.md, issue #14).
SCORED_TOKENS = 24
# The action a candidate is compared against: one that asks for nothing in particular.
NEUTRAL_ACTION = "You wait."
# The largest n whose turn stayed within 1.5x of one candidate's on the CPU (issue 13's rule),
# from `aidungeon bench --concurrency 1,4 --best-of 1,3`: its rows share the prompt's cache and
# decode in one batched step (benchmarks/RESULTS.md, "Sessions at once").
CPU_CANDIDATES = 3

STOPPED = "Stopped. /retry generates again, or type another action."

# What `play` yields, and the settings it leaves (running out of memory may shrink them).
Turn = Generator[Event, None, Config]


@dataclass
class Telemetry:
    """What the last generation saw and cost, for the status line and the benchmarks."""

    context: Context | None = None
    stats: GenerationStats | None = None
    ranked: list[Scored] = field(default_factory=list)


class TurnPipeline:
    """Plays turns on one engine, for one session."""

    def __init__(
        self,
        engine: EngineProtocol,
        *,
        layout: Layout,
        rules: RuleSet = RuleSet.GUARD,
        reuse_cache: bool = True,
        session_id: str = "",
        rng: random.Random | None = None,
        shared_engine: bool = False,
    ) -> None:
        self.engine = engine
        self.layout = layout
        self.rules = rules_for(rules)
        self.reuse_cache = reuse_cache  # off in the benchmark's naive mode
        self.session_id = session_id
        self.shared_engine = shared_engine  # a server's: its players' rows fill the batch
        self.ids = PromptIds(engine.encode, engine.decode)
        self.telemetry = Telemetry()
        self._rng = rng or random.SystemRandom()
        self._start = 0  # where the last window began, so the next one keeps its prefix
        self._draft_ids: dict[str, list[int]] = {}

    # -- the window ------------------------------------------------------------------------

    def budget(self, config: Config) -> int:
        window = min(config.context.context_tokens or self.engine.window, self.engine.window)
        return window - config.sampling.max_new_tokens

    def context(self, story: Story, config: Config) -> Context:
        """The window the model sees next, in exact tokens (what /context and the status bar show)."""
        if self.budget(config) < MIN_BUDGET:
            raise StoryError("max_new_tokens leaves no room for the story; lower it or raise context_tokens")
        context = build(
            story,
            self.ids.encode,
            budget=self.budget(config),
            settings=config.context,
            layout=self.layout,
            start=self._start,
        )
        self._start = context.start
        return context

    def forget_window(self) -> None:
        """Another story is loaded: its window starts afresh."""
        self._start = 0

    def candidate_count(self, config: Config) -> int:
        """Candidates per turn: the setting, or by device: a CPU draws `CPU_CANDIDATES`, a GPU
        four, a remote server one (each candidate may cost it a whole generation). An engine
        shared by a server's players draws one: there the batch's rows are other players' turns,
        and every extra candidate takes a row from them."""
        if config.sampling.candidates:
            return config.sampling.candidates
        if self.shared_engine:
            return 1
        return {"cpu": CPU_CANDIDATES, "remote": 1}.get(self.engine.device_type, 4)

    @staticmethod
    def recent_results(story: Story) -> list[str]:
        """Results of the turns before the current one, for repeat and loop checks."""
        return [t.result for t in story.path()[:-1] if t.result][-RECENT_RESULTS:]

    # -- a turn ----------------------------------------------------------------------------

    def begin(self, story: Story, config: Config, *, show_recap: bool, cancel: CancelToken) -> Turn:
        """Show where the story stands (unless the UI already did); a story with no result yet
        gets its first continuation, and a turn stopped before its result is finished."""
        if show_recap:
            yield from recap(story)
        last = story.last
        if last is None:
            return (yield from self.act(story, config, "", cancel))
        if not last.result:
            return (yield from self.play(story, config, replace_on_failure=True, cancel=cancel))
        return config

    def act(self, story: Story, config: Config, line: str, cancel: CancelToken) -> Turn:
        """Play one action (an empty line continues the story)."""
        action = to_action(line)
        last = story.last
        if last is not None and not last.result and not story.children(last.id):
            story.discard_last()  # a turn left without a result is replaced by the new one
        story.append(action.text)
        try:
            if action.text:
                yield Event(EventKind.ACTION, action.text)
            return (yield from self.play(story, config, replace_on_failure=True, cancel=cancel))
        except BackendError:
            # The model server failed: the story is exactly as it was before the line (the turn
            # appended above was the last one made, so its id is handed out again).
            story.next_id = story.discard_last().id
            raise

    def retry(self, story: Story, config: Config, cancel: CancelToken) -> Turn:
        """Show the next-best kept alternative at once, or generate new ones."""
        turn = story.last
        if turn is None:
            raise StoryError("there is nothing to retry yet")
        if turn.chosen + 1 >= len(turn.candidates):
            return (yield from self.play(story, config, replace_on_failure=False, cancel=cancel))
        story.choose(turn.chosen + 1)
        yield Event(EventKind.RESULT, turn.result, data="retry")
        return config

    def play(self, story: Story, config: Config, *, replace_on_failure: bool, cancel: CancelToken) -> Turn:
        """Generate candidates for the story's last turn and keep the best. Returns the settings
        to keep. With `replace_on_failure`, a turn that stalls is taken out of the story."""
        fallback: tuple[list[Scored], Sampling, int] | None = None
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                yield Event(EventKind.RESTART)
            sampling, seed = self._sampling(config, attempt), self._seed(story, config, attempt)
            try:
                ranked = yield from self._draw(story, config, sampling, seed, cancel)
            except OutOfMemoryError:
                config, note = self._shrink_after_oom(config)
                yield Event(EventKind.INFO, note)
                continue
            if ranked is None:
                yield Event(EventKind.INFO, STOPPED)
                return config
            usable = [s for s in ranked if not s.flags.empty]
            if usable and (not self.rules.retries_loops or not usable[0].flags.loop):
                yield self._keep(story, usable, sampling, seed)
                return config
            if usable and fallback is None:
                fallback = (usable, sampling, seed)
        if fallback is not None:
            yield self._keep(story, *fallback)
            yield Event(EventKind.INFO, "The story keeps repeating itself; try a new action or /retry.")
            return config
        if replace_on_failure:
            story.discard_last()
        message = f"The story stalled: {MAX_ATTEMPTS} tries gave no usable text. Try another action or /set."
        yield Event(EventKind.ERROR, message, STALLED)
        return config

    def _draw(
        self, story: Story, config: Config, sampling: Sampling, seed: int, cancel: CancelToken
    ) -> Generator[Event, None, list[Scored] | None]:
        """One batch: stream the first candidate, then clean and rank them all (best first).
        None when the turn was cancelled."""
        context = self.context(story, config)
        player = story.player_name or None
        request = Request(
            session=self.session_id,
            prompt_ids=tuple(context.ids),
            sampling=sampling,
            cancel=cancel,
            n=self.candidate_count(config),
            stop=self.rules.stop_rule(player),
            seed=seed,
            reuse_cache=self.reuse_cache,
        )
        handle = self.engine.submit(request)
        for piece in handle:
            yield Event(EventKind.PIECE, piece)
        result = handle.result()
        self.telemetry.context, self.telemetry.stats = context, result.stats
        if result.cancelled or cancel.is_set():
            return None
        recent = self.recent_results(story)
        self._draft_ids = {c.text: c.token_ids for c in result.completions}
        drafts = [
            (c.text, self.rules.clean(c.text, recent=recent, player_name=player), c.mean_logprob)
            for c in result.completions
        ]
        ranked = self.rules.rank(drafts, recent=recent, player_name=player)
        action = story.last.action if story.last else ""
        if action and sampling.action_ranking and self.rules.ranks_by_action and len(ranked) > 1:
            ranked = self._answering_first(action, ranked)
        return ranked

    def _answering_first(self, action: str, ranked: list[Scored]) -> list[Scored]:
        """Put first the clean candidate the action explains best (`guard.answering_first`): each
        candidate's opening `SCORED_TOKENS` scored after the narrator and the action, and after
        the narrator and "You wait." (kept by the engine from turn to turn)."""
        openings = {i: self.engine.encode(ranked[i].text)[:SCORED_TOKENS] for i in guard.answer_candidates(ranked)}
        openings = {i: row for i, row in openings.items() if row}
        if len(openings) < 2:
            return ranked  # nothing to choose between: save the scoring
        rows = list(openings.values())
        prompts = [self.layout.header + self.layout.action.replace("{action}", a) for a in (action, NEUTRAL_ACTION)]
        after_action, after_waiting = (self.engine.likelihoods(self.engine.encode(p), rows) for p in prompts)
        if after_action is None or after_waiting is None:
            return ranked
        gains = [-math.inf] * len(ranked)
        for i, row, told, waited in zip(openings, rows, after_action, after_waiting, strict=True):
            gains[i] = (told - waited) / len(row)
        return guard.answering_first(ranked, gains)

    def _keep(self, story: Story, ranked: list[Scored], sampling: Sampling, seed: int) -> Event:
        """Store the candidates best first (the rest serve /retry); the best is the result."""
        used = dataclasses.asdict(sampling)
        self.telemetry.ranked = ranked
        self.ids.remember(ranked[0].text, self._draft_ids.get(ranked[0].raw, []))
        story.add_candidates(
            [Candidate(text=s.text, seed=seed, sampling=used, score=round(s.score, 4)) for s in ranked]
        )
        return Event(EventKind.RESULT, ranked[0].text)

    def _shrink_after_oom(self, config: Config) -> tuple[Config, str]:
        """Out of memory: draw fewer candidates, then use a smaller window; else give up clearly."""
        if self.candidate_count(config) > 1:
            return config.with_value("candidates", 1), "Out of memory: drawing one candidate per turn from now on."
        window = self.budget(config) + config.sampling.max_new_tokens
        if window >= 512:
            return (
                config.with_value("context_tokens", window // 2),
                f"Out of memory: the story window is now {window // 2} tokens.",
            )
        raise OutOfMemoryError(
            "out of memory even with a small window; your story is saved. "
            "Restart with --device cpu or a smaller model (aidungeon models)"
        )

    @staticmethod
    def _sampling(config: Config, attempt: int) -> Sampling:
        """The player's sampling, made livelier on each automatic retry after a loop. A retry's
        repetition penalty sees the story too: a loop is the story's own words coming back, which
        a penalty over the turn's words alone does not see."""
        sampling = config.sampling
        if attempt == 0:
            return sampling
        temperature, penalty = guard.loop_retry_sampling(sampling.temperature, sampling.repetition_penalty, attempt)
        return dataclasses.replace(
            sampling, temperature=temperature, repetition_penalty=penalty, repetition_scope="story"
        )

    def _seed(self, story: Story, config: Config, attempt: int) -> int:
        """Same seed and same actions give the same story; otherwise a fresh random seed."""
        base = config.sampling.seed
        if base is None:
            return self._rng.randrange(2**31)
        turn = story.last
        depth = story.depth(turn.id) if turn else 0
        tries = len(turn.candidates) if turn else 0
        return (base * 1_000_003 + depth * 7919 + tries * 131 + attempt) % 2**31
