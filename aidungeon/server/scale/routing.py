"""Story affinity as a Ray Serve request router: a story's engine calls go to the replica that
holds its KV cache, and to the least loaded replica when that one is busy or gone.

Each story has a home replica by rendezvous hashing (highest random weight) of the story id
against the replicas' ids: every router (one per game API replica) agrees on it without sharing
any state, and when a replica joins or leaves only the stories homed on it move. The home is
offered first; the router's own probe skips it when its queue is full and then takes the least
loaded of the rest. A home loaded `imbalance` requests beyond the least loaded replica is passed
over at once, so one hot replica does not queue while others idle (the same rule as Ray's
`PrefixCacheAffinityRouter`'s `imbalanced_threshold`).

This is Ray's `RequestRouter` extension point (alpha in Ray 2.60): it keeps no table of stories,
no queue of its own, and does not send anything; Ray's router probes, retries and sends.
"""

from __future__ import annotations

import hashlib

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from aidungeon.server.scale.wire import session_of

DEFAULT_IMBALANCE = 8


def home_order(session: str, replicas: list[RunningReplica]) -> list[RunningReplica]:
    """The replicas in the story's order of preference (rendezvous hashing, stable across processes:
    Python's own `hash` is salted per process, and every game API replica must agree)."""

    def weight(replica: RunningReplica) -> bytes:
        key = f"{session}\0{replica.replica_id.unique_id}".encode()
        return hashlib.blake2b(key, digest_size=8).digest()

    return sorted(replicas, key=weight, reverse=True)


class StoryAffinityRouter(RequestRouter):
    """Routes a request to its story's home replica unless it is busy; see the module docstring."""

    imbalance = DEFAULT_IMBALANCE

    def initialize_state(self, imbalance: int = DEFAULT_IMBALANCE, **_ignored: object) -> None:
        self.imbalance = imbalance

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        session = session_of(pending_request.args[0]) if pending_request and pending_request.args else None
        if session is None or len(candidate_replicas) < 2:
            return [candidate_replicas]
        home, *rest = home_order(session, candidate_replicas)
        if self._overloaded(home, rest):
            return [rest, [home]]
        return [[home], rest]

    def _overloaded(self, home: RunningReplica, rest: list[RunningReplica]) -> bool:
        """Whether the home's queue (as last probed) runs `imbalance` beyond the least loaded other's."""
        cache = self.replica_queue_len_cache
        home_len = cache.get(home.replica_id)
        others = [n for n in (cache.get(r.replica_id) for r in rest) if n is not None]
        return home_len is not None and bool(others) and home_len - min(others) >= self.imbalance
