"""Tests for aidungeon.storage.prompts: the built-in stories, player files, validation and lookups."""

from __future__ import annotations

from pathlib import Path

import pytest

from aidungeon.core.errors import ConfigError
from aidungeon.storage.prompts import (
    DEFAULT_PLAYER_NAME,
    Setting,
    builtin_stories_dir,
    clean_player_name,
    fill,
    find_setting,
    load_setting,
    load_settings,
    package_dir,
    starting_story_parts,
)

REQUIRED = {"fantasy", "mystery", "apocalyptic", "zombies", "cyberpunk"}

PIRATES = '''
title = "Pirates of Tests"
description = "A test setting."
memory = "You are {name}, a pirate."

[[characters]]
name = "Captain"
opening = """You are {name}, a captain. You draw your cutlass and"""

[[characters]]
name = "cook"
description = "makes the stew"
opening = "You are {name}, the cook. You stir the pot and"
memory = "You cook."
pin_opening = true

[[world]]
keys = ["ship"]
text = "The ship of {name} is called the Gull."
'''


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDUNGEON_HOME", str(tmp_path / "home"))


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "home" / "stories"
    folder.mkdir(parents=True)
    return folder


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# -- the built-in settings -------------------------------------------------------------------------


def test_builtin_settings_all_load_without_warnings() -> None:
    settings, warnings = load_settings()
    assert warnings == []
    assert {s.id for s in settings} >= REQUIRED
    assert [s.title.casefold() for s in settings] == sorted(s.title.casefold() for s in settings)


def test_builtin_folder_holds_only_packaged_files() -> None:
    # pyproject ships "*.toml" and README.md as package data: anything else here would be lost in the wheel.
    folder = builtin_stories_dir()
    assert (folder / "README.md").is_file()
    assert not (folder / "__init__.py").exists()
    assert all(p.suffix == ".toml" or p.name == "README.md" for p in folder.iterdir())


@pytest.mark.parametrize("setting", load_settings()[0], ids=lambda s: s.id)
def test_builtin_setting_is_well_formed(setting: Setting) -> None:
    assert setting.title and setting.description
    assert len(setting.characters) >= 3
    for character in setting.characters:
        assert character.description
        assert "{name}" in character.opening
        assert not character.opening.endswith((".", "!", "?", " ")), "openings end mid-action"
        assert 2 <= sum(character.opening.count(mark) for mark in ".!?") <= 5
    for info in setting.world:
        assert info.text and (info.keys or info.constant)


@pytest.mark.parametrize("setting", load_settings()[0], ids=lambda s: s.id)
def test_builtin_name_is_filled_everywhere(setting: Setting) -> None:
    for character in setting.characters:
        start = starting_story_parts(setting, character, "Zorblax")
        assert "Zorblax" in start.opening
        texts = [start.opening, start.memory, *(info.text for info in start.world)]
        assert not any("{name}" in text for text in texts)


# -- player files ----------------------------------------------------------------------------------


def test_player_file_appears(user_dir: Path) -> None:
    write(user_dir, "seafaring.toml", PIRATES)
    settings, warnings = load_settings(user_dir)
    assert warnings == []
    setting = find_setting(settings, "seafaring")
    assert setting.title == "Pirates of Tests"
    assert setting.source == user_dir / "seafaring.toml"
    assert {s.id for s in settings} >= REQUIRED


def test_player_file_overrides_builtin_id(user_dir: Path) -> None:
    write(user_dir, "Fantasy.toml", PIRATES)
    settings, _ = load_settings(user_dir)
    matching = [s for s in settings if s.id.casefold() == "fantasy"]
    assert len(matching) == 1
    assert matching[0].title == "Pirates of Tests"


def test_missing_user_folder_is_fine(tmp_path: Path) -> None:
    settings, warnings = load_settings(tmp_path / "nowhere")
    assert warnings == [] and settings


def test_defaults_and_character_values(user_dir: Path) -> None:
    setting = load_setting(write(user_dir, "sea.toml", PIRATES))
    captain, cook = setting.characters
    assert captain.memory == "You are {name}, a pirate." and not captain.pin_opening
    assert cook.memory == "You cook." and cook.pin_opening
    assert setting.world[0].keys == ("ship",) and not setting.world[0].constant


def test_setting_level_opening_is_used(user_dir: Path) -> None:
    text = 'title = "T"\nopening = "You are {name} and"\n[[characters]]\nname = "a"\n'
    setting = load_setting(write(user_dir, "t.toml", text))
    assert setting.characters[0].opening == "You are {name} and"


HEAD = 'title = "T"\n[[characters]]\nname = "a"\n'
VALID = HEAD + 'opening = "b"\n'
BAD_FILES = {
    "syntax": ('title = "Broken\n[[characters]]', "not valid TOML"),
    "no_characters": ('title = "Empty"\n', "missing required key 'characters'"),
    "empty_characters": ('title = "Empty"\ncharacters = []\n', "at least one"),
    "title_type": (VALID.replace('"T"', "3"), "'title' must be a string"),
    "pin_type": (VALID + 'pin_opening = "yes"\n', "true or false"),
    "no_opening": (HEAD, "non-empty 'opening'"),
    "blank_opening": (HEAD + 'opening = "  "\n', "non-empty 'opening'"),
    "typo": (HEAD + 'openning = "b"\n', "unknown key 'openning'"),
    "character_not_table": ('title = "T"\ncharacters = ["knight"]\n', "must be a table"),
    "duplicate": (VALID + '[[characters]]\nname = "A"\nopening = "c"\n', "two characters"),
    "digit_name": (VALID.replace('"a"', '"2"'), "menu number"),
    "world_keys": (VALID + '[[world]]\nkeys = [1]\ntext = "x"\n', "'keys'"),
    "world_no_keys": (VALID + '[[world]]\ntext = "x"\n', "needs 'keys'"),
    "world_not_list": ('world = "dragons"\n' + VALID, "'world' must be a list"),
}


@pytest.mark.parametrize(("text", "problem"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_user_file_is_a_warning_not_a_crash(user_dir: Path, text: str, problem: str) -> None:
    write(user_dir, "bad.toml", text)
    write(user_dir, "good.toml", PIRATES)
    settings, warnings = load_settings(user_dir)
    assert len(warnings) == 1
    assert "bad.toml" in warnings[0] and problem in warnings[0]
    assert "\n" not in warnings[0]
    assert {s.id for s in settings} >= {"good", *REQUIRED}


def test_bad_user_file_leaves_the_builtin_it_would_override(user_dir: Path) -> None:
    write(user_dir, "fantasy.toml", "title = ")
    settings, warnings = load_settings(user_dir)
    assert len(warnings) == 1
    assert find_setting(settings, "fantasy").source.parent == builtin_stories_dir()


def test_non_utf8_file_is_a_warning(user_dir: Path) -> None:
    (user_dir / "latin.toml").write_bytes(b'title = "caf\xe9"\n')
    _, warnings = load_settings(user_dir)
    assert len(warnings) == 1 and "UTF-8" in warnings[0]


def test_user_folder_that_is_a_file_is_a_warning(tmp_path: Path) -> None:
    not_a_folder = write(tmp_path, "stories", "")
    settings, warnings = load_settings(not_a_folder)
    assert len(warnings) == 1 and settings


def test_missing_builtin_folder_is_a_warning(tmp_path: Path) -> None:
    settings, warnings = load_settings(builtin_dir=tmp_path / "gone")
    assert settings == [] and "reinstall" in warnings[0]


# -- lookups ---------------------------------------------------------------------------------------


def test_find_setting_by_id_title_index_and_prefix(user_dir: Path) -> None:
    write(user_dir, "sea.toml", PIRATES)
    settings, _ = load_settings(user_dir)
    assert find_setting(settings, "FANTASY").id == "fantasy"
    assert find_setting(settings, "pirates of tests").id == "sea"
    assert find_setting(settings, "Sea").id == "sea"
    assert find_setting(settings, "1") is settings[0]
    assert find_setting(settings, f" {len(settings)} ") is settings[-1]
    assert find_setting(settings, "cyber").id == "cyberpunk"


def test_find_setting_error_lists_the_choices() -> None:
    settings, _ = load_settings()
    with pytest.raises(ConfigError) as err:
        find_setting(settings, "westerns")
    message = str(err.value)
    assert "westerns" in message
    assert all(s.title in message for s in settings)
    assert f"1. {settings[0].title}" in message
    with pytest.raises(ConfigError):
        find_setting(settings, str(len(settings) + 1))
    with pytest.raises(ConfigError, match="no setting to choose"):
        find_setting([], "fantasy")


def test_character_lookup(user_dir: Path) -> None:
    setting = load_setting(write(user_dir, "sea.toml", PIRATES))
    assert setting.character("captain").name == "Captain"
    assert setting.character("COOK").name == "cook"
    assert setting.character("2").name == "cook"
    assert setting.character("capt").name == "Captain"
    with pytest.raises(ConfigError) as err:
        setting.character("wizard")
    assert "1. Captain" in str(err.value) and "2. cook" in str(err.value)


def test_ambiguous_prefix_is_an_error() -> None:
    settings, _ = load_settings()
    fantasy = find_setting(settings, "fantasy")
    with pytest.raises(ConfigError, match="choose one of"):
        fantasy.character("r")  # ranger and rogue


# -- filling in {name} -----------------------------------------------------------------------------


def test_fill_replaces_only_name() -> None:
    assert fill("You are {name}. {name}!", "Ada") == "You are Ada. Ada!"
    assert fill("{0} {} {unknown} {{name}} {name", "Ada") == "{0} {} {unknown} {Ada} {name"


def test_player_name_is_cleaned() -> None:
    assert clean_player_name("  Ada \n Lovelace ") == "Ada Lovelace"
    assert clean_player_name("   ") == DEFAULT_PLAYER_NAME
    assert len(clean_player_name("x" * 500)) <= 40


def test_starting_story_parts(user_dir: Path) -> None:
    setting = load_setting(write(user_dir, "sea.toml", PIRATES))
    start = starting_story_parts(setting, setting.character("cook"), "Ada")
    assert start.opening == "You are Ada, the cook. You stir the pot and"
    assert start.memory == "You cook."
    assert start.pin_opening
    assert start.world[0].text == "The ship of Ada is called the Gull."
    assert "Pirates of Tests" in start.title


# -- finding the package data ----------------------------------------------------------------------


def test_package_dir_finds_regular_and_namespace_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "fakepkg_for_prompts" / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text("", encoding="utf-8")
    (data / "one.toml").write_text("", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_dir("fakepkg_for_prompts.data") == data  # namespace package: no __init__.py
    assert package_dir("fakepkg_for_prompts") == data.parent
    assert package_dir("fakepkg_for_prompts.missing") is None


def test_builtin_dir_falls_back_to_the_checkout() -> None:
    folder = builtin_stories_dir()
    assert (folder / "fantasy.toml").is_file()
