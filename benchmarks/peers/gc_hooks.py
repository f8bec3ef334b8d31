"""gunicorn config for the suite's garbage-collection pass (`gunicorn -c gc_hooks.py`): each worker times its
collections by generation (gc.callbacks, installed after the fork) from its first request on (not those of
loading the app, and the agent, which would count each agent's imports) and counts the requests it served; at
its exit it writes both to BENCH_GC_OUT/gc-<pid>.json. Only that pass uses it: the callbacks cost a little per
collection, so the timed req/s rounds run without them."""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any, Dict, List

_stats: Dict[str, Any] = {"requests": 0, "collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0]}
_started: List[float] = [0.0]
_serving: List[bool] = [False]


def _on_collection(phase: str, info: Dict[str, Any]) -> None:
    if not _serving[0]:
        return
    if phase == "start":
        _started[0] = time.perf_counter()
    elif _started[0]:
        generation = info["generation"]
        _stats["collections"][generation] += 1
        _stats["seconds"][generation] += time.perf_counter() - _started[0]


def post_fork(server: Any, worker: Any) -> None:
    gc.callbacks.append(_on_collection)


def pre_request(worker: Any, req: Any) -> None:
    _serving[0] = True


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    _stats["requests"] += 1


def worker_exit(server: Any, worker: Any) -> None:
    out = os.environ.get("BENCH_GC_OUT")
    if out:
        with open(os.path.join(out, "gc-%d.json" % os.getpid()), "w") as f:
            json.dump(_stats, f)
