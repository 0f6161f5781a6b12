"""Workers that die before they run, on the session's real Ray cluster: the pool starts them again, and a
launch whose workers can never start ends in one line.

A worker process that exits in its constructor is what Ray reports for a worker it gave up on while starting
(its registration timed out on a starved machine, or it was killed for memory): an ``ActorDiedError`` for an
actor that never ran. The stand-in below exits on its first ``failures`` starts, counted in files, so the count
holds whichever actor process starts first.
"""

import os
from pathlib import Path

import pytest

from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.pool import ActorShape, Pool


def flaky_worker(failures: int, marks: Path):
    from zoo_sweep.pipeline.worker import Worker

    class FlakyWorker(Worker):
        def __init__(self, *args):
            for k in range(failures):
                try:
                    os.close(os.open(marks / f"died-{k}", os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    continue
                os._exit(3)  # the process dies before the actor ever runs
            super().__init__(*args)

    return FlakyWorker


@pytest.fixture
def on_cluster(ray_address):
    from zoo_sweep.pipeline.cluster import connect

    connect(ray_address)


def test_a_worker_that_dies_while_starting_is_started_again(on_cluster, tmp_path):
    pool = Pool(ActorShape(0, 1, 2), Paths(tmp_path / "home"), worker_cls=flaky_worker(1, tmp_path))
    try:
        assert (tmp_path / "died-0").exists()  # one start really died
        assert pool.size == 2 and all(name and name.endswith(":cpu") for name in pool.names)
        assert len(set(pool.names)) == 2  # two live processes
    finally:
        pool.close()


def test_workers_that_never_start_end_the_launch_in_one_line(on_cluster, tmp_path):
    with pytest.raises(UserError) as err:
        Pool(ActorShape(0, 1, 1), Paths(tmp_path / "home"), start_attempts=2, worker_cls=flaky_worker(99, tmp_path))
    assert sorted(p.name for p in tmp_path.glob("died-*")) == ["died-0", "died-1"]  # started twice, no more
    msg = str(err.value)
    assert msg.startswith("no Ray worker of this launch could start (") and "\n" not in msg
    assert "launch again" in msg
