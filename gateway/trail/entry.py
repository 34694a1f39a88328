"""Trail entry bytes and leaf hashes (DESIGN §4).

An entry is ``gateway-trail/v1\\n`` followed by the RFC 8785 (JCS) canonical
JSON of the event; its leaf hash is ``SHA-256(0x00 || entry)`` (RFC 6962 §2.1),
so existing transparency-log tooling can prove inclusion of our entries.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from enum import StrEnum
from json.encoder import c_encode_basestring as _c_encode_basestring  # type: ignore[attr-defined]
from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
from typing import Any

import rfc8785

from gateway.trail.merkle import leaf_hash as merkle_leaf_hash

ENTRY_PREFIX = b"gateway-trail/v1\n"


class EventType(StrEnum):
    CONSENT_REQUESTED = "consent.requested"
    CONSENT_GRANTED = "consent.granted"
    CONSENT_DENIED = "consent.denied"
    CONSENT_REVOKED = "consent.revoked"
    CONSENT_EXPIRED = "consent.expired"
    CONSENT_EXHAUSTED = "consent.exhausted"
    TOKEN_ISSUED = "token.issued"  # noqa: S105 (an event name, not a secret)
    TRANSFER_AUTHORIZED = "transfer.authorized"
    TRANSFER_DENIED = "transfer.denied"
    TRANSFER_COMPLETED = "transfer.completed"
    TRANSFER_FAILED = "transfer.failed"
    POLICY_LOADED = "policy.loaded"
    KEY_ROTATED = "key.rotated"
    AUDIT_ACCESSED = "audit.accessed"
    NOTICE_DELIVERED = "notice.delivered"
    NOTICE_FAILED = "notice.failed"
    # A refused request outside the transfer path (authorize, token, consent
    # decision, revoke): the auditor sees attacks on those endpoints too.
    REQUEST_REFUSED = "request.refused"


# ---------------------------------------------------------------------------
# Canonical JSON: rfc8785 is the definition, the standard json module a shortcut
#
# ``rfc8785.dumps`` is pure Python and costs several times the C encoder of the
# json module. On the values our events hold, that encoder (and its pure-Python
# twin, which escapes alike) configured below writes the same characters, and
# ``str.encode`` (strict UTF-8) the same bytes:
#
# - literals: ``null``, ``true``, ``false`` in both;
# - integers: both write the decimal digits of an exact ``int``; rfc8785 refuses
#   magnitudes above 2**53 - 1 (its ``IntegerDomainError``, I-JSON's safe range),
#   so larger ones take the rfc8785 path and raise there;
# - floats: JCS writes ECMAScript number forms (RFC 8785 §3.2.2.3: ``2.0`` is
#   ``2``, ``1e21`` is ``1e+21``), which ``repr`` does not: any float takes the
#   rfc8785 path;
# - strings (RFC 8785 §3.2.2.2): both escape exactly ``"``, ``\\``, the short
#   forms ``\b \f \n \r \t`` and every other U+0000..U+001F as lowercase
#   ``\u00xx``, and copy everything else (``/``, U+007F, U+2028, U+2029, non-ASCII)
#   as it is (``ensure_ascii=False``); a lone surrogate makes the strict UTF-8
#   encode fail, and the rfc8785 path then raises as JCS requires;
# - objects (RFC 8785 §3.2.3): members sorted by the UTF-16 code units of their
#   names. For names without characters above U+FFFF the code units are the
#   code points, so Python's string order (which ``sort_keys`` uses) is the
#   same; a name with an astral character takes the rfc8785 path, since
#   U+E000..U+FFFF sort before it in code points and after it in UTF-16
#   (RFC 8785's own example); so does a name that is not an exact ``str``
#   (json would write ``1`` as ``"1"``, rfc8785 refuses it);
# - arrays: ``list`` and ``tuple`` in both; no whitespace (``separators``).
#
# Only exact built-in types qualify, so no ``__str__``, ``__lt__`` or
# ``__iter__`` override can make the two disagree; everything else (subclasses
# such as ``StrEnum`` members, other mappings, unknown types) goes to rfc8785,
# which decides. tests/trail/test_entry.py checks both claims with hypothesis.

_MAX_SAFE_INTEGER = 2**53 - 1  # rfc8785's bound (RFC 7493 §2.2)
_LAST_BMP_CHARACTER = "\uffff"


def _no_default(value: Any) -> Any:
    raise TypeError(f"not JSON: {type(value).__name__}")  # never reached: checked first


_json_text: Callable[[Any], str]
if _c_make_encoder is None or _c_encode_basestring is None:  # no C accelerator (not CPython)
    _json_text = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode
else:
    # ``JSONEncoder.encode`` builds a new C encoder on every call (about a
    # third of its time for an entry). The one it would build, made once: no
    # circular-reference markers (``_json_writes_jcs`` recurses first, and a
    # cycle or a value too deep raises RecursionError there), the same
    # separators, sorted keys, non-ASCII as is.
    _c_encode = _c_make_encoder(
        None, _no_default, _c_encode_basestring, None, ":", ",", True, False, True
    )

    def _json_text(value: Any) -> str:
        return "".join(_c_encode(value, 0))


def _json_writes_jcs(value: Any) -> bool:
    """Whether ``json`` writes ``value`` exactly as ``rfc8785.dumps`` does (see above).

    Recursive like both encoders: a value too deep (or cyclic) for them raises
    ``RecursionError`` here too, and :func:`_canonical_json` leaves it to rfc8785.
    Strings and integers inside a container are judged in the loop, without a
    call of their own: an entry's members are mostly those.
    """
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or max(key) <= _LAST_BMP_CHARACTER):
                return False
            member = type(item)
            if member is str:
                continue
            if member is int:
                if not -_MAX_SAFE_INTEGER <= item <= _MAX_SAFE_INTEGER:
                    return False
            elif not _json_writes_jcs(item):
                return False
        return True
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        number: int = value
        return -_MAX_SAFE_INTEGER <= number <= _MAX_SAFE_INTEGER
    if kind is list or kind is tuple:
        for item in value:
            member = type(item)
            if member is str:
                continue
            if member is int:
                if not -_MAX_SAFE_INTEGER <= item <= _MAX_SAFE_INTEGER:
                    return False
            elif not _json_writes_jcs(item):
                return False
        return True
    return False


def _canonical_json(value: Any) -> bytes:
    """``rfc8785.dumps(value)``, through the C encoder where that writes the same bytes."""
    try:
        if _json_writes_jcs(value):
            return _json_text(value).encode()
    except (RecursionError, UnicodeEncodeError):
        pass  # rfc8785 raises, or decides otherwise, below
    return rfc8785.dumps(value)


def encode_entry(event: Mapping[str, Any]) -> bytes:
    """The exact bytes stored and hashed for one event."""
    return ENTRY_PREFIX + _canonical_json(event if type(event) is dict else dict(event))


# The leaf hash of an entry is RFC 6962's, defined once in the Merkle module.
leaf_hash = merkle_leaf_hash
