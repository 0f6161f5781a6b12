"""``gpus_per_job = "auto"``: how many transfer jobs to run on one GPU, from a short measurement.

Small students leave most of a large GPU idle; several jobs on it (Ray's fractional GPUs: ``gpus_per_job`` 0.5,
0.25, ...) fill it. How many pays depends on the models, the batch, the method and the GPU, so it is measured:
k = 1, 2, 4, 8 copies of one of the sweep's transfer jobs train at once on one GPU (a placement group of one
GPU bundle holds k actors of 1/k GPU each: the same warm workers a launch runs), and their images/s are added up.

The rule, fixed before any measurement: going from k to 2k must raise the summed images/s by at least
``GAIN`` (10 %), or k stays; so does k when 2k fails (out of memory) or the node lacks the CPUs for 2k
workers. Jobs share memory and the GPU's clock, so a gain below that is within what two measurements of the same
k differ by, and not worth the memory and the longer jobs. The job measured is the transfer job of the sweep
with the most work per image (student and teacher parameters x pixels): the heaviest pairs set how many fit.

A measurement is remembered in the cache folder per GPU model and job (students, teachers, method, batch, image
size, speed options): later launches of the sweep, or of any sweep with that job, reuse it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from zoo_sweep.ids import content_id
from zoo_sweep.paths import Paths, write_atomic
from zoo_sweep.pipeline.jobs import Job

CONCURRENCY = (1, 2, 4, 8)
GAIN = 1.10
MEMO = "gpu_shares.json"
WARMUP_STEPS, SECONDS = 5, 5.0


def choose(rates: Mapping[int, float | None]) -> int:
    """The number of jobs per GPU the rule picks from summed images/s per concurrency (None: that many failed)."""
    best = min(rates)
    for k in sorted(rates):
        if k == best:
            continue
        r = rates[k]
        if r is None or r < GAIN * (rates[best] or 0.0):
            break
        best = k
    return best


@dataclass
class Share:
    """What a measurement found (or a remembered one): summed images/s per concurrency, and the choice."""
    device: str
    job: str  # the measured job, in words
    rates: dict[int, float | None] = field(default_factory=dict)
    remembered: bool = False

    @property
    def jobs_per_gpu(self) -> int:
        return choose(self.rates)

    @property
    def gpus_per_job(self) -> float:
        return 1.0 / self.jobs_per_gpu

    def line(self) -> str:
        cells = ", ".join(f"{k}: {'failed' if r is None else f'{r:,.0f}'}" for k, r in sorted(self.rates.items()))
        how = "remembered from an earlier launch" if self.remembered else "measured"
        return (f"gpus_per_job auto: {self.jobs_per_gpu} job(s) per GPU (gpus_per_job {self.gpus_per_job:g}); "
                f"{how} on {self.device}, {self.job}, summed images/s by jobs per GPU: {cells}")


def memo_key(job: Job, speed: Mapping[str, bool], device: str) -> str:
    p = job.payload
    return content_id({"student": p.student.ident, "teacher": p.teacher.ident, "method": p.method,
                       "batch": p.hp.get("batch_size"), "image_size": p.image_size, "speed": dict(speed),
                       "device": device})


def remembered(paths: Paths, key: str) -> Share | None:
    try:
        found = json.loads((paths.cache / MEMO).read_text()).get(key)
    except (OSError, ValueError):
        return None
    if not found:
        return None
    rates = {int(k): v for k, v in found["rates"].items()}
    return Share(found["device"], found["job"], rates, remembered=True)


def remember(paths: Paths, key: str, share: Share) -> None:
    path = paths.cache / MEMO
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        memo = {}
    memo[key] = {"device": share.device, "job": share.job, "rates": {str(k): v for k, v in share.rates.items()},
                 "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(memo, indent=1, sort_keys=True)))


def heaviest(jobs: list[Job], params: Mapping[str, int]) -> Job | None:
    """The single-teacher job with the most work per image (pipeline/estimate.py's units); None when there is
    none (multi-teacher jobs are not measured)."""
    from zoo_sweep.pipeline.estimate import work

    def per_image(j: Job) -> float:
        s, t = j.payload.student, j.payload.teacher
        return work(s, params) + work(t, params) if s.name in params and t.name in params else 0.0

    single = [j for j in jobs if not j.payload.multi]
    return max(single, key=per_image) if single else None


def gpu_model(timeout_s: float = 120.0) -> str | None:
    """The name of the GPU a job gets ("cpu" where Ray's GPU is a declared resource without CUDA); None when no
    GPU came free in ``timeout_s`` (other launchers hold them)."""
    import ray

    ref = ray.remote(num_gpus=1, num_cpus=0)(_device_name).remote()
    ready, _ = ray.wait([ref], timeout=timeout_s)
    if not ready:
        ray.cancel(ref, force=True)
        return None
    return ray.get(ref)


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def measure(job: Job, inputs: dict, paths: Paths, cpus_per_job: int, max_jobs: int, device: str,
            describe: Callable[[Job], str], say: Callable[[str], None] = lambda _: None) -> Share:
    """Summed images/s of k copies of ``job`` on one GPU at once, k in CONCURRENCY up to ``max_jobs`` (the CPUs
    a GPU of the node has, over ``cpus_per_job``), stopping once the rule has chosen."""
    share = Share(device, describe(job))
    for k in [k for k in CONCURRENCY if k <= max_jobs]:
        say(f"gpus_per_job auto: measuring {k} job(s) on one GPU")
        share.rates[k] = _run_k(job, inputs, paths, k, cpus_per_job)
        if choose(share.rates) != k:
            break
    return share


def _run_k(job: Job, inputs: dict, paths: Paths, k: int, cpus_per_job: int) -> float | None:
    """Summed images/s of k workers on one GPU bundle; None when any of them failed or the bundle never came."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from zoo_sweep.pipeline.pool import ActorShape, worker_args
    from zoo_sweep.pipeline.worker import Worker

    pg = placement_group([{"GPU": 1, "CPU": k * cpus_per_job}])
    actors = []
    try:
        if not _ready(pg):
            return None
        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        cls = ray.remote(Worker).options(num_gpus=1 / k, num_cpus=cpus_per_job, scheduling_strategy=strategy)
        args = worker_args(ActorShape(1 / k, cpus_per_job, k), paths)
        actors = [cls.remote(*args) for _ in range(k)]
        try:  # every worker set up and warm before any is timed, then all timed together
            ray.get([a.measure_start.remote(job, inputs, WARMUP_STEPS) for a in actors])
            return float(sum(ray.get([a.measure_rate.remote(SECONDS) for a in actors])))
        except (ray.exceptions.RayError, RuntimeError):  # out of memory, a worker that died
            return None
    finally:
        for a in actors:
            ray.kill(a)
        remove_placement_group(pg)


def _ready(pg, timeout_s: float = 120.0) -> bool:
    import ray

    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    return bool(ready)
