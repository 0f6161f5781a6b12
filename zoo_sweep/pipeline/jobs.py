"""A sweep's unit of work, typed: a job's state, its kind's payload, its row in the store, and its outcome.

A job row keeps its payload as JSON text; ``Job.from_row`` parses it once into the payload dataclass of its
kind, and every stage reads fields from there. A job's id is a content address (``job_id``): the hash of
everything that determines its result, so planning the same spec twice adds nothing.

Stored payloads never hold the results folder's absolute path: a path under ``--home`` is written as
``<home>/...`` and resolved against the current ``--home`` when the row is read, so a store planned with one
results folder runs with another (a moved folder, another mount point on a cluster node).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from zoo_sweep.errors import UserError
from zoo_sweep.ids import content_id
from zoo_sweep.storage.schema import JobState
from zoo_sweep.zoo.entry import ModelEntry

if TYPE_CHECKING:  # a login node reads jobs without pandas' import cost
    import pandas as pd

PAYLOAD_COLUMN = "payload"  # the jobs table's JSON column: the one name that knows it
HOME = "<home>"


# ---------------------------------------------------------------------- model entries inside payloads
def entry_from_dict(d: Mapping[str, Any]) -> ModelEntry:
    """A ModelEntry from a payload; JSON turned its tuples into lists, timm wants them back."""
    def tup(v: Any) -> Any:
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    names = {f.name for f in dataclasses.fields(ModelEntry)}
    d = {k: v for k, v in d.items() if k in names}
    d["kwargs"] = {k: tup(v) for k, v in d.get("kwargs", {}).items()}
    d["data_cfg"] = {k: tup(v) for k, v in d.get("data_cfg", {}).items()}
    return ModelEntry(**d)


class Payload:
    """A kind's payload: the dataclass fields are the JSON keys; model fields hold ModelEntry objects.
    Optional fields left at None are not written, so a payload's JSON is the same as before they existed."""

    kind: ClassVar[str]
    # what @dataclass gives each kind, declared so that dataclasses.fields() takes a Payload
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.default is None:
                continue
            if f.metadata.get("model"):
                v = v.to_dict()
            elif f.metadata.get("models"):
                v = [e.to_dict() for e in v]
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                if f.default is dataclasses.MISSING:
                    raise KeyError(f.name)
                continue
            v = d[f.name]
            if f.metadata.get("model"):
                v = entry_from_dict(v)
            elif f.metadata.get("models") and v is not None:
                v = tuple(entry_from_dict(e) for e in v)
            kw[f.name] = v
        return cls(**kw)


@dataclass(frozen=True)
class PredictPayload(Payload):
    """Stage 1: one forward pass of a model over the eval set."""
    kind: ClassVar[str] = "predict"
    # field() itself rather than a helper around it: mypy takes a helper's result for a default
    model: ModelEntry = field(metadata={"model": True})
    eval: str
    image_size: int
    class_map: str | None
    topk: int
    eval_subset: float | None = None  # [data] subsets: only when set, so older payloads stay as they were
    transfer_subset: float | None = None
    subset_seed: int | None = None


@dataclass(frozen=True)
class ComparePayload(Payload):
    """Stage 2: every ordered pair of ``models`` from their prediction records (predict job ids)."""
    kind: ClassVar[str] = "compare"
    eval: str
    eval_key: str
    models: list[str]
    records: list[str]


@dataclass(frozen=True)
class TransferPayload(Payload):
    """Stage 4: one (student, teacher, method, seed). A multi-teacher job has ``teachers`` (all of them, in
    order; ``teacher`` is the first, so per-job inputs stay defined), ``method`` is its mode and
    ``multi_method`` the single-teacher method each stage uses."""
    kind: ClassVar[str] = "transfer"
    student: ModelEntry = field(metadata={"model": True})
    teacher: ModelEntry = field(metadata={"model": True})
    method: str
    seed: int
    hp: dict[str, Any]
    eval: str
    transfer: str
    image_size: int
    class_map: str | None
    teachers: tuple[ModelEntry, ...] | None = field(default=None, metadata={"models": True})
    eval_subset: float | None = None
    transfer_subset: float | None = None
    subset_seed: int | None = None
    multi_method: str | None = None

    @property
    def multi(self) -> bool:
        return self.teachers is not None

    @property
    def teacher_names(self) -> list[str]:
        return [e.name for e in self.teachers] if self.teachers is not None else [self.teacher.name]


@dataclass(frozen=True)
class NoopPayload(Payload):
    """Does nothing (optionally sleeps): measures the scheduler's own per-job cost."""
    kind: ClassVar[str] = "noop"
    sleep: float = 0.0


PAYLOADS: dict[str, type[Payload]] = {p.kind: p for p in (PredictPayload, ComparePayload, TransferPayload,
                                                          NoopPayload)}


# ---------------------------------------------------------------------- jobs
def job_id(kind: str, ident: Mapping[str, Any]) -> str:
    """The content address of a job: its kind's initial and the hash of what determines its result."""
    return f"{kind[0]}-{content_id({'kind': kind, **ident})}"


@dataclass(frozen=True)
class Job:
    id: str
    payload: Payload
    state: JobState = JobState.PENDING
    attempts: int = 0
    error: str | None = None

    @property
    def kind(self) -> str:
        return self.payload.kind

    @classmethod
    def new(cls, ident: Mapping[str, Any], payload: Payload) -> Job:
        return cls(job_id(payload.kind, ident), payload)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], home: str | Path) -> Job:
        """A store row (id, kind, payload JSON, state, attempts, error) as a typed job."""
        kind = row["kind"]
        try:
            d = _from_home(json.loads(row[PAYLOAD_COLUMN]), f"{Path(home)}/")
            payload = PAYLOADS[kind].from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"job {row['id']} ({kind}) has a payload this zoo-sweep cannot read "
                            f"({type(e).__name__}: {e}); was the store written by another version?") from None
        return cls(row["id"], payload, JobState(row.get("state") or JobState.PENDING), row.get("attempts") or 0,
                   row.get("error"))

    def to_row(self, home: str | Path | None) -> dict[str, Any]:
        """The columns a new job is written with (the store adds state and times)."""
        d = self.payload.to_dict()
        text = json.dumps(_to_home(d, f"{Path(home)}/") if home else d, sort_keys=True, default=list)
        return {"id": self.id, "kind": self.kind, PAYLOAD_COLUMN: text}

    def but(self, **changes: Any) -> Job:
        return dataclasses.replace(self, **changes)


def job_rows(jobs: Iterable[Job], home: str | Path | None) -> list[dict[str, Any]]:
    return [j.to_row(home) for j in jobs]


@dataclass(frozen=True)
class Outcome:
    """What a worker returns for one job, to the launcher that records it (workers never write the store). Ray
    pickles it; ``to_dict`` / ``from_dict`` carry a transfer or noop outcome through JSON (Tune's trials).

    ``state`` is DONE or DIVERGED: a job that raised has no outcome, the launcher records its error instead.
    Which of the other fields are set depends on the job's kind."""
    state: JobState
    error: str | None = None  # why it diverged
    worker: str | None = None  # host:[ray node:]pid:device, kept in jobs.worker
    seconds: float | None = None
    log: list[str] = field(default_factory=list)  # the job's log lines, appended to logs/jobs/<id>.log
    # predict: the prediction record (arrays by name, science/records.py) and the accuracy in percent; arrays
    # and frames have no single truth value, so == leaves them out rather than raise
    record: dict[str, Any] | None = field(default=None, compare=False)
    accuracy: float | None = None
    # compare: every ordered pair's metrics, and the kernel that computed them in one line
    pairs: pd.DataFrame | None = field(default=None, compare=False)
    kernel: str | None = None
    # transfer: the per-epoch result rows, and how many epochs of shared logits were read back, not recomputed
    rows: list[dict[str, Any]] | None = None
    logits_read: int = 0

    def but(self, **changes: Any) -> Outcome:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields set, the state as its text; JSON-ready for a transfer or noop outcome (a predict record's
        arrays and compare's frame are left as they are)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v.value if isinstance(v, JobState) else v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Outcome:
        return cls(**{**d, "state": JobState(d["state"])})


def _to_home(v: Any, prefix: str) -> Any:
    if isinstance(v, str):
        return HOME + "/" + v[len(prefix):] if v.startswith(prefix) else v
    if isinstance(v, dict):
        return {k: _to_home(x, prefix) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_home(x, prefix) for x in v]
    return v


def _from_home(v: Any, prefix: str) -> Any:
    if isinstance(v, str):
        return prefix + v[len(HOME) + 1:] if v.startswith(HOME + "/") else v
    if isinstance(v, dict):
        return {k: _from_home(x, prefix) for k, x in v.items()}
    if isinstance(v, list):
        return [_from_home(x, prefix) for x in v]
    return v
