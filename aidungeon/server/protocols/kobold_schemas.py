"""The KoboldAI API's request and response models, as koboldcpp 1.76 speaks them.

Field names, defaults and shapes follow koboldcpp (see ../shared/SERVING.md). Unknown fields
are ignored, never refused, as KoboldAI clients send many samplers this server lacks (min_p,
typical, tfs, mirostat, DRY, grammar, use_default_badwordsids, ...). Out-of-range values are
clamped into the engine's ranges rather than refused, as koboldcpp does. `rep_pen_slope` maps
onto the game's own slope (0 a flat penalty, 1 fading to nothing at the range's far end), which
is linear where KoboldAI's curve is not. It holds no route.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from aidungeon.core.config import Sampling

# koboldcpp's defaults for a field a client leaves out.
DEFAULT_MAX_LENGTH = 180
DEFAULTS = {"temperature": 0.7, "top_p": 0.92, "top_k": 100, "rep_pen": 1.0, "rep_pen_range": 320, "rep_pen_slope": 1.0}


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerateBody(_Lenient):
    """`POST /api/v1/generate` and `/api/extra/generate/stream`. None means koboldcpp's default."""

    prompt: str = Field(max_length=4_000_000)
    memory: str | None = Field(default=None, max_length=4_000_000, description="prepended; never cut")
    max_context_length: int | None = Field(default=None, description="tokens of context (at most the model's)")
    max_length: int | None = Field(default=None, description="tokens to generate (default 180)")
    temperature: float | None = None
    top_p: float | None = None
    top_k: float | None = None
    rep_pen: float | None = None
    repeat_penalty: float | None = None
    repetition_penalty: float | None = None
    rep_pen_range: float | None = None
    rep_pen_slope: float | None = None
    sampler_seed: int | None = Field(default=None, description="-1 (the default) draws a fresh seed")
    stop_sequence: list[str] | str | None = Field(default=None, description="cut the text at the first of these")
    trim_stop: bool | None = Field(default=None, description="leave the stop sequence out of the text")
    genkey: str | None = Field(default=None, max_length=200, description="names the generation for abort")
    # This server's own extras (not koboldcpp's): the game's narrator steps, off unless asked.
    narrator_voice: bool = Field(default=False, description="ban I/my/we outside quoted speech")
    player_voice: bool = Field(default=False, description='ban "you say", "you said", ... outside quotes')

    def stops(self) -> tuple[str, ...]:
        raw = [self.stop_sequence] if isinstance(self.stop_sequence, str) else self.stop_sequence or []
        return tuple(s for s in raw[:64] if s)

    def seed(self) -> int | None:
        return self.sampler_seed if self.sampler_seed is not None and self.sampler_seed >= 0 else None

    def sampling(self, max_new: int, window: int) -> Sampling:
        """The engine's sampling for this body, each value clamped into its range."""
        pick = {key: getattr(self, key) for key in DEFAULTS}
        values = {key: float(DEFAULTS[key] if value is None else value) for key, value in pick.items()}
        penalties = [p for p in (self.rep_pen, self.repeat_penalty, self.repetition_penalty) if p is not None]
        top_p = values["top_p"]
        return Sampling(
            temperature=_clamp(values["temperature"], 0.0, 5.0),
            top_p=1.0 if top_p <= 0 or top_p >= 1 else top_p,  # koboldcpp: 0 or 1 turns it off
            top_k=max(0, int(values["top_k"])),
            repetition_penalty=_clamp(max(penalties, default=values["rep_pen"]), 1.0, 3.0),
            repetition_range=int(_clamp(values["rep_pen_range"], 0, window)),
            repetition_slope=_clamp(values["rep_pen_slope"], 0.0, 1.0),
            repetition_scope="story",  # the protocol's penalty covers the context
            max_new_tokens=max_new,
            candidates=1,
            narrator_voice=self.narrator_voice,
            player_voice=self.player_voice,
        )


class KoboldResult(BaseModel):
    text: str
    finish_reason: Literal["stop", "length"]


class GenerateAnswer(BaseModel):
    results: list[KoboldResult]


class GenkeyBody(_Lenient):
    genkey: str | None = Field(default=None, max_length=200)


class AbortAnswer(BaseModel):
    # Strings, not booleans: koboldcpp sends "true" and "false" and clients compare them so.
    success: Literal["true", "false"]
    done: Literal["true", "false"]


class TokenCountBody(_Lenient):
    prompt: str = Field(default="", max_length=4_000_000)


class DetokenizeBody(_Lenient):
    ids: list[int] = Field(default_factory=list, max_length=1_000_000)


class Detokenized(BaseModel):
    result: str
    success: bool = True


class TokenCount(BaseModel):
    value: int
    ids: list[int]


class ResultText(BaseModel):
    result: str


class ResultValue(BaseModel):
    value: int


class Version(BaseModel):
    result: str
    version: str
