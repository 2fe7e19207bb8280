"""Small offline models: a byte-level BPE tokenizer, random GPT-2s and a templated adventure corpus.

Tests use the "tiny" shape (built and briefly trained in seconds, no downloads); `aidungeon bench
--random-gpt2 124M|355M` uses the full GPT-2 shapes with random weights to measure speed only.
This module does not load real checkpoints (that is `loader.py`) and does not generate text for
the game (that is `engine.py`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257

GPT2_SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 1024},
    "124M": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": GPT2_VOCAB_SIZE},
    "355M": {"n_layer": 24, "n_embd": 1024, "n_head": 16, "n_positions": 1024, "vocab_size": GPT2_VOCAB_SIZE},
}


# --- tokenizer -------------------------------------------------------------------------------


def train_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Train a GPT-2 style byte-level BPE on `texts`; every string round-trips through it."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
    )


# --- models ----------------------------------------------------------------------------------


def _shape(shape: str) -> dict[str, int]:
    """The dimensions of a named shape; a clear error for an unknown name."""
    if shape not in GPT2_SHAPES:
        raise ValueError(f"unknown GPT-2 shape {shape!r}; choose one of {', '.join(GPT2_SHAPES)}")
    return GPT2_SHAPES[shape]


def random_gpt2(shape: str, *, vocab_size: int, seed: int = 0, eos_token_id: int | None = None) -> GPT2LMHeadModel:
    """A GPT-2 of `shape` with seeded random weights, no dropout, in eval mode.

    `vocab_size` is used for shapes that do not fix it ("tiny"); the full shapes keep GPT-2's 50257.
    `eos_token_id` defaults to the last id, as in GPT-2. The global torch RNG is left untouched.
    """
    dims: dict[str, Any] = dict(_shape(shape))
    dims.setdefault("vocab_size", vocab_size)
    eos_id = dims["vocab_size"] - 1 if eos_token_id is None else eos_token_id
    config = GPT2Config(
        **dims,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model.eval()


def build_model_dir(
    folder: Path,
    *,
    shape: str = "tiny",
    texts: Iterable[str],
    seed: int = 0,
    train_steps: int = 0,
) -> Path:
    """Train a tokenizer on `texts`, build a seeded GPT-2 (optionally trained), save both into `folder`."""
    texts = list(texts)
    tokenizer = train_bpe_tokenizer(texts)
    tokenizer.model_max_length = _shape(shape)["n_positions"]
    model = random_gpt2(shape, vocab_size=len(tokenizer), seed=seed, eos_token_id=tokenizer.eos_token_id)
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    if train_steps > 0:
        train_briefly(model, tokenizer, texts, steps=train_steps, seed=seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- training --------------------------------------------------------------------------------


def _token_stream(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str], min_len: int) -> torch.Tensor:
    """All texts as one id stream, each followed by the end-of-text token, repeated to `min_len`."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("cannot train on an empty corpus")
    while len(ids) < min_len:
        ids = ids + ids
    return torch.tensor(ids, dtype=torch.long)


def _next_token_loss(model: GPT2LMHeadModel, batch: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting batch[:, 1:] from batch[:, :-1]."""
    logits = model(input_ids=batch[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def train_briefly(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: Iterable[str],
    *,
    steps: int,
    seed: int = 0,
    seq_len: int = 128,
    lr: float = 3e-3,
    batch_size: int = 8,
) -> float:
    """Train `model` for `steps` AdamW steps on random windows of `texts`; return the last loss.

    Deterministic for a given seed and thread count; the global torch RNG is left untouched.
    The learning rate warms up briefly, then decays linearly, which helps a few hundred steps go far.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    stream = _token_stream(tokenizer, texts, seq_len + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.1, 1.0 - step / steps))
    )
    offsets = torch.arange(seq_len + 1)
    loss = torch.tensor(float("nan"))
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # batches, and dropout for models that have it
        for _ in range(steps):
            starts = torch.randint(0, len(stream) - seq_len, (batch_size, 1))
            batch = stream[starts + offsets]
            loss = _next_token_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return float(loss.detach())


# --- corpus ----------------------------------------------------------------------------------

WORDS: dict[str, Sequence[str]] = {
    "name": ["Aldric", "Mira", "Thorne", "Elsa", "Brannock", "Kestrel", "Dorian", "Yara", "Fenwick", "Isolde"],
    "role": ["knight", "ranger", "wizard", "thief", "noble", "soldier", "healer", "smuggler", "scholar", "hunter"],
    "place": [
        "a ruined castle",
        "a dark forest",
        "a mountain pass",
        "an abandoned mine",
        "a quiet village",
        "a crumbling tower",
        "a frozen lake",
        "a desert oasis",
        "a sunken temple",
        "a busy harbor",
    ],
    "creature": [
        "goblin",
        "troll",
        "wolf",
        "skeleton",
        "dragon",
        "bandit",
        "orc",
        "spider",
        "ghost",
        "giant rat",
        "ogre",
        "witch",
        "serpent",
        "bear",
        "wraith",
        "cultist",
        "golem",
        "vampire",
    ],
    "person": [
        "old man",
        "innkeeper",
        "guard",
        "merchant",
        "priest",
        "stranger",
        "blacksmith",
        "girl",
        "captain",
        "farmer",
        "sailor",
        "queen",
        "beggar",
        "monk",
        "hermit",
    ],
    "item": [
        "sword",
        "torch",
        "map",
        "key",
        "potion",
        "shield",
        "rope",
        "lantern",
        "dagger",
        "coin",
        "amulet",
        "scroll",
        "bow",
        "ring",
        "axe",
        "spear",
        "helmet",
        "candle",
        "book",
        "bottle",
        "cloak",
        "compass",
        "hammer",
        "crown",
        "feather",
        "bone",
        "gem",
    ],
    "container": ["chest", "door", "gate", "box", "crate", "barrel", "sack", "cabinet", "coffin", "trapdoor"],
    "feature": [
        "wall",
        "floor",
        "altar",
        "statue",
        "well",
        "bridge",
        "table",
        "fireplace",
        "shelf",
        "tree",
        "pillar",
        "staircase",
        "window",
        "fountain",
        "rock",
        "throne",
        "ladder",
        "tapestry",
    ],
    "direction": ["north", "south", "east", "west", "upstairs", "downstairs", "inside", "outside"],
    "adj": [
        "old",
        "dark",
        "heavy",
        "rusty",
        "cold",
        "ancient",
        "narrow",
        "strange",
        "broken",
        "silent",
        "golden",
        "wet",
        "bright",
        "hidden",
        "tall",
        "small",
        "wooden",
        "iron",
        "silver",
        "cracked",
        "shining",
        "dusty",
        "strong",
        "bloody",
        "empty",
        "enormous",
    ],
    "sound": [
        "a low growl",
        "distant thunder",
        "soft footsteps",
        "a scream",
        "dripping water",
        "a bell",
        "laughter",
        "the howl of a wolf",
        "chanting",
        "a loud crash",
    ],
    "feeling": ["afraid", "tired", "hungry", "brave", "uneasy", "hopeful", "angry", "lost", "cold", "curious"],
    "weather": ["rain", "snow", "fog", "wind", "moonlight", "smoke", "darkness", "mist", "storm"],
    "body": ["arm", "leg", "shoulder", "head", "hand", "chest"],
    "line": [
        "Turn back before it is too late.",
        "Who goes there?",
        "I have been waiting for you.",
        "The key is hidden in the tower.",
        "Help me, please!",
        "You should not be here.",
        "Follow me, and stay quiet.",
        "What do you want?",
        "The king is dead.",
        "Run!",
        "Bring me the {item} and I will tell you everything.",
        "Nobody has come back from {place} in years.",
        "Be careful, the {creature} is still hungry.",
        "Thank you, traveler.",
    ],
    "player_line": [
        "Hello there.",
        "Who are you?",
        "Where is the gate?",
        "I mean you no harm.",
        "Give me the key.",
        "Stay back!",
        "Can you help me?",
        "Where does this road go?",
        "Tell me about the {creature}.",
        "I need a room for the night.",
    ],
}

OPENINGS: Sequence[str] = [
    "You are {name}, a {role} from {place}. You have a {item} and a {item}. {setting}",
    "You are a {role} named {name}. You wake up in {place} with nothing but a {adj} {item}. {setting}",
    "You are {name}, a {adj} {role}. The road has led you to {place}. {setting}",
]

SETTINGS: Sequence[str] = [
    "The air is {adj} and the {weather} hides the path ahead.",
    "Somewhere ahead you hear {sound}.",
    "You have heard that a {creature} lives nearby.",
    "A {adj} {feature} stands in front of you.",
    "You feel {feeling}, but you keep walking.",
]

ACTIONS: Sequence[str] = [
    "look around",
    "open the {container}",
    "attack the {creature}",
    "take the {item}",
    "go {direction}",
    "search the {feature}",
    "light the {item}",
    "pick up the {adj} {item}",
    "hide behind the {feature}",
    "run {direction}",
    "talk to the {person}",
    "draw your {item}",
    "climb the {feature}",
    "listen carefully",
    "rest for a while",
    "eat some bread",
    "push the {adj} {feature}",
    "follow the {person}",
    "cast a spell at the {creature}",
    "ask the {person} about the {item}",
    "kick the {container}",
    "sneak past the {creature}",
    "read the {adj} scroll",
    "throw the {item} at the {creature}",
    'say "{player_line}"',
]

NARRATION: Sequence[str] = [
    "The {creature} snarls and lunges at you.",
    "You raise your {item}.",
    "The {container} creaks open.",
    "Inside you find a {adj} {item}.",
    'The {person} looks at you and says, "{line}"',
    '"{line}" the {person} whispers.',
    "You hear {sound} from the {direction}.",
    "The {adj} {feature} is covered in dust.",
    "A {creature} steps out of the shadows.",
    "You strike the {creature} and it falls to the ground.",
    "The {creature} flees into the {weather}.",
    "You feel {feeling}.",
    "The path leads {direction} toward {place}.",
    "There is nothing here but a {adj} {item}.",
    "You find a {item} hidden under the {feature}.",
    "The {person} nods slowly.",
    "Your {item} glows with a {adj} light.",
    "The {weather} grows thicker around you.",
    "Nothing happens.",
    "The {creature} laughs at you.",
    "You see a {adj} {container} near the {feature}.",
    "The {person} hands you a {item}.",
    '{name} smiles and says, "{line}"',
    "The {creature} swings at you, but you dodge to the side.",
    "The {creature} bites your {body}. It hurts badly.",
    "You climb over the {adj} {feature} and drop down on the other side.",
    'The {person} frowns. "{line}"',
    "A cold wind blows through the {adj} hall.",
    "The floor shakes beneath your feet.",
    "You drink the potion and feel stronger.",
    "The {person} shakes their head and walks away.",
    "Behind the {feature} is a {adj} passage that leads {direction}.",
    "Your spell hits the {creature}, and it screams in pain.",
    "You cannot see anything in the {weather}.",
    "The {creature} is too strong. You step back.",
    "After a while you reach {place}.",
    "Someone has written a warning on the {feature}.",
]

_SLOT = re.compile(r"\{(\w+)\}")


_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiou])")


def _fill(template: str, rng: random.Random) -> str:
    """Replace each {slot} (also inside the words chosen) with a random word; fix "a" before a vowel."""
    while _SLOT.search(template):
        template = _SLOT.sub(lambda match: rng.choice(WORDS[match.group(1)]), template)
    return _ARTICLE.sub(r"\1n ", template)


def _opening(rng: random.Random) -> str:
    setting = " ".join(rng.choice(SETTINGS) for _ in range(rng.randint(1, 2)))
    return _fill(rng.choice(OPENINGS).replace("{setting}", setting), rng)


def _turn(rng: random.Random) -> str:
    action = _fill(rng.choice(ACTIONS), rng)
    if not action.endswith('"'):
        action += "."
    narration = " ".join(_fill(rng.choice(NARRATION), rng) for _ in range(rng.randint(1, 3)))
    return f"\n> You {action}\n{narration}"


def _adventure(rng: random.Random) -> str:
    return _opening(rng) + "".join(_turn(rng) for _ in range(rng.randint(3, 8)))


def adventure_corpus(n: int, *, seed: int = 0) -> list[str]:
    """`n` templated adventures in the game's context format: an opening, then `> You ...` turns."""
    rng = random.Random(seed)
    return [_adventure(rng) for _ in range(n)]
