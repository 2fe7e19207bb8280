"""Export a story as Markdown, plain text or HTML.

Exports (`md`, `txt`, `html`) show the current branch only; other branches and unchosen candidates are
not exported. HTML is one self-contained file (inline CSS, no scripts, all text escaped). A text that
stops mid-sentence (an opening ending "... and") is joined with the story text that finishes it, as the
terminal shows it, using `core.cleanup`'s sentence rules; an action in between keeps them apart.
This module writes no files; callers save the text where the player asks.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

from aidungeon.core.errors import SaveError
from aidungeon.core.story import Story
from aidungeon.core.text import is_fragment, join_continuation

EXPORT_FORMATS = ("md", "txt", "html")

# -- export --------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~])")
_MD_LINE_START = re.compile(r"^(\s*)([-+=]|\d+\.)", re.MULTILINE)


def _md_escape(text: str) -> str:
    return _MD_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), _MD_SPECIAL.sub(r"\\\1", text))


def _extras(story: Story) -> list[tuple[str, list[str]]]:
    """The player's notes: (heading, lines) for each kind that is not empty."""
    sections = []
    if story.memory:
        sections.append(("Memory", list(story.memory)))
    if story.author_note.strip():
        sections.append(("Author's note", [story.author_note]))
    if story.world:
        lore = [f"{', '.join(e.keys) or '(no keys)'}{' (always)' if e.constant else ''}: {e.text}" for e in story.world]
        sections.append(("World info", lore))
    return sections


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _blocks(story: Story) -> list[tuple[str, str]]:
    """The current branch as ("story" or "action", paragraph), oldest first, each unfinished
    sentence joined with the first paragraph of the story text that follows it."""
    blocks = [("story", p) for p in _paragraphs(story.opening)]
    for turn in story.path():
        if turn.action.strip():
            blocks.append(("action", turn.action.strip()))
        for index, paragraph in enumerate(_paragraphs(turn.result)):
            if index == 0 and blocks and blocks[-1][0] == "story" and is_fragment(blocks[-1][1]):
                blocks[-1] = ("story", join_continuation(blocks[-1][1], paragraph))
            else:
                blocks.append(("story", paragraph))
    return blocks


def _export_txt(story: Story) -> str:
    body = "\n\n".join(f"> {text}" if kind == "action" else text for kind, text in _blocks(story))
    parts = [story.title.strip(), body]
    for heading, lines in _extras(story):
        parts.append(f"-- {heading} --\n" + "\n".join(lines))
    return "\n\n".join(p for p in parts if p) + "\n"


def _export_md(story: Story) -> str:
    parts = [f"# {_md_escape(story.title.strip())}"] if story.title.strip() else []
    for kind, text in _blocks(story):
        if kind == "action":
            parts.append("\n".join(f"> {_md_escape(line)}" for line in text.splitlines()))
        else:
            parts.append(_md_escape(text))
    extras = _extras(story)
    if extras:
        parts.append("---")
        for heading, lines in extras:
            parts.append(f"## {heading}\n\n" + "\n".join(f"- {_md_escape(line)}" for line in lines))
    return "\n\n".join(parts) + "\n"


_CSS = """
:root { color-scheme: light dark; --ink: #222; --paper: #fdfcf8; --accent: #7a3e00; --muted: #666; }
@media (prefers-color-scheme: dark) {
  :root { --ink: #e8e4da; --paper: #1b1a18; --accent: #f0b060; --muted: #a09a90; }
}
body { background: var(--paper); color: var(--ink); margin: 0; }
main { max-width: 38em; margin: 3em auto; padding: 0 1.25em;
       font: 1.125rem/1.65 Georgia, "Iowan Old Style", "Palatino Linotype", serif; }
h1 { font-size: 1.9em; line-height: 1.2; margin-bottom: 1.2em; }
p { margin: 0 0 1em; white-space: pre-wrap; overflow-wrap: break-word; }
p.action { color: var(--accent); font-family: system-ui, sans-serif; font-size: 0.95em;
           border-left: 3px solid var(--accent); padding-left: 0.75em; margin: 1.5em 0; }
p.action::before { content: "> "; }
details { margin-top: 3em; color: var(--muted); font-size: 0.9em; }
details li { white-space: pre-wrap; }
""".strip()


def _export_html(story: Story) -> str:
    title = html.escape(story.title.strip() or "An aidungeon story")
    body = [f"<h1>{title}</h1>"]
    body += [f'<p class="{kind}">{html.escape(text)}</p>' for kind, text in _blocks(story)]
    extras = _extras(story)
    if extras:
        body.append("<details><summary>Memory, notes and world info</summary>")
        for heading, lines in extras:
            items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
            body.append(f"<h2>{html.escape(heading)}</h2><ul>{items}</ul>")
        body.append("</details>")
    content = "\n".join(body)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n<main>\n{content}\n</main>\n</body>\n</html>\n"
    )


_EXPORTERS: dict[str, Callable[[Story], str]] = {"md": _export_md, "txt": _export_txt, "html": _export_html}


def export_story(story: Story, fmt: str) -> str:
    """The current branch of `story` as text in `fmt`: "md", "txt" or "html" (one self-contained file)."""
    key = fmt.strip().lower().removeprefix(".")
    if key not in _EXPORTERS:
        raise SaveError(f"unknown export format {fmt!r}; use {', '.join(EXPORT_FORMATS)}")
    return _EXPORTERS[key](story)
