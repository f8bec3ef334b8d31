"""urllib3 (1.26 and 2.x): `PoolManager.urlopen` (urllib3.request(), pool managers' request() and urlopen(),
cross-host redirects) and `HTTPConnectionPool.request` (a pool's request(), retries and redirects included)
make the client span when nothing above them did. requests calls its pools' urlopen() itself, and so do a
few libraries (botocore): that method is left alone, which keeps it free on requests' path; used directly,
its requests get their spans from http.client, one per attempt. The trace headers are added on the wire by
the shared http.client hooks. With preload_content=False the span ends when the body has been read or the
response closed."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Optional, Tuple

from autoinstr.integrations._http import Call, end_with_body, hook_method, install_wire, join_url, unhook_method


def _describe_manager(manager: Any, args: tuple, kwargs: dict) -> Optional[Tuple[str, str]]:
    method = args[0] if args else kwargs["method"]
    url = args[1] if len(args) > 1 else kwargs["url"]  # an absolute URL
    return str(method), str(url)


def _describe_pool(pool: Any, args: tuple, kwargs: dict) -> Optional[Tuple[str, str]]:
    method = args[0] if args else kwargs["method"]
    url = args[1] if len(args) > 1 else kwargs["url"]  # a path (an absolute URL through a proxy)
    return str(method), join_url(str(pool.scheme), str(pool.host), pool.port, str(url))  # (fields= not in it)


def _settle(call: Call, response: Any) -> None:
    call.respond(response.status)
    end_with_body(call, getattr(response, "_fp", None))  # preload_content=True: read already, ends now


def patch(module: ModuleType) -> None:
    install_wire()
    if module.__name__ == "urllib3.poolmanager":
        hook_method(module.PoolManager, "urlopen", _describe_manager, _settle)
    elif module.__name__ == "urllib3.connectionpool":
        hook_method(module.HTTPConnectionPool, "request", _describe_pool, _settle)


def unpatch(module: ModuleType) -> None:
    if module.__name__ == "urllib3.poolmanager":
        unhook_method(module.PoolManager, "urlopen")
    elif module.__name__ == "urllib3.connectionpool":
        unhook_method(module.HTTPConnectionPool, "request")
