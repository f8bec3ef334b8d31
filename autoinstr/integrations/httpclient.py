"""The standard library's HTTP clients: http.client, and urllib.request on top of it.

http.client: a connection used directly gets a client span per request, from putrequest() to the end of the
response body (the shared hooks in autoinstr.integrations._http, which also add the trace headers on the wire
for requests and urllib3). urllib.request: `OpenerDirector.open` (urlopen) is the logical request, redirects
included; an HTTPError (4xx/5xx) is recorded as that status and reaches the app unchanged."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Optional, Tuple

from autoinstr.integrations._http import Call, Wire, end_with_body, hook_method, install_wire, unhook_method


def _describe_open(opener: Any, args: tuple, kwargs: dict) -> Optional[Tuple[str, str]]:
    fullurl = args[0] if args else kwargs["fullurl"]
    data = args[1] if len(args) > 1 else kwargs.get("data")
    if isinstance(fullurl, str):
        url = fullurl.strip()  # as Request() does
        method = "GET" if data is None else "POST"
    else:  # a Request
        url = fullurl.full_url
        method = fullurl.get_method() if data is None or getattr(fullurl, "method", None) else "POST"
    if url[:7].lower() != "http://" and url[:8].lower() != "https://":
        return None  # file:, data:, ftp: are not HTTP
    return method, url


def _settle_open(call: Call, response: Any) -> None:
    call.respond(getattr(response, "status", None))
    end_with_body(call, response)


def _error_status(exc: BaseException) -> Optional[int]:
    code = getattr(exc, "code", None)  # urllib.error.HTTPError: the server's answer, raised
    return code if isinstance(code, int) and hasattr(exc, "hdrs") else None


def patch(module: ModuleType) -> None:
    if module.__name__ == "http.client":
        install_wire()
        Wire.own_spans = True
    elif module.__name__ == "urllib.request":
        hook_method(module.OpenerDirector, "open", _describe_open, _settle_open, error_status=_error_status)


def unpatch(module: ModuleType) -> None:
    if module.__name__ == "http.client":
        Wire.own_spans = False
    elif module.__name__ == "urllib.request":
        unhook_method(module.OpenerDirector, "open")
