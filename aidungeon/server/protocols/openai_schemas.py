"""OpenAI completions' request and response models (`/v1/models`, `/v1/completions`).

Shapes follow OpenAI's legacy completions API as openai-python reads it, with vLLM's sampling
extras (`top_k`, `repetition_penalty`, `include_stop_str_in_output`) and the game's own voice
steps (`narrator_voice`, `player_voice`: off unless the request asks). Values outside the
engine's ranges are refused with a clear error, not clamped: these clients set them on purpose.
Fields this server has no use for (`suffix`, `logit_bias`, `presence_penalty`,
`frequency_penalty`, `min_p`) are accepted and ignored. It holds no route.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from aidungeon.core.config import Sampling
from aidungeon.server.protocols.errors import ProtocolError

# OpenAI's default completion length.
DEFAULT_MAX_TOKENS = 16
MAX_CHOICES = 16


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionBody(BaseModel):
    """`POST /v1/completions`."""

    model: str | None = Field(default=None, description="any name: this server has one model")
    prompt: str | list[str] | list[int] | list[list[int]] = Field(description="one text")
    max_tokens: int | None = Field(default=DEFAULT_MAX_TOKENS, ge=1, description="at most 1024 are generated")
    temperature: float | None = Field(default=None, ge=0.0, le=5.0, description="default 1")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="default 1 (off)")
    top_k: int | None = Field(default=None, ge=-1, description="-1 or 0: off (the default)")
    repetition_penalty: float | None = Field(default=None, ge=1.0, le=3.0, description="default 1 (off)")
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    best_of: int | None = Field(default=None, ge=1, le=MAX_CHOICES, description="draw this many, keep the n likeliest")
    stop: str | list[str] | None = Field(default=None, description="up to 16 sequences that end the text")
    include_stop_str_in_output: bool = False
    seed: int | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5, description="the sampled token's log-probability")
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=200, description="a stable id: its prompts share a cache")
    # This server's own extras: the game's narrator steps, off for a client that expects a plain model.
    narrator_voice: bool = Field(default=False, description="ban I/my/we outside quoted speech")
    player_voice: bool = Field(default=False, description='ban "you say", "you said", ... outside quotes')

    def text(self) -> str:
        """The one prompt text; token-id prompts and batches are refused."""
        prompt = self.prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ProtocolError("prompt must be one text: token ids and several prompts in one request are not served")
        return prompt

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 16:
            raise ProtocolError("stop takes at most 16 sequences")
        return tuple(s for s in stops if s)

    def drawn(self) -> int:
        """How many candidates to draw: best_of, or n."""
        best_of = self.best_of or self.n
        if best_of < self.n:
            raise ProtocolError("best_of must be at least n")
        if self.stream and best_of > self.n:
            raise ProtocolError("best_of cannot stream: leave it out or equal to n")
        return best_of

    def engine_seed(self) -> int | None:
        return None if self.seed is None else self.seed % (1 << 63)

    def sampling(self, max_new: int, window: int) -> Sampling:
        """The engine's sampling: OpenAI's defaults, the penalty over the whole window and flat."""
        return Sampling(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(0, self.top_k or 0),
            repetition_penalty=self.repetition_penalty or 1.0,
            repetition_range=window,
            repetition_slope=0.0,
            repetition_scope="story",  # the protocol's penalty covers the context
            max_new_tokens=max_new,
            candidates=1,
            narrator_voice=self.narrator_voice,
            player_voice=self.player_voice,
        )


class Logprobs(BaseModel):
    """Per token of the text: the token, the model's log-probability of it (None for echoed
    prompt tokens, which are not scored), and its offset in the choice's text. `top_logprobs`
    holds only the sampled token: this engine keeps no ranking of the alternatives."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


FinishReason = Literal["stop", "length"]


class Choice(BaseModel):
    index: int
    text: str
    logprobs: Logprobs | None = None
    finish_reason: FinishReason | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionAnswer(BaseModel):
    """A completion, or one streamed chunk of one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "aidungeon"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
