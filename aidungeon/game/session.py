"""The game: one player line in, a stream of events out. No terminal I/O.

`Game.handle(line)` runs a slash command or plays a turn: the action enters the story, the
context is built in exact tokens, the engine streams a continuation, cleanup makes it
presentable, the best candidate is kept and the adventure is autosaved. Everything the
player should see comes back as `Event`s, which the terminal UI renders and which tests, the
benchmark or a future HTTP server can consume the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aidungeon.core import cleanup, guard
from aidungeon.core.actions import to_action
from aidungeon.core.config import Config, Sampling, normalize_key
from aidungeon.core.context import PLAIN, Context, Layout, build
from aidungeon.core.errors import AIDungeonError, OutOfMemoryError, StoryError
from aidungeon.core.guard import Scored
from aidungeon.core.story import Candidate, Story
from aidungeon.storage import saves
from aidungeon.storage.paths import Paths

log = logging.getLogger(__name__)

# How many times an empty or unusable result is regenerated before the player is told.
MAX_ATTEMPTS = 3
# How many texts keep their ids for the context: a full window's parts, with room to spare.
KNOWN_IDS_KEPT = 512
# How many recent results cleanup and the drift guard compare a new result with.
RECENT_RESULTS = 6


class GenerationLike(Protocol):
    candidates: list[Any]
    stats: Any

    def __iter__(self) -> Iterator[str]: ...


class EngineLike(Protocol):
    """What the game needs from `model.engine.Engine` (tests may pass the real one)."""

    window: int
    device: Any

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def generate(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        *,
        n: int = 1,
        stop: Any = None,
        seed: int | None = None,
        reuse_cache: bool = True,
    ) -> GenerationLike: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class Table:
    """Tabular output (/context, /saves, /settings, ...), rendered by the UI."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    footer: str = ""


STALLED = "stalled"


@dataclass(frozen=True)
class Event:
    """Something for the player.

    kinds: "opening" and "story" (story text), "action" (the action as it entered the story),
    "piece" (streamed text of a result in progress), "restart" (drop the streamed text: the
    turn is being drawn again), "result" (the final text of a turn, which
    replaces the streamed preview), "info", "error", "text" (a block such as /help or /print),
    "table" (data is a Table), "edit" (the UI should let the player edit `text`, then send
    `data` + the edited text), "quit". An "error" whose data is STALLED means every attempt at a
    turn gave no usable text (the benchmark counts those rather than stopping).
    """

    kind: str
    text: str = ""
    data: Any = None


def recap(story: Story, turns: int = 3) -> Iterator[Event]:
    """The opening (for a young story) or the last few turns of the current branch: what the
    player sees on starting, which needs no model."""
    path = [t for t in story.path() if t.result]
    if len(path) <= turns:
        yield Event("opening", story.opening.strip())
    else:
        yield Event("info", f"... {len(path) - turns} earlier turns (/print shows the whole story)")
    for turn in path[-turns:]:
        if turn.action:
            yield Event("action", turn.action)
        yield Event("story", turn.result)


@dataclass
class Game:
    """A running adventure: the story, its settings, the engine, and where it is saved."""

    story: Story
    engine: EngineLike
    config: Config
    paths: Paths
    save_name: str
    model_name: str
    layout: Layout = PLAIN
    autosave: bool = True
    # The benchmark's naive mode turns cache reuse off. `rules` is "guard" (cleanup, stop rules,
    # ranking and loop retries: the game), "baseline" (AI Dungeon 2's: cut at ">" and the last
    # fragment, nothing else) or "raw" (text as generated, for random-weight speed runs).
    reuse_cache: bool = True
    rules: str = "guard"
    last_ranked: list[Scored] = field(default_factory=list)
    # Text -> ids for the context: every part tokenized once, shown results as the model's own ids.
    _known_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _draft_ids: dict[str, list[int]] = field(default_factory=dict)
    # What the last generation saw and cost, for the status line and the benchmark.
    last_context: Context | None = None
    last_generation: Any = None
    _start: int = 0
    _rng: random.Random = field(default_factory=random.SystemRandom)

    # -- entry points ----------------------------------------------------------------------

    def handle(self, line: str) -> Iterator[Event]:
        """Run one line of player input."""
        from aidungeon.game.commands import dispatch

        try:
            if line.strip().startswith("/"):
                yield from dispatch(self, line.strip())
            else:
                yield from self.act(line)
        except AIDungeonError as err:
            yield Event("error", str(err))

    def begin(self, *, show_recap: bool = True) -> Iterator[Event]:
        """Show where the story stands (unless the UI already did, while the model loaded); a
        story with no result yet gets its first continuation."""
        if show_recap:
            yield from self.recap()
        last = self.story.last
        if last is None:
            yield from self.act("")
        elif not last.result:  # a turn stopped before its result (Ctrl-C, a crash): finish it
            yield from self._generate_turn(replace_on_failure=True)

    def recap(self, turns: int = 3) -> Iterator[Event]:
        """The module's `recap` of this game's story."""
        return recap(self.story, turns)

    # -- turns -----------------------------------------------------------------------------

    def act(self, line: str) -> Iterator[Event]:
        """Play one action (an empty line continues the story)."""
        action = to_action(line)
        last = self.story.last
        if last is not None and not last.result:
            # A turn left without a result (a stopped generation) is replaced by the new one.
            self.story.discard_last()
        self.story.append(action.text)
        if action.text:
            yield Event("action", action.text)
        yield from self._generate_turn(replace_on_failure=True)

    def retry(self) -> Iterator[Event]:
        """Show the next-best kept alternative at once, or generate new ones."""
        turn = self.story.last
        if turn is None:
            raise StoryError("there is nothing to retry yet")
        if turn.chosen + 1 < len(turn.candidates):
            self.story.choose(turn.chosen + 1)
            self._autosave()
            yield Event("result", turn.result, data="retry")
            return
        yield from self._generate_turn(replace_on_failure=False)

    def _generate_turn(self, *, replace_on_failure: bool) -> Iterator[Event]:
        """Generate candidates for the last turn, keep the best; bounded retries; autosave.

        An empty batch or one whose best result loops back on recent results is drawn again
        with livelier sampling, at most MAX_ATTEMPTS times. The player hears of it only when
        every attempt fails: a loop is then shown with a note, nothing usable is an error.
        """
        completed = False
        fallback: tuple[list[Scored], Sampling, int] | None = None
        try:
            for attempt in range(MAX_ATTEMPTS):
                if attempt:
                    yield Event("restart")
                sampling, seed = self._sampling(attempt), self._seed(attempt)
                ranked = yield from self._draw(sampling, seed)
                usable = [s for s in ranked if not s.flags.empty]
                if usable and (self.rules != "guard" or not usable[0].flags.loop):
                    yield from self._keep(usable, sampling, seed)
                    completed = True
                    return
                if usable and fallback is None:
                    fallback = (usable, sampling, seed)
            completed = True
            if fallback is not None:
                yield from self._keep(*fallback)
                yield Event("info", "The story keeps repeating itself; try a new action or /retry.")
                return
            if replace_on_failure:
                self.story.discard_last()
            yield Event(
                "error",
                f"The story stalled: {MAX_ATTEMPTS} tries gave no usable text. Try another action or /set.",
                STALLED,
            )
        finally:
            if not completed and replace_on_failure and self.story.last and not self.story.last.result:
                # Stopped mid-generation (Ctrl-C, an error): the story keeps the action, no result.
                self._autosave()

    def _keep(self, ranked: list[Scored], sampling: Sampling, seed: int) -> Iterator[Event]:
        """Store the candidates best first (the rest serve /retry), autosave, show the best."""
        used = dataclasses.asdict(sampling)
        self.last_ranked = ranked
        self._remember_ids(ranked[0].text, self._draft_ids.get(ranked[0].raw, []))
        self.story.add_candidates(
            [Candidate(text=s.text, seed=seed, sampling=used, score=round(s.score, 4)) for s in ranked]
        )
        self._autosave()
        yield Event("result", ranked[0].text)

    def _sampling(self, attempt: int) -> Sampling:
        """The player's sampling, made livelier on each automatic retry after a loop."""
        sampling = self.config.sampling
        if attempt == 0:
            return sampling
        temperature, penalty = guard.loop_retry_sampling(sampling.temperature, sampling.repetition_penalty, attempt)
        return dataclasses.replace(sampling, temperature=temperature, repetition_penalty=penalty)

    def _draw(self, sampling: Sampling, seed: int) -> Iterator[Event]:
        """One batch of candidates: stream the first, then clean and rank them all (best first)."""
        context = self.build_context()
        n = self.candidate_count()
        try:
            generation = self.engine.generate(
                context.ids,
                sampling,
                n=n,
                stop=self._stop_rule if self.rules == "guard" else None,
                seed=seed,
                reuse_cache=self.reuse_cache,
            )
            for piece in generation:
                yield Event("piece", piece)
        except OutOfMemoryError:
            yield from self._shrink_after_oom(n)
            return []
        self._record_stats(context, generation.stats)
        recent = self.recent_results()
        player = self.story.player_name or None
        self._draft_ids = {raw.text: raw.token_ids for raw in generation.candidates}
        drafts = [(raw.text, self._clean(raw.text, recent), raw.mean_logprob) for raw in generation.candidates]
        ranked = guard.rank(drafts, recent=recent, player_name=player)
        # Outside the guard's rules the candidates keep their drawing order.
        return (
            ranked
            if self.rules == "guard"
            else sorted(ranked, key=lambda s: drafts.index((s.raw, s.text, s.mean_logprob)))
        )

    def _shrink_after_oom(self, n: int) -> Iterator[Event]:
        """Out of memory: draw fewer candidates, then use a smaller window; else give up clearly."""
        if n > 1:
            self.config = self.config.with_value("candidates", 1)
            yield Event("info", "Out of memory: drawing one candidate per turn from now on.")
            return
        window = self.budget() + self.config.sampling.max_new_tokens
        if window >= 512:
            self.config = self.config.with_value("context_tokens", window // 2)
            yield Event("info", f"Out of memory: the story window is now {window // 2} tokens.")
            return
        raise OutOfMemoryError(
            "out of memory even with a small window; your story is saved. "
            "Restart with --device cpu or a smaller model (aidungeon models)"
        )

    def _encode(self, text: str) -> list[int]:
        """Tokenize for the context, each text once, and a result as the model's own ids.

        The window is rebuilt every turn from the same parts, so their ids are kept rather
        than tokenized again. A result is kept as the ids the model generated: cleaned text,
        tokenized afresh, often differs from them (cuts, non-canonical merges), which would end
        the cached prefix at the previous result. Those ids decode to exactly this text, so the
        model sees the same story either way.
        """
        known = self._known_ids.get(text)
        if known is None:
            known = self._known_ids[text] = tuple(self.engine.encode(text))
            self._forget_oldest_ids()
        return list(known)

    def _remember_ids(self, text: str, ids: list[int]) -> None:
        """Remember how to feed the shown text back: the longest prefix of the generated ids
        that decodes to a prefix of it (as the layout places it, with or without a leading
        space), then the rest tokenized afresh. Cleanup often changes only the end of a result."""
        decode = getattr(self.engine, "decode", None)
        if decode is None or not ids:
            return
        for variant in (text, " " + text):
            for end in range(len(ids), 0, -1):
                prefix = decode(ids[:end])
                if variant.startswith(prefix):
                    rest = variant[len(prefix) :]
                    self._known_ids.pop(variant, None)  # re-inserted last, so it is forgotten last
                    self._known_ids[variant] = (*ids[:end], *(self.engine.encode(rest) if rest else ()))
                    break
        self._forget_oldest_ids()

    def _forget_oldest_ids(self) -> None:
        while len(self._known_ids) > KNOWN_IDS_KEPT:
            self._known_ids.pop(next(iter(self._known_ids)))

    def recent_results(self) -> list[str]:
        """Results of the turns before the current one, for repeat and loop checks."""
        return [t.result for t in self.story.path()[:-1] if t.result][-RECENT_RESULTS:]

    def _clean(self, text: str, recent: list[str]) -> str:
        if self.rules == "raw":  # exactly as generated (whitespace too), so it reads back as the same ids
            return text if text.strip() else ""
        if self.rules == "baseline":
            return cleanup.aidungeon2_rules(text)
        return cleanup.pipeline(text, recent=recent, player_name=self.story.player_name or None)

    def _stop_rule(self, text: str) -> int | None:
        """Stop generating where the model starts a player turn or emits a special token."""
        cuts = [
            cleanup.find_player_turn(text, player_name=self.story.player_name or None),
            cleanup.find_special_token(text),
        ]
        found = [c for c in cuts if c is not None]
        return min(found) if found else None

    def _seed(self, attempt: int) -> int:
        """Same seed and same actions give the same story; otherwise a fresh random seed."""
        base = self.config.sampling.seed
        if base is None:
            return self._rng.randrange(2**31)
        turn = self.story.last
        depth = self.story.depth(turn.id) if turn else 0
        tries = len(turn.candidates) if turn else 0
        return (base * 1_000_003 + depth * 7919 + tries * 131 + attempt) % 2**31

    def _record_stats(self, context: Context, stats: Any) -> None:
        self.last_context = context
        self.last_generation = stats

    def budget(self) -> int:
        window = self.config.context.context_tokens or self.engine.window
        window = min(window, self.engine.window)
        return window - self.config.sampling.max_new_tokens

    def build_context(self) -> Context:
        if self.budget() < 32:
            raise StoryError("max_new_tokens leaves no room for the story; lower it or raise context_tokens")
        context = build(
            self.story,
            self._encode,
            budget=self.budget(),
            settings=self.config.context,
            layout=self.layout,
            start=self._start,
        )
        self._start = context.start
        return context

    def candidate_count(self) -> int:
        """Candidates per turn: the setting, or by device (a CPU draws one, a GPU four)."""
        if self.config.sampling.candidates:
            return self.config.sampling.candidates
        return 1 if getattr(self.engine.device, "type", str(self.engine.device)) == "cpu" else 4

    def set_value(self, key: str, value: str) -> str:
        """Change one setting for this adventure (saved with it); returns the setting's name."""
        name = normalize_key(key)
        config = self.config.with_value(name, value)
        if config.section_of(name) == "app":
            raise StoryError(f"{name} is chosen when the game starts: use --{name} on the command line")
        previous, self.config = self.config, config
        if self.budget() < 32:
            self.config = previous
            raise StoryError("that leaves no room for the story in the window; lower max_new_tokens")
        self._autosave()
        return name

    # -- saving ----------------------------------------------------------------------------

    def save_data(self) -> saves.SaveData:
        settings = {k: v for k, v in self.config.to_dict().items() if k != "app"}
        return saves.SaveData(story=self.story, model=self.model_name, settings=settings)

    def _autosave(self) -> None:
        if self.autosave:
            self._write(self.save_name)

    def export_path(self, fmt: str, target: str = "") -> Path:
        """Where an export goes: the path given, or the exports folder beside the saves."""
        if target:
            return Path(target).expanduser()
        return self.paths.ensure(self.paths.data_dir / "exports") / f"{self.save_name}.{fmt}"

    def save_as(self, name: str) -> Path:
        path = self._write(name)
        self.save_name = saves.sanitize_name(name)
        return path

    def _write(self, name: str) -> Path:
        # A damaged file under this name is set aside (never overwritten): the story in memory
        # is the good version, often just restored from the backup.
        return saves.write_save(self.paths.saves_dir, name, self.save_data(), replace_damaged=True)

    def load(self, name: str) -> list[str]:
        """Switch to a saved adventure; returns warnings (a backup was used, another model)."""
        data, warnings = saves.read_save(self.paths.saves_dir, name)
        self.story = data.story
        self.config = settings_from_save(self.config, data)
        self.save_name = saves.sanitize_name(name)
        self._start = 0
        if data.model != self.model_name:
            warnings.append(f"this adventure was played on {data.model}; it continues on {self.model_name}")
        return warnings


def settings_from_save(config: Config, data: saves.SaveData) -> Config:
    """A save's sampling and context settings, with the running app settings (model, device)."""
    saved = Config.from_dict({k: v for k, v in data.settings.items() if k in ("sampling", "context")})
    return dataclasses.replace(saved, app=config.app)


def numbered(items: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    return tuple((str(i), item) for i, item in enumerate(items, start=1))
