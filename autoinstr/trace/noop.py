"""The agent-less stand-in for a span: what `autoinstr.span` is while the agent is not loaded. A module of its
own so that `import autoinstr` (the API, and the launcher) loads nothing else."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Optional


class NoopSpan:
    """What `autoinstr.span` is while the agent is not loaded: the same interface, nearly free."""

    __slots__ = ()
    name = ""
    kind = "internal"
    status = "ok"
    sampled = False
    trace_id = 0
    span_id = 0
    attributes: Dict[str, Any] = {}

    def __init__(self, name: str = "", *, kind: str = "internal", parent: Any = None, **attributes: Any) -> None:
        pass

    def __enter__(self) -> NoopSpan:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return False

    def start(self) -> NoopSpan:
        return self

    def finish(self, end_ns: int = 0) -> None:
        pass

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Dict[str, Any]) -> None:
        pass

    def set_status(self, status: str, description: Optional[str] = None) -> None:
        pass

    def add_event(self, name: str, attributes: Optional[Dict[str, Any]] = None, time_ns: int = 0) -> None:
        pass

    def record_exception(self, exc: BaseException, escaped: bool = True, time_ns: int = 0) -> None:
        pass

    def __repr__(self) -> str:
        return "NoopSpan()"
