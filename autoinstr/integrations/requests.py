"""requests: `Session.send` is the logical request (requests.get and friends, sessions, redirects followed
inside it) and makes the one client span; urllib3 and http.client below it make none. The trace headers are
added on the wire by the shared http.client hooks, so the app's header dicts and PreparedRequest objects are
never touched. With stream=True the span ends when the body has been read or the response closed."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Optional, Tuple

from autoinstr.integrations._http import Call, end_with_body, hook_method, install_wire, unhook_method


def _describe(session: Any, args: tuple, kwargs: dict) -> Optional[Tuple[str, str]]:
    request = args[0] if args else kwargs["request"]
    return str(request.method), str(request.url)


def _settle(call: Call, response: Any) -> None:
    if getattr(response, "_content_consumed", True):
        call.answered(response.status_code)
    else:  # stream=True: the body is still to be read, from the urllib3 response's http.client response
        call.respond(response.status_code)
        end_with_body(call, getattr(response.raw, "_fp", None))


def patch(module: ModuleType) -> None:  # requests.sessions
    install_wire()
    hook_method(module.Session, "send", _describe, _settle)


def unpatch(module: ModuleType) -> None:
    unhook_method(module.Session, "send")
