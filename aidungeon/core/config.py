"""Settings: frozen, validated dataclasses (the TOML file they live in is read by storage).

`Sampling` shapes each generation, `ContextSettings` shapes what the model sees, `AppSettings`
picks the model and the hardware. `Config` bundles the three. Nothing here is read at import
time and there is no global settings object: callers load a `Config` and pass it on.
`/set KEY VALUE` goes through `Config.with_value`, which validates and returns a new `Config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from aidungeon.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEFAULT_MODEL = "smollm2-135m"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# What the repetition penalty sees: the story window before the turn as well, or only the turn's own tokens.
REPETITION_SCOPES = ("story", "turn")


@dataclass(frozen=True)
class Sampling:
    """How each continuation is sampled."""

    temperature: float = field(default=0.8, metadata={"help": "randomness (0 = always the likeliest word)"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus: keep the likeliest words up to this mass"})
    top_k: int = field(default=40, metadata={"help": "keep only the k likeliest words (0 = off)"})
    # 1.05: lighter than KoboldAI's 1.15 followed more actions and made fewer senseless turns, for a
    # little more repetition (benchmarks/RESULTS.md, #14).
    repetition_penalty: float = field(default=1.05, metadata={"help": "penalty for words already used"})
    repetition_range: int = field(default=512, metadata={"help": "how many recent tokens the penalty sees"})
    repetition_slope: float = field(default=0.7, metadata={"help": "0 = flat penalty, 1 = oldest tokens free"})
    # "story": at 1.05, a penalty over the turn's own words alone let the story repeat its own
    # pattern turn after turn (half the turns of 12-turn adventures read blind, all of turns 81-100);
    # over the window it did so half as often (benchmarks/RESULTS.md, #14).
    repetition_scope: str = field(
        default="story",
        metadata={"help": "what the penalty sees: turn (its own words) or story (the window, as KoboldAI)"},
    )
    max_new_tokens: int = field(default=60, metadata={"help": "longest continuation, in tokens"})
    candidates: int = field(default=0, metadata={"help": "continuations drawn per turn (0 = by device)"})
    seed: int | None = field(default=None, metadata={"help": "seed for reproducible stories (none = random)"})
    # Logits processors (model/voice.py) that the in-process engine applies; a remote server samples
    # by itself and cannot. The protocol endpoints (OpenAI, Kobold) turn them off unless asked.
    narrator_voice: bool = field(default=True, metadata={"help": "never narrate as I/my/we outside quoted speech"})
    player_voice: bool = field(default=True, metadata={"help": 'never write the player\'s speech ("You say ...")'})
    # Off: over whole adventures it raised the turns a reader found senseless (benchmarks/RESULTS.md, #14).
    action_ranking: bool = field(
        default=False, metadata={"help": "of equally clean candidates, show the one that answers your action best"}
    )

    def __post_init__(self) -> None:
        _check(0.0 <= self.temperature <= 5.0, "temperature must be between 0 and 5")
        _check(0.0 < self.top_p <= 1.0, "top_p must be above 0 and at most 1")
        _check(self.top_k >= 0, "top_k must be 0 (off) or more")
        _check(1.0 <= self.repetition_penalty <= 3.0, "repetition_penalty must be between 1 and 3")
        _check(self.repetition_range >= 0, "repetition_range must be 0 or more")
        _check(0.0 <= self.repetition_slope <= 1.0, "repetition_slope must be between 0 and 1")
        _check(self.repetition_scope in REPETITION_SCOPES, "repetition_scope must be story or turn")
        _check(1 <= self.max_new_tokens <= 1024, "max_new_tokens must be between 1 and 1024")
        _check(0 <= self.candidates <= 16, "candidates must be between 0 (auto) and 16")
        _check(self.seed is None or self.seed >= 0, "seed must be a whole number, 0 or more")
        _check(isinstance(self.narrator_voice, bool), "narrator_voice must be on or off")
        _check(isinstance(self.player_voice, bool), "player_voice must be on or off")
        _check(isinstance(self.action_ranking, bool), "action_ranking must be on or off")


@dataclass(frozen=True)
class ContextSettings:
    """What goes into the model's window."""

    context_tokens: int = field(default=0, metadata={"help": "window size in tokens (0 = the model's own)"})
    note_depth: int = field(default=3, metadata={"help": "author's note goes this many turns from the end"})
    lore_scan_turns: int = field(default=3, metadata={"help": "world info keys are looked for in this many turns"})
    drop_fraction: float = field(default=0.4, metadata={"help": "share of the window freed when it is full"})

    def __post_init__(self) -> None:
        _check(self.context_tokens == 0 or self.context_tokens >= 64, "context_tokens must be 0 (auto) or at least 64")
        _check(1 <= self.note_depth <= 50, "note_depth must be between 1 and 50")
        _check(0 <= self.lore_scan_turns <= 50, "lore_scan_turns must be between 0 and 50")
        _check(0.0 < self.drop_fraction <= 0.75, "drop_fraction must be above 0 and at most 0.75")


@dataclass(frozen=True)
class AppSettings:
    """Which model runs, and where."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "model preset, folder, .gguf file or hub id"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, float16 or bfloat16"})

    def __post_init__(self) -> None:
        _check(bool(self.model.strip()), "model must not be empty")
        _check(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}")
        _check(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}")


_SECTIONS = {"sampling": Sampling, "context": ContextSettings, "app": AppSettings}

# Keys players may type with spaces or dashes, plus the short names other games use.
_ALIASES = {
    "temp": "temperature",
    "rep_pen": "repetition_penalty",
    "rep_pen_range": "repetition_range",
    "rep_pen_slope": "repetition_slope",
    "max_tokens": "max_new_tokens",
    "length": "max_new_tokens",
    "context": "context_tokens",
    "n": "candidates",
}


def normalize_key(key: str) -> str:
    """'Max new tokens' -> 'max_new_tokens'; known short names map to their full key."""
    name = "_".join(key.strip().lower().replace("-", " ").split())
    return _ALIASES.get(name, name)


def _convert(raw: Any, annotation: str, key: str) -> Any:
    """Turn a typed or TOML value into the field's type, or raise a ConfigError."""
    if "None" in annotation and (raw is None or str(raw).strip().lower() in ("none", "off", "random")):
        return None
    kind = annotation.replace(" | None", "")
    if kind == "bool":
        return _to_bool(raw, key)
    try:
        if kind == "int":
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw) if not isinstance(raw, str) else int(raw.strip())
        if kind == "float":
            return float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} needs a {'whole number' if kind == 'int' else 'number'}, not {raw!r}") from None
    return str(raw).strip()


_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")


def _to_bool(raw: Any, key: str) -> bool:
    """A typed on/off (or TOML's true/false) as a bool."""
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ConfigError(f"{key} is on or off, not {raw!r}")


@dataclass(frozen=True)
class Config:
    """All settings. Immutable: `with_value` and `with_overrides` return a new Config."""

    sampling: Sampling = field(default_factory=Sampling)
    context: ContextSettings = field(default_factory=ContextSettings)
    app: AppSettings = field(default_factory=AppSettings)

    @staticmethod
    def setting_names() -> list[str]:
        """Every settable key, in display order."""
        return [f.name for cls in _SECTIONS.values() for f in fields(cls)]

    @staticmethod
    def help_for(key: str) -> str:
        for cls in _SECTIONS.values():
            for f in fields(cls):
                if f.name == key:
                    return str(f.metadata.get("help", ""))
        return ""

    def section_of(self, key: str) -> str:
        for name, cls in _SECTIONS.items():
            if key in {f.name for f in fields(cls)}:
                return name
        raise ConfigError(f"unknown setting {key!r}; /settings lists them")

    def get(self, key: str) -> Any:
        key = normalize_key(key)
        return getattr(getattr(self, self.section_of(key)), key)

    def with_value(self, key: str, raw: Any) -> Config:
        """A copy with one setting changed; the value is parsed and validated."""
        key = normalize_key(key)
        section = self.section_of(key)
        current = getattr(self, section)
        annotation = {f.name: str(f.type) for f in fields(current)}[key]
        value = _convert(raw, annotation, key)
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **{key: value})})

    def with_overrides(self, values: dict[str, Any]) -> Config:
        """Apply several `key: value` pairs (None values are skipped, as for unset CLI flags)."""
        config = self
        for key, value in values.items():
            if value is not None:
                config = config.with_value(key, value)
        return config

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain data (TOML has no null, so unset values are left out)."""
        return {
            name: {k: v for k, v in dataclasses.asdict(getattr(self, name)).items() if v is not None}
            for name in _SECTIONS
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from nested data; unknown sections or keys are a ConfigError."""
        config = cls()
        for section, values in data.items():
            if section not in _SECTIONS or not isinstance(values, dict):
                raise ConfigError(f"unknown config section [{section}]")
            for key, value in values.items():
                if config.section_of(normalize_key(key)) != section:
                    raise ConfigError(f"{key!r} does not belong in [{section}]")
                config = config.with_value(key, value)
        return config
