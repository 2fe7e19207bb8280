"""Token ids for the context window: each text tokenized once, a result fed back as the model's own ids.

The window is rebuilt every turn from the same parts, so their ids are kept rather than
tokenized again. A result is kept as the ids the model generated: cleaned text, tokenized
afresh, often differs from them (cuts, non-canonical merges), which would end the cached prefix
at the previous result. Those ids decode to exactly this text, so the model sees the same story
either way. This class only caches; it builds no context.
"""

from __future__ import annotations

from collections.abc import Callable

# How many texts keep their ids: a full window's parts, with room to spare.
KNOWN_IDS_KEPT = 512


class PromptIds:
    """A bounded text -> ids cache in front of an engine's tokenizer (oldest forgotten first)."""

    def __init__(self, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str]) -> None:
        self._tokenize = encode
        self._detokenize = decode
        self.known: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str) -> list[int]:
        known = self.known.get(text)
        if known is None:
            known = self.known[text] = tuple(self._tokenize(text))
            self._forget_oldest()
        return list(known)

    def remember(self, text: str, ids: list[int]) -> None:
        """Remember how to feed the shown text back: the longest prefix of the generated ids
        that decodes to a prefix of it (as the layout places it, with or without a leading
        space), then the rest tokenized afresh. Cleanup often changes only the end of a result."""
        if not ids:
            return
        for variant in (text, " " + text):
            for end in range(len(ids), 0, -1):
                prefix = self._detokenize(ids[:end])
                if variant.startswith(prefix):
                    rest = variant[len(prefix) :]
                    self.known.pop(variant, None)  # re-inserted last, so it is forgotten last
                    self.known[variant] = (*ids[:end], *(self._tokenize(rest) if rest else ()))
                    break
        self._forget_oldest()

    def _forget_oldest(self) -> None:
        while len(self.known) > KNOWN_IDS_KEPT:
            self.known.pop(next(iter(self.known)))
