"""The offline model builders: tokenizer round trips, saved folders that open, a trained model that writes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from aidungeon.model.tiny import GPT2_SHAPES, adventure_corpus, random_gpt2, train_bpe_tokenizer, train_briefly

STORIES_DIR = Path(__file__).resolve().parents[2] / "stories"
ROUND_TRIP = [
    "You are a knight in a ruined castle.\n> You open the door.\nThe goblin snarls and lunges at you.",
    'The old man says, "Turn back before it is too late."\n\n',
    "Le café — naïve 東京 🐉\ttabs  and   spaces ",
    "",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_saved_tokenizer_round_trips(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_saved_tokenizer_has_a_vocabulary_and_end_token(tokenizer: PreTrainedTokenizerBase) -> None:
    assert len(tokenizer) > 500  # guards the transformers 5.x empty-vocabulary pitfall
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.eos_token_id is not None
    assert tokenizer.bos_token_id == tokenizer.eos_token_id
    assert tokenizer.model_max_length == GPT2_SHAPES["tiny"]["n_positions"]
    assert len(tokenizer.encode(" You open the door.")) <= 6  # merges were learned


def test_saved_tokenizer_round_trips_the_story_files(tokenizer: PreTrainedTokenizerBase) -> None:
    for path in sorted(STORIES_DIR.glob("*.toml")):
        text = path.read_text(encoding="utf-8")
        assert tokenizer.decode(tokenizer.encode(text)) == text, path.name


def test_small_bpe_round_trips_text_it_was_not_trained_on() -> None:
    tokenizer = train_bpe_tokenizer(adventure_corpus(20, seed=3), vocab_size=600)
    assert 300 < len(tokenizer) <= 600
    for text in [*ROUND_TRIP, *adventure_corpus(3, seed=4)]:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_saved_model_opens_and_matches_tokenizer(tiny_model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.n_layer == GPT2_SHAPES["tiny"]["n_layer"]
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    ids = torch.tensor([tokenizer.encode("You look around.")])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))


def test_random_gpt2_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    first = random_gpt2("tiny", vocab_size=300, seed=7)
    second = random_gpt2("tiny", vocab_size=300, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first.transformer.wte.weight, second.transformer.wte.weight)


def test_train_briefly_is_deterministic_and_learns() -> None:
    texts = adventure_corpus(20, seed=8)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=400)
    losses = []
    for _ in range(2):
        model = random_gpt2("tiny", vocab_size=len(tokenizer), seed=1, eos_token_id=tokenizer.eos_token_id)
        losses.append(train_briefly(model, tokenizer, texts, steps=12, seq_len=32, batch_size=4))
    assert losses[0] == losses[1]
    assert losses[0] < math.log(len(tokenizer))  # below the loss of a uniform guess
    assert not model.training
    with pytest.raises(ValueError, match="steps"):
        train_briefly(model, tokenizer, texts, steps=0)


def test_full_shapes_keep_gpt2_vocabulary() -> None:
    assert GPT2_SHAPES["124M"]["vocab_size"] == GPT2_SHAPES["355M"]["vocab_size"] == 50257
    with pytest.raises(ValueError, match="unknown GPT-2 shape"):
        random_gpt2("7B", vocab_size=100)


def test_adventure_corpus_is_seeded_and_in_context_format() -> None:
    corpus = adventure_corpus(10, seed=5)
    assert corpus == adventure_corpus(10, seed=5)
    assert corpus != adventure_corpus(10, seed=6)
    assert all("\n> You " in story and story.startswith("You ") for story in corpus)
    assert any('"' in story for story in adventure_corpus(30))


def test_trained_model_writes_sentences_and_sometimes_player_turns(trained_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(trained_model_dir)
    model = AutoModelForCausalLM.from_pretrained(trained_model_dir)
    prompt = adventure_corpus(1, seed=12345)[0]
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        out = model.generate(ids, do_sample=True, temperature=0.8, max_new_tokens=40, num_return_sequences=20)
    continuations = [tokenizer.decode(row[ids.shape[1] :], skip_special_tokens=True) for row in out]
    assert sum("." in text for text in continuations) >= 15, continuations
    assert any("\n>" in text for text in continuations), continuations
