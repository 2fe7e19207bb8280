"""The narrator- and player-voice processors (model/voice.py): what each bans, and nothing else.

Hand-made vocabularies pin the rules (quotes opened and closed, a line break closing a quote,
words glued to the token before, rows of one batch in different states). Real byte-level BPE
tokenizers (the tiny fixture's, and one trained here whose vocabulary holds "Isabel", "my" and
"Army" whole) are checked against an oracle that reads the decoded text. The engine test biases
a tiny model towards " I" and " we" and shows the processors turn a first-person story into one
without them, through the engine and through a seeded game turn.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from aidungeon.core.config import Config, Sampling
from aidungeon.model.engine import Engine
from aidungeon.model.loader import LoadedModel, load_model
from aidungeon.model.sampling import build_processors
from aidungeon.model.voice import NarratorVoice, PlayerVoice, VoiceVocabulary
from aidungeon.storage.paths import default_paths
from tests.support.sessions import make_session, run

NEG = -float("inf")

# A hand-made vocabulary: id = position.
TEXTS = [
    " I",  # 0
    "I",  # 1
    " my",  # 2
    "My",  # 3
    " Isabel",  # 4
    " Ivan",  # 5
    " Iowa",  # 6
    " army",  # 7
    "my",  # 8  (glued: "Ar" + "my" is "Army")
    "Ar",  # 9
    ' "',  # 10 opens or closes a quote
    '."',  # 11
    " you",  # 12
    " say",  # 13
    " said",  # 14
    " looked",  # 15
    "\n",  # 16
    " We",  # 17
    ' "I',  # 18 a quote, then "I" inside it
    " the",  # 19
    "You",  # 20
    '"We',  # 21 closes a quote and says "We" outside: banned inside
    " US",  # 22
    " mine",  # 23
    " Me",  # 24
    ">",  # 25 opens a turn line
    " >",  # 26
    "\n>",  # 27
    " ->",  # 28 an arrow, no turn line
]
ID = {text: i for i, text in enumerate(TEXTS)}
FIRST = {ID[t] for t in (" I", "I", " my", "My", " We", " mine", " Me")}
PROMPT = [ID[" the"], ID[" the"]]


@pytest.fixture(scope="module")
def vocabulary() -> VoiceVocabulary:
    return VoiceVocabulary.from_texts(TEXTS, speech_ids=set())


def banned(processor: NarratorVoice | PlayerVoice, *rows: list[int]) -> list[set[int]]:
    """Per row (prompt + generated ids), the ids the processor sets to -inf. Shorter rows are
    left-padded with " the", which changes no state, so rows of different lengths share a batch."""
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([PROMPT + [ID[" the"]] * (width - len(row)) + row for row in rows], dtype=torch.long)
    scores = torch.zeros(len(rows), len(TEXTS))
    out = processor(cast(torch.LongTensor, input_ids), cast(torch.FloatTensor, scores))
    assert torch.equal(scores, torch.zeros_like(scores)), "the input scores are not changed in place"
    return [set((out[r] == NEG).nonzero().flatten().tolist()) for r in range(len(rows))]


def narrator(vocabulary: VoiceVocabulary) -> NarratorVoice:
    return NarratorVoice(vocabulary, prompt_length=len(PROMPT))


def test_outside_quotes_every_first_person_spelling_is_banned_and_names_are_not(vocabulary) -> None:
    line_start, after_word = banned(narrator(vocabulary), [ID["\n"]], [ID[" the"]])
    assert line_start == FIRST | {ID["my"]}  # a glued "my" after a line break starts a word
    assert after_word == {ID[t] for t in (" I", " my", " We", " mine", " Me")}  # "theI", "themy" are no words
    for name in (" Isabel", " Ivan", " Iowa", " army", " US", "Ar", ' "I', " you"):
        assert ID[name] not in line_start


def test_a_token_glued_to_a_word_is_part_of_it(vocabulary) -> None:
    (after_ar,) = banned(narrator(vocabulary), [ID["Ar"]])
    assert ID["my"] not in after_ar and ID["I"] not in after_ar  # "Army", "ArI": not words of their own
    assert ID[" my"] in after_ar


def test_inside_quotes_a_character_may_say_i(vocabulary) -> None:
    opened, closed, reopened = banned(
        narrator(vocabulary),
        [ID[' "']],
        [ID[' "'], ID[" I"], ID['."']],
        [ID[' "'], ID[" I"], ID['."'], ID[' "']],
    )
    closing_then_first = {ID['"We'], ID[' "I']}  # they close the quote, then say "We"/"I" outside it
    assert opened == reopened == closing_then_first
    assert closed == FIRST | {ID["my"]}  # '."' ends in no word: a glued "I" after it is a word
    assert ID[' "I'] not in closed


def test_a_line_break_closes_an_open_quote(vocabulary) -> None:
    still_open, after_break = banned(narrator(vocabulary), [ID[' "'], ID[" the"]], [ID[' "'], ID[" the"], ID["\n"]])
    assert ID[" I"] not in still_open
    assert after_break >= FIRST


def test_a_token_that_opens_a_quote_speaks_inside_it(vocabulary) -> None:
    (ban,) = banned(narrator(vocabulary), [ID[' "I']])  # the row is now inside the quote it opened
    assert ban == {ID['"We'], ID[' "I']}


def test_each_row_of_a_batch_has_its_own_state(vocabulary) -> None:
    rows = [
        [ID["\n"]],
        [ID[" the"], ID[' "'], ID[" the"]],
        [ID[' "'], ID[" I"], ID['."'], ID["\n"]],
        [ID[' "'], ID[" the"], ID["\n"], ID["Ar"]],
    ]
    outside, inside, closed, glued = banned(narrator(vocabulary), *rows)
    assert outside == closed == FIRST | {ID["my"]}
    assert inside == {ID['"We'], ID[' "I']}
    assert ID[" I"] in glued and ID["my"] not in glued


def test_the_prompt_does_not_count_as_generated_text(vocabulary) -> None:
    # A quote in the prompt (the player's own speech) leaves the narration outside quotes.
    processor = NarratorVoice(vocabulary, prompt_length=3)
    input_ids = torch.tensor([[ID[" the"], ID[' "'], ID[" the"]]])
    out = processor(cast(torch.LongTensor, input_ids), cast(torch.FloatTensor, torch.zeros(1, len(TEXTS))))
    assert out[0, ID[" I"]] == NEG


def test_player_voice_bans_speech_verbs_only_right_after_you_outside_quotes() -> None:
    vocabulary = VoiceVocabulary.from_texts(TEXTS)  # " say", " said" found by their text
    processor = PlayerVoice(vocabulary, prompt_length=len(PROMPT))
    after_you, after_cap, quoted, later, plain = banned(
        processor,
        [ID[" the"], ID[" you"]],
        [ID["\n"], ID["You"]],
        [ID[' "'], ID[" you"]],
        [ID[" you"], ID[" looked"]],
        [ID[" the"]],
    )
    assert after_you == after_cap == {ID[" say"], ID[" said"]}
    assert quoted == later == plain == set()


def test_rows_may_differ_in_the_player_voice_state() -> None:
    vocabulary = VoiceVocabulary.from_texts(TEXTS)
    processor = PlayerVoice(vocabulary, prompt_length=len(PROMPT))
    assert banned(processor, [ID[" you"]], [ID[' "'], ID[" you"]]) == [{ID[" say"], ID[" said"]}, set()]


def test_player_voice_opens_no_turn_line_before_the_narration_has_begun() -> None:
    vocabulary = VoiceVocabulary.from_texts(TEXTS)
    processor = PlayerVoice(vocabulary, prompt_length=len(PROMPT))
    markers = {ID[">"], ID[" >"], ID["\n>"]}
    (nothing,) = banned(processor, [])
    blank, written, quoted = banned(processor, [ID["\n"], ID["\n"]], [ID["\n"], ID[" the"]], [ID[' "'], ID["\n"]])
    assert nothing == blank == markers  # the arrow " ->" is no turn line
    assert written == quoted == set()  # once there is text, "\n>" is where the stop rule ends the turn


# -- build_processors and the settings ----------------------------------------------------------


def test_voice_steps_need_a_tokenizer_and_follow_the_settings(tiny_tokenizer) -> None:
    def kinds(**settings: bool) -> list[type]:
        processors = build_processors(Sampling(**settings), prompt_length=3, eos_ids=[0], tokenizer=tiny_tokenizer)
        return [type(p) for p in processors if isinstance(p, NarratorVoice | PlayerVoice)]

    assert kinds() == [NarratorVoice, PlayerVoice]
    assert kinds(narrator_voice=False) == [PlayerVoice]
    assert kinds(narrator_voice=False, player_voice=False) == []
    without = build_processors(Sampling(), prompt_length=3, eos_ids=[0])
    assert not any(isinstance(p, NarratorVoice | PlayerVoice) for p in without)


def test_the_settings_are_on_in_the_game_and_read_on_or_off() -> None:
    config = Config()
    assert config.sampling.narrator_voice and config.sampling.player_voice
    assert config.with_value("narrator_voice", "off").sampling.narrator_voice is False
    assert config.with_value("player voice", "no").sampling.player_voice is False
    assert Config.from_dict({"sampling": {"narrator_voice": False}}).sampling.narrator_voice is False


def test_the_tables_are_built_once_per_tokenizer(tiny_tokenizer) -> None:
    assert VoiceVocabulary.of(tiny_tokenizer) is VoiceVocabulary.of(tiny_tokenizer)


# -- real byte-level tokenizers against an oracle that reads the text ----------------------------

_FIRST_WORDS = {"I"} | {
    f for w in ("me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves") for f in (w, w.capitalize())
}


def first_person_starts(text: str) -> set[int]:
    """Offsets where a first-person word starts outside quotes (a line break closes a quote)."""
    starts = set()
    for match in re.finditer(r"[A-Za-z]+", text):
        line = text[text.rfind("\n", 0, match.start()) + 1 : match.start()]
        if match.group(0) in _FIRST_WORDS and line.count('"') % 2 == 0:
            starts.add(match.start())
    return starts


def walk(tokenizer: PreTrainedTokenizerFast, text: str) -> Iterator[tuple[int, int, int, list[int]]]:
    """(token, its start offset, its end offset, the ids before it) for each token of `text`."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    for t, token in enumerate(ids):
        start = len(tokenizer.decode(ids[:t]))
        yield token, start, len(tokenizer.decode(ids[: t + 1])), ids[:t]


def check_against_oracle(tokenizer: PreTrainedTokenizerFast, text: str) -> int:
    """Every token of `text` is banned exactly when it starts a first-person word outside quotes;
    returns how many were."""
    prompt = tokenizer.encode(" the", add_special_tokens=False)
    processor = NarratorVoice(VoiceVocabulary.of(tokenizer), prompt_length=len(prompt))
    starts = first_person_starts(text)
    hits = 0
    for token, start, end, before in walk(tokenizer, text):
        input_ids = torch.tensor([prompt + before], dtype=torch.long)
        scores = processor(cast(torch.LongTensor, input_ids), cast(torch.FloatTensor, torch.zeros(1, len(tokenizer))))
        expected = any(start <= s < end for s in starts)
        assert bool(scores[0, token] == NEG) == expected, (tokenizer.decode([token]), start, text)
        hits += expected
    return hits


STORY = (
    'You enter the hall. "I am Isabel," she says. "We met in Iowa." I nod, and my army waits.\n'
    '"Ivan said we would come.\nWe did. Our men, ourselves, and mine." The Army is myself and us.'
)


def test_the_fixture_tokenizer_agrees_with_the_oracle(tiny_tokenizer) -> None:
    # Its small vocabulary spells "my" as " m" + "y" and "Isabel" from " I": left out of the text.
    text = 'You enter. "I am here," she says. I nod, and we wait.\n"We go.\nAnd we go." Me? Not mine. I go.'
    # "I nod", "we wait", "And we go"; the last line's quote then opens, so "Me", "mine", "I" are speech.
    assert check_against_oracle(tiny_tokenizer, text) == 3


def test_a_byte_level_tokenizer_with_whole_words_agrees_with_the_oracle(byte_level_tokenizer) -> None:
    assert byte_level_tokenizer.convert_ids_to_tokens(byte_level_tokenizer.encode(" Isabel")) == ["ĠIsabel"]
    # Outside quotes: "I nod", "my army", and on the last line "We", "Our", "ourselves", "mine"
    # (the line's quote then opens, so "myself" and "us" read as speech, as the bench reads them).
    assert check_against_oracle(byte_level_tokenizer, STORY) == 6


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerFast:
    return cast(PreTrainedTokenizerFast, PreTrainedTokenizerFast.from_pretrained(str(tiny_model_dir)))


@pytest.fixture(scope="module")
def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE trained on a few story lines, so whole words are tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    tokenizer.train_from_iterator([STORY] * 50, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


# -- through the engine and a game turn --------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    paths = default_paths({"AIDUNGEON_HOME": str(tmp_path_factory.mktemp("voice-home"))})
    return load_model(str(trained_model_dir), paths, device="cpu", dtype="float32")


@pytest.fixture
def first_person_engine(loaded: LoadedModel) -> Iterator[Engine]:
    """The trained tiny model pushed hard towards " I" and " we" (transformers' forward, so a hook on the
    output layer sees every step)."""
    tokenizer = loaded.tokenizer
    favoured = [tokenizer.encode(w, add_special_tokens=False)[0] for w in (" I", " we")]
    bias = torch.zeros(loaded.model.config.vocab_size)
    bias[favoured] = 8.0
    handle = loaded.model.get_output_embeddings().register_forward_hook(lambda _m, _i, out: out + bias)
    try:
        yield Engine(loaded.model, tokenizer, window=loaded.window)
    finally:
        handle.remove()


def narrated_first_person(text: str) -> bool:
    return bool(first_person_starts(text))


def test_the_engine_applies_the_voice_steps(first_person_engine: Engine) -> None:
    prompt = first_person_engine.encode("You are a knight.\n> You open the door.\n")
    on = Sampling(temperature=1.0, max_new_tokens=24, seed=None)
    off = Sampling(temperature=1.0, max_new_tokens=24, narrator_voice=False, player_voice=False)
    with_steps = first_person_engine.generate(prompt, on, n=3, seed=5).run()
    without = first_person_engine.generate(prompt, off, n=3, seed=5).run()
    assert all(narrated_first_person(c.text) for c in without)
    assert not any(narrated_first_person(c.text) for c in with_steps)


def test_a_seeded_game_turn_narrates_without_first_person(first_person_engine: Engine) -> None:
    texts = []
    for name in ("first", "second"):
        session = make_session(first_person_engine, seed=11, temperature=1.0, save_name=name)
        try:
            run(session, "look around")
            texts.append(session.story.path()[-1].result)
        finally:
            session.close()
    assert texts[0] == texts[1], "the same seed gives the same turn"
    assert texts[0] and not narrated_first_person(texts[0])


def test_the_protocol_endpoints_leave_the_voice_steps_off_unless_asked() -> None:
    from aidungeon.server.protocols.kobold_schemas import GenerateBody
    from aidungeon.server.protocols.openai_schemas import CompletionBody

    plain = [CompletionBody(prompt="x").sampling(16, 1024), GenerateBody(prompt="x").sampling(16, 1024)]
    assert not any(s.narrator_voice or s.player_voice for s in plain)
    asked = [
        CompletionBody(prompt="x", narrator_voice=True, player_voice=True).sampling(16, 1024),
        GenerateBody(prompt="x", narrator_voice=True, player_voice=True).sampling(16, 1024),
    ]
    assert all(s.narrator_voice and s.player_voice for s in asked)
