"""Store URLs as they may be shown: a password never reaches a terminal, a log, a script or a report.

Every message, script or file that names a store URL passes it through ``mask_url``; error text that may
quote a URL (a driver's message) passes through ``scrub``.
"""

from __future__ import annotations

import re

MASK = "***"
# user:password@ in a URL that SQLAlchemy cannot parse (a bad port, say); greedy up to the last '@', so a
# password with an unescaped '@' is masked whole
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<password>\S*)(?P<at>@)")
_QUERY = re.compile(r"(?P<key>[?&](?:password|passwd|pwd)=)(?P<password>[^&\s]*)", re.IGNORECASE)


def mask_url(url: str | None) -> str:
    """``url`` with its password (in the user part or a ``password=`` query parameter) replaced by ***."""
    if not url:
        return url or ""
    text = str(url)
    raw = _USERINFO.match(text)
    if raw and "@" in raw["password"]:  # SQLAlchemy would take the part after the first '@' for the host
        text = _USERINFO.sub(lambda m: m["head"] + MASK + m["at"], text)
    else:
        try:
            from sqlalchemy.engine import make_url

            text = make_url(text).render_as_string(hide_password=True)
        except Exception:  # not a URL SQLAlchemy parses: mask the raw text
            text = _USERINFO.sub(lambda m: m["head"] + MASK + m["at"], text)
    return _QUERY.sub(lambda m: m["key"] + MASK, text)


def passwords(url: str | None) -> list[str]:
    """The secrets a URL carries (its password, password query parameters), for ``scrub``."""
    if not url:
        return []
    found = []
    try:
        from sqlalchemy.engine import make_url

        pw = make_url(str(url)).password  # decoded: p%40ss is p@ss
        if pw:
            found.append(str(pw))
    except Exception:
        pass
    m = _USERINFO.match(str(url))  # as written
    if m and m["password"]:
        found.append(m["password"])
    found += [m["password"] for m in _QUERY.finditer(str(url)) if m["password"]]
    return sorted(set(found), key=len, reverse=True)


def scrub(text: str, url: str | None) -> str:
    """``text`` with every secret of ``url`` masked, wherever it appears (the whole URL, or a driver's
    message that quotes a part of it)."""
    text = str(text)
    if url:
        text = text.replace(str(url), mask_url(url))
    for pw in passwords(url):
        if len(pw) >= 4:  # masking every "a" of a one-letter password would leave the message unreadable
            text = text.replace(pw, MASK)
    return text
