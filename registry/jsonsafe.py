"""JSON from outside parsed with limits: a nesting or size bomb is a refusal, not a crash.

Python's decoder recurses once per nesting level, so `[[[[...` 200,000 deep ends in a
RecursionError (an "internal error" to a user). Every JSON xlt reads from a user's file
(safetensors headers and their `xlt` metadata, an encoder's config.json, --config and
--metrics files) goes through `loads`: at most `max_bytes`, at most MAX_DEPTH levels of
arrays/objects, else the caller's error class (exit 2) naming what was read.
"""

from __future__ import annotations

import json
from typing import Any

from registry.errors import InvalidInput, XltError

MAX_DEPTH = 64  # xlt's own JSON nests 4 deep; 64 leaves room for any honest tool


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests deeper than `limit` (iterative: no recursion of our own)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def loads(data: bytes | str, what: str, *, max_bytes: int,
          error: type[XltError] = InvalidInput, hint: str = "give a well-formed JSON file",
          max_depth: int = MAX_DEPTH) -> Any:
    """Parse `data` as JSON within the limits; `error(...)` naming `what` otherwise."""
    if len(data) > max_bytes:
        raise error(f"{what} is {len(data)} bytes, more than the {max_bytes} xlt reads",
                    hint)
    try:
        value = json.loads(data)
    except RecursionError:
        raise error(f"{what} nests deeper than {max_depth} levels", hint) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} is not JSON ({exc})", hint) from exc
    if depth_exceeds(value, max_depth):
        raise error(f"{what} nests deeper than {max_depth} levels", hint)
    return value
