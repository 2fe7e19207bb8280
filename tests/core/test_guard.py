"""Tests for `aidungeon.core.guard` on hand-made strings: flags, scores, ranking, metrics, retries."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest

from aidungeon.core import guard
from aidungeon.core.cleanup import pipeline
from aidungeon.core.guard import (
    EMPTY_PENALTY,
    FIRST_PERSON_PENALTY,
    FRAGMENT_PENALTY,
    JUNK_PENALTY,
    LOGPROB_FLOOR,
    LOOP_PENALTY,
    LOOP_SIMILARITY,
    PLAYER_TURN_PENALTY,
    PLAYER_TURN_SHOWN_PENALTY,
    REPEAT_PENALTY,
    REPEATED_NGRAM_WEIGHT,
    RETRY_PENALTY_CAP,
    RETRY_TEMPERATURE_CAP,
    SELF_REPEAT_FREE,
    SELF_REPEAT_WEIGHT,
    Flags,
    Scored,
    assess,
    distinct_n,
    has_bad_special_token,
    has_junk,
    is_first_person,
    is_loop,
    loop_retry_sampling,
    rank,
    renames_player,
    repeated_ngram_share,
    score,
    self_repeated_share,
)

CLOSET = "You check the closet. It is empty."

# -- assess: each flag on and off ----------------------------------------------------------------


def test_clean_candidate_has_no_flags() -> None:
    text = "You open the door. A cold wind blows in."
    assert assess(text, text, recent=["The hall is quiet."]) == Flags()


def test_player_turn_in_raw_is_flagged_even_when_cut() -> None:
    raw = "The goblin snarls.\n> You attack the goblin"
    shown = pipeline(raw)
    assert shown == "The goblin snarls."
    assert assess(raw, shown, recent=[]) == Flags(player_turn=True)


def test_player_turn_left_in_shown_text_is_flagged_separately() -> None:
    text = "The merchant frowns.\nYou ask him about the price."
    assert assess(text, text, recent=[]) == Flags(player_turn=True, player_turn_shown=True)


def test_player_name_speaking_counts_only_when_named() -> None:
    raw = "The orc roars.\nAria: I draw my sword."
    assert assess(raw, "The orc roars.", recent=[], player_name="Aria") == Flags(player_turn=True)
    assert assess(raw, "The orc roars.", recent=[]) == Flags()


def test_fragment() -> None:
    assert assess("You open the door and", "You open the door and", recent=[]) == Flags(fragment=True)
    assert assess("You open the door.", "You open the door.", recent=[]).fragment is False


def test_repeated_sentence_and_ngram_share() -> None:
    recent = ["The old man smiles at you warmly. He hands you a key and points to the stairs behind the bar."]
    shown = "The old man smiles at you warmly. You take the key and leave."
    # 11 word 3-grams in `shown`; the 5 inside "the old man smiles at you warmly" were told.
    assert assess(shown, shown, recent=recent) == Flags(repeats=1, repeated_ngrams=5 / 11)


def test_short_repeated_sentences_do_not_count() -> None:
    flags = assess("He nods. You leave the inn.", "He nods. You leave the inn.", recent=["He nods."])
    assert flags.repeats == 0
    assert flags.repeated_ngrams == 0.0


def test_loop() -> None:
    shown = "You check the closet. It is empty!"
    # "It is empty" is under four words, so only the first sentence counts as a verbatim repeat.
    assert assess(shown, shown, recent=["The hall is dark.", CLOSET]) == Flags(
        loop=True, repeats=1, repeated_ngrams=1.0
    )


@pytest.mark.parametrize(
    "raw",
    [
        "The tavern is loud.\nChapter 3\nThe next morning",
        "The tavern is loud. See https://example.com for more.",
        "The tavern is loud.<|endoftext|>Welcome to my blog about dragons.",
        "The tavern is loud.\nassistant\nSure, here is more.",
        "The tavern is loud.<|im_end|><|im_start|>user",
        "The tavern is loud.\nUser: continue",
        "The tavern is loud.\n<div>Menu</div></s>",  # junk before a clean end still counts
    ],
)
def test_junk_and_bad_special_tokens(raw: str) -> None:
    assert has_junk(raw)
    assert assess(raw, "The tavern is loud.", recent=[]) == Flags(junk=True)


@pytest.mark.parametrize(
    "raw",
    [
        "The door opens.",
        "The door opens.<|endoftext|>",
        "The door opens.<|im_end|>\n",
        "The door opens.<|eot_id|><|end_of_text|>",
        "The door opens.<|im_",  # a stop string halted the stream half-way through the end token
        "The door opens.</s>",
        "The door opens.<end_of_turn>",
    ],
)
def test_a_clean_end_token_is_not_junk(raw: str) -> None:
    assert not has_bad_special_token(raw)
    assert not has_junk(raw)
    assert assess(raw, "The door opens.", recent=[]) == Flags()


@pytest.mark.parametrize("shown", ["", "   \n "])
def test_empty(shown: str) -> None:
    # Empty is only empty: not a fragment, and not a loop even when a recent result was empty too.
    assert assess("<|endoftext|>", shown, recent=["", CLOSET]) == Flags(empty=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I draw my sword.", True),
        ("My hands shake.", True),
        ("The goblin hits me.", True),
        ("I'm tired.", True),
        ('"I am lost," I say.', True),
        ("The sword is mine.", True),
        ("You draw your sword.", False),
        ('The guard says, "I will not let you pass."', False),
        ("“I know my way,” she whispers.", False),
        ('He shouts "Stop, I beg you', False),  # an unclosed quote runs to the end
        ("Myra, Imogen and Ian wait for you.", False),
        ("So far, so nice. Now let's get back down.", True),
        ("We are on the right track.", True),
        ("The guards let us pass into our camp.", True),
        ("The US embassy is closed.", False),
        ("Let’s see what the cave holds.", True),
        ('"Let\'s go," she says.', False),
        ("", False),
    ],
)
def test_first_person(text: str, expected: bool) -> None:
    assert is_first_person(text) is expected
    assert assess(text, text, recent=[]).first_person is expected


def test_repeated_ngram_share_edges() -> None:
    assert repeated_ngram_share("You go.", ["You go."]) == 0.0  # fewer than 3 words: no 3-grams
    assert repeated_ngram_share("a b c d", ["a b c"]) == 0.5
    # 3-grams never span two recent results: "b c d" is not told by "a b" + "c d".
    assert repeated_ngram_share("b c d", ["a b", "c d"]) == 0.0
    assert repeated_ngram_share("A, B. C!", ["a b c"]) == 1.0


def test_self_repeated_share_counts_what_the_text_already_said() -> None:
    assert self_repeated_share("Go.") == 0.0  # no word pairs
    assert self_repeated_share("You open the door and walk in.") == 0.0
    assert self_repeated_share("a b c a b c") == 0.4  # of 5 pairs, "a b" and "b c" the second time
    # Case and punctuation do not hide a repeat.
    assert self_repeated_share("You will not leave. YOU WILL NOT, leave!") == pytest.approx(3 / 7)


def test_a_turn_that_repeats_itself_loses_to_a_less_likely_one_that_does_not() -> None:
    """Turns from the blind reads (rep-penalty-1.0), the first labelled repetition by its readers:
    a repeat is likely, so the model's own confidence alone would pick it."""
    repeats = (
        "You will take only the bravest of your comrades with you. You will not leave them. "
        "You will do it. You will not leave. Your comrades will not fight you."
    )
    fresh = "Aldermendrech's not a good place to live. He's a king's son, and the king wants you in the throne room."
    assert assess(repeats, repeats, recent=[]).self_repeated > 0.1
    assert assess(fresh, fresh, recent=[]).self_repeated == 0.0
    best = rank([(repeats, repeats, -1.2), (fresh, fresh, -1.9)], recent=[])[0]
    assert best.text == fresh


def test_saying_the_actions_words_again_costs_nothing() -> None:
    """An answer names what the player acted on again: a few repeated pairs are free."""
    answer = "You open the door. It creaks, and behind the door a narrow stair leads down into the dark cellar."
    assert 0.0 < self_repeated_share(answer) <= SELF_REPEAT_FREE
    assert score(assess(answer, answer, recent=[]), -1.5) == -1.5


# -- score ---------------------------------------------------------------------------------------


def test_score_is_the_documented_weighted_sum() -> None:
    assert score(Flags(), -2.5) == -2.5
    flags = Flags(loop=True, repeats=2, repeated_ngrams=0.5, fragment=True, first_person=True, self_repeated=0.25)
    expected = -1.0 - LOOP_PENALTY - 2 * REPEAT_PENALTY - 0.5 * REPEATED_NGRAM_WEIGHT
    expected -= (0.25 - SELF_REPEAT_FREE) * SELF_REPEAT_WEIGHT
    expected -= FRAGMENT_PENALTY + FIRST_PERSON_PENALTY
    assert score(flags, -1.0) == pytest.approx(expected)
    flags = Flags(empty=True, junk=True, player_turn=True, player_turn_shown=True)
    expected = -3.0 - EMPTY_PENALTY - JUNK_PENALTY - PLAYER_TURN_PENALTY - PLAYER_TURN_SHOWN_PENALTY
    assert score(flags, -3.0) == pytest.approx(expected)


@pytest.mark.parametrize("logprob", [math.nan, -math.inf, -1e9])
def test_score_clamps_unusable_logprobs(logprob: float) -> None:
    assert score(Flags(), logprob) == LOGPROB_FLOOR


def test_big_penalties_outweigh_any_logprob_gap() -> None:
    for flags in (Flags(loop=True), Flags(junk=True), Flags(player_turn_shown=True), Flags(empty=True)):
        assert score(flags, 0.0) < score(Flags(), LOGPROB_FLOOR)


# -- rank ----------------------------------------------------------------------------------------


def _order(ranked: list[Scored]) -> list[str]:
    return [item.text for item in ranked]


def test_clean_beats_a_loop_even_with_a_lower_logprob() -> None:
    clean = "You leave the room and walk down the hall."
    ranked = rank([(CLOSET, CLOSET, -0.5), (clean, clean, -3.5)], recent=[CLOSET])
    assert _order(ranked) == [clean, CLOSET]
    assert ranked[1].flags.loop


def test_second_person_beats_first_person() -> None:
    first, second = "I walk down the hall.", "You walk down the hall."
    ranked = rank([(first, first, -1.0), (second, second, -2.0)], recent=[])
    assert _order(ranked) == [second, first]


def test_logprob_breaks_ties_and_equal_scores_keep_input_order() -> None:
    a, b, c = "You sit down.", "You stand up.", "You look around."
    ranked = rank([(a, a, -2.0), (b, b, -1.0), (c, c, -2.0)], recent=[])
    assert _order(ranked) == [b, a, c]
    assert [item.mean_logprob for item in ranked] == [-1.0, -2.0, -2.0]


@pytest.mark.parametrize(
    "flawed",
    [
        ("You open the door and", "You open the door and"),  # fragment
        ("The hall is quiet.\nYou say hello.", "The hall is quiet."),  # player turn, cut
        ("The hall is quiet.\nComments (3)", "The hall is quiet."),  # junk, cut
        ("The old man smiles at you warmly.", "The old man smiles at you warmly."),  # repeat
    ],
)
def test_medium_flaws_lose_to_a_clean_candidate_with_a_worse_logprob(flawed: tuple[str, str]) -> None:
    clean = "You thank him and step outside."
    recent = ["The old man smiles at you warmly. He hands you a key."]
    ranked = rank([(*flawed, -1.0), (clean, clean, -2.0)], recent=recent)
    assert _order(ranked) == [clean, flawed[1]]


def test_empty_is_always_last() -> None:
    # 350 verbatim repeats plus a loop would outweigh the empty penalty: rank still puts empty last.
    wall = " ".join(f"The guard number {i} stands by the gate." for i in range(350))
    bad = "The tavern is loud.\nChapter 3"
    ranked = rank(
        [("", "", 0.0), (wall, wall, LOGPROB_FLOOR), (bad, "The tavern is loud. And", -4.0), ("", "", -1.0)],
        recent=[wall],
    )
    assert ranked[1].score < score(Flags(empty=True), 0.0)
    assert [item.flags.empty for item in ranked] == [False, False, True, True]
    assert [item.mean_logprob for item in ranked[2:]] == [0.0, -1.0]


def test_rank_keeps_raw_and_shown_and_scores() -> None:
    raw = "The goblin snarls.\n> You attack the goblin"
    (only,) = rank([(raw, "The goblin snarls.", -1.5)], recent=[])
    assert only == Scored(
        text="The goblin snarls.",
        raw=raw,
        mean_logprob=-1.5,
        flags=Flags(player_turn=True),
        score=-1.5 - PLAYER_TURN_PENALTY,
    )
    assert rank([], recent=[]) == []


def test_a_turn_as_the_game_plays_it() -> None:
    """n raw candidates -> cleanup.pipeline -> rank: of the clean, new ones the likeliest wins.

    The pipeline turns first-person narration into the game's second person, so that candidate
    is clean too and its better log-probability puts it first."""
    recent = ["You enter the cellar. Barrels line the walls.", CLOSET]
    raws = [
        ("You check the closet. It is empty.\n> check closet", -0.4),
        ("I look at the barrels. They smell of wine.", -1.1),
        ("You pry open a barrel. Dark wine spills across the floor.", -1.9),
        ("You pry open a barrel and<|endoftext|>Chapter 4: The Vineyard", -1.2),
    ]
    ranked = rank([(raw, pipeline(raw, recent=recent), lp) for raw, lp in raws], recent=recent)
    # The pipeline already dropped the repeated sentence and cut the player turn and the fragment.
    assert _order(ranked) == [
        "You look at the barrels. They smell of wine.",
        "You pry open a barrel. Dark wine spills across the floor.",
        "It is empty.",
        "",
    ]
    assert [item.flags for item in ranked] == [
        Flags(),
        Flags(),
        Flags(player_turn=True, repeated_ngrams=1.0),
        Flags(junk=True, empty=True),
    ]


# -- is_loop -------------------------------------------------------------------------------------

TEN = "you walk to the old door and knock on it"
NINE_OF_TEN = "you walk to the old door and knock on wood"  # 9 of 10 words match: similarity 0.9 exactly


def test_is_loop_threshold_is_strict() -> None:
    assert LOOP_SIMILARITY == 0.7
    assert is_loop(TEN, [NINE_OF_TEN])
    assert is_loop(TEN, [NINE_OF_TEN], threshold=0.89)
    assert not is_loop(TEN, [NINE_OF_TEN], threshold=0.9)


def test_a_template_filled_in_anew_is_a_loop() -> None:
    """Turns 86-89 of a 100-turn bench adventure (the default model, shipped settings of 8b03b82)."""
    recent = ["You can see she's thinking.", "You're looking at the object, and you're not sure what's going on."]
    assert is_loop("You can see she's looking at you.", ["You can see she's looking at your bag.", *recent])
    assert not is_loop("She hands you the key and runs for the door.", recent)


def test_is_loop_above_threshold() -> None:
    twenty = TEN + " " + TEN
    nineteen = TEN + " " + NINE_OF_TEN  # 19 of 20 words: 0.95
    assert is_loop(twenty, [nineteen])
    assert not is_loop(twenty, [nineteen], threshold=0.95)


def test_is_loop_checks_every_recent_result_and_ignores_case_and_punctuation() -> None:
    assert is_loop("YOU CHECK THE CLOSET! It is empty...", ["The hall is dark.", CLOSET])
    assert not is_loop(CLOSET, ["The hall is dark.", "You leave."])


@pytest.mark.parametrize(("text", "recent"), [("", [""]), ("  ", [CLOSET]), (CLOSET, [""]), (CLOSET, [])])
def test_is_loop_never_on_empty(text: str, recent: list[str]) -> None:
    assert not is_loop(text, recent)


# -- distinct_n ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "n", "expected"),
    [
        (["the cat sat on the cat"], 2, 4 / 5),
        (["the cat sat on the cat"], 1, 4 / 6),
        (["a b", "a b"], 2, 1 / 2),  # n-grams do not cross texts (crossing would give 2/3)
        (["The cat.", "the CAT!"], 2, 1 / 2),
        (["one two three four"], 2, 1.0),
        (["one two three four"], 3, 1.0),
        (["go go go go"], 2, 1 / 3),
        (["one"], 2, 0.0),
        ([], 2, 0.0),
        (["", "   "], 1, 0.0),
    ],
)
def test_distinct_n(texts: list[str], n: int, expected: float) -> None:
    assert distinct_n(texts, n) == pytest.approx(expected)


def test_distinct_n_rejects_n_below_one() -> None:
    with pytest.raises(ValueError, match="n must be at least 1"):
        distinct_n(["a b"], 0)


# -- loop_retry_sampling -------------------------------------------------------------------------


def test_loop_retry_sampling_exact_steps() -> None:
    assert loop_retry_sampling(0.7, 1.1, 0) == (0.7, 1.1)
    assert loop_retry_sampling(0.7, 1.1, 1) == (0.85, 1.2)
    assert loop_retry_sampling(0.7, 1.1, 2) == (1.0, 1.3)
    assert loop_retry_sampling(0.7, 1.1, 3) == (1.15, 1.4)
    assert loop_retry_sampling(0.7, 1.1, 4) == (RETRY_TEMPERATURE_CAP, RETRY_PENALTY_CAP)


@pytest.mark.parametrize(("temperature", "penalty"), [(0.0, 1.0), (0.4, 1.0), (0.8, 1.2), (1.1, 1.45)])
def test_loop_retry_sampling_is_monotone_and_capped(temperature: float, penalty: float) -> None:
    steps = [loop_retry_sampling(temperature, penalty, attempt) for attempt in range(20)]
    for (t0, p0), (t1, p1) in itertools.pairwise(steps):
        assert t1 >= t0 and p1 >= p0
        assert (t1, p1) != (t0, p0) or (t1, p1) == (RETRY_TEMPERATURE_CAP, RETRY_PENALTY_CAP)
    assert steps[1][0] > temperature and steps[1][1] > penalty
    assert steps[-1] == (RETRY_TEMPERATURE_CAP, RETRY_PENALTY_CAP)
    assert all(t <= RETRY_TEMPERATURE_CAP and p <= RETRY_PENALTY_CAP for t, p in steps)


def test_loop_retry_sampling_never_lowers_what_the_player_set() -> None:
    assert loop_retry_sampling(1.4, 1.8, 3) == (1.4, 1.8)
    assert loop_retry_sampling(1.4, 1.0, 1) == (1.4, 1.1)


def test_loop_retry_sampling_rejects_negative_attempts() -> None:
    with pytest.raises(ValueError, match="attempt"):
        loop_retry_sampling(0.7, 1.1, -1)


# -- purity --------------------------------------------------------------------------------------


def test_guard_imports_no_torch() -> None:
    code = "import sys, aidungeon.core.guard; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_answering_first_moves_up_the_best_answer_among_the_least_flawed() -> None:
    ranked = guard.rank(
        [
            ("A raven lands.", "A raven lands.", -1.0),
            ("The old man smiles.", "The old man smiles.", -1.5),
            ("The old man and", "The old man and", -0.5),
        ],
        recent=[],
    )
    assert ranked[0].text == "A raven lands."  # the fragment ranks last despite its log-probability
    assert guard.answer_candidates(ranked) == [0, 1]
    picked = guard.answering_first(ranked, [0.1, 0.4, 0.9])
    assert [s.text for s in picked] == ["The old man smiles.", "A raven lands.", "The old man and"]
    assert guard.answering_first(ranked, [0.2, 0.2, 0.0]) == ranked  # a tie keeps the guard's order
    with pytest.raises(ValueError):
        guard.answering_first(ranked, [0.1])


@pytest.mark.parametrize(
    ("text", "name", "expected"),
    [
        ("My dear friend, your name is Grimbold Trollsbane. A hero of the land.", "Bob", True),
        ("You are Akira. I see a reflection of your face on the glass.", "Zara", True),
        ("You are Captain Vor'Thraxys, Lord Commander of the Silver Swords.", "Anne", True),
        ("You're now called Kalenne by the crew.", "Finn", True),
        ("Your name is Nico. You work at a small-town hospital.", "Nico", False),
        ("You are Captain Anne Bonny, and the ship is yours.", "Anne Bonny", False),
        ("You are Captain of the Black Swan now.", "Anne", False),  # a role, not a name
        ('"You are Akira, aren\'t you?" the old man asks.', "Zara", False),  # a character's mistake
        ("You are alone in the hall.", "Zara", False),
        ("Your name is Grimbold.", None, False),  # no name to compare with
    ],
)
def test_renames_player(text: str, name: str | None, expected: bool) -> None:
    assert renames_player(text, name) is expected
    assert assess(text, text, recent=[], player_name=name).renames_player is expected


def test_a_renamed_player_loses_to_a_clean_candidate() -> None:
    renamed, clean = "Your name is Grimbold. The king bows.", "The king bows to you, Bob."
    ranked = rank([(renamed, renamed, -0.5), (clean, clean, -2.0)], recent=[], player_name="Bob")
    assert [s.text for s in ranked] == [clean, renamed]
