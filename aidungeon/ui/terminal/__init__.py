"""The terminal: prompt_toolkit input, rich rendering and the start menu."""
