"""The batching engine with several requests at once: batched rows give what each row gives
alone (logits and text, fp32 and 4-bit), cancelling or running out of memory never changes
another row's story, evicted sessions re-prefill exactly, seeds hold under batching, and models
without a lean step (transformers' forward, one request after another) give the same.

What a seed means under batching (engine.py): a request's seed seeds its own generator, which
samples its rows in order, so the same prompt, settings and seed give the same completions
alone or batched with any other requests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from test_fastpath import _load, grid_gpt2_dir, llama_dir  # noqa: F401 (fixtures)
from transformers import StaticCache

from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Sampling
from aidungeon.core.errors import OutOfMemoryError
from aidungeon.model.cpu.fastpath import Group, Suffix
from aidungeon.model.cpu.packing import int4_supported
from aidungeon.model.engine import Engine, Generation
from aidungeon.model.loader import LoadedModel
from aidungeon.model.protocol import Completion, StopReason

GREEDY = Sampling(temperature=0.0, max_new_tokens=10)
SAMPLE = Sampling(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=10)
STORIES = (
    "You are a knight in a ruined castle.\n> You open the door.\n",
    "The ship drifts toward the reef while the captain sleeps below deck and the storm grows",
    "A fox",
    "In the market square a merchant offers you a map of the northern mountains.",
)

needs_int4 = pytest.mark.skipif(not int4_supported(), reason="this torch has no CPU int4 kernel")


def run_together(generations: Iterable[Generation]) -> None:
    """Read several handles in turns, one piece at a time, as concurrent players would."""
    live = [iter(g) for g in generations]
    while live:
        for stream in list(live):
            try:
                next(stream)
            except StopIteration:
                live.remove(stream)


def alone(loaded: LoadedModel, prompt: list[int], sampling: Sampling, **kwargs: object) -> list[Completion]:
    return Engine.for_model(loaded).generate(prompt, sampling, **kwargs).run()  # type: ignore[arg-type]


def count_rows(engine: Engine) -> list[int]:
    """Record how many rows each lean step takes."""
    rows: list[int] = []
    step = engine.step
    assert step is not None

    def counting(tokens: torch.Tensor, groups: list[Group]) -> torch.Tensor:
        rows.append(int(tokens.shape[0]))
        return step(tokens, groups)

    engine.step = counting
    return rows


# -- the step: a batch of rows of different lengths, and shared prefixes -----------------------


def _step_both_ways(loaded: LoadedModel) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two lone rows of different lengths and a best-of-3 group, stepped together; and each of
    the five rows stepped alone on its own cache holding the same tokens."""
    model, step = loaded.model, loaded.decoder
    assert step is not None
    generator = torch.Generator().manual_seed(3)
    vocab = model.config.vocab_size

    def ids(length: int) -> torch.Tensor:
        return torch.randint(5, vocab, (1, length), generator=generator)

    prompts = [ids(7), ids(19), ids(12)]  # two lone rows, then the group's shared prefix
    fed = ids(4 * 5).view(4, 5)  # per step: a token for each of the five rows

    def prefilled(prompt: torch.Tensor) -> StaticCache:
        cache = StaticCache(config=model.config, max_cache_len=64)
        model(input_ids=prompt, cache=cache, use_cache=True)
        return cache

    expected, got = [], []
    with torch.inference_mode():
        batch = [prefilled(p) for p in prompts]
        suffix = Suffix.like(batch[2], rows=3, capacity=8)
        lone = [prefilled(prompts[0]), prefilled(prompts[1])] + [prefilled(prompts[2]) for _ in range(3)]
        starts = [7, 19, 12, 12, 12]
        for offset, tokens in enumerate(fed):
            groups = [
                Group(batch[0], prefix=7 + offset),
                Group(batch[1], prefix=19 + offset),
                Group(batch[2], prefix=12, suffix=suffix, offset=offset),
            ]
            got.append(step(tokens, groups).float())
            alone_rows = [
                step(tokens[i : i + 1], [Group(cache, prefix=starts[i] + offset)]).float()
                for i, cache in enumerate(lone)
            ]
            expected.append(torch.cat(alone_rows))
    return expected, got


def _assert_step_matches(loaded: LoadedModel, tolerance: float) -> None:
    for want, have in zip(*_step_both_ways(loaded), strict=True):
        torch.testing.assert_close(have, want, atol=tolerance, rtol=tolerance)
        assert torch.equal(have.argmax(-1), want.argmax(-1))


def test_gpt2_rows_batched_step_as_each_alone_fp32(tiny_model_dir: Path, tmp_path: Path) -> None:
    _assert_step_matches(_load(tiny_model_dir, "float32", tmp_path), tolerance=1e-5)


def test_llama_rows_batched_step_as_each_alone_fp32(llama_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    _assert_step_matches(_load(llama_dir, "float32", tmp_path), tolerance=1e-5)


@needs_int4
def test_4bit_rows_batched_step_as_each_alone(llama_dir: Path, grid_gpt2_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    for folder in (llama_dir, grid_gpt2_dir):
        loaded = _load(folder, "bfloat16", tmp_path)
        assert loaded.packed_layers > 0
        # bf16: one product over five rows may round differently from five one-row products.
        _assert_step_matches(loaded, tolerance=0.05)


# -- the engine: several sessions at once ------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return _load(tiny_model_dir, "float32", tmp_path_factory.mktemp("gpt2"))


def _sessions_match_alone(loaded: LoadedModel, sampling: Sampling, *, n: int = 1) -> Engine:
    engine = Engine.for_model(loaded)
    engine.eos_ids = set()  # every row runs its full length: the longest overlap
    prompts = [engine.encode(story) for story in STORIES]
    expected = []
    for number, prompt in enumerate(prompts):
        reference = Engine.for_model(loaded)
        reference.eos_ids = set()
        expected.append(reference.generate(prompt, sampling, n=n, seed=number).run())
    rows = count_rows(engine) if engine.step is not None else []
    generations = [
        engine.generate(p, sampling, n=n, seed=number, session=f"s{number}") for number, p in enumerate(prompts)
    ]
    run_together(generations)
    for generation, want in zip(generations, expected, strict=True):
        assert [c.token_ids for c in generation.candidates] == [c.token_ids for c in want]
        assert [c.text for c in generation.candidates] == [c.text for c in want]
    if engine.step is not None:
        assert max(rows) == n * len(prompts), "the sessions decoded in one batch"
    return engine


def test_sessions_decoded_together_write_what_each_writes_alone(gpt2: LoadedModel) -> None:
    _sessions_match_alone(gpt2, GREEDY)


def test_seeded_sessions_sample_the_same_story_alone_or_batched(gpt2: LoadedModel) -> None:
    _sessions_match_alone(gpt2, SAMPLE)


def test_best_of_n_rows_share_their_prefix_and_sample_as_alone(gpt2: LoadedModel) -> None:
    _sessions_match_alone(gpt2, SAMPLE, n=3)


@needs_int4
def test_4bit_sessions_decoded_together_write_what_each_writes_alone(
    llama_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    _sessions_match_alone(_load(llama_dir, "bfloat16", tmp_path), GREEDY, n=2)


def test_models_without_a_lean_step_run_requests_one_after_another(
    tiny_model_dir: Path,
    llama_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from aidungeon.model.loader import load_model
    from aidungeon.storage.paths import default_paths

    for folder in (tiny_model_dir, llama_dir):
        paths = default_paths({"AIDUNGEON_HOME": str(tmp_path)})
        loaded = load_model(str(folder), paths, device="cpu", dtype="float32", pack=False)
        assert loaded.decoder is None
        _sessions_match_alone(loaded, SAMPLE, n=2)


def test_sessions_submitted_from_several_threads_write_what_each_writes_alone(gpt2: LoadedModel) -> None:
    engine = Engine.for_model(gpt2)
    prompts = [engine.encode(story) for story in STORIES]
    expected = [alone(gpt2, p, SAMPLE, seed=7) for p in prompts]
    results: dict[int, list[Completion]] = {}
    errors: list[BaseException] = []

    def play(number: int) -> None:
        try:
            results[number] = engine.generate(prompts[number], SAMPLE, seed=7, session=f"t{number}").run()
        except BaseException as err:  # reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=play, args=(number,)) for number in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert [[c.token_ids for c in results[i]] for i in range(len(prompts))] == [
        [c.token_ids for c in e] for e in expected
    ]


def test_a_cancelled_row_never_changes_the_others(gpt2: LoadedModel) -> None:
    engine = Engine.for_model(gpt2)
    prompts = [engine.encode(story) for story in STORIES[:3]]
    expected = [alone(gpt2, p, SAMPLE, seed=5) for p in prompts]
    cancel = CancelToken()
    generations = [
        engine.generate(p, SAMPLE, seed=5, session=f"c{i}", cancel=cancel if i == 1 else None)
        for i, p in enumerate(prompts)
    ]
    streams = [iter(g) for g in generations]
    for _ in range(2):
        for stream in streams:
            next(stream)
    cancel.set()
    run_together(generations)
    cancelled = generations[1].result()
    assert cancelled.cancelled and cancelled.stats.new_tokens < SAMPLE.max_new_tokens
    for number in (0, 2):
        assert generations[number].candidates[0].token_ids == expected[number][0].token_ids


def test_a_handle_dropped_unread_leaves_the_batch(gpt2: LoadedModel) -> None:
    engine = Engine.for_model(gpt2)
    prompts = [engine.encode(story) for story in STORIES[:2]]
    dropped = iter(engine.generate(prompts[0], GREEDY, session="gone"))
    next(dropped)
    dropped.close()  # as garbage collection closes a stream nobody reads
    kept = engine.generate(prompts[1], GREEDY, session="kept")
    assert kept.run()[0].token_ids == alone(gpt2, prompts[1], GREEDY)[0].token_ids
    assert engine._active == [] and "gone" in engine.sessions


def test_a_long_prefill_is_chunked_between_the_others_decode_steps(gpt2: LoadedModel) -> None:
    engine = Engine(gpt2.model, gpt2.tokenizer, window=gpt2.window, step=gpt2.decoder, prefill_chunk=8)
    short, long = engine.encode(STORIES[2]), engine.encode(" ".join(STORIES) * 2)
    assert len(long) > 40
    expected = [alone(gpt2, p, GREEDY) for p in (short, long)]
    rows = count_rows(engine)
    first = engine.generate(short, GREEDY, session="short")
    stream = iter(first)
    next(stream)  # the short session is decoding when the long one arrives
    second = engine.generate(long, GREEDY, session="long")
    steps_before = len(rows)
    run_together([first, second])
    assert first.candidates[0].token_ids == expected[0][0].token_ids
    assert second.candidates[0].token_ids == expected[1][0].token_ids
    # the short session decoded a token every step while the long prompt went in 8 tokens at a
    # time: it finished before the long one had its first token
    decoded = len(first.candidates[0].token_ids) - 1
    assert decoded >= 5 and len(long) // 8 > decoded
    assert rows[steps_before : steps_before + decoded] == [1] * decoded


# -- memory: eviction and running out ----------------------------------------------------------


def test_an_evicted_session_re_prefills_to_the_same_logits(gpt2: LoadedModel) -> None:
    engine = Engine.for_model(gpt2)
    one = engine.generate(engine.encode(STORIES[0]), GREEDY, session="a")
    one.run()
    # A budget of one session's cache: the next session's turn evicts the first.
    engine.sessions.budget_bytes = engine.sessions.idle_bytes()
    engine.eos_ids = set()
    prompt = engine.encode(STORIES[0]) + one.candidates[0].token_ids + engine.encode("\n> You run.\n")
    engine.generate(engine.encode(STORIES[1]), GREEDY, session="b").run()
    assert engine.evictions == 1 and "a" not in engine.sessions and "b" in engine.sessions
    again = engine.generate(prompt, GREEDY, session="a")
    again.run()
    assert again.stats.reused_tokens == 0
    reference = Engine.for_model(gpt2)
    reference.eos_ids = set()
    reference.generate(engine.encode(STORIES[0]), GREEDY, session="a").run()
    kept = reference.generate(prompt, GREEDY, session="a")
    kept.run()
    assert kept.stats.reused_tokens > 0
    (want,), (have,) = kept.candidates, again.candidates
    assert have.token_ids == want.token_ids
    assert have.mean_logprob == pytest.approx(want.mean_logprob, abs=1e-5)


def test_running_out_of_memory_in_a_batch_shrinks_it_and_loses_no_story(gpt2: LoadedModel) -> None:
    engine = Engine.for_model(gpt2)
    prompts = [engine.encode(story) for story in STORIES]
    expected = [alone(gpt2, p, SAMPLE, seed=9) for p in prompts]
    step = engine.step
    assert step is not None
    seen: list[int] = []

    def small_memory(tokens: torch.Tensor, groups: list[Group]) -> torch.Tensor:
        seen.append(int(tokens.shape[0]))
        if tokens.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return step(tokens, groups)

    engine.step = small_memory
    generations = [engine.generate(p, SAMPLE, seed=9, session=f"m{i}") for i, p in enumerate(prompts)]
    run_together(generations)
    assert engine.max_rows == 2 and 4 in seen
    for generation, want in zip(generations, expected, strict=True):
        assert generation.candidates[0].token_ids == want[0].token_ids


def test_a_request_too_big_for_memory_alone_fails_cleanly_and_the_others_go_on(gpt2: LoadedModel) -> None:
    engine = Engine.for_model(gpt2)
    step = engine.step
    assert step is not None

    def no_room_for_three(tokens: torch.Tensor, groups: list[Group]) -> torch.Tensor:
        if any(g.rows == 3 for g in groups):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return step(tokens, groups)

    engine.step = no_room_for_three
    prompts = [engine.encode(story) for story in STORIES[:2]]
    big = engine.generate(prompts[0], GREEDY, n=3, session="big")
    small = engine.generate(prompts[1], GREEDY, session="small")
    with pytest.raises(OutOfMemoryError, match="ran out of memory while generating"):
        run_together([big, small])
    small.run()
    assert small.candidates[0].token_ids == alone(gpt2, prompts[1], GREEDY)[0].token_ids
    assert small.candidates[0].stop_reason in (StopReason.LENGTH, StopReason.EOS)
