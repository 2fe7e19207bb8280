"""The game loop driven directly: `Session.handle(line)`, events checked.

Game logic runs on the scripted fake engine (tests/support/fake_engine.py) in milliseconds.
Tests about the model's own behaviour (seeds, token ids, torch state) build their session as
`cli.play` does (loader, engine, session) on the trained tiny model, loaded once per module;
every session gets a fresh `Engine` so no KV cache is shared.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
from support.fake_engine import FakeEngine
from support.sessions import OPENING, kinds, make_session, only, run, saved_story

from aidungeon.core.cancel import CancelToken
from aidungeon.game import turn as turn_module
from aidungeon.game.events import Event
from aidungeon.game.ids import PromptIds
from aidungeon.game.session import Session
from aidungeon.storage import saves
from aidungeon.storage.paths import Paths, default_paths
from aidungeon.storage.prompts import custom_story


@pytest.fixture(scope="module")
def loaded(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from aidungeon.model.loader import load_model

    root = tmp_path_factory.mktemp("loader-home")
    paths = Paths(config_dir=root, data_dir=root, cache_dir=root / "cache")
    return load_model(str(trained_model_dir), paths, device="cpu")


def model_session(loaded: Any, model_dir: Path, *, seed: int = 7, save_name: str = "t") -> Session:
    from aidungeon.model.engine import Engine

    return make_session(Engine.for_model(loaded), seed=seed, save_name=save_name, model_name=str(model_dir))


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def game(engine: FakeEngine) -> Session:
    return make_session(engine)


def play(game: Session, line: str) -> list[Event]:
    """A turn that must be answered."""
    events = run(game, line)
    assert "result" in kinds(events), f"no result for {line!r}: {events}"
    return events


# -- turns ---------------------------------------------------------------------------------


def test_an_action_enters_rewritten_and_gets_a_result(game: Session) -> None:
    events = run(game, "look around")
    assert events[0] == Event("action", "You look around.")
    result = only(events, "result")
    assert result.text.strip()
    assert "\n>" not in result.text and not result.text.startswith(">")
    assert game.story.last is not None
    assert game.story.last.action == "You look around."
    assert game.story.last.result == result.text
    pieces = [e for e in events if e.kind == "piece"]
    assert pieces, "the result should stream"


def test_a_player_turn_the_model_writes_is_cut_while_generating(engine: FakeEngine, game: Session) -> None:
    engine.script = ["The troll wakes.\n> You run away.\nThe troll follows."]
    assert only(run(game, "look around"), "result").text == "The troll wakes."


def test_every_turn_autosaves(game: Session) -> None:
    lines = ("look around", "I light my torch", '"Hello?"', "!A bat flies past.", "go north", "")
    answered = 0
    for line in lines:
        events = run(game, line)
        saved, current = saved_story(game), game.story.to_dict()
        if "result" in kinds(events):
            answered += 1
        else:  # a stalled turn is taken back; only the turn counter may differ from the last save
            saved.pop("next_id")
            current.pop("next_id")
        assert saved == current
    assert answered >= 3, "the engine should answer most actions"


def test_ten_turns_in_process_take_well_under_a_second(game: Session) -> None:
    import time

    start = time.perf_counter()
    for number in range(10):
        play(game, f"walk to room {number}")
    assert time.perf_counter() - start < 0.5
    assert len(game.story.path()) == 10 and all(t.result for t in game.story.path())
    assert saved_story(game) == game.story.to_dict()


def test_retry_keeps_every_alternative_with_its_seed_and_sampling(game: Session) -> None:
    run(game, "/set candidates 1")  # one a turn, so /retry draws anew (a CPU's default draws 3)
    play(game, "look around")
    turn = game.story.last
    assert turn is not None
    first = turn.result
    events = run(game, "/retry")
    assert "result" in kinds(events) and "error" not in kinds(events)
    assert len(turn.candidates) >= 2
    assert turn.chosen == len(turn.candidates) - 1
    assert turn.candidates[0].text == first
    for candidate in turn.candidates:
        assert candidate.seed is not None
        assert candidate.sampling["max_new_tokens"] == 16
        assert candidate.sampling["temperature"] == game.config.sampling.temperature
    assert saved_story(game) == game.story.to_dict()


def test_undo_then_a_new_action_keeps_the_old_branch(game: Session) -> None:
    play(game, "look around")
    play(game, "open the door")
    old_leaf = game.story.last
    assert old_leaf is not None
    events = run(game, "/undo")
    assert only(events, "info").text == "Undone: You open the door."
    assert [t.action for t in game.story.path()] == ["You look around."]
    assert saved_story(game)["head"] == game.story.head

    play(game, "climb the wall")
    table = only(run(game, "/branches"), "table").data
    assert len(table.rows) == 2
    ids = [row[0] for row in table.rows]
    assert ids == [str(old_leaf.id), f"{game.story.head}*"]

    events = run(game, f"/branch {old_leaf.id}")
    assert events[0] == Event("info", f"Now on branch {old_leaf.id}.")
    assert [t.action for t in game.story.path()] == ["You look around.", "You open the door."]
    assert saved_story(game)["head"] == old_leaf.id


def test_redo_brings_back_the_undone_turn(game: Session) -> None:
    play(game, "look around")
    turn = game.story.last
    assert turn is not None
    run(game, "/undo")
    assert game.story.last is None
    events = run(game, "/redo")
    assert events == [Event("action", "You look around."), Event("story", turn.result)]
    assert game.story.last is turn
    assert kinds(run(game, "/redo")) == ["error"]


def test_alter_replaces_the_result_and_without_text_asks_to_edit(game: Session) -> None:
    play(game, "look around")
    old = game.story.last.result if game.story.last else ""
    events = run(game, "/alter")
    assert events == [Event("edit", old, data="/alter ")]
    events = run(game, "/alter The cave is silent.")
    assert events[-1] == Event("story", "The cave is silent.")
    assert game.story.last is not None and game.story.last.result == "The cave is silent."
    assert saved_story(game) == game.story.to_dict()


def test_alter_before_any_turn_is_an_error(game: Session) -> None:
    assert kinds(run(game, "/alter new text")) == ["error"]
    assert kinds(run(game, "/retry")) == ["error"]
    assert kinds(run(game, "/undo")) == ["error"]


# -- memory, notes, world info ---------------------------------------------------------------


def test_memory_commands(game: Session) -> None:
    run(game, "/remember You are a knight.")
    run(game, "/remember The dragon is asleep.")
    assert game.story.memory == ["You are a knight.", "The dragon is asleep."]
    table = only(run(game, "/memory 2 The dragon is awake."), "table").data
    assert table.rows == (("1", "You are a knight."), ("2", "The dragon is awake."))
    assert only(run(game, "/forget"), "info").text == "Forgot: The dragon is awake."
    assert game.story.memory == ["You are a knight."]
    assert saved_story(game)["memory"] == ["You are a knight."]
    context = game.build_context()
    assert context.parts[0].name == "memory" and "You are a knight." in context.parts[0].text
    assert kinds(run(game, "/memory 5 nothing")) == ["error"]
    assert kinds(run(game, "/memory x y")) == ["error"]
    assert kinds(run(game, "/remember")) == ["error"]
    run(game, "/forget 1")
    assert kinds(run(game, "/forget")) == ["error"]


def test_author_note(game: Session) -> None:
    assert only(run(game, "/note"), "info").text == "Author's note: (none)"
    run(game, "/note The mood is grim.")
    assert game.story.author_note == "The mood is grim."
    assert any(p.name == "author's note" for p in game.build_context().parts)
    run(game, "/note clear")
    assert game.story.author_note == ""
    assert saved_story(game)["author_note"] == ""


def test_world_info(game: Session) -> None:
    run(game, "/world add dragon, wyrm: Dragons breathe fire.")
    run(game, "/world add *: Magic is forbidden.")
    rows = only(run(game, "/world list"), "table").data.rows
    assert rows == (("1", "dragon, wyrm", "Dragons breathe fire."), ("2", "always", "Magic is forbidden."))
    run(game, "/world edit 1 dragon: Dragons are kind.")
    assert game.story.world[0].text == "Dragons are kind."
    names = [p.name for p in game.build_context().parts]
    assert "world info (constant)" in names and "world info" not in names
    run(game, "/world remove 2")
    assert len(game.story.world) == 1
    assert saved_story(game)["world"] == [{"keys": ["dragon"], "text": "Dragons are kind.", "constant": False}]
    assert kinds(run(game, "/world add no colon here")) == ["error"]
    assert kinds(run(game, "/world remove 9")) == ["error"]
    assert kinds(run(game, "/world frobnicate")) == ["error"]


# -- settings, errors, context ---------------------------------------------------------------


def test_set_a_value(game: Session) -> None:
    events = run(game, "/set temperature 0.5")
    assert events == [Event("info", "temperature = 0.5")]
    assert game.config.sampling.temperature == 0.5
    data, _ = saves.read_save(default_paths().saves_dir, game.save_name)
    assert data.settings["sampling"]["temperature"] == 0.5


def test_set_the_repetition_scope(game: Session) -> None:
    assert run(game, "/set repetition_scope turn") == [Event("info", "repetition_scope = turn")]
    assert game.config.sampling.repetition_scope == "turn"


@pytest.mark.parametrize(
    "line",
    [
        "/set temperature hot",
        "/set temperature 99",
        "/set model x",
        "/set nosuch 1",
        "/set temperature",
        "/frobnicate",
        "/set repetition_scope chapter",
    ],
)
def test_bad_commands_give_one_error_event(game: Session, line: str) -> None:
    before = game.config
    events = run(game, line)
    assert kinds(events) == ["error"], events
    assert events[0].text and "\n" not in events[0].text
    assert game.config == before


def test_set_model_names_the_command_line_option(game: Session) -> None:
    assert "--model" in run(game, "/set model x")[0].text


def test_help_lists_every_command(game: Session) -> None:
    table = only(run(game, "/help"), "table").data
    listed = {row[0].split()[0] for row in table.rows}
    for name in ("/retry", "/undo", "/redo", "/alter", "/remember", "/forget", "/memory", "/save", "/load"):
        assert name in listed
    for name in ("/saves", "/print", "/set", "/settings", "/context", "/quit", "/world", "/note"):
        assert name in listed
    assert all(row[1] for row in table.rows), "every command needs a help line"


def test_context_table_counts_add_up(game: Session) -> None:
    run(game, "/remember You are a knight.")
    play(game, "look around")
    table = only(run(game, "/context"), "table").data
    assert table.columns == ("part", "tokens", "text")
    total = sum(int(row[1]) for row in table.rows)
    assert f" {total} of {game.turns.budget(game.config)} tokens" in f" {table.footer}"
    assert total == len(game.build_context().ids)
    assert [row[0] for row in table.rows][:2] == ["memory", "opening (pinned)"]


def test_settings_table(game: Session) -> None:
    table = only(run(game, "/settings"), "table").data
    values = {row[0]: row[1] for row in table.rows}
    assert values["max_new_tokens"] == "16"
    assert values["seed"] == "7"


# -- saves -----------------------------------------------------------------------------------


def test_save_then_load_restores_the_exact_story(game: Session) -> None:
    play(game, "look around")
    run(game, "/remember You are brave.")
    run(game, "/set top_k 20")
    events = run(game, "/save x")
    assert only(events, "info").text.startswith("Saved as x")
    assert game.save_name == "x"
    run(game, "open the door")  # autosaved under the new name
    game.close()  # a save is open in one game at a time

    other = make_session(FakeEngine(), save_name="other")
    events = run(other, "/load x")
    assert Event("info", "Loaded x.") in events
    assert "error" not in kinds(events)
    assert other.save_name == "x"
    assert other.config.sampling.top_k == 20
    assert other.config.sampling.max_new_tokens == 16
    assert other.story.to_dict() == game.story.to_dict()
    assert other.story.memory == ["You are brave."]


def test_load_restores_the_story_saved_by_name(game: Session) -> None:
    play(game, "look around")
    run(game, "/save x")
    snapshot = game.story.to_dict()
    game.close()
    other = make_session(FakeEngine(), save_name="other")
    run(other, "/load x")
    assert other.story.to_dict() == snapshot
    assert kinds(run(other, "/load nosuch")) == ["error"]


def test_print_shows_the_transcript(game: Session) -> None:
    play(game, "look around")
    text = only(run(game, "/print"), "text").text
    assert text.startswith(OPENING)
    assert "> You look around." in text


def test_quit_saves(game: Session) -> None:
    play(game, "look around")
    events = run(game, "/quit")
    assert kinds(events) == ["quit"]
    assert saved_story(game) == game.story.to_dict()


# -- reproducibility (the model's own sampling) ------------------------------------------------


def test_same_seed_and_actions_give_the_same_story(loaded: Any, trained_model_dir: Path) -> None:
    stories = []
    for name in ("a", "b"):
        game = model_session(loaded, trained_model_dir, seed=3, save_name=name)
        for line in ("look around", "light a torch", "", "/retry"):
            run(game, line)
        stories.append([(t.action, [c.text for c in t.candidates]) for t in game.story.path()])
    assert stories[0] == stories[1]
    assert all(candidates and candidates[0] for _, candidates in stories[0])


def test_another_seed_gives_another_story(loaded: Any, trained_model_dir: Path) -> None:
    results = []
    for seed in (1, 2):
        game = model_session(loaded, trained_model_dir, seed=seed, save_name=f"s{seed}")
        for line in ("look around", "light a torch"):
            assert "result" in kinds(run(game, line))
        results.append(game.story.transcript())
    assert results[0] != results[1]


# -- empty results and cancelled turns -------------------------------------------------------


def test_empty_results_are_retried_a_bounded_number_of_times(engine: FakeEngine, game: Session) -> None:
    engine.script = [""] * (2 * turn_module.MAX_ATTEMPTS)
    run(game, "look around")  # nothing usable: the action is taken back
    assert len(engine.requests) == turn_module.MAX_ATTEMPTS
    assert game.story.last is None
    assert game.story.turns == {}

    game.story = custom_story(OPENING)
    events = run(game, "look around")
    assert len(engine.requests) == 2 * turn_module.MAX_ATTEMPTS
    assert kinds(events).count("error") == 1
    assert "result" not in kinds(events)
    assert game.story.path() == []


def test_an_empty_retry_keeps_the_turn(engine: FakeEngine, game: Session) -> None:
    engine.script = ["The door opens.", *[""] * turn_module.MAX_ATTEMPTS]
    run(game, "/set candidates 1")  # one a turn, so /retry draws anew (a CPU's default draws 3)
    play(game, "look around")
    turn = game.story.last
    assert turn is not None
    before = turn.result
    events = run(game, "/retry")
    assert len(engine.requests) == 1 + turn_module.MAX_ATTEMPTS
    assert kinds(events).count("error") == 1
    assert game.story.last is turn and turn.result == before


def test_a_cancelled_turn_keeps_the_action_and_retry_finishes_it(engine: FakeEngine, game: Session) -> None:
    play(game, "look around")
    engine.cancel_after_pieces = 1  # as Ctrl-C after the first streamed piece
    events = run(game, "open the door")
    assert kinds(events)[:2] == ["action", "piece"]
    assert "Stopped." in events[-1].text and "result" not in kinds(events)
    last = game.story.last
    assert last is not None and last.action == "You open the door." and last.result == ""
    assert [t.action for t in game.story.path()] == ["You look around.", "You open the door."]
    assert saved_story(game) == game.story.to_dict()

    engine.cancel_after_pieces = None
    events = run(game, "/retry")
    assert "result" in kinds(events), events
    assert game.story.last is last and last.result
    assert saved_story(game) == game.story.to_dict()


def test_a_cancel_from_the_consumer_stops_the_turn_cleanly(game: Session) -> None:
    """The UI sets the token between events (Ctrl-C in the renderer) and drains the stream."""
    cancel = CancelToken()
    for event in game.handle("look around", cancel):
        if event.kind == "piece":
            cancel.set()
    last = game.story.last
    assert last is not None and last.action == "You look around." and last.result == ""
    assert saved_story(game) == game.story.to_dict()
    assert "result" in kinds(run(game, "/retry"))


def test_a_new_action_after_a_cancelled_one_replaces_it(engine: FakeEngine, game: Session) -> None:
    play(game, "look around")
    engine.cancel_after_pieces = 1
    run(game, "open the door")
    engine.cancel_after_pieces = None
    events = run(game, "climb the wall")
    assert "result" in kinds(events)
    assert [t.action for t in game.story.path()] == ["You look around.", "You climb the wall."]
    assert all(t.result for t in game.story.path())
    assert len(game.story.turns) == 2
    assert saved_story(game) == game.story.to_dict()


def test_begin_generates_the_first_result_of_a_story_without_one(game: Session) -> None:
    events = list(game.begin())
    assert events[0] == Event("opening", OPENING)
    assert "result" in kinds(events)
    last = game.story.last
    assert last is not None and last.action == "" and last.result


# -- the model's engine under cancels ------------------------------------------------------------


def _collect_once_in(game: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the garbage collector run mid-generation (it may run at any allocation)."""
    rules = game.turns.rules
    real = rules.stop_rule
    collected: list[bool] = []

    def stop_rule(player_name: str | None) -> Any:
        stop = real(player_name)

        def stop_and_collect(text: str) -> int | None:
            if not collected:
                collected.append(True)
                gc.collect()
            return stop(text) if stop is not None else None

        return stop_and_collect

    monkeypatch.setattr(rules, "stop_rule", stop_rule)


def test_a_generation_cancelled_midway_leaves_torch_as_it_was(
    loaded: Any, trained_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn stopped midway must not leave inference mode on, nor break a later turn."""
    import torch

    game = model_session(loaded, trained_model_dir)
    cancel = CancelToken()
    for event in game.handle("look around", cancel):
        if event.kind == "piece":
            cancel.set()
    leaked = torch.is_inference_mode_enabled()
    _collect_once_in(game, monkeypatch)
    events_after = run(game, "open the door")
    assert not leaked
    assert "result" in kinds(events_after)


def test_ctrl_c_while_rendering_stops_cleanly(
    loaded: Any, trained_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C that lands in the renderer (between two pieces) stops the turn like one in the model."""
    from io import StringIO

    import torch
    from rich.console import Console

    from aidungeon.ui.terminal.render import Renderer
    from aidungeon.ui.terminal.repl import run_events

    class Interrupted(Renderer):
        def show(self, event: Event) -> None:
            if event.kind == "piece":
                raise KeyboardInterrupt
            super().show(event)

    game = model_session(loaded, trained_model_dir)
    out = StringIO()
    cancel = CancelToken()
    assert run_events(Interrupted(Console(file=out, width=100)), game.handle("look around", cancel), cancel) == []
    assert "Stopped." in out.getvalue()
    assert not torch.is_inference_mode_enabled()
    last = game.story.last
    assert last is not None and last.action == "You look around." and not last.result

    _collect_once_in(game, monkeypatch)
    assert "result" in kinds(run(game, "/retry"))
    assert game.story.last is last and last.result


# -- the context's token ids ----------------------------------------------------------------


def test_the_next_turn_reuses_the_models_own_ids_for_the_last_result(loaded: Any, trained_model_dir: Path) -> None:
    """A shown result is fed back as the ids the model generated, so the next prompt only
    prefills the new action (plus at most the last sampled token, which was never fed)."""
    game = model_session(loaded, trained_model_dir, seed=4)
    turns = game.turns
    checked = 0
    for line in ("look around", "open the door", "walk north", "light the torch", "listen"):
        before = game.story.last.result if game.story.last else ""
        known = before in turns.ids.known
        assert "result" in kinds(run(game, line))
        assert game.story.last is not None and turns.telemetry.stats is not None
        head = turns.engine.encode(turns.layout.turn(game.story.last.action, "")[0])
        if known:
            assert turns.telemetry.stats.prefill_tokens <= len(head) + 1
            checked += 1
    assert checked >= 2


def test_a_result_keeps_the_exact_ids_the_model_sampled(loaded: Any) -> None:
    """Ids that are not the tokenizer's own split of the text (here one token per character)
    are what the cache holds, so they are what the context must feed back."""
    from aidungeon.model.engine import Engine

    engine = Engine.for_model(loaded)
    ids = PromptIds(engine.encode, engine.decode)
    text = "The goblin snarls."
    per_character = [loaded.tokenizer.convert_tokens_to_ids(c) for c in "The"]
    sampled = per_character + engine.encode(" goblin snarls.") + engine.encode(" It")
    assert engine.decode(sampled[:-1]) == text and sampled[:-1] != engine.encode(text)
    ids.remember(text, sampled)
    assert ids.encode(text) == sampled[:-1]
    assert ids.encode("Something else.") == engine.encode("Something else.")


def test_a_result_cut_by_cleanup_keeps_the_ids_of_its_unchanged_start(loaded: Any) -> None:
    from aidungeon.model.engine import Engine

    engine = Engine.for_model(loaded)
    ids = PromptIds(engine.encode, engine.decode)
    start = [loaded.tokenizer.convert_tokens_to_ids(c) for c in "The"] + engine.encode(" goblin snarls")
    sampled = start + engine.encode(" loudly and")
    ids.remember("The goblin snarls.", sampled)
    fed = ids.encode("The goblin snarls.")
    assert fed[: len(start)] == start
    assert engine.decode(fed) == "The goblin snarls."
