"""urllib3 (1.26 and 2.x): `PoolManager.urlopen` (urllib3.request() and pool managers, cross-host redirects)
and `HTTPConnectionPool.urlopen` (a pool used directly; retries) make the client span when nothing above them
did (requests does). The trace headers are added on the wire by the shared http.client hooks. With
preload_content=False the span ends when the body has been read or the response closed or released."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Optional, Tuple

from autoinstr.integrations._http import Call, end_with_body, install_wire, join_url, traced_call
from autoinstr.integrations._wrapping import unwrap, wrap


def _method_url(args: tuple, kwargs: dict) -> Tuple[str, str]:
    method = args[0] if args else kwargs["method"]
    url = args[1] if len(args) > 1 else kwargs["url"]
    return str(method), str(url)


def _describe_manager(instance: Any, args: tuple, kwargs: dict) -> Optional[Tuple[str, str]]:
    return _method_url(args, kwargs)  # an absolute URL


def _describe_pool(instance: Any, args: tuple, kwargs: dict) -> Optional[Tuple[str, str]]:
    method, url = _method_url(args, kwargs)  # a path (an absolute URL through a proxy)
    return method, join_url(str(instance.scheme), str(instance.host), instance.port, url)


def _settle(call: Call, response: Any) -> None:
    call.respond(response.status)
    end_with_body(call, getattr(response, "_fp", None))  # preload_content=True: read already, ends now


def _manager_urlopen(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    return traced_call(wrapped, instance, args, kwargs, _describe_manager, _settle)


def _pool_urlopen(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    return traced_call(wrapped, instance, args, kwargs, _describe_pool, _settle)


def patch(module: ModuleType) -> None:
    install_wire()
    if module.__name__ == "urllib3.poolmanager":
        wrap(module, "PoolManager.urlopen", _manager_urlopen)
    elif module.__name__ == "urllib3.connectionpool":
        wrap(module, "HTTPConnectionPool.urlopen", _pool_urlopen)


def unpatch(module: ModuleType) -> None:
    if module.__name__ == "urllib3.poolmanager":
        unwrap(module, "PoolManager.urlopen")
    elif module.__name__ == "urllib3.connectionpool":
        unwrap(module, "HTTPConnectionPool.urlopen")
