"""aiohttp's client: `ClientSession._request` (behind session.get(), session.request(), `async with
session.get(...)`) is the logical request, redirects included, and makes the client span in the awaiting task.

The trace headers go into a copy of the app's headers (its dict is never touched); a propagator whose headers
the app sets, per request or as session defaults, is skipped. The span ends when the body has been read to
its end or the response released or closed (aiohttp always streams bodies)."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Optional, Tuple

from autoinstr.integrations._http import Call, headers_to_add, traced_call_async
from autoinstr.integrations._wrapping import unwrap, wrap

_BODY = "_autoinstr_body"


def _describe(instance: Any, args: tuple, kwargs: dict) -> Optional[Tuple[str, str]]:
    method = args[0] if args else kwargs["method"]
    target = args[1] if len(args) > 1 else kwargs["str_or_url"]
    build = getattr(instance, "_build_url", None)  # a relative URL against the session's base_url
    url = build(target) if build is not None else target
    params = kwargs.get("params")
    if params:  # the query aiohttp will add (a yarl URL; extend_query in aiohttp 3.9+)
        try:
            url = url.extend_query(params)
        except Exception:
            pass
    return str(method).upper(), str(url)


def _prepare(call: Call, instance: Any, args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
    from multidict import CIMultiDict  # aiohttp's own dependency, loaded with it

    given = kwargs.get("headers")
    headers = CIMultiDict(given) if given is not None else CIMultiDict()  # a copy: the app's stays as it is
    defaults = getattr(instance, "headers", None) or ()  # the session's default headers count as the app's
    add = headers_to_add(call, list(headers.keys()) + list(defaults))
    if not add:
        return args, kwargs
    for name, value in add.items():
        headers[name] = value
    return args, dict(kwargs, headers=headers)


def _settle(call: Call, response: Any) -> None:
    call.respond(response.status, len(response.history))
    if response.closed or response.status == 101:  # read already (no body), or upgraded (websocket)
        call.end()
    else:
        setattr(response, _BODY, call)


def _error_status(exc: BaseException) -> Optional[int]:
    status = getattr(exc, "status", None)  # ClientResponseError from raise_for_status
    return status if isinstance(status, int) and hasattr(exc, "request_info") else None


def _request(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    return traced_call_async(wrapped, instance, args, kwargs, _describe, _settle, _prepare, _error_status)


def _body_done(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    """ClientResponse._response_eof (the body was read to its end), release() and close()."""
    try:
        return wrapped(*args, **kwargs)
    finally:
        try:
            call = getattr(instance, _BODY, None)
            if call is not None:
                setattr(instance, _BODY, None)
                call.end()
        except Exception:
            pass


_PATCHES = (("ClientSession._request", _request), ("ClientResponse._response_eof", _body_done),
            ("ClientResponse.release", _body_done), ("ClientResponse.close", _body_done))


def patch(module: ModuleType) -> None:  # aiohttp.client
    for path, wrapper in _PATCHES:
        wrap(module, path, wrapper)


def unpatch(module: ModuleType) -> None:
    for path, _ in _PATCHES:
        unwrap(module, path)
