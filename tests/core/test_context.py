"""The token window: exact parts and texts per layout, lore and note placement, budgets, chunked dropping.

Most tests use a character-level `encode` (one token per character), so every count below is the
length of a string that can be checked by eye.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aidungeon.core.config import ContextSettings
from aidungeon.core.context import (
    CHATML,
    NARRATOR,
    PLAIN,
    Part,
    _fit_first,
    build,
    choose_start,
    layout_for,
    lore_hits,
)
from aidungeon.core.errors import ConfigError, StoryError
from aidungeon.core.story import Candidate, Story, WorldEntry


def enc(text: str) -> list[int]:
    return [ord(c) for c in text]


def make_story(
    turns: list[tuple[str, str]],
    *,
    opening: str = "",
    memory: tuple[str, ...] = (),
    world: tuple[WorldEntry, ...] = (),
    note: str = "",
    pin_opening: bool = False,
) -> Story:
    story = Story(opening=opening, memory=list(memory), world=list(world), author_note=note, pin_opening=pin_opening)
    for action, result in turns:
        story.append(action)
        if result:
            story.add_candidates([Candidate(text=result)])
    return story


def names(ctx) -> list[str]:
    return [p.name for p in ctx.parts]


def texts(ctx) -> list[str]:
    return [p.text for p in ctx.parts]


CS = ContextSettings(note_depth=1, lore_scan_turns=3, drop_fraction=0.25)
DRAGON = WorldEntry(keys=["dragon"], text="Dragons breathe fire.")
WAR = WorldEntry(keys=[], text="The realm is at war.", constant=True)


def knight_story(**kw) -> Story:
    return make_story(
        [("look", "You see a tower."), ("go north", "")],
        opening="You stand at a gate.",
        memory=("You are a knight.", "   "),
        world=(DRAGON, WAR),
        note="Keep it grim.",
        **kw,
    )


# -- exact parts and texts ---------------------------------------------------------------------


def test_plain_layout_parts_and_text() -> None:
    ctx = build(knight_story(), enc, budget=1000, settings=CS, layout=PLAIN)
    assert [(p.name, p.text) for p in ctx.parts] == [
        ("memory", "You are a knight."),
        ("world info (constant)", "\nThe realm is at war."),
        ("opening", "\nYou stand at a gate."),
        ("turn 1", "\n> look\nYou see a tower."),
        ("author's note", "\n[Author's note: Keep it grim.]"),
        ("turn 2", "\n> go north\n"),
    ]
    assert "".join(texts(ctx)) == (
        "You are a knight.\nThe realm is at war.\nYou stand at a gate.\n> look\nYou see a tower."
        "\n[Author's note: Keep it grim.]\n> go north\n"
    )
    assert ctx.ids == enc("".join(texts(ctx)))
    assert ctx.tokens == 17 + 21 + 21 + 24 + 31 + 12 == len(ctx.ids)
    assert ctx.start == 0
    assert ctx.budget == 1000


def test_chatml_layout_parts_and_text() -> None:
    ctx = build(knight_story(), enc, budget=1000, settings=CS, layout=CHATML)
    assert NARRATOR.startswith("You are the narrator")
    assert [(p.name, p.text) for p in ctx.parts] == [
        ("instructions", "<|im_start|>system\n" + NARRATOR),
        ("memory", "\nYou are a knight."),
        ("world info (constant)", "\nThe realm is at war."),
        ("opening", "<|im_end|>\n<|im_start|>assistant\nYou stand at a gate."),
        ("turn 1", "<|im_end|>\n<|im_start|>user\nlook<|im_end|>\n<|im_start|>assistant\nYou see a tower."),
        ("author's note", "<|im_end|>\n<|im_start|>system\n[Author's note: Keep it grim.]"),
        ("turn 2", "<|im_end|>\n<|im_start|>user\ngo north<|im_end|>\n<|im_start|>assistant\n"),
    ]
    assert ctx.ids == enc("".join(texts(ctx)))
    assert ctx.tokens == len(ctx.ids)


def test_pinned_opening_is_named_and_kept_with_the_pinned_parts() -> None:
    ctx = build(knight_story(pin_opening=True), enc, budget=1000, settings=CS, layout=PLAIN)
    assert names(ctx) == ["memory", "world info (constant)", "opening (pinned)", "turn 1", "author's note", "turn 2"]
    assert ctx.parts[2].text == "\nYou stand at a gate."


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (PLAIN, [("world info (constant)", "The realm is at war."), ("opening", "\nHi.")]),
        (
            CHATML,
            [
                ("world info (constant)", "\nThe realm is at war."),
                ("opening", "<|im_end|>\n<|im_start|>assistant\nHi."),
            ],
        ),
    ],
)
def test_constant_lore_without_memory(layout, expected) -> None:
    story = make_story([], opening="  Hi.  ", world=(WAR,))
    ctx = build(story, enc, budget=1000, settings=CS, layout=layout)
    got = [(p.name, p.text) for p in ctx.parts if p.name != "instructions"]
    assert got == expected


def test_turn_without_action_runs_on_and_does_not_open() -> None:
    story = make_story([("look", "You see a tower."), ("", "The wind howls.")], opening="Hi.")
    ctx = build(story, enc, budget=1000, settings=CS, layout=PLAIN)
    assert texts(ctx) == ["\nHi.", "\n> look\nYou see a tower.", " The wind howls."]
    assert [p.opens for p in ctx.parts] == [True, True, False]
    chat = build(story, enc, budget=1000, settings=CS, layout=CHATML)
    assert chat.parts[-1].text == " The wind howls."


def test_world_info_hit_and_note_form_one_block() -> None:
    story = make_story(
        [("look", "You see a dragon."), ("run", "")], world=(DRAGON, WAR), note="Keep it grim.", opening="Hi."
    )
    plain = build(story, enc, budget=1000, settings=CS, layout=PLAIN)
    assert [(p.name, p.text) for p in plain.parts] == [
        ("world info (constant)", "The realm is at war."),
        ("opening", "\nHi."),
        ("turn 1", "\n> look\nYou see a dragon."),
        ("world info", "\nDragons breathe fire."),
        ("author's note", "\n[Author's note: Keep it grim.]"),
        ("turn 2", "\n> run\n"),
    ]
    chat = build(story, enc, budget=1000, settings=CS, layout=CHATML)
    assert [(p.name, p.text) for p in chat.parts][-3:] == [
        ("world info", "<|im_end|>\n<|im_start|>system\nDragons breathe fire."),
        ("author's note", "\n[Author's note: Keep it grim.]"),
        ("turn 2", "<|im_end|>\n<|im_start|>user\nrun<|im_end|>\n<|im_start|>assistant\n"),
    ]


# -- world info hits ---------------------------------------------------------------------------

LORE = (
    WorldEntry(keys=["dragon"], text="Dragons breathe fire."),
    WorldEntry(keys=["wyrm", "tower"], text="The tower is old."),
    WorldEntry(keys=["  ", ""], text="Blank keys never match."),
    WorldEntry(keys=["gate"], text="The gate is locked.", constant=True),
    WorldEntry(keys=["knight"], text="Knights serve the king."),
)


@pytest.mark.parametrize(
    ("action", "scan", "expected"),
    [
        ("wait", 3, ["Dragons breathe fire.", "The tower is old."]),
        ("wait", 2, ["The tower is old."]),
        ("wait", 1, []),
        ("attack the DRAGON", 1, ["Dragons breathe fire."]),
        ("climb the Tower", 1, ["The tower is old."]),
        ("attack the dragon", 0, []),
        ("open the gate", 3, ["Dragons breathe fire.", "The tower is old."]),  # constant entries are pinned
    ],
)
def test_lore_hits_from_recent_turns_and_current_action(action, scan, expected) -> None:
    story = make_story(
        [("wait", "A Dragon roars."), ("look", "You see a wyrm."), (action, "")],
        opening="A knight at the gate.",  # the opening and memory are never scanned
        memory=("You are a knight.",),
        world=LORE,
    )
    assert [e.text for e in lore_hits(story, story.path(), scan)] == expected
    ctx = build(story, enc, budget=1000, settings=ContextSettings(lore_scan_turns=scan), layout=PLAIN)
    hit_parts = [p for p in ctx.parts if p.name == "world info"]
    if expected:
        assert [p.text for p in hit_parts] == ["\n" + "\n".join(expected)]
    else:
        assert hit_parts == []


# -- author's note depth -----------------------------------------------------------------------

FIVE = [("a1", "r1."), ("a2", "r2."), ("a3", "r3."), ("a4", "r4."), ("a5", "")]


@pytest.mark.parametrize(
    ("turns", "depth", "expected"),
    [
        (FIVE, 1, ["turn 1", "turn 2", "turn 3", "turn 4", "N", "turn 5"]),
        (FIVE, 3, ["turn 1", "turn 2", "N", "turn 3", "turn 4", "turn 5"]),
        (FIVE, 5, ["N", "turn 1", "turn 2", "turn 3", "turn 4", "turn 5"]),
        (FIVE, 50, ["N", "turn 1", "turn 2", "turn 3", "turn 4", "turn 5"]),
        # turn 4 continues turn 3's message, so the block moves back before turn 3
        ([*FIVE[:3], ("", "r4."), FIVE[4]], 2, ["turn 1", "turn 2", "N", "turn 3", "turn 4", "turn 5"]),
        ([*FIVE[:3], ("", "r4."), FIVE[4]], 1, ["turn 1", "turn 2", "turn 3", "turn 4", "N", "turn 5"]),
        # no opening segment before turn 1 continues: it goes before the first one that opens
        ([("", "r1."), ("", "r2."), ("a3", "")], 3, ["turn 1", "turn 2", "N", "turn 3"]),
    ],
)
def test_note_depth_places_the_lore_block(turns, depth, expected) -> None:
    story = make_story(turns, note="n")
    ctx = build(story, enc, budget=1000, settings=ContextSettings(note_depth=depth), layout=PLAIN)
    assert [("N" if p.name == "author's note" else p.name) for p in ctx.parts] == expected


def test_chatml_window_always_ends_opening_the_assistant_reply() -> None:
    story = make_story(FIVE, note="n", opening="Hi.")
    for depth in range(1, 8):
        ctx = build(story, enc, budget=1000, settings=ContextSettings(note_depth=depth), layout=CHATML)
        assert "".join(texts(ctx)).endswith("a5<|im_end|>\n<|im_start|>assistant\n"), depth


def test_note_depth_zero_is_refused() -> None:
    # at depth 0 the block would follow the newest turn, where the model continues
    with pytest.raises(ConfigError, match="note_depth must be between 1 and 50"):
        ContextSettings(note_depth=0)


# -- budgets, dropping, chunks -----------------------------------------------------------------


def numbered_turn(i: int) -> tuple[str, str]:
    """A turn of exactly 20 characters in the plain layout: '\\n> go 07\\nYou see 07.'."""
    return f"go {i:02d}", f"You see {i:02d}."


def test_numbered_turns_are_twenty_tokens() -> None:
    story = make_story([numbered_turn(1)])
    ctx = build(story, enc, budget=100, settings=CS, layout=PLAIN)
    assert texts(ctx) == ["\n> go 01\nYou see 01."]
    assert ctx.tokens == 20


def test_chunked_dropping_keeps_the_start_until_the_window_overflows() -> None:
    settings_ = ContextSettings(note_depth=1, lore_scan_turns=0, drop_fraction=0.25)  # chunk = 50 tokens
    story = make_story([])
    start = 0
    starts, totals, firsts = [], [], []
    for i in range(1, 19):
        action, result = numbered_turn(i)
        story.append(action)
        story.add_candidates([Candidate(text=result)])
        ctx = build(story, enc, budget=200, settings=settings_, layout=PLAIN, start=start)
        start = ctx.start
        starts.append(start)
        totals.append(ctx.tokens)
        firsts.append(ctx.parts[0].name)
        # whole turns only, newest last, oldest dropped first
        assert names(ctx) == [f"turn {n}" for n in range(start + 1, i + 1)]
        assert ctx.ids == enc("".join(texts(ctx)))
    # 10 turns fill the 200 tokens; the 11th drops 4 at once so that 50 tokens (25%) are free.
    assert starts == [0] * 10 + [4, 4, 4, 4, 8, 8, 8, 8]
    assert totals == [20 * n for n in range(1, 11)] + [140, 160, 180, 200, 140, 160, 180, 200]
    assert firsts[10] == "turn 5"


def test_start_from_an_earlier_build_is_kept_while_it_fits() -> None:
    story = make_story([numbered_turn(i) for i in range(1, 6)])
    # all 100 tokens would fit in 150, but a later start (from earlier builds) is kept: the cached prefix stays
    ctx = build(story, enc, budget=150, settings=CS, layout=PLAIN, start=2)
    assert ctx.start == 2
    assert names(ctx) == ["turn 3", "turn 4", "turn 5"]


def test_underfull_window_takes_older_turns_back() -> None:
    story = make_story([numbered_turn(i) for i in range(1, 6)])
    # start=4 keeps 20 of 200 tokens: far below capacity, so older turns come back with a chunk free
    ctx = build(story, enc, budget=200, settings=CS, layout=PLAIN, start=4)
    assert ctx.start == 0
    assert ctx.tokens == 100


@pytest.mark.parametrize(
    ("sizes", "room", "chunk", "hint", "expected"),
    [
        ([], 100, 10, 3, 0),
        ([10, 10, 10], 30, 10, 0, 0),  # fits exactly
        ([10, 10, 10, 10], 30, 10, 0, 2),  # overflow: drop until a chunk is free
        ([10, 10, 10, 10], 30, 10, 1, 1),  # the hint fits: keep it
        ([10, 10, 10, 10], 30, 25, 0, 1),  # a chunk bigger than the free room: drop only what must go
        ([50, 10, 100], 90, 10, 0, 2),  # the newest alone overflows: keep only it (cut later)
        ([10, 10, 10, 10], 100, 10, 3, 0),  # underfull: take everything back
        ([10, 10, 10, 10], 45, 10, 3, 1),  # underfull: take back, leaving a chunk free
        ([10, 10, 10, 10], 40, 10, 99, 1),  # a hint past the end is clamped (then underfull)
    ],
)
def test_choose_start_table(sizes, room, chunk, hint, expected) -> None:
    assert choose_start(sizes, room=room, chunk=chunk, hint=hint) == expected


def test_pinned_parts_too_big_names_them_biggest_first() -> None:
    story = make_story([("go", "")], memory=("M" * 50,), note="N" * 20)
    with pytest.raises(StoryError) as info:
        build(story, enc, budget=88, settings=CS, layout=PLAIN)
    assert str(info.value) == (
        "the pinned parts leave no room for the story in the 88-token budget: "
        "memory (50 tokens), author's note (38 tokens). "
        "Shorten them (/memory, /forget, /world, /note) or raise context_tokens"
    )
    # one token of room is enough: the current action's tail is kept
    ctx = build(story, enc, budget=89, settings=CS, layout=PLAIN)
    assert ctx.tokens == 89
    assert names(ctx) == ["memory", "author's note", "turn 1 (cut)"]
    assert ctx.parts[-1].ids == tuple(enc("\n"))


def test_fit_first_cuts_the_head_of_an_oversize_segment() -> None:
    parts = [Part("turn 1", "abcde", tuple(enc("abcde"))), Part("turn 2", "0123456789", tuple(enc("0123456789")))]
    assert _fit_first(parts, 15, enc) == parts
    assert _fit_first(parts, 100, enc) == parts
    cut = _fit_first(parts, 8, enc)  # turn 1 (5) goes, then 2 tokens of turn 2
    assert [(p.name, p.text, p.ids) for p in cut] == [("turn 2 (cut)", "23456789", tuple(enc("23456789")))]
    cut = _fit_first(parts[:1], 2, enc)
    assert [(p.name, p.text, p.ids) for p in cut] == [("turn 1 (cut)", "de", tuple(enc("de")))]
    assert _fit_first([], 5, enc) == []


def test_fit_first_keeps_whether_the_cut_segment_opens() -> None:
    runs_on = Part("turn 2", " and more", tuple(enc(" and more")), opens=False)
    assert _fit_first([runs_on], 4, enc) == [Part("turn 2 (cut)", "more", tuple(enc("more")), opens=False)]


def single_oversize_action_context():
    story = make_story([("look", "You see."), ("x" * 100, "")])
    return build(story, enc, budget=64, settings=CS, layout=PLAIN)


def test_oversize_current_action_keeps_its_tail() -> None:
    ctx = single_oversize_action_context()
    full = "\n> " + "x" * 100 + "\n"
    assert ctx.start == 1
    assert names(ctx) == ["turn 2 (cut)"]
    assert ctx.parts[0].ids == tuple(enc(full))[-64:]
    assert ctx.tokens == 64


def test_cut_part_text_matches_its_ids() -> None:
    ctx = single_oversize_action_context()
    part = ctx.parts[0]
    assert part.text == ("\n> " + "x" * 100 + "\n")[-64:]
    assert enc(part.text) == list(part.ids)


def test_chatml_window_never_starts_the_story_inside_the_system_message() -> None:
    turns = []
    for i in range(1, 11):
        turns += [numbered_turn(i), ("", f"More {i:02d}.")]  # a "continue" turn after each action
    story = make_story([*turns, ("look", "")])
    for budget in range(400, 1000, 10):
        ctx = build(story, enc, budget=budget, settings=CS, layout=CHATML)
        first = next(p for p in ctx.parts if p.name.startswith(("turn", "opening")))
        assert first.text.startswith("<|im_end|>\n<|im_start|>"), (budget, first.name, first.text)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (None, PLAIN),
        ("", PLAIN),
        ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}", CHATML),
        ("{{ bos_token }}[INST] {{ m.content }} [/INST]", PLAIN),
    ],
)
def test_layout_for(template, expected) -> None:
    assert layout_for(template) is expected


# -- properties --------------------------------------------------------------------------------

WORDS = st.sampled_from(["you", "dragon", "gate", "run", "the", "tower", "x", "é", "🐉", "\n"])
TEXT = st.lists(WORDS, max_size=12).map(" ".join)


@st.composite
def stories(draw):
    turns = draw(st.lists(st.tuples(TEXT, TEXT), max_size=12))
    if turns:
        turns[-1] = (turns[-1][0], draw(st.sampled_from(["", turns[-1][1]])))
    world = draw(
        st.lists(st.builds(WorldEntry, keys=st.lists(WORDS, max_size=2), text=TEXT, constant=st.booleans()), max_size=3)
    )
    return make_story(
        turns,
        opening=draw(TEXT),
        memory=tuple(draw(st.lists(TEXT, max_size=2))),
        world=tuple(world),
        note=draw(TEXT),
        pin_opening=draw(st.booleans()),
    )


def is_story_part(name: str) -> bool:
    return name.startswith(("turn ", "opening")) and name != "opening (pinned)"


@settings(max_examples=150, deadline=None)
@given(
    story=stories(),
    budget=st.integers(1, 400),
    layout=st.sampled_from([PLAIN, CHATML]),
    depth=st.integers(1, 6),
    scan=st.integers(0, 6),
    drop=st.sampled_from([0.05, 0.25, 0.5, 0.75]),
    hint=st.integers(0, 20),
)
def test_budget_is_never_exceeded(story, budget, layout, depth, scan, drop, hint) -> None:
    cs = ContextSettings(note_depth=depth, lore_scan_turns=scan, drop_fraction=drop)
    whole = build(story, enc, budget=10**6, settings=cs, layout=layout)
    fixed = sum(p.tokens for p in whole.parts if not is_story_part(p.name))
    story_names = [p.name for p in whole.parts if is_story_part(p.name)]
    if fixed >= budget:
        with pytest.raises(StoryError):
            build(story, enc, budget=budget, settings=cs, layout=layout, start=hint)
        return
    ctx = build(story, enc, budget=budget, settings=cs, layout=layout, start=hint)
    assert ctx.tokens <= budget
    assert ctx.tokens == len(ctx.ids)
    assert all(enc(p.text) == list(p.ids) for p in ctx.parts), "every part's text is what its ids say"
    # the same fixed parts, and a contiguous run of the newest story segments
    assert [p.name for p in ctx.parts if not is_story_part(p.name)] == [
        p.name for p in whole.parts if not is_story_part(p.name)
    ]
    kept = [p for p in ctx.parts if is_story_part(p.name)]
    kept_names = [p.name.removesuffix(" (cut)") for p in kept]
    assert kept_names == story_names[len(story_names) - len(kept_names) :]
    if story_names:
        assert kept, "the current turn is always in the window"
        assert ctx.start == len(story_names) - len(kept)
    for part in kept:
        full = next(p for p in whole.parts if p.name == part.name.removesuffix(" (cut)"))
        if part.name.endswith(" (cut)"):
            assert part is kept[0]
            assert full.ids[len(full.ids) - len(part.ids) :] == part.ids
        else:
            assert part.ids == full.ids
    if whole.tokens <= budget:
        # everything fits: a build without a carried start keeps it all
        assert build(story, enc, budget=budget, settings=cs, layout=layout).parts == whole.parts


@settings(max_examples=60, deadline=None)
@given(
    results=st.lists(st.integers(0, 40), min_size=1, max_size=30),
    budget=st.integers(64, 300),
    drop=st.sampled_from([0.1, 0.25, 0.5]),
)
def test_appending_moves_the_start_only_forward_and_only_on_overflow(results, budget, drop) -> None:
    cs = ContextSettings(note_depth=2, lore_scan_turns=0, drop_fraction=drop)
    story = make_story([], memory=("You are a knight.",))
    start = 0
    for i, size in enumerate(results):
        previous = start
        story.append(f"go {i}")
        story.add_candidates([Candidate(text="y" * size or "z")])
        ctx = build(story, enc, budget=budget, settings=cs, layout=PLAIN, start=start)
        start = ctx.start
        segments = [len("".join(PLAIN.turn(t.action, t.result))) for t in story.path()]
        room = budget - len("You are a knight.")
        if sum(segments[previous:]) <= room:
            assert start == previous
        else:
            assert start > previous or previous == len(segments) - 1
            if sum(segments[-1:]) <= room - int(budget * drop):
                # the jump frees a chunk so the next turns fit without moving the start again
                assert sum(segments[start:]) <= room - int(budget * drop)
        assert ctx.tokens <= budget


# -- with the real tiny tokenizer --------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_real_tokenizer_ids_are_the_parts_ids(tokenizer) -> None:
    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    story = make_story(
        [numbered_turn(i) for i in range(1, 80)] + [("look at the dragon", "")],
        opening="You are a knight in a ruined castle.",
        memory=("You are a knight.",),
        world=(DRAGON, WAR),
        note="Keep it grim.",
    )
    for layout in (PLAIN, CHATML):
        ctx = build(story, encode, budget=400, settings=CS, layout=layout)
        assert ctx.ids == [t for p in ctx.parts for t in p.ids]
        assert ctx.tokens == len(ctx.ids) <= 400
        assert ctx.start > 0
        for part in ctx.parts:
            assert list(part.ids) == encode(part.text)
    # In the plain layout each part starts at a pre-token boundary: the parts' ids are the whole window's.
    plain = build(story, encode, budget=400, settings=CS, layout=PLAIN)
    assert plain.ids == encode("".join(texts(plain)))
