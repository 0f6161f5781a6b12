"""URLs and addresses as they may be shown: a password never reaches a terminal, a log, a script or a report.

Every message, script or file that names a store URL passes it through ``mask_url``; text that may quote a
secret (a driver's message, an error naming a Ray address) passes through ``redact`` with the secrets the
command was given (``passwords``). The CLI applies ``redact`` to every line it prints.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
# user:password@ anywhere in a text, with a scheme (postgresql+psycopg://, ray://, http://) or without one (a Ray
# address u:p@host:port). A word starts at the text's start or after a space or a quote; the password runs up to
# the word's last '@', so a password with an unescaped '@' is masked whole.
# (?!//): the colon of a scheme is no user:password separator (postgresql+psycopg://zoo@host has no password)
_CREDENTIALS = re.compile(r"(?<![^\s'\"<>(\[])(?P<head>(?:[A-Za-z][A-Za-z0-9+.\-]*://)?[^\s:/@'\"<>]*:)(?!//)"
                          r"(?P<password>[^\s'\"<>]*)(?P<at>@)")
_QUERY = re.compile(r"(?P<key>[?&](?:password|passwd|pwd)=)(?P<password>[^&\s'\"]*)", re.IGNORECASE)
MIN_SECRET = 4  # shorter secrets are masked only where they stand as a password (user:pw@), never anywhere:
# masking every "a" of a one-letter password would leave the message unreadable


def mask_url(url: str | None) -> str:
    """``url`` with its password (in the user part or a ``password=`` query parameter) replaced by ***."""
    if not url:
        return url or ""
    text = str(url)
    raw = _CREDENTIALS.match(text)
    if raw and "@" in raw["password"]:  # SQLAlchemy would take the part after the first '@' for the host
        text = _CREDENTIALS.sub(lambda m: m["head"] + MASK + m["at"], text)
    else:
        try:
            from sqlalchemy.engine import make_url

            text = make_url(text).render_as_string(hide_password=True)
        except Exception:  # not a URL SQLAlchemy parses (a bad port, a Ray address u:p@host:port): the raw text
            text = _CREDENTIALS.sub(lambda m: m["head"] + MASK + m["at"], text)
    return _QUERY.sub(lambda m: m["key"] + MASK, text)


def passwords(*texts: str | None) -> list[str]:
    """The secrets written in ``texts`` (store URLs, Ray addresses, command-line words), longest first: each
    password of a user:password@ part, as written and decoded (p%40ss is p@ss), each password= query value, and
    the parts of a password around its '@' (a driver given u:p@ss@host takes ss@host for the host and quotes it)."""
    found: set[str] = set()
    for text in filter(None, map(str, texts)):
        pws = [m["password"] for m in _CREDENTIALS.finditer(text)] + [m["password"] for m in _QUERY.finditer(text)]
        try:
            from sqlalchemy.engine import make_url

            if make_url(text).password:
                pws.append(str(make_url(text).password))
        except Exception:
            pass
        for pw in pws:
            for p in (pw, unquote(pw)):
                found.update(x for x in [p, *p.split("@")] if x)
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` with every known secret masked wherever it appears, then every user:password@ and password=
    left in it (URLs and addresses nobody told us about): the one masking of every line the CLI prints."""
    text = str(text)
    for s in sorted(secrets, key=len, reverse=True):
        if len(s) >= MIN_SECRET:
            text = text.replace(s, MASK)
        else:  # a short part of a password, where a driver quotes it as the start of a host: 'ss@host'
            text = re.sub(r"(?<![^\s'\"<>(\[])" + re.escape(s) + "@", MASK + "@", text)
    text = _CREDENTIALS.sub(lambda m: m["head"] + MASK + m["at"], text)
    return _QUERY.sub(lambda m: m["key"] + MASK, text)


def scrub(text: str, url: str | None) -> str:
    """``text`` with every secret of ``url`` masked, wherever it appears (the whole URL, or a driver's
    message that quotes a part of it)."""
    text = str(text)
    if url:
        text = text.replace(str(url), mask_url(url))
    return redact(text, passwords(url))
