"""The engine on the tiny random GPT-2, one request at a time: cache reuse is exact, greedy is
reproducible, stops and stats are right (tests/model/test_batching.py has requests side by side).

White-box where it must be: cache correctness is checked by running the engine's own prefill on a
reused (cropped, branch-selected) session cache and comparing its logits with a fresh forward pass.
"""

from __future__ import annotations

import pytest
import torch

from aidungeon.core.config import Sampling
from aidungeon.model.engine import Engine
from aidungeon.model.loader import load_model
from aidungeon.model.protocol import GenerationStats
from aidungeon.model.sampling import MIN_NEW_TOKENS
from aidungeon.model.sessions import CACHE_CHUNK, SessionCache, capacity, common_prefix
from aidungeon.storage.paths import default_paths

GREEDY = Sampling(temperature=0.0, max_new_tokens=12)
SAMPLE = Sampling(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12)
OPENING = "You are a knight in a ruined castle.\n> You open the door.\n"


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tmp_path_factory):
    paths = default_paths({"AIDUNGEON_HOME": str(tmp_path_factory.mktemp("engine-home"))})
    return load_model(str(tiny_model_dir), paths, device="cpu", dtype="float32")


@pytest.fixture
def engine(loaded) -> Engine:
    return Engine.for_model(loaded)


@pytest.fixture
def prompt(engine) -> list[int]:
    return engine.encode(OPENING)


def fresh_logits(engine: Engine, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return engine.model(input_ids=torch.tensor([ids])).logits[:, -1, :].float()


def prefill(engine: Engine, ids: list[int]) -> tuple[torch.Tensor, GenerationStats, SessionCache]:
    """Run the engine's prefill alone (as its scheduler does), then give the session its cache
    back; return the logits, the stats and the cache."""
    job = engine.generate(ids, GREEDY)._job
    engine._pending.remove(job)
    with torch.inference_mode():
        engine._prefill(job, None)
    assert job.logits is not None and job.entry is not None
    logits, entry = job.logits, job.entry
    engine._release(job, keep=True)
    return logits, job.stats, entry


def session_cache(engine: Engine, session: str = "") -> SessionCache:
    entry = engine.sessions.take(session)
    assert entry is not None
    engine.sessions.put(session, entry, in_use_bytes=0)
    return entry


def assert_cache_is_exact(engine: Engine, ids: list[int], reused: int) -> None:
    logits, stats, entry = prefill(engine, ids)
    assert stats.reused_tokens == reused
    assert entry.tokens == ids and not entry.branches
    assert int(entry.cache.get_seq_length()) == len(ids)
    torch.testing.assert_close(logits, fresh_logits(engine, ids), atol=1e-4, rtol=1e-4)


def fed_rows(prompt: list[int], generation) -> list[list[int]]:
    """The tokens each cache row holds after a generation that ran its full length: all but the last."""
    return [prompt + c.token_ids[:-1] for c in generation.candidates]


# -- cache correctness -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("diverge", lambda a, g: 10),  # B = A[:10] + other tokens
        ("continue", lambda a, g: len(a) + len(g) - 1),  # B = A + generated + action
        ("prefix", lambda a, g: 9),  # B = A[:10] (after /undo): one token is re-run for its logits
        ("same", lambda a, g: len(a) - 1),  # B = A
        ("other", lambda a, g: 0),  # nothing shared
        ("one token", lambda a, g: 0),  # a one-token prompt always runs that token
    ],
)
def test_prefill_on_a_reused_cache_matches_a_fresh_forward(engine, prompt, case, expected) -> None:
    engine.eos_ids = set()
    generation = engine.generate(prompt, GREEDY)
    generated = generation.run()[0].token_ids
    assert len(generated) == GREEDY.max_new_tokens
    other = engine.encode(" The goblin laughs at you.")
    action = engine.encode("\n> You run away.\n")
    new = {
        "diverge": prompt[:10] + other,
        "continue": prompt + generated + action,
        "prefix": prompt[:10],
        "same": list(prompt),
        "other": other,
        "one token": prompt[:1],
    }[case]
    assert_cache_is_exact(engine, new, expected(prompt, generated))


def test_reused_tokens_are_reported_by_generate(engine, prompt) -> None:
    engine.eos_ids = set()
    engine.generate(prompt, GREEDY).run()
    second = engine.generate(prompt[:10] + engine.encode(" The goblin laughs."), GREEDY)
    second.run()
    assert second.stats.reused_tokens == 10
    assert second.stats.prefill_tokens == second.stats.prompt_tokens - 10


def test_greedy_with_cache_reuse_equals_greedy_without(loaded, prompt) -> None:
    reusing = Engine.for_model(loaded)
    fresh = Engine.for_model(loaded)
    ids = list(prompt)
    expected_reuse = 0
    actions = ["\n> You look around.\n", "\n> You draw your sword.\n", "\n> You run.\n"]
    for turn, action in enumerate(actions):
        a = reusing.generate(ids, GREEDY)
        b = fresh.generate(ids, GREEDY, reuse_cache=False)
        pieces = list(a)
        ca, cb = a.candidates[0], b.run()[0]
        assert ca.token_ids == cb.token_ids, f"turn {turn}"
        assert ca.text == cb.text == "".join(pieces)
        assert ca.mean_logprob == pytest.approx(cb.mean_logprob, abs=1e-4)
        assert a.stats.reused_tokens == expected_reuse
        assert b.stats.reused_tokens == 0
        assert (a.stats.cache_hit, b.stats.cache_hit) == (turn > 0, False)
        if ca.stop_reason == "length":
            # every generated token but the last was fed to the model and is in the cache
            expected_reuse = len(ids) + len(ca.token_ids) - 1
        else:
            expected_reuse = len(ids) + len(ca.token_ids)  # the end token was fed, and differs from the action
        ids = ids + ca.token_ids + reusing.encode(action)


# -- seeds -------------------------------------------------------------------------------------


def test_same_seed_same_text_different_seed_different_text(engine, prompt) -> None:
    first = engine.generate(prompt, SAMPLE, seed=11).run()[0]
    again = engine.generate(prompt, SAMPLE, seed=11).run()[0]  # this one reuses the cache
    other = engine.generate(prompt, SAMPLE, seed=12).run()[0]
    assert first.token_ids == again.token_ids
    assert first.text == again.text
    assert first.token_ids != other.token_ids


def test_seeded_sampling_is_the_same_with_and_without_the_cache(loaded, prompt) -> None:
    a = Engine.for_model(loaded)
    b = Engine.for_model(loaded)
    a.generate(prompt, SAMPLE, seed=1).run()
    ids = prompt + a.encode(" The door creaks.\n> You enter.\n")
    with_cache = a.generate(ids, SAMPLE, seed=5)
    without = b.generate(ids, SAMPLE, seed=5, reuse_cache=False)
    assert with_cache.run()[0].token_ids == without.run()[0].token_ids
    assert with_cache.stats.reused_tokens == len(prompt)


# -- batches of candidates ---------------------------------------------------------------------


def test_n_candidates_come_back_and_differ(engine, prompt) -> None:
    engine.eos_ids = set()
    generation = engine.generate(prompt, SAMPLE, n=3, seed=3)
    pieces = list(generation)
    candidates = generation.candidates
    assert len(candidates) == 3
    assert all(len(c.token_ids) == SAMPLE.max_new_tokens for c in candidates)
    assert all(c.stop_reason == "length" for c in candidates)
    assert "".join(pieces) == candidates[0].text
    assert len({tuple(c.token_ids) for c in candidates}) == 3
    assert generation.stats.new_tokens == SAMPLE.max_new_tokens


@pytest.mark.parametrize("row", [0, 1, 2])
def test_next_call_reuses_the_row_with_the_longest_prefix(engine, prompt, row) -> None:
    engine.eos_ids = set()
    generation = engine.generate(prompt, SAMPLE, n=3, seed=3)
    generation.run()
    rows = fed_rows(prompt, generation)
    assert len({r[len(prompt)] for r in rows}) == 3, "the rows part at their first token (almost surely)"
    chosen = generation.candidates[row].token_ids
    new = prompt + chosen[:6] + engine.encode("\n> You wait.\n")
    expected = max(common_prefix(r, new) for r in rows)
    assert expected >= len(prompt) + 6
    assert_cache_is_exact(engine, new, expected)
    # and the cache now has a single row that serves a batch again
    generation = engine.generate(new + engine.encode(" The"), SAMPLE, n=2, seed=4)
    generation.run()
    assert generation.stats.reused_tokens == len(new)
    assert len(generation.candidates) == 2


def test_batched_greedy_rows_equal_a_single_greedy_row(engine, prompt) -> None:
    single = engine.generate(prompt, GREEDY, reuse_cache=False).run()[0]
    batch = engine.generate(prompt, GREEDY, n=3, reuse_cache=False).run()
    assert [c.token_ids for c in batch] == [single.token_ids] * 3


# -- stop rules and end tokens -----------------------------------------------------------------


def cut_at_e(text: str) -> int | None:
    index = text.find("e")
    return index if index >= 0 else None


def test_stop_rule_cuts_the_text_and_stops_early(engine, prompt) -> None:
    sampling = Sampling(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=16)
    generation = engine.generate(prompt, sampling, stop=cut_at_e, seed=2)
    pieces = list(generation)
    candidate = generation.candidates[0]
    assert candidate.stop_reason == "stop"
    assert "".join(pieces) == candidate.text
    full = engine.decode(candidate.token_ids)
    assert "e" not in candidate.text
    assert full.startswith(candidate.text)
    assert full[len(candidate.text)] == "e"
    assert "e" not in engine.decode(candidate.token_ids[:-1]), "stopped at the token that brought the 'e'"
    assert generation.stats.new_tokens == len(candidate.token_ids) < sampling.max_new_tokens


def test_each_row_stops_on_its_own(engine, prompt) -> None:
    sampling = Sampling(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=16)
    generation = engine.generate(prompt, sampling, n=3, stop=cut_at_e, seed=2)
    generation.run()
    lengths = [len(c.token_ids) for c in generation.candidates]
    assert all(c.stop_reason == "stop" for c in generation.candidates)
    assert all("e" not in c.text for c in generation.candidates)
    assert generation.stats.new_tokens == max(lengths)


def forced_token(engine: Engine, prompt: list[int]) -> int:
    """A token the model would not pick again after seeing it four times (so step 4 can end)."""
    order = fresh_logits(engine, prompt)[0].argsort().tolist()
    for token in order:
        if token in engine.tokenizer.all_special_ids:
            continue
        if fresh_logits(engine, prompt + [token] * MIN_NEW_TOKENS)[0].argmax().item() != token:
            return token
    raise AssertionError("no token found")


def test_end_token_ends_a_row_but_not_before_min_new_tokens(engine, prompt) -> None:
    vocab = engine.model.config.vocab_size
    keep = forced_token(engine, prompt)
    # Every other id is an end token: the first MIN_NEW_TOKENS steps may only pick `keep`,
    # then the model's choice (not `keep`) ends the row.
    engine.eos_ids = set(range(vocab)) - {keep}
    generation = engine.generate(prompt, GREEDY, n=2)
    pieces = list(generation)
    for candidate in generation.candidates:
        assert candidate.token_ids == [keep] * MIN_NEW_TOKENS
        assert candidate.stop_reason == "eos"
        assert candidate.text == engine.decode([keep] * MIN_NEW_TOKENS)
    assert "".join(pieces) == generation.candidates[0].text
    assert generation.stats.new_tokens == MIN_NEW_TOKENS + 1


def test_real_end_token_is_known(engine, loaded) -> None:
    assert engine.eos_ids == {loaded.tokenizer.eos_token_id}


# -- interruptions and errors ------------------------------------------------------------------


def test_an_exception_in_the_stop_rule_reaches_the_reader_and_the_cache_stays_exact(engine, prompt) -> None:
    engine.generate(prompt, GREEDY).run()
    calls = 0

    def interrupt(text: str) -> int | None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return None

    ids = prompt + engine.encode(" The hall is dark.")
    generation = engine.generate(ids, GREEDY, stop=interrupt)
    with pytest.raises(KeyboardInterrupt):
        list(generation)
    assert engine._active == []
    after = engine.generate(ids, GREEDY)
    after.run()
    # the two tokens fed before the error are in the cache too; the prompt is reused
    assert after.stats.reused_tokens == len(ids) - 1
    reference = Engine(engine.model, engine.tokenizer, window=engine.window).generate(ids, GREEDY).run()
    assert after.candidates[0].token_ids == reference[0].token_ids
    again = engine.generate(ids, GREEDY)
    again.run()
    assert again.stats.reused_tokens == len(ids) - 1


def test_prompt_too_long_or_empty_raises(loaded) -> None:
    engine = Engine(loaded.model, loaded.tokenizer, window=64)
    sampling = Sampling(temperature=0.0, max_new_tokens=8)
    with pytest.raises(ValueError) as info:
        engine.generate([5] * 57, sampling)
    assert str(info.value) == "prompt of 57 tokens leaves no room in a 64-token window"
    with pytest.raises(ValueError, match="the prompt is empty"):
        engine.generate([], sampling)
    fits = engine.generate([5] * 56, sampling)
    assert len(fits.run()[0].token_ids) <= 8


def test_streaming_does_not_leak_inference_mode_to_the_caller(engine, prompt) -> None:
    generation = engine.generate(prompt, GREEDY)
    pieces = iter(generation)
    next(pieces)
    try:
        assert not torch.is_inference_mode_enabled()
    finally:
        list(pieces)


def test_closing_a_stale_generation_does_not_break_a_newer_one(engine, prompt) -> None:
    expected = Engine(engine.model, engine.tokenizer, window=engine.window).generate(prompt, GREEDY).run()
    stale = iter(engine.generate(prompt + engine.encode(" The"), GREEDY))
    next(stale)
    current = engine.generate(prompt, GREEDY)
    pieces = iter(current)
    next(pieces)
    stale.close()  # e.g. garbage collection of a generation the UI stopped reading after Ctrl-C
    list(pieces)
    assert current.candidates[0].token_ids == expected[0].token_ids
    assert "" in engine.sessions


def test_a_generation_resumed_after_a_newer_one_on_its_session_finishes_as_alone(engine, prompt) -> None:
    longer = prompt + engine.encode(" The")
    alone = Engine(engine.model, engine.tokenizer, window=engine.window).generate(longer, GREEDY).run()
    older = iter(engine.generate(longer, GREEDY))
    next(older)
    current = engine.generate(prompt, GREEDY)  # the session's cache is busy: this one starts afresh
    current.run()
    list(older)
    assert older.gi_frame is None  # exhausted, no error
    assert engine.generate(longer, GREEDY).run()[0].token_ids == alone[0].token_ids
    # the session keeps the cache of the generation that finished last
    again = engine.generate(longer, GREEDY)
    again.run()
    assert again.stats.reused_tokens == len(longer) - 1


def test_inference_mode_is_off_after_an_interrupted_generation(engine, prompt) -> None:
    def interrupt(text: str) -> int | None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.generate(prompt, GREEDY, stop=interrupt).run()
    assert not torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled()


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
def test_older_cache_keyword_gives_the_same_cache(engine, prompt) -> None:
    # transformers before 5.24 takes `past_key_values=`; the engine picks the keyword the model knows
    assert engine._cache_arg == "cache"
    engine._cache_arg = "past_key_values"
    engine.eos_ids = set()
    generated = engine.generate(prompt, GREEDY).run()[0].token_ids
    assert_cache_is_exact(engine, prompt + generated + engine.encode("\n> You hide.\n"), len(prompt) + 11)


def test_unseeded_generation_leaves_the_global_rng_alone(engine, prompt) -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    engine.generate(prompt, SAMPLE).run()
    assert torch.equal(torch.random.get_rng_state(), state)


# -- stats -------------------------------------------------------------------------------------


def test_stats_of_a_first_and_a_second_turn(engine, prompt) -> None:
    engine.eos_ids = set()
    first = engine.generate(prompt, GREEDY)
    first.run()
    stats = first.stats
    assert stats.prompt_tokens == len(prompt)
    assert stats.reused_tokens == 0
    assert stats.prefill_tokens == len(prompt)
    assert stats.new_tokens == GREEDY.max_new_tokens
    assert 0 < stats.ttft_s <= stats.total_s
    assert stats.decode_s > 0
    assert stats.decode_tok_s > 0
    assert not stats.cache_hit
    ids = prompt + first.candidates[0].token_ids + engine.encode("\n> You go.\n")
    second = engine.generate(ids, GREEDY)
    second.run()
    stats = second.stats
    assert stats.prompt_tokens == len(ids)
    assert stats.reused_tokens == len(prompt) + GREEDY.max_new_tokens - 1
    assert stats.prefill_tokens == stats.prompt_tokens - stats.reused_tokens
    assert stats.cache_hit


def test_stats_are_filled_only_as_the_stream_is_read(engine, prompt) -> None:
    generation = engine.generate(prompt, GREEDY)
    assert generation.stats.new_tokens == 0
    assert generation.candidates == []
    generation.run()
    assert generation.stats.new_tokens > 0
    assert len(generation.candidates) == 1


@pytest.mark.parametrize(
    ("prompt_tokens", "reused", "hit"),
    [(0, 0, False), (10, 5, True), (10, 4, False), (11, 5, True), (11, 4, False), (100, 99, True)],
)
def test_cache_hit_means_at_least_half_reused(prompt_tokens, reused, hit) -> None:
    stats = GenerationStats(prompt_tokens=prompt_tokens, reused_tokens=reused)
    assert stats.cache_hit is hit
    assert stats.prefill_tokens == prompt_tokens - reused


@pytest.mark.parametrize(
    ("new_tokens", "decode_s", "rate"), [(0, 1.0, 0.0), (1, 1.0, 0.0), (11, 2.0, 5.0), (5, 0.0, 0.0)]
)
def test_decode_rate_counts_steps_after_the_first_token(new_tokens, decode_s, rate) -> None:
    assert GenerationStats(new_tokens=new_tokens, decode_s=decode_s).decode_tok_s == rate


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [([], [], 0), ([1, 2, 3], [1, 2, 4], 2), ([1, 2], [1, 2, 3], 2), ([1], [2], 0), ([1, 2], [1, 2], 2)],
)
def test_common_prefix(a, b, n) -> None:
    assert common_prefix(a, b) == n


# -- static cache capacity ----------------------------------------------------------------------


def test_static_cache_is_sized_in_chunks_and_grows_by_copy(engine, prompt) -> None:
    engine.eos_ids = set()
    engine.generate(prompt, GREEDY).run()
    assert session_cache(engine).cache.get_max_length() == CACHE_CHUNK
    story = (prompt + engine.encode(" The goblin laughs at you and runs into the dark hall.")) * 12
    assert len(story) > CACHE_CHUNK
    # A longer story that starts with the cached tokens keeps them: the cache grows, it is not refilled.
    longer = prompt + story[: CACHE_CHUNK + 40 - len(prompt)]
    shared = common_prefix(session_cache(engine).tokens, longer)
    assert shared >= len(prompt)
    assert_cache_is_exact(engine, longer, shared)
    assert session_cache(engine).cache.get_max_length() == 2 * CACHE_CHUNK


def test_static_cache_never_exceeds_the_window() -> None:
    assert capacity(1, 300) == CACHE_CHUNK
    assert capacity(CACHE_CHUNK + 1, 300) == 300


# -- the engine protocol -----------------------------------------------------------------------


def test_a_cancel_token_stops_between_steps_and_leaves_a_reusable_cache(engine, prompt) -> None:
    from aidungeon.core.cancel import CancelToken
    from aidungeon.model.protocol import Request, StopReason

    cancel = CancelToken()
    handle = engine.submit(Request(session="s", prompt_ids=tuple(prompt), sampling=GREEDY, cancel=cancel))
    streamed = ""
    for piece in handle:
        streamed += piece
        cancel.set()
    result = handle.result()
    assert result.cancelled and result.completions[0].stop_reason is StopReason.CANCELLED
    assert result.stats.new_tokens < GREEDY.max_new_tokens
    assert result.completions[0].text.startswith(streamed) and streamed
    fed = prompt + result.completions[0].token_ids
    after = engine.generate(fed, GREEDY, session="s")
    after.run()
    # everything fed before the cancel is still in the cache (the last sampled token never was)
    assert after.stats.reused_tokens == len(fed) - 1
    reference = Engine(engine.model, engine.tokenizer, window=engine.window).generate(fed, GREEDY).run()
    assert after.candidates[0].token_ids == reference[0].token_ids


def test_a_half_written_character_is_never_streamed_nor_kept() -> None:
    from aidungeon.model.engine import _Row
    from aidungeon.model.protocol import StopReason

    row = _Row()
    row.ids, row.text = [1, 2], "You find gold \ufffd"  # the last token holds half of "é"
    assert row.piece() == "You find gold "
    row.ids, row.text = [1, 2, 3], "You find gold é"
    assert row.piece() == "é"
    row.ids, row.text = [1, 2, 3, 4], "You find gold é \ufffd\ufffd"  # the token limit ends it there
    row.stop_reason = StopReason.LENGTH
    assert row.piece() == " " and row.completion().text == "You find gold é "
