"""The engine protocol's request and result as plain data, for a call to another process.

A `Request` carries a cancel token (a thread event, meaningless elsewhere) and a stop rule (a
closure the game builds from its rules and the player's name). The token stays with the caller,
who cancels the remote call instead. The stop rule travels as cloudpickle bytes, the same
serialiser Ray uses for every argument; it pickles the closure by value and the cleanup functions
it calls by reference, so the replica needs the same aidungeon version installed (it does: one
image). It does not send anything; `remote_engine` and `ray_app` do.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ray import cloudpickle

from aidungeon.core.cancel import CancelToken
from aidungeon.core.config import Sampling
from aidungeon.model.protocol import Completion, GenerationStats, Request, Result, StopReason

Wire = dict[str, Any]


def request_to_wire(request: Request) -> Wire:
    """Everything but the cancel token, as plain data (the stop rule as bytes)."""
    return {
        "session": request.session,
        "prompt_ids": list(request.prompt_ids),
        "sampling": dataclasses.asdict(request.sampling),
        "n": request.n,
        "stop": cloudpickle.dumps(request.stop)  # type: ignore[no-untyped-call]
        if request.stop is not None
        else None,
        "seed": request.seed,
        "reuse_cache": request.reuse_cache,
    }


def request_from_wire(wire: Wire, cancel: CancelToken) -> Request:
    """The request again, with the replica's own cancel token."""
    return Request(
        session=str(wire["session"]),
        prompt_ids=tuple(int(i) for i in wire["prompt_ids"]),
        sampling=Sampling(**wire["sampling"]),
        cancel=cancel,
        n=int(wire["n"]),
        stop=cloudpickle.loads(wire["stop"]) if wire["stop"] is not None else None,
        seed=wire["seed"],
        reuse_cache=bool(wire["reuse_cache"]),
    )


def session_of(wire: object) -> str | None:
    """The story a wire request belongs to, for routing; None for anything else."""
    if isinstance(wire, dict) and isinstance(wire.get("session"), str):
        return str(wire["session"])
    return None


def result_to_wire(result: Result) -> Wire:
    return {
        "completions": [
            {
                "text": c.text,
                "token_ids": list(c.token_ids),
                "mean_logprob": c.mean_logprob,
                "stop": c.stop_reason.value,
            }
            for c in result.completions
        ],
        "stats": dataclasses.asdict(result.stats),
    }


def result_from_wire(wire: Wire) -> Result:
    completions = [
        Completion(
            text=c["text"],
            token_ids=list(c["token_ids"]),
            mean_logprob=float(c["mean_logprob"]),
            stop_reason=StopReason(c["stop"]),
        )
        for c in wire["completions"]
    ]
    return Result(completions=completions, stats=GenerationStats(**wire["stats"]))
