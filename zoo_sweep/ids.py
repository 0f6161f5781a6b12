"""Content addresses: the identity of a job, a record, a zoo recipe or a decoded image set."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_id(obj: Any, length: int = 16) -> str:
    """Stable short hash of a JSON-able object: the identity of a job, a record or a zoo recipe."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
