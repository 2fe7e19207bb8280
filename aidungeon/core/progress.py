"""The progress callback type that slow model work reports through and the terminal draws.

It lives in `core` so that `model/` (which reports) and `ui/` (which draws) both depend on it
without `ui` importing `model`. It holds only the type and a do-nothing default; no drawing.
"""

from __future__ import annotations

from collections.abc import Callable

# (message, fraction done or None when unknown); the UI turns these into one progress display.
ProgressFn = Callable[[str, "float | None"], None]


def no_progress(message: str, fraction: float | None) -> None:
    """The default progress callback: report nothing."""
