"""The agent's own messages: one line each, to stderr, prefixed so users can tell them from the app's."""

from __future__ import annotations

import os
import sys

_DEBUG = os.environ.get("AUTOINSTR_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
_warned: set = set()


def _write(level: str, message: str) -> None:
    try:
        sys.stderr.write("autoinstr %s: %s\n" % (level, message))
        sys.stderr.flush()
    except Exception:  # a closed or broken stderr must not become the app's problem
        pass


def warn(message: str) -> None:
    _write("warning", message)


def warn_once(key: str, message: str) -> None:
    """Warn the first time `key` is seen in this process (integration disabled, exporter failing...)."""
    if key not in _warned:
        _warned.add(key)
        _write("warning", message)


def debug(message: str) -> None:
    if _DEBUG:
        _write("debug", message)


def set_debug(enabled: bool) -> None:
    global _DEBUG
    _DEBUG = enabled
