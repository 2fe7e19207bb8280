"""Scale-out on Ray Serve: the engine's wire format, the engine as a Ray deployment seen through
the engine protocol, story affinity as a Ray request router, and example cluster configs.

Everything here but `wire` needs `pip install "aidungeon[scale]"` (ray[serve]); the deployments
themselves live in `aidungeon/server/ray_app.py`.
"""
