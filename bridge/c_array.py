"""The model as C source (the old TinyMLaaS backend's format), parsed in linear time.

``const unsigned char model_tflite[] = {0x1C, 0x00, ...};`` then optionally
``const int model_tflite_len = N;``. Elements are C integer literals: decimal (``28``), octal
(``034``; a leading zero means octal, so ``010`` is 8), hexadecimal (``0x1C``), each with an
optional ``u``/``l``/``ul``/``ll``/``ull`` suffix in any case order C allows.

Every step is one pass over the text (``str.find``, ``str.split``, anchored regexes on short
slices), never a regex that can backtrack over the whole body: a body of repeated
``char a[] `` once took minutes under a backtracking pattern and held the interpreter lock.
"""

from __future__ import annotations

import re

from hal.errors import InputError

# A declaration head up to its ']'; what follows (attributes, '=', '{') is checked by hand.
# Every repeat is bounded, so a failed attempt costs a bounded number of steps.
_HEAD = re.compile(r"(?:unsigned\s{1,64}char|uint8_t|char|int8_t)\s{1,64}"
                   r"(?P<name>[A-Za-z_]\w{0,127})\s{0,64}\[\s{0,64}\d{0,12}\s{0,64}\]")
_DELIM = re.compile(r"[={};]")
_OPEN = re.compile(r"\s{0,4096}\{")
# Attributes allowed between ']' and '=' (e.g. DATA_ALIGN, __attribute__((aligned(16)))).
_MAX_ATTRIBUTES = 256
# Declarations looked at before giving up: the model array comes first in real files.
MAX_DECLARATIONS = 64
# Possessive repeats: a comment is consumed once; an unclosed /* runs to the end, as in C.
_COMMENT = re.compile(r"/\*(?:[^*]++|\*(?!/))*+(?:\*/|\Z)|//[^\n]*+")
# C integer literal (C17 6.4.4.1) with a value check done afterwards.
_INT = re.compile(r"(?:0[xX](?P<hex>[0-9a-fA-F]{1,16})|(?P<oct>0[0-7]{0,22})|"
                  r"(?P<dec>[1-9][0-9]{0,19}))(?:[uU](?:ll|LL|l|L)?|(?:ll|LL|l|L)[uU]?)?")
# No leading lookbehind in these two: it would cost the regex engine its fast scan for the
# first character; the word boundary is checked by hand (_starts_word).
_LEN = re.compile(r"int\s{1,64}(?P<name>[A-Za-z_]\w{0,131})\s{0,64}=\s{0,64}"
                  r"(?P<value>[0-9][0-9xXa-fA-FuUlL]{0,24})\s{0,64};")


def int_literal(text: str) -> int | None:
    """The value of a C integer literal, or None when ``text`` is not one."""
    match = _INT.fullmatch(text)
    if match is None:
        return None
    if match.group("hex") is not None:
        return int(match.group("hex"), 16)
    if match.group("oct") is not None:
        return int(match.group("oct"), 8)
    return int(match.group("dec"))


def strip_comments(source: str) -> str:
    """``source`` with each comment replaced by a space (an unclosed ``/*`` comments out the
    rest, as in C), in one pass."""
    return _COMMENT.sub(" ", source)


def _starts_word(text: str, index: int) -> bool:
    return index == 0 or not (text[index - 1].isalnum() or text[index - 1] == "_")


def _declared_len(text: str) -> re.Match | None:
    """The first ``int NAME = VALUE;`` in ``text`` (the ``_len`` after the array)."""
    for count, match in enumerate(_LEN.finditer(text)):
        if count >= MAX_DECLARATIONS:
            return None
        if _starts_word(text, match.start()) and match.group("name").endswith("_len"):
            return match
    return None


def _find_array(text: str) -> tuple[str, str, int] | None:
    """(name, body, index of its '}') of the first byte array. Linear: the positions of the
    next delimiter and of the next '}' are cached and only move forward, each head looks at
    most ``_MAX_ATTRIBUTES`` characters past itself, and at most ``MAX_DECLARATIONS`` heads
    are looked at."""
    delim = close = -1
    for count, head in enumerate(_HEAD.finditer(text)):
        if count >= MAX_DECLARATIONS:
            return None
        if not _starts_word(text, head.start()):
            continue
        end = head.end()
        if delim < end:
            found = _DELIM.search(text, end)
            if found is None:
                return None
            delim = found.start()
        if delim - end > _MAX_ATTRIBUTES or text[delim] != "=":
            continue
        brace = _OPEN.match(text, delim + 1)
        if brace is None:
            continue
        start = brace.end()
        if close < start:
            close = text.find("}", start)
            if close < 0:
                return None
        if text.find("{", start, close) >= 0:
            continue
        if not text[close + 1:close + 65].lstrip().startswith(";"):
            continue
        return head.group("name"), text[start:close], close
    return None


def parse_c_array(source: str, *, max_bytes: int) -> bytes:
    """The bytes of the first ``unsigned char NAME[] = {...};`` array in C ``source``.

    Elements are C integer literals of value 0..255 separated by commas; comments and a
    trailing comma are allowed. Anything else -- an element that is not a byte, a missing
    array, a ``NAME_len`` that disagrees with the element count, more than ``max_bytes``
    bytes -- is a ``bad_request`` naming what and where."""
    if len(source) > max_bytes * 6 + 65536:  # "0xAB, " is 6 characters per byte
        raise InputError("payload_too_large", f"the model source exceeds the limit of "
                         f"{max_bytes} model bytes", limit_bytes=max_bytes)
    if "\x00" in source:
        raise InputError("bad_request", "the model source contains NUL characters")
    text = strip_comments(source)
    found = _find_array(text)
    if found is None:
        raise InputError("bad_request", "the model is not C source with an array like "
                         "'const unsigned char model_tflite[] = {0x1C, 0x00, ...};'")
    name, body, close = found
    elements = body.split(",")
    if elements and not elements[-1].strip():
        elements.pop()  # trailing comma, or an empty array
    if len(elements) > max_bytes:
        raise InputError("payload_too_large", f"the model array has {len(elements)} bytes, "
                         f"more than the limit of {max_bytes}", limit_bytes=max_bytes,
                         size_bytes=len(elements))
    stripped = [e.strip() for e in elements]
    # Each distinct spelling is parsed once (a model has a few hundred), then one C-level map.
    table = {e: int_literal(e) for e in set(stripped)}
    bad = {e for e, v in table.items() if v is None or v > 255}
    if bad:
        index = next(i for i, e in enumerate(stripped) if e in bad)
        raise InputError("bad_request", f"element {index} of array {name} is not a byte "
                         f"(a C integer literal 0..255): {stripped[index][:20]!r}",
                         index=index, element=stripped[index][:20])
    out = bytes(map(table.__getitem__, stripped))
    declared = _declared_len(text[close:])
    if declared is not None:
        count = int_literal(declared.group("value"))
        if count is None:
            raise InputError("bad_request", f"{declared.group('name')} is not an integer "
                             f"literal: {declared.group('value')!r}")
        if count != len(out):
            raise InputError("bad_request", f"{declared.group('name')} = {count} but the "
                             f"array has {len(out)} bytes", declared=count, actual=len(out))
    return out
