"""Stage 0 (the digits source only): train the embedded zoo's models that are missing or whose recipe changed,
as Ray tasks."""

from __future__ import annotations

from zoo_sweep.pipeline.stages.core import Launch


def build_zoo(run: Launch) -> None:
    if run.spec.zoo.source != "digits":
        return
    from zoo_sweep.zoo.digits import to_build

    d, z = run.spec.data, run.spec.zoo
    todo, embedded = to_build(run.plan.models, z.recipe, run.paths.cache, d.image_size)  # missing or altered
    run.report.reused["zoo models"] = embedded - len(todo)
    if todo:
        _train(run, todo)


def _train(run: Launch, todo: list) -> None:
    import ray

    from zoo_sweep.pipeline.worker import build_zoo_model
    from zoo_sweep.zoo.digits import save_trained

    size = run.spec.data.image_size
    run.cluster()
    task = ray.remote(num_cpus=1)(build_zoo_model)  # one thread: the portable arithmetic
    with run.progress() as prog:
        bar = prog.add_task("zoo: train embedded models", total=len(todo))
        refs = {task.remote(r, str(run.paths.cache), size): r for r in todo}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            r = refs.pop(ready[0])
            state, info = ray.get(ready[0])
            save_trained(r, run.paths.cache, size, state, info)
            prog.advance(bar)
    run.report.ran["zoo"] = len(todo)
