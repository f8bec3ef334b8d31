"""httpx, sync and async: `Client.send` / `AsyncClient.send` (behind get(), request(), stream() and
httpx.get()) are the logical request, redirects and auth round trips included, and make the client span.

The trace headers go into a copy of the request (httpx sends "the request as-is, unmodified": a Request the
app built and sends again must not keep a previous call's context); `response.request` is that copy, so it
shows what was sent. A streamed response's span ends when the body has been read or the response closed."""

from __future__ import annotations

import weakref
from types import ModuleType
from typing import Any, Callable, Optional, Tuple

from autoinstr.integrations._http import Call, headers_to_add, hook_method, traced_call_async, unhook_method
from autoinstr.integrations._wrapping import unwrap, wrap


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
    if response.is_closed:  # read inside send() (stream=False)
        call.answered(response.status_code, len(response.history))
    else:  # streamed: this response's own close()/aclose() (iterating to the end calls them) end the span
        call.respond(response.status_code, len(response.history))
        watch = _CloseWatch(response, call)
        response.close = watch.close
        response.aclose = watch.aclose


def _async_send(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    return traced_call_async(wrapped, instance, args, kwargs, _describe, _settle, _prepare)


class _CloseWatch:
    """close() and aclose() of one streamed response, until either runs: the class's method, then the end of
    the call. Instance attributes, so the responses read inside send() pay nothing; the response is held
    weakly (an attribute referring back to its object would leave it to the cyclic garbage collector)."""

    __slots__ = ("response", "call")

    def __init__(self, response: Any, call: Call) -> None:
        self.response = weakref.ref(response)
        self.call = call

    def _restore(self) -> Any:
        response = self.response()
        if response is not None:
            for name in ("close", "aclose"):
                try:
                    delattr(response, name)  # the class's methods again
                except AttributeError:
                    pass
        return response

    def close(self) -> None:
        response = self._restore()
        try:
            if response is not None:
                type(response).close(response)
        finally:
            self.call.end()

    async def aclose(self) -> None:
        response = self._restore()
        try:
            if response is not None:
                await type(response).aclose(response)
        finally:
            self.call.end()


def patch(module: ModuleType) -> None:  # httpx
    hook_method(module.Client, "send", _describe, _settle, _prepare)
    wrap(module, "AsyncClient.send", _async_send)  # a coroutine function: wrapt keeps it one


def unpatch(module: ModuleType) -> None:
    unhook_method(module.Client, "send")
    unwrap(module, "AsyncClient.send")
