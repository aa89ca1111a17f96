"""What a name, a device id, a board and a bridge URL may be, stated once: the request models
(``schemas``), the parameter checks (``web``) and therefore the OpenAPI document use these, so
the document says exactly what the server accepts."""

from __future__ import annotations

from typing import Literal

from hal.boards import profiles

# A name a user gives (label, dataset, bridge, file): word characters (Python's `\w` is
# Unicode-aware: letters and digits of every script, so "café" is a name), spaces and ASCII
# punctuation except '/' and '\'; not starting with '.' or a space, not ending with a space;
# at most 64 characters. (Names read from a zip's folders follow archive.check_name; the
# endpoints that look a label up take any existing name.)
_PUNCT = r"""!"#$%&'()*+,:;<=>?@\[\]^`{|}~"""
NAME_PATTERN = rf"^[\w{_PUNCT}-](?:[\w {_PUNCT}.-]{{0,62}}[\w{_PUNCT}.-])?$"
# A bridge's device id (the bridge's own rule).
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_H16 = r"[0-9a-fA-F]{1,4}"
_IPV6 = ("(?:" + "|".join([
    rf"(?:{_H16}:){{7}}{_H16}", rf"(?:{_H16}:){{1,7}}:", rf"(?:{_H16}:){{1,6}}:{_H16}",
    rf"(?:{_H16}:){{1,5}}(?::{_H16}){{1,2}}", rf"(?:{_H16}:){{1,4}}(?::{_H16}){{1,3}}",
    rf"(?:{_H16}:){{1,3}}(?::{_H16}){{1,4}}", rf"(?:{_H16}:){{1,2}}(?::{_H16}){{1,5}}",
    rf"{_H16}:(?::{_H16}){{1,6}}", rf":(?:(?::{_H16}){{1,7}}|:)"]) + ")")
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
# The last label starts with a letter: numeric forms other than a dotted quad are refused.
_HOSTNAME = rf"(?:{_LABEL}\.)*[a-zA-Z](?:[a-zA-Z0-9-]{{0,61}}[a-zA-Z0-9])?"
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# http(s)://host[:port][/] with a host name, a dotted-quad IPv4 or a bracketed IPv6 address
# (backend_stub.bridges.validate_bridge_url says why anything else is refused).
BRIDGE_URL_PATTERN = (rf"^[hH][tT][tT][pP][sS]?://(?:{_HOSTNAME}|{_OCTET}(?:\.{_OCTET}){{3}}"
                      rf"|\[{_IPV6}\])(?::{_PORT})?/?$")

BoardName = Literal[tuple(sorted(profiles()))]  # type: ignore[valid-type]
