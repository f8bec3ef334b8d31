"""Compact JSON text for the flush thread (the store's attribute columns, jsonl lines)."""

from __future__ import annotations

import json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional


def compact_encoder(default: Optional[Callable[[Any], Any]] = None, allow_nan: bool = True) -> Callable[[Any], str]:
    """An encode(value) -> str with no spaces and non-ASCII text kept. It calls json's C encoder built once:
    JSONEncoder.encode builds one per call, a third of its cost on a span's attributes. It skips the cycle check,
    which cleaned records (flat values) never need: anything the C encoder refuses goes through the plain
    encoder, which raises as json does."""
    plain = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=default, allow_nan=allow_nan).encode
    from json.encoder import c_encode_basestring, c_make_encoder  # None where json has no C accelerator

    if c_make_encoder is None or c_encode_basestring is None:
        return plain
    fast = c_make_encoder(None, default, c_encode_basestring, None, ":", ",", False, False, allow_nan)

    def encode(value: Any) -> str:
        try:
            chunks = fast(value, 0)
            return chunks[0] if len(chunks) == 1 else "".join(chunks)
        except (TypeError, ValueError, RecursionError):
            return plain(value)

    encode.c_encoder = fast  # type: ignore[attr-defined]  # (called from C by autoinstr._speedups.store_values)
    return encode
