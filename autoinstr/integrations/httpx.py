"""httpx, sync and async: `Client.send` / `AsyncClient.send` (behind get(), request(), stream() and
httpx.get()) are the logical request, redirects and auth round trips included, and make the client span.

The trace headers go into a copy of the request (httpx sends "the request as-is, unmodified": a Request the
app built and sends again must not keep a previous call's context); `response.request` is that copy, so it
shows what was sent. A streamed response's span ends when the body has been read or the response closed."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Optional, Tuple

from autoinstr.integrations._http import Call, headers_to_add, hook_method, traced_call_async, unhook_method
from autoinstr.integrations._wrapping import unwrap, wrap

_BODY = "_autoinstr_body"


def _describe(instance: Any, args: tuple, kwargs: dict) -> Optional[Tuple[str, str]]:
    request = args[0] if args else kwargs["request"]
    return str(request.method), str(request.url)


def _prepare(call: Call, instance: Any, args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
    request = args[0] if args else kwargs["request"]
    add = headers_to_add(call, request.headers.keys())
    if not add:
        return args, kwargs
    headers = request.headers.copy()
    for name, value in add.items():
        headers[name] = value
    copy = object.__new__(request.__class__)
    copy.__dict__.update(request.__dict__)  # same stream, extensions, url: only the headers differ
    copy.headers = headers
    if args:
        return (copy,) + args[1:], kwargs
    return args, dict(kwargs, request=copy)


def _settle(call: Call, response: Any) -> None:
    call.respond(response.status_code, len(response.history))
    if response.is_closed:  # read inside send() (stream=False)
        call.end()
    else:
        setattr(response, _BODY, call)


def _async_send(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    return traced_call_async(wrapped, instance, args, kwargs, _describe, _settle, _prepare)


def _close(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        _end_body(instance)


def _aclose(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    if getattr(instance, _BODY, None) is None:
        return wrapped(*args, **kwargs)
    return _aclose_then_end(wrapped(*args, **kwargs), instance)


async def _aclose_then_end(closing: Any, response: Any) -> None:
    try:
        return await closing
    finally:
        _end_body(response)


def _end_body(response: Any) -> None:
    try:
        call = getattr(response, _BODY, None)
        if call is not None:
            setattr(response, _BODY, None)
            call.end()
    except Exception:
        pass


def patch(module: ModuleType) -> None:  # httpx
    hook_method(module.Client, "send", _describe, _settle, _prepare)
    wrap(module, "AsyncClient.send", _async_send)  # a coroutine function: wrapt keeps it one
    wrap(module, "Response.close", _close)
    wrap(module, "Response.aclose", _aclose)


def unpatch(module: ModuleType) -> None:
    unhook_method(module.Client, "send")
    for path in ("AsyncClient.send", "Response.close", "Response.aclose"):
        unwrap(module, path)
