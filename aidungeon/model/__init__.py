"""Everything that touches torch and transformers: loading, provisioning, generation.

Only this package imports them, and the rest of the game imports it lazily, so that
`aidungeon --help` stays instant.
"""
