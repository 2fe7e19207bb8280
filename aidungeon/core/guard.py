"""Drift guard: flag, score and rank candidate results so the game shows the least drifted one.

A small model drifts in a few recognisable ways: it loops (repeats a recent result almost word
for word), copies recent sentences, plays the player's turn, runs into web-page junk or special
tokens, stops mid-sentence, or slips from second-person narration ("you") into first person
("I"). `assess` measures each of these on one candidate as `Flags` (the same figures the
coherence benchmark counts), `score` folds the flags and the model's mean token log-probability
into one number, and `rank` orders a batch of candidates best first.

How the game uses it, per turn:

1. The engine draws `n` candidates in one batch (n is a setting; 1 on a slow CPU).
2. Each raw candidate is cleaned with `cleanup.pipeline(raw, recent=..., player_name=...)`.
3. `rank([(raw, shown, mean_logprob), ...], recent=...)` orders them; the first is shown and the
   rest are kept, in order, so `/retry` can show the next-best at once without generating.
4. If the best is a loop (`flags.loop`, or `is_loop(shown, recent)`), the game generates again
   with `loop_retry_sampling(temperature, repetition_penalty, attempt)` for attempt 1, 2, ...,
   up to its own bound, and tells the player only if every attempt still loops.

Detection is reused from `cleanup` (`find_player_turn`, `find_special_token`, `find_junk`,
`is_fragment`, `repeated_sentences`, `similarity`), so the guard and the cutters agree on what
is wrong and where.

What this module does not do: generate, clean or cut text (see `cleanup`), stop generation
early (the engine's stop rules), keep state between turns, choose the recent-results window or
the retry bound (the game's), or any I/O. It imports no torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from aidungeon.core.cleanup import (
    find_junk,
    find_player_turn,
    find_special_token,
    repeated_sentences,
    similarity,
)
from aidungeon.core.text import QUOTED_RE, WORD_RE, is_fragment

# A result more than this similar (cleanup.similarity) to a recent one is a loop, and the turn is
# drawn again. Late in a long adventure the default model settles into one template and fills in
# a word ("You can see she's looking at you." / "... at your bag."): 0.7-0.9 alike, 31 of turns
# 81-100 of the bench's 2 x 100 at 0.9 (RESULTS, #14). Of 4,896 labelled 12-turn turns only 6 are
# above 0.7, all such templates, so a new draw costs little outside long play.
LOOP_SIMILARITY = 0.7
# Repeated n-grams are counted over word 3-grams: long enough that "you see a" style openings
# matter little, short enough to catch copied phrases that are not whole sentences.
NGRAM_SIZE = 3

# -- score weights ----------------------------------------------------------------------------
# The score is  LOGPROB_WEIGHT * mean_logprob  minus a penalty per flag. Mean token log-probability
# is typically -1..-4 and candidates of one batch differ by well under 1. A "big" penalty is more
# than the whole clamped range (-LOGPROB_FLOOR = 20), so fluency can never buy it back; a "medium"
# one (3..5) loses only to a candidate several nats per token less likely, i.e. near-garbage.

# Nothing to show: always last (rank also sorts empties last explicitly).
EMPTY_PENALTY = 1000.0
# A loop is the failure players complain about most; it must lose to any non-looping candidate.
LOOP_PENALTY = 100.0
# The shown text itself still plays the player (only possible when it was not cleaned by
# cleanup.pipeline, e.g. the baseline): the worst breach of player agency.
PLAYER_TURN_SHOWN_PENALTY = 100.0
# The raw text ran into a web page or a new document; even cut, the lead-in is usually off-story.
# More than the whole clamped log-probability range, so fluency never buys it back.
JUNK_PENALTY = 25.0
# The shown text stops mid-sentence: reads as a bug, but the story itself is intact.
FRAGMENT_PENALTY = 5.0
# Narrating as "I" breaks the second-person game, but the events may still be good.
FIRST_PERSON_PENALTY = 4.0
# Giving the player another name ("Your name is Grimbold") undoes who they chose to be.
RENAMED_PENALTY = 4.0
# The raw text played the player and was cut there: the shown part is fine, but the model was
# drifting and the cut often leaves the result short. Prefer a candidate that stayed in its lane.
PLAYER_TURN_PENALTY = 3.0
# Each sentence copied verbatim from a recent result: a step towards a loop.
REPEAT_PENALTY = 3.0
# Times the share (0..1) of 3-grams already told: graded, so a near-loop below the loop threshold
# still loses; copying half the phrases costs as much as a fragment.
REPEATED_NGRAM_WEIGHT = 10.0
# Times the share (0..1) of the text's word pairs it already said itself, past SELF_REPEAT_FREE
# ("You will not leave them. You will not leave."): the lighter repetition penalty lets a turn
# repeat itself, and the model's own confidence favours it (a repeat is likely), so without this the
# ranking would pick it. Pairs, not 3-grams: a turn that repeats itself repeats sentence frames more
# than whole phrases (on 1,008 blind-read turns pairs tell the 121 labelled repetitive ones apart
# with AUC 0.95, 3-grams 0.93). The free share is what answering costs: a turn that follows the
# action says its words again ("You open the door. The door creaks"), and penalising every repeated
# pair cost a blind read 17 of 132 actions followed (RESULTS, #14).
SELF_REPEAT_WEIGHT = 10.0
SELF_REPEAT_FREE = 0.1
SELF_REPEAT_NGRAM = 2
# The model's own confidence: the tie-breaker between candidates with the same flaws.
LOGPROB_WEIGHT = 1.0
# Non-finite (no tokens, -inf) or absurdly low log-probabilities are clamped here so one bad
# number cannot swamp the penalties or make the order undefined (NaN does not sort).
LOGPROB_FLOOR = -20.0

# -- loop retries -----------------------------------------------------------------------------
# Each automatic retry after a loop raises temperature and repetition penalty by one step, up to
# caps past which small models turn into word salad.
RETRY_TEMPERATURE_STEP = 0.15
RETRY_TEMPERATURE_CAP = 1.2
RETRY_PENALTY_STEP = 0.1
RETRY_PENALTY_CAP = 1.5


@dataclass(frozen=True)
class Flags:
    """What is wrong with one candidate, as the coherence benchmark counts it. Defaults are clean."""

    player_turn: bool = False  # the raw text had a hallucinated player turn (the shown text is cut there)
    fragment: bool = False  # the shown text ends mid-sentence
    repeats: int = 0  # sentences of the shown text found verbatim in recent results
    loop: bool = False  # the shown text is more than LOOP_SIMILARITY similar to a recent result
    junk: bool = False  # the raw text had junk or a special token other than a clean end
    empty: bool = False  # nothing usable left to show
    repeated_ngrams: float = 0.0  # share of the shown text's word 3-grams already in recent results
    first_person: bool = False  # narration (outside quotes) in first person
    player_turn_shown: bool = False  # the shown text itself still has a player turn (uncleaned text)
    renames_player: bool = False  # the narration names the player as someone else
    self_repeated: float = 0.0  # share of the shown text's word pairs it already said itself


@dataclass(frozen=True)
class Scored:
    """One ranked candidate."""

    text: str  # shown text (after cleanup.pipeline)
    raw: str
    mean_logprob: float
    flags: Flags
    score: float  # higher is better


# -- words and n-grams ------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Same notion of a word as cleanup.similarity: lowercased, punctuation ignored."""
    return WORD_RE.findall(text.lower())


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def repeated_ngram_share(text: str, recent: Sequence[str], *, n: int = NGRAM_SIZE) -> float:
    """Share (0..1) of `text`'s word n-grams that occur in some recent result; 0 when it has none.

    N-grams are taken within each text, never across the boundary between two results.
    """
    grams = _ngrams(_words(text), n)
    if not grams:
        return 0.0
    told = {gram for story_text in recent for gram in _ngrams(_words(story_text), n)}
    return sum(gram in told for gram in grams) / len(grams)


def self_repeated_share(text: str, *, n: int = SELF_REPEAT_NGRAM) -> float:
    """Share (0..1) of `text`'s word n-grams that occur earlier in `text` itself; 0 when it has none."""
    grams = _ngrams(_words(text), n)
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n diversity: unique word n-grams / all word n-grams over `texts`; 0 when none.

    Words are lowercased and punctuation is ignored; n-grams do not cross from one text to the next.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grams = [gram for text in texts for gram in _ngrams(_words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


# -- detectors --------------------------------------------------------------------------------


def is_loop(text: str, recent: Sequence[str], *, threshold: float = LOOP_SIMILARITY) -> bool:
    """True when `text` is more than `threshold` similar to any recent result.

    Empty text, and empty recent results, never make a loop: "nothing" is flagged as empty, not
    as a repeat of an earlier "nothing".
    """
    if not text.strip():
        return False
    return any(similarity(text, old) > threshold for old in recent if old.strip())


# A special token that only closes the text (the model ended its turn), possibly cut half-way by
# a stop string, with nothing but more such tokens and whitespace after it.
_END_TOKEN = r"(?:<\|[\w.\-]*(?:\|>)?|</s>|<eos>|<end_of_turn>)"
_CLEAN_END_RE = re.compile(rf"(?:\s*{_END_TOKEN})+\s*")


def _clean_end(raw: str) -> int | None:
    """Where a clean end (end tokens only, to the end of `raw`) starts, or None."""
    start = find_special_token(raw)
    return start if start is not None and _CLEAN_END_RE.fullmatch(raw[start:]) else None


def has_bad_special_token(raw: str) -> bool:
    """True when `raw` has a special token or chat-template marker other than a clean end."""
    return find_special_token(raw) is not None and _clean_end(raw) is None


def has_junk(raw: str) -> bool:
    """True when `raw` drifts into junk (cleanup.find_junk) or has a special token other than a clean end.

    A clean end is left out before looking for junk: "</s>" would otherwise read as an HTML tag.
    """
    end = _clean_end(raw)
    return find_junk(raw if end is None else raw[:end]) is not None or has_bad_special_token(raw)


# "I" only as a capital word (incl. "I'm", "I'd"); the other forms in any case ("My", "me"); "us"
# not as "US". The plural and "let's" count too: outside quotes they were a narrator slip in all
# 70 of the 648 labelled turns that had them ("Now let's get back down" was the one slip the
# shipped game still showed in 72).
_FIRST_PERSON_RE = re.compile(r"\bI\b|\b[Uu]s\b|\b(?i:my|me|mine|myself|we|our|ours|ourselves|let['’]s)\b")


def is_first_person(text: str) -> bool:
    """True when narration outside double quotes uses first person (I, me, my, mine, myself, we,
    us, our, ours, ourselves, let's)."""
    # Quoted speech is a character talking, where "I" is right.
    return _FIRST_PERSON_RE.search(QUOTED_RE.sub(" ", text)) is not None


# "Your name is Grimbold", "You are Captain Vor'Thraxys": the narrator naming the player. Titles
# alone ("You are Captain") are a role, not a name.
_NAMING_RE = re.compile(
    r"\b(?:[Yy]our name is|You are|[Yy]ou're)\s+(?:(?:now|called|named)\s+){0,2}([A-Z][\w'’-]+(?:\s+[A-Z][\w'’-]+)*)"
)
_TITLES = frozenset({"Captain", "Lord", "Lady", "Sir", "King", "Queen", "Prince", "Princess", "Doctor", "Dr"})


def renames_player(text: str, player_name: str | None) -> bool:
    """True when the narration (outside quotes) names the player as someone other than
    `player_name`. Written from the 936 labelled turns, where it finds 8 of the 58 labelled as
    identity drift and nothing else (benchmarks/RESULTS.md, #14): precise, not yet tried on turns
    it was not written from. Without a name there is nothing to compare."""
    name = (player_name or "").strip().split()
    if not name:
        return False
    for match in _NAMING_RE.finditer(QUOTED_RE.sub(" ", text)):
        words = set(match.group(1).split())
        if name[0] not in words and not words <= _TITLES:
            return True
    return False


def assess(raw: str, shown: str, *, recent: Sequence[str], player_name: str | None = None) -> Flags:
    """Flag what is wrong with one candidate: `raw` as generated, `shown` after cleanup.pipeline.

    Flags about drift the cleanup cuts away (player turn, junk) look at `raw`; flags about what
    the player reads look at `shown`. `recent` is the last few results, oldest first.
    """
    return Flags(
        player_turn=find_player_turn(raw, player_name=player_name) is not None,
        fragment=is_fragment(shown),
        repeats=len(repeated_sentences(shown, recent)),
        loop=is_loop(shown, recent),
        junk=has_junk(raw),
        empty=not shown.strip(),
        repeated_ngrams=repeated_ngram_share(shown, recent),
        first_person=is_first_person(shown),
        player_turn_shown=find_player_turn(shown, player_name=player_name) is not None,
        renames_player=renames_player(shown, player_name),
        self_repeated=self_repeated_share(shown),
    )


# -- scoring ----------------------------------------------------------------------------------


def _penalty(flags: Flags) -> float:
    """The sum of the weighted flags (see the weights above)."""
    return (
        EMPTY_PENALTY * flags.empty
        + LOOP_PENALTY * flags.loop
        + PLAYER_TURN_SHOWN_PENALTY * flags.player_turn_shown
        + JUNK_PENALTY * flags.junk
        + FRAGMENT_PENALTY * flags.fragment
        + FIRST_PERSON_PENALTY * flags.first_person
        + RENAMED_PENALTY * flags.renames_player
        + PLAYER_TURN_PENALTY * flags.player_turn
        + REPEAT_PENALTY * flags.repeats
        + REPEATED_NGRAM_WEIGHT * flags.repeated_ngrams
        + SELF_REPEAT_WEIGHT * max(0.0, flags.self_repeated - SELF_REPEAT_FREE)
    )


def _clamped_logprob(mean_logprob: float) -> float:
    """`mean_logprob` limited to LOGPROB_FLOOR..0; NaN counts as the floor."""
    if math.isnan(mean_logprob):
        return LOGPROB_FLOOR
    return min(0.0, max(LOGPROB_FLOOR, mean_logprob))


def score(flags: Flags, mean_logprob: float) -> float:
    """Higher is better: LOGPROB_WEIGHT * mean token log-probability minus the weighted flags."""
    return LOGPROB_WEIGHT * _clamped_logprob(mean_logprob) - _penalty(flags)


def rank(
    candidates: Sequence[tuple[str, str, float]],
    *,
    recent: Sequence[str],
    player_name: str | None = None,
) -> list[Scored]:
    """Score `(raw, shown, mean_logprob)` candidates and return them best first, empty ones last.

    The sort is stable: equal scores keep the input order, so a seeded batch ranks the same way.
    """
    scored = []
    for raw, shown, mean_logprob in candidates:
        flags = assess(raw, shown, recent=recent, player_name=player_name)
        scored.append(Scored(shown, raw, mean_logprob, flags, score(flags, mean_logprob)))
    return sorted(scored, key=lambda item: (item.flags.empty, -item.score))


def answering_first(ranked: Sequence[Scored], gains: Sequence[float]) -> list[Scored]:
    """`ranked` (best first) with the candidate the action explains best moved to the front, of
    those no more flawed than the best (the same or a smaller penalty); the rest keep their order.

    `gains[i]` is how much better candidate i reads after the player's action than after "You
    wait." (the model's log-probability gain per token). Turn by turn a blind reader found this
    pick answered the action better than the guard's own 26 times against 8, but over whole
    adventures it made more turns senseless than it made answer (benchmarks/RESULTS.md, issue
    #14), so the game asks for it only when the player turns `action_ranking` on."""
    if len(ranked) != len(gains):
        raise ValueError(f"{len(gains)} gains for {len(ranked)} candidates")
    eligible = answer_candidates(ranked)
    if not eligible:
        return list(ranked)
    best = max(eligible, key=lambda i: gains[i])  # the first of equals: the guard's order breaks ties
    return [ranked[best], *(s for i, s in enumerate(ranked) if i != best)]


def answer_candidates(ranked: Sequence[Scored]) -> list[int]:
    """The positions `answering_first` may choose from: non-empty, and no more flawed than the
    best. Only these need their gains (the others' are never read)."""
    if not ranked:
        return []
    bar = _penalty(ranked[0].flags)
    return [i for i, s in enumerate(ranked) if not s.flags.empty and _penalty(s.flags) <= bar]


# -- loop retries -----------------------------------------------------------------------------


def _raised(value: float, step: float, cap: float, attempt: int) -> float:
    """`value` raised `attempt` steps, not past `cap`, and never lowered (a value above the cap stays)."""
    # Rounded so 0.7 + 2 * 0.15 is 1.0, not 1.0000000000000002, in settings shown to the player.
    return max(value, round(min(cap, value + step * attempt), 6))


def loop_retry_sampling(temperature: float, repetition_penalty: float, attempt: int) -> tuple[float, float]:
    """Sampling (temperature, repetition_penalty) for automatic retry number `attempt` after a loop.

    Attempt 0 is the original draw (unchanged); each further attempt raises both by one step,
    capped at RETRY_TEMPERATURE_CAP and RETRY_PENALTY_CAP. Values the player set above a cap are
    kept, not lowered.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more, got {attempt}")
    return (
        _raised(temperature, RETRY_TEMPERATURE_STEP, RETRY_TEMPERATURE_CAP, attempt),
        _raised(repetition_penalty, RETRY_PENALTY_STEP, RETRY_PENALTY_CAP, attempt),
    )
