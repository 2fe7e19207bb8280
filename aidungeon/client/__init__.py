"""The terminal as a client of `aidungeon serve`: a server's story played through the same REPL.

`api` speaks the game API over HTTP (httpx), `sse` turns a turn's Server-Sent Events back into the
game's events, `session` is the REPL's session for a story on a server, and `start` is the start
menu for server stories. Nothing here loads a model or imports the server's code.
"""
