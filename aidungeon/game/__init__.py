"""One adventure driven by lines of player input: the session, turn pipeline and commands.

It yields events for a terminal or a server to render and does no terminal I/O itself.
"""
