"""How values are shown in logs and error messages: credentials never, long values clipped."""

from __future__ import annotations

import re

#: What a hidden password (or secret query parameter) is shown as.
HIDDEN = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: A query parameter whose value is a secret: redis-py passes ``password=`` (and any other
#: parameter, e.g. ``ssl_password=``) on to the connection.
_SECRET_PARAMETER = re.compile(
    r"(?i)([?&;][^=&#;\s]*(?:password|passwd|secret|token)[^=&#;\s]*=)[^&#;\s]*"
)
#: ``scheme://user:password@`` in free text; the password runs to the last ``@`` before a
#: space, so one holding an unencoded ``@`` or ``/`` is hidden whole.
_URL_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*):\S*@")
_KEEP_NAME_HIDE_VALUE = r"\1" + HIDDEN


def redact_url(url: str) -> str:
    """``url`` with its password shown as ``***``, for logs and error messages; never raises.

    The username stays (it is no secret, and it tells which ACL user failed to log in); the
    password in the userinfo and any ``password=`` (``ssl_password=`` ...) query parameter
    are hidden. A malformed URL whose password holds an unencoded ``/``, ``?``, ``#`` or
    ``@`` is hidden up to its last ``@``, but for a plain username:
    ``redact_url("redis://u:p/w@host:6379") == "redis://u:***@host:6379"``.
    """
    try:
        url = str(url)
        scheme = _SCHEME.match(url)
        prefix = scheme.group() if scheme else ""
        rest = url[len(prefix) :]
        authority_end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
        if "@" in rest[authority_end:]:
            # Malformed (or an '@' after the host): all up to the last '@' may be secret.
            userinfo, at, location = rest.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            plain_user = colon and not any(c in user for c in "/?#")
            shown = f"{user}:{HIDDEN}" if plain_user else HIDDEN
        else:
            userinfo, at, host = rest[:authority_end].rpartition("@")
            location = host + rest[authority_end:]
            user, colon, _ = userinfo.partition(":")
            shown = f"{user}:{HIDDEN}" if colon else userinfo
        return prefix + shown + at + _SECRET_PARAMETER.sub(_KEEP_NAME_HIDE_VALUE, location)
    except Exception:  # a log line or an error message must never fail over a URL
        return HIDDEN


def scrub_credentials(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it, and the value
    of every ``?password=`` query parameter, shown as ``***``: the logs' safety net."""
    text = _URL_CREDENTIALS.sub(r"\1:" + HIDDEN + "@", text)
    return _SECRET_PARAMETER.sub(_KEEP_NAME_HIDE_VALUE, text)


def clip(value: str, limit: int = 64) -> str:
    """``value`` quoted for an error message or a log line, at a bounded length.

    Its ``repr`` when that fits in ``limit`` characters plus the quotes; otherwise the repr
    of the longest prefix that does (escapes such as ``\\x00`` count), an ellipsis and the
    value's length: ``clip("abcd" * 100, 4) == "'abcd…' (400 characters)"``.
    """
    if len(value) <= limit:
        shown = repr(value)
        if len(shown) <= limit + 2:
            return shown
    prefix = value[:limit]
    while len(repr(prefix)) > limit + 2:
        prefix = prefix[:-1]
    return f"{prefix + '…'!r} ({len(value)} characters)"
