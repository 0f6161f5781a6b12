"""What both submission targets share: option checks, the store URL a cluster job may use, the spec."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from zoo_sweep.errors import UserError
from zoo_sweep.urls import mask_url, passwords

if TYPE_CHECKING:
    from zoo_sweep.config.spec import SweepSpec




# ---------------------------------------------------------------------- checks shared by both targets
def whole_number(value, option: str, minimum: int) -> int:
    """A whole number from an int or a CLI string; one clear line otherwise."""
    if isinstance(value, bool):
        raise UserError(f"{option} must be a whole number, got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?\d+", text):
            raise UserError(f"{option} must be a whole number, got {value!r}")
        n = int(text)
    if n < minimum:
        raise UserError(f"{option} must be >= {minimum}, got {n}")
    return n


def one_word(value: str | None, option: str) -> str | None:
    """Values that go into '#SBATCH --opt=VALUE' lines: no whitespace, no quotes."""
    if value is None:
        return None
    if not value or re.search(r"[\s'\"\\]", value):
        raise UserError(f"{option} must be one word without spaces or quotes, got {value!r}")
    return value


def cluster_store_url(db: str | None, multi_node: bool, where: str, cwd: Path | None = None) -> str:
    """The store URL a cluster job uses. A relative SQLite path means a different file (or a temporary
    one) on a multi-node run, so that is an error with the fix; on one node it is made absolute."""
    from sqlalchemy.engine import make_url

    from zoo_sweep.storage.store import resolve_url

    url = resolve_url(db)
    try:
        u = make_url(url)
    except Exception:
        raise UserError(f"not a database URL: {mask_url(url)!r} (e.g. postgresql://user@host/db)") from None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        if u.database == ":memory:":
            raise UserError("an in-memory SQLite store cannot outlive a cluster job; "
                            "use --db with a file or PostgreSQL")
        return url
    path = Path(u.database)
    if path.is_absolute():
        return url
    if multi_node:
        raise UserError(
            f"the store {mask_url(url)} is a relative SQLite path, which {where} cannot share: use a PostgreSQL URL "
            "(--db postgresql://user@host/db, reachable from the head node), or an absolute SQLite path on the "
            "head node's local disk (--db sqlite:////local/scratch/zoo.db) and `zoo-sweep export` at the end")
    return u.set(database=str((cwd or Path.cwd()) / path)).render_as_string(hide_password=False)


def has_password(url: str) -> bool:
    """In the user part or a password= query parameter: either keeps the URL out of written files."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password is not None or bool(passwords(url))
    except Exception:
        return bool(passwords(url))


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def spec_and_path(spec: str | Path | SweepSpec) -> tuple[SweepSpec, Path]:
    """(SweepSpec, its file, absolute) from a spec file or an already loaded spec that has one."""
    from zoo_sweep.config.spec import SweepSpec
    from zoo_sweep.pipeline.plan import load_sweep

    if isinstance(spec, SweepSpec):
        if spec.path is None:
            raise ValueError(f"spec {spec.name!r} was not read from a file, which the cluster job needs")
        return spec, Path(spec.path).resolve()
    s = load_sweep(spec)  # a bad spec fails here, not on the cluster after hours in the queue
    return s, Path(spec).resolve()
