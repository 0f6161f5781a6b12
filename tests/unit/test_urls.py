"""Store URLs are shown with their password masked, whether SQLAlchemy parses them or not."""

import pytest

from zoo_sweep.urls import mask_url, scrub


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:SECRETPW@127.0.0.1:1/zoo", "postgresql://u:***@127.0.0.1:1/zoo"),
    ("postgresql+psycopg://u:SECRETPW@db.example/zoo", "postgresql+psycopg://u:***@db.example/zoo"),
    ("postgresql://u:SECRETPW@host:abc/db", "postgresql://u:***@host:abc/db"),  # a bad port: not parsed
    ("postgresql://u:SEC@RETPW@host/db", "postgresql://u:***@host/db"),  # an unescaped '@' in the password
    ("postgresql://u@host/db?password=SECRETPW", "postgresql://u@host/db?password=***"),
    ("postgresql+psycopg://u:p%40SECRETPW@h/db", "postgresql+psycopg://u:***@h/db"),
    ("sqlite:///results/zoo.db", "sqlite:///results/zoo.db"),
    ("postgresql://u@host/db", "postgresql://u@host/db"),
    ("not a url", "not a url"),
    ("", ""),
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown
    assert "SECRETPW" not in mask_url(url) and "RETPW" not in mask_url(url)


def test_scrub_masks_the_url_and_its_password_anywhere_in_a_message():
    url = "postgresql://u:SECRETPW@127.0.0.1:1/zoo"
    msg = f'connection to {url} failed: password authentication for "u" with SECRETPW failed'
    assert "SECRETPW" not in scrub(msg, url)
    assert "postgresql://u:***@127.0.0.1:1/zoo" in scrub(msg, url)
    assert scrub("nothing secret", None) == "nothing secret"
