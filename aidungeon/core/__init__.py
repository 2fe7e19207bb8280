"""The pure game core: stories, actions, context building, cleanup and the guard.

Nothing here touches torch, the terminal, the network or files; it is plain data and text
rules, so every other room can build on it and it tests in milliseconds.
"""
