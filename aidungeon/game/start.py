"""Wiring: a session on files with the slash commands, as the CLI, the benchmarks and tests build it.

This is the one module that imports both the session and the commands (the commands import
the session; the session is given `commands.dispatch`), so neither imports the other lazily.
A server builds its sessions the same way, with its own save store.
"""

from __future__ import annotations

from aidungeon.core.config import Config
from aidungeon.core.context import PLAIN, Layout
from aidungeon.core.story import Story
from aidungeon.game import commands
from aidungeon.game.persist import SlotKeeper
from aidungeon.game.rules import RuleSet
from aidungeon.game.session import Session
from aidungeon.game.turn import TurnPipeline
from aidungeon.model.protocol import EngineProtocol
from aidungeon.storage.paths import Paths
from aidungeon.storage.slots import FileStore


def start_session(
    story: Story,
    engine: EngineProtocol,
    config: Config,
    paths: Paths,
    *,
    save_name: str,
    model_name: str,
    layout: Layout = PLAIN,
    rules: RuleSet = RuleSet.GUARD,
    reuse_cache: bool = True,
) -> Session:
    """A session saving into `paths`' saves folder and exporting into its exports folder."""
    keeper = SlotKeeper(FileStore(paths.saves_dir), save_name, model_name=model_name)
    turns = TurnPipeline(engine, layout=layout, rules=rules, reuse_cache=reuse_cache, session_id=keeper.name)
    return Session(
        story, config, turns=turns, keeper=keeper, commands=commands.dispatch, exports_dir=paths.data_dir / "exports"
    )
