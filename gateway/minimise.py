"""Data minimisation: keep only the fields a consented resource releases.

A resource declares its released fields as RFC 6901 JSON pointers. The
provider's answer is rebuilt from scratch with only the values found at those
pointers, at the same place:

- objects on the way are recreated with just the keys that lead to a kept value;
- arrays on the way are followed too (``/enfants/0/prenom``): the rebuilt array
  holds the kept elements at their original index and ``null`` in every
  position that was not released, so indexes keep their meaning without
  releasing the other elements;
- the value at the end of a pointer is copied whole, whatever its type;
- a pointer that leads nowhere (missing key, index out of range, ``-``, a
  scalar on the way) is simply absent from the result.

Releasing less than declared is always safe; releasing more never happens. A
top-level answer that is not an object gives an empty object. Pure: no I/O, the
input is never modified and nothing in the result aliases it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["minimise", "pointer_tokens"]

# RFC 6901 §4: "~" is only valid as "~0" or "~1".
_BAD_ESCAPE = re.compile(r"~(?![01])")
# RFC 6901 §4: an array index is "0" or digits without a leading zero.
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")

Slot = str | int  # an object key or an array index


def pointer_tokens(pointer: str) -> tuple[str, ...]:
    """Split an RFC 6901 pointer into unescaped reference tokens.

    The empty pointer (the whole document) is refused: releasing the whole
    answer would defeat minimisation. Raises ``ValueError`` on bad syntax.
    """
    if not pointer.startswith("/"):
        raise ValueError('must start with "/"')
    if _BAD_ESCAPE.search(pointer):
        raise ValueError('"~" must be followed by "0" or "1" (RFC 6901 §3)')
    # RFC 6901 §4: decode "~1" before "~0", so that "~01" becomes "~1", not "/".
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/"))


def minimise(document: Any, pointers: Sequence[str]) -> dict[str, Any]:
    """Return a new object holding only the values of ``document`` at ``pointers``."""
    tokenised = [pointer_tokens(p) for p in pointers]  # refuse bad syntax before anything
    result: dict[str, Any] = {}
    if not isinstance(document, dict):
        return result
    for tokens in tokenised:
        steps = _resolve(document, tokens)
        if steps is not None:
            _insert(result, steps)
    return result


def _resolve(document: dict[str, Any], tokens: tuple[str, ...]) -> list[tuple[Slot, Any]] | None:
    """The (key or index, value) met at each token, or None if the pointer leads nowhere.

    Resolved completely before anything is built, so that a pointer that fails
    halfway leaves no empty object or array behind.
    """
    steps: list[tuple[Slot, Any]] = []
    current: Any = document
    for token in tokens:
        slot: Slot
        if isinstance(current, dict):
            if token not in current:
                return None
            slot = token
        elif isinstance(current, list):
            # Also refuses "-", which names the element after the last one (§4).
            if not _ARRAY_INDEX.fullmatch(token) or int(token) >= len(current):
                return None
            slot = int(token)
        else:
            return None  # a scalar cannot be descended into
        current = current[slot]
        steps.append((slot, current))
    return steps


def _insert(result: dict[str, Any], steps: list[tuple[Slot, Any]]) -> None:
    """Recreate the containers along ``steps`` in ``result`` and copy the last value."""
    target: dict[str, Any] | list[Any] = result
    for slot, value in steps[:-1]:
        child = _get(target, slot)
        if not isinstance(child, type(value)):
            child = {} if isinstance(value, dict) else []
            _put(target, slot, child)
        target = child
    slot, value = steps[-1]
    _put(target, slot, copy.deepcopy(value))


def _get(target: dict[str, Any] | list[Any], slot: Slot) -> Any:
    if isinstance(target, dict):
        return target.get(str(slot))
    index = int(slot)
    return target[index] if index < len(target) else None


def _put(target: dict[str, Any] | list[Any], slot: Slot, value: Any) -> None:
    if isinstance(target, dict):
        target[str(slot)] = value
        return
    index = int(slot)
    # Positions that were not released stay null so later indexes keep their place.
    target.extend([None] * (index + 1 - len(target)))
    target[index] = value
