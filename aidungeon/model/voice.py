"""Logits processors that keep the narrator's voice: second person, and the player's words their own.

The default model narrates in the first person ("I stood there", "we sail") on about 59% of turns
and writes the player's speech ("You say ...", `"Howdy," you said`) on about 20%
(`benchmarks/RESULTS.md`, issue #14). These steps make both impossible at the source:

- `NarratorVoice`: outside quoted speech, no token that starts a first-person word (I, me, my,
  mine, myself, we, us, our, ours, ourselves; "I" as a capital only, the rest in lower case or
  capitalised, so "US" stays), in every spelling the vocabulary has (" I", "I", " my", "My", a
  token that closes a quote and then says "I", ...). Inside quotes characters speak freely.
- `PlayerVoice`: outside quotes, right after a "you"/"You" token, no speech verb ("say",
  "said", "ask", "told", "reply", "whispered", ...): the player's words are theirs to type. Nor
  may a continuation open the player's next turn (a ">" line) before it has written anything:
  the game would cut it there and throw the whole draw away as empty.

Both follow transformers' LogitsProcessor contract and keep no state between calls: each row's
state is read from that row's own generated tokens (`input_ids[:, prompt_length:]`) through
per-token tables built once per tokenizer (`VoiceVocabulary.of`): how many double quotes a token
holds, whether it holds a line break, whether it ends inside a word. A quote opened and left open
closes at a line break, as in print (a new paragraph of speech opens its own quote). Rows of one
batch (best-of-n candidates) are independent, and nothing is decoded during generation.

What they cannot do: a name whose only spelling starts with the bare " I" token (SmolLM2 writes
"Ike" as " I" + "ke") is blocked with it; "Isabel", "Ivan", "Iowa" are single tokens and stay.
A first-person word split across tokens in an unusual way ("m" + "y") is not seen, nor is speech
with a word between "you" and the verb ("you quickly say"). The remote engine (`remote.py`)
cannot run processors at all: the server samples.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass
from typing import cast

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

# "I" is a word only as a capital; the others in lower case or capitalised ("US" is a country).
FIRST_PERSON = frozenset(
    {"I"}
    | {
        form
        for word in ("me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves")
        for form in (word, word.capitalize())
    }
)
# Speech verbs the model puts after "you" when it talks for the player (the gold set's
# plays_player turns: "You whisper", "you say quietly", "You ask in a friendly voice", "You
# said it was mine", "You told her", "You mention"). Acts ("you took the coin") are not here:
# banning them would also ban the outcome of the player's own action.
_REGULAR = "ask answer whisper shout yell mutter murmur exclaim respond mention explain insist"
_IRREGULAR = (
    "say says said tell tells told reply replies replied promise promises promised apologize apologizes apologized"
)
SPEECH_VERBS = tuple(f"{base}{end}" for base in _REGULAR.split() for end in ("", "s", "ed")) + tuple(_IRREGULAR.split())
QUOTE_CHARS = '"“”'
MIN_VERB_PIECE = 3
_WORD = re.compile(r"[A-Za-z]+")
_ENDS_WITH_YOU = re.compile(r"(?:^|[^A-Za-z])(?:you|You|YOU)$")
_LEADING_SPEECH = re.compile(r"^\s+(" + "|".join(SPEECH_VERBS) + r")(?![A-Za-z])")


@dataclass(frozen=True)
class VoiceVocabulary:
    """Per-token facts the voice processors read, for one tokenizer (built on the CPU; `to` moves
    them to the model's device).

    `quotes[t]`: the double quotes in token t after its last line break (all of them if it has
    none); `newline[t]`: it holds a line break; `word_end[t]`: it ends in a letter or digit, so a
    token starting with a letter continues that word. The id lists are the tokens to ban:
    `first_outside` when the row is outside quotes, `first_attached` when outside and the token
    before does not end in a word (the token itself starts with a first-person word), `first_inside`
    when inside quotes (the token closes the quote, then speaks as "I"), `first_always` whatever the
    row's state (a first-person word after the token's own line break). `you_end[t]`: token t ends
    with the word "you"; `speech` are the verbs' tokens banned after it. `blank[t]`: token t is
    only whitespace; `marker` are the tokens that open a turn line (">" after any whitespace).
    """

    quotes: torch.Tensor
    newline: torch.Tensor
    word_end: torch.Tensor
    first_outside: torch.Tensor
    first_attached: torch.Tensor
    first_inside: torch.Tensor
    first_always: torch.Tensor
    you_end: torch.Tensor
    speech: torch.Tensor
    blank: torch.Tensor
    marker: torch.Tensor

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase, *, device: torch.device | str = "cpu") -> VoiceVocabulary:
        """The tables for `tokenizer` on `device`, built once (decoding the whole vocabulary,
        ~0.6 s for SmolLM2's 49k tokens) and kept while the tokenizer lives."""
        with _LOCK:
            per_device = _CACHE.setdefault(tokenizer, {})
            key = str(torch.device(device))
            if key not in per_device:
                cpu = per_device.get("cpu") or cls.build(tokenizer)
                per_device["cpu"] = cpu
                per_device[key] = cpu.to(device)
            return per_device[key]

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase) -> VoiceVocabulary:
        """The tables for `tokenizer`, uncached."""
        texts = token_texts(tokenizer)
        return cls.from_texts(texts, speech_ids=_speech_first_tokens(tokenizer, len(texts)))

    @classmethod
    def from_texts(cls, texts: list[str], *, speech_ids: set[int] | None = None) -> VoiceVocabulary:
        """The tables for a vocabulary given as each token's text (id = position)."""
        size = len(texts)
        quotes = torch.zeros(size, dtype=torch.long)
        newline = torch.zeros(size, dtype=torch.bool)
        word_end = torch.zeros(size, dtype=torch.bool)
        you_end = torch.zeros(size, dtype=torch.bool)
        blank = torch.zeros(size, dtype=torch.bool)
        markers: list[int] = []
        bans: dict[str, list[int]] = {"outside": [], "attached": [], "inside": [], "always": []}
        speech = set(speech_ids or ())
        for token_id, text in enumerate(texts):
            if not text:
                continue
            after_break = text.rsplit("\n", 1)[-1]
            quotes[token_id] = sum(after_break.count(q) for q in QUOTE_CHARS)
            newline[token_id] = "\n" in text
            word_end[token_id] = text[-1].isalnum()
            you_end[token_id] = _ENDS_WITH_YOU.search(text) is not None
            blank[token_id] = text.isspace()
            if text.lstrip().startswith(">"):
                markers.append(token_id)
            for kind in _first_person_kinds(text):
                bans[kind].append(token_id)
            if _LEADING_SPEECH.match(text):
                speech.add(token_id)

        def ids(values: list[int] | set[int]) -> torch.Tensor:
            return torch.tensor(sorted(values), dtype=torch.long)

        return cls(
            quotes=quotes,
            newline=newline,
            word_end=word_end,
            first_outside=ids(bans["outside"]),
            first_attached=ids(bans["attached"]),
            first_inside=ids(bans["inside"]),
            first_always=ids(bans["always"]),
            you_end=you_end,
            speech=ids(speech),
            blank=blank,
            marker=ids(markers),
        )

    def to(self, device: torch.device | str) -> VoiceVocabulary:
        """The same tables on `device` (a no-op copy on the CPU)."""
        return VoiceVocabulary(**{name: getattr(self, name).to(device) for name in self.__dataclass_fields__})


_LOCK = threading.Lock()
_CACHE: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, dict[str, VoiceVocabulary]] = weakref.WeakKeyDictionary()


def token_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Each id's text as it reads inside a longer text, leading space included (SentencePiece
    tokenizers drop a token's "▁" space when it is decoded alone, so it is put back)."""
    size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(size)], clean_up_tokenization_spaces=False)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    return [
        " " + text if isinstance(piece, str) and piece.startswith("▁") and not text.startswith(" ") else text
        for text, piece in zip(texts, pieces, strict=True)
    ]


def _first_person_kinds(text: str) -> set[str]:
    """When a token with this text would put a first-person word outside quotes: "outside"
    (the row is outside quotes), "attached" (outside, and the word starts the token, so it is a
    word only if the token before ended one), "inside" (the token first closes the row's quote),
    "always" (after the token's own line break, outside its own quotes)."""
    kinds: set[str] = set()
    head, has_break, tail = text.rpartition("\n")
    segments = [(head, False), (tail, True)] if has_break else [(text, False)]
    for segment, after_break in segments:
        for match in _WORD.finditer(segment):
            if match.group(0) not in FIRST_PERSON:
                continue
            parity = sum(segment[: match.start()].count(q) for q in QUOTE_CHARS) % 2
            if after_break:
                if parity == 0:
                    kinds.add("always")
            elif match.start() == 0:
                kinds.add("attached")
            else:
                kinds.add("inside" if parity else "outside")
    return kinds


def _speech_first_tokens(tokenizer: PreTrainedTokenizerBase, size: int) -> set[int]:
    """The first token of each speech verb as the tokenizer writes it after a space (" mut" of
    " muttered"): after "you" it can only be going to that verb."""
    first = set()
    for verb in SPEECH_VERBS:
        ids = tokenizer.encode(" " + verb, add_special_tokens=False)
        if not ids or ids[0] >= size:
            continue
        # A short piece (" y" of " yelled", " ex" of " exclaims") also starts everyday words
        # ("you examine"); only a piece of 3 letters or more is the verb's own.
        piece = str(tokenizer.decode(ids[:1], clean_up_tokenization_spaces=False)).strip()
        if len(piece) >= MIN_VERB_PIECE or len(ids) == 1:
            first.add(int(ids[0]))
    return first


def _ban(scores: torch.Tensor, ids: torch.Tensor, where: torch.Tensor) -> None:
    """Set `scores[row, ids[j]]` to -inf, in place, where `where[row, j]` (or `where[row]`) is true."""
    if ids.numel():
        mask = where if where.dim() == 2 else where[:, None]
        scores[:, ids] = scores[:, ids].masked_fill(mask, -float("inf"))


class _VoiceStep(LogitsProcessor):
    """What both voice steps share: the tables, and each row's quote state from its own tokens."""

    def __init__(self, vocabulary: VoiceVocabulary, *, prompt_length: int) -> None:
        if prompt_length < 0:
            raise ValueError(f"prompt_length must be 0 or more, got {prompt_length}")
        self.vocabulary = vocabulary
        self.prompt_length = prompt_length

    def inside_quotes(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Per row: whether its generated text so far ends inside a quote (a line break closes
        one). The prompt is taken to end outside quotes."""
        generated = input_ids[:, self.prompt_length :]
        length = generated.shape[1]
        if length == 0:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        position = torch.arange(length, device=input_ids.device)
        breaks = self.vocabulary.newline[generated]
        last_break = torch.where(breaks, position, -1).amax(dim=1, keepdim=True)
        # A breaking token's own count is already only the quotes after its break.
        counted = self.vocabulary.quotes[generated] * (position >= last_break)
        return counted.sum(dim=1) % 2 == 1


class NarratorVoice(_VoiceStep):
    """No first-person word outside quoted speech (see the module docstring)."""

    def __init__(self, vocabulary: VoiceVocabulary, *, prompt_length: int) -> None:
        super().__init__(vocabulary, prompt_length=prompt_length)
        # One index of every id to ban, with the condition (0-3, the order of `_conditions`) each
        # needs: one gather and one scatter per step instead of one per kind.
        kinds = (vocabulary.first_outside, vocabulary.first_attached, vocabulary.first_inside, vocabulary.first_always)
        self.ids = torch.cat(kinds)
        self.kind = torch.cat([torch.full_like(ids, k) for k, ids in enumerate(kinds)])

    def _conditions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(rows, 4): outside quotes; outside and after no word; inside quotes; always."""
        inside = self.inside_quotes(input_ids)
        outside = ~inside
        free_start = outside & ~self.vocabulary.word_end[input_ids[:, -1]]
        return torch.stack([outside, free_start, inside, torch.ones_like(inside)], dim=1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = scores.clone()
        _ban(out, self.ids, self._conditions(input_ids)[:, self.kind])
        return cast(torch.FloatTensor, out)


class PlayerVoice(_VoiceStep):
    """No speech verb right after "you" outside quotes, and no ">" turn line before any text: the
    narrator neither speaks nor acts for the player."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = self.vocabulary
        after_you = vocab.you_end[input_ids[:, -1]] & ~self.inside_quotes(input_ids)
        out = scores.clone()
        _ban(out, vocab.speech, after_you)
        _ban(out, vocab.marker, self.nothing_written(input_ids))
        return cast(torch.FloatTensor, out)

    def nothing_written(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Per row: whether its generated text so far is empty or only whitespace."""
        return self.vocabulary.blank[input_ids[:, self.prompt_length :]].all(dim=1)
