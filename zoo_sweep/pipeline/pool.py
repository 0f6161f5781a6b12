"""Warm Ray actors fed with a ``ray.wait`` loop: the launcher's executor for predict and transfer jobs.

Each actor is a ``Worker`` that keeps torch, timm, decoded image sets and recent weights loaded across jobs.
Two jobs are in flight per actor, so none idles while the driver records a result. A job whose worker
process died, or that raised, is retried up to ``max_retries`` times, on a fresh actor if its died.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.jobs import Job, Outcome


@dataclass(frozen=True)
class ActorShape:
    """What one actor claims from Ray, and how many of them the launch starts."""
    num_gpus: float
    num_cpus: int
    count: int


def actor_shape(cluster, gpus: float, gpus_per_job: float, cpus_per_job: int) -> ActorShape:
    """One actor per GPU share (``gpus_per_job``, at most the launch's ``gpus``) or per ``cpus_per_job`` CPUs.
    An actor that asks for more than the cluster has would wait for ever, so that is an error here."""
    if cpus_per_job > cluster.cpus:
        raise UserError(f"--cpus-per-job {cpus_per_job} is more than the {cluster.cpus:g} CPU(s) Ray sees; "
                        f"use --cpus-per-job {max(1, int(cluster.cpus))} or fewer")
    if gpus > 0:
        per = min(gpus_per_job, gpus)
        return ActorShape(per, cpus_per_job, max(1, int(gpus / per + 1e-9)))
    return ActorShape(0, cpus_per_job, max(1, int(cluster.cpus // cpus_per_job)))


def worker_args(shape: ActorShape, paths: Paths) -> tuple:
    """Each actor's ``Worker(home, threads, gpu, plugins)``: an actor without a GPU share stays off the GPU, and
    every actor imports the plugin modules that declare this launch's methods of your own (the spec's
    ``[transfer] plugins`` and the entry points, as loaded here)."""
    from zoo_sweep.config.methods import plugin_sources

    return str(paths.home), shape.num_cpus, shape.num_gpus > 0, plugin_sources()


@dataclass
class Handlers:
    """The launcher's side of a stage: per-job inputs, and what to record when a job starts, ends or fails."""
    inputs: Callable[[Job], dict]
    on_start: Callable[[Job, str], bool]  # False: another launcher claimed the job first; skip it
    on_done: Callable[[Job, Outcome], None]
    on_error: Callable[[Job, str, bool], None]  # (job, error text, final: no retry left)


class Pool:
    def __init__(self, shape: ActorShape, paths: Paths, start_attempts: int = 3, worker_cls: type | None = None):
        """``worker_cls``: the actors' class, ``Worker`` or a subclass of it."""
        import ray

        from zoo_sweep.pipeline.worker import Worker

        self.size = shape.count
        self._actor_cls = ray.remote(worker_cls or Worker).options(
            num_gpus=shape.num_gpus, num_cpus=shape.num_cpus, max_concurrency=1)
        self._args = worker_args(shape, paths)
        self.actors = [self._actor_cls.remote(*self._args) for _ in range(self.size)]
        self.names: list[str | None] = [None] * self.size  # host:pid:device, kept in jobs.worker
        self._start(start_attempts)

    def _start(self, attempts: int) -> None:
        """Wait for every worker to answer; one that died before it ran (Ray gave up on its process: a start
        that outlived Ray's registration timeout on a starved machine, a process killed for memory) is started
        again, up to ``attempts`` times in all. The launch goes on with the workers that started; with none,
        one line says why."""
        import ray

        why = ""
        for attempt in range(attempts):
            todo = [i for i, name in enumerate(self.names) if name is None]
            if not todo:
                return
            if attempt:
                for i in todo:
                    ray.kill(self.actors[i], no_restart=True)
                    self.actors[i] = self._actor_cls.remote(*self._args)
            for i in todo:
                try:
                    self.names[i] = ray.get(self.actors[i].info.remote())
                except ray.exceptions.RayError as e:
                    why = start_error(e)
        for i, name in enumerate(self.names):
            if name is None:
                ray.kill(self.actors[i], no_restart=True)
                self.actors[i] = None
        self.size = sum(name is not None for name in self.names)  # what the progress bars show
        if not self.size:
            raise UserError(f"no Ray worker of this launch could start ({why}); the machine may be short of memory "
                            "or busy with other work: launch again when it has room, or with fewer --cpus")

    def run(self, jobs: list[Job], h: Handlers, max_retries: int) -> None:
        """Run ``jobs`` to the end (done, or failed after ``max_retries`` retries). A run stopped on the way
        (Ctrl-C, an error) leaves the jobs it started to the launcher, which marks every job it still holds
        'interrupted' (pipeline/launch.py)."""
        import ray

        queue = deque(jobs)
        attempts = {j.id: j.attempts for j in jobs}
        self._inflight: dict = {}  # object ref -> (job, actor index, actor)
        self._load = [0] * len(self.actors)
        self._starting: dict = {}  # info ref of a replacement worker -> its index; it takes jobs once it answers
        while queue or self._inflight:
            self._fill(queue, h, attempts)
            if queue and not self._inflight and not self._starting:
                raise UserError("every Ray worker of this launch died and none could be restarted; "
                                "see the Ray logs, then launch again to resume")
            ready, _ = ray.wait([*self._inflight, *self._starting], num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in self._starting:
                    self._started(self._starting.pop(ref), ref)
                    continue
                job, err = self._collect(ref, h)
                if err is not None:
                    self._retry(job, err, attempts, max_retries, queue, h)

    def _fill(self, queue: deque, h: Handlers, attempts: dict) -> None:
        # least-loaded live actor first, so the queue's first jobs start at once on different actors
        # (the transfer order puts the jobs that compute shared teacher logits first)
        while queue and (free := [i for i, n in enumerate(self.names) if n is not None and self._load[i] < 2]):
            i = min(free, key=self._load.__getitem__)
            job = queue.popleft()
            if not h.on_start(job, self.names[i]):
                continue
            attempts[job.id] += 1
            self._inflight[self.actors[i].run.remote(job, h.inputs(job))] = (job, i, self.actors[i])
            self._load[i] += 1

    def _collect(self, ref, h: Handlers) -> tuple[Job, str | None]:
        """Record a finished job: (job, None), or (job, error) when it raised or its worker died."""
        import ray

        job, i, actor = self._inflight.pop(ref)
        self._load[i] -= 1
        try:
            h.on_done(job, ray.get(ref))
        except ray.exceptions.RayActorError as e:  # the worker process (or its node) died
            if self.actors[i] is actor:  # not yet replaced (it may have had two jobs in flight)
                self._replace(i)
            return job, f"worker died: {e}"
        except ray.exceptions.RayTaskError as e:
            return job, task_error(e)
        return job, None

    def _replace(self, i: int) -> None:
        """A new worker in place of a dead one, without waiting for it: when its node died with it, the
        replacement may find no room until the cluster gains a node, and the other workers carry on
        meanwhile (a lost node's jobs are retried on the nodes left)."""
        import ray

        ray.kill(self.actors[i], no_restart=True)  # an actor that is only unreachable must not hold its slot
        self.actors[i], self.names[i] = self._actor_cls.remote(*self._args), None
        self._starting[self.actors[i].info.remote()] = i

    def _started(self, i: int, ref) -> None:
        import ray

        try:
            self.names[i] = ray.get(ref)
        except ray.exceptions.RayError:  # it failed while starting: the slot stays empty
            self.actors[i] = None

    @staticmethod
    def _retry(job: Job, err: str, attempts: dict, max_retries: int, queue: deque, h: Handlers) -> None:
        final = attempts[job.id] > max_retries
        h.on_error(job, err, final)
        if not final:
            queue.append(job)

    def close(self) -> None:
        import ray

        for a in self.actors:
            if a is not None:  # a slot whose replacement failed to start stays empty
                ray.kill(a)


def start_error(e) -> str:
    """Why a worker did not start, in one line: Ray's message without its list of actor fields."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("\t")]
    informative = [ln for ln in lines if not ln.startswith(("The actor died unexpectedly", "The actor never ran"))]
    why = (informative or lines or [type(e).__name__])[-1].split(" Some common causes include")[0]
    return why if len(why) <= 240 else why[:239] + "…"


def task_error(e) -> str:
    """The error a job raised, as its type and message (Ray wraps it with the worker's traceback)."""
    cause = getattr(e, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return str(e).strip().splitlines()[-1]
