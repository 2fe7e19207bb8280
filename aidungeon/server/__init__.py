"""The HTTP face of the game (`aidungeon serve`): not built yet; see the serving issues."""
