"""Image-set decoding in worker processes: the pool's set equals one process's, a SIGKILLed decode resumes at
its first missing shard and leaves no worker behind, and a Ray actor (the tool's workers) can start the pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo_sweep.data import cache as image_cache
from zoo_sweep.data.images import load_image_set
from zoo_sweep.data.sets import image_set_key

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32
ROW = 3 * SIZE * SIZE


def make_folder(root: Path, n: int, classes: int = 4) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        d = root / f"n{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(20, 90, 2))
        img = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        img.save(d / f"{i:04d}.jpg", quality=90)
    (root / "n01" / "0005b.jpg").write_bytes(b"\xff\xd8 truncated")
    return root


def quiet_load(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_image_set(*args, **kw)


def test_pool_decode_equals_single_process(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "train", 60)
    monkeypatch.setattr(image_cache, "SHARD_BYTES", 7 * ROW)  # 9 shards over 2 workers, finishing out of order
    monkeypatch.setattr(image_cache, "POOL_MIN_ITEMS", 0)
    one = quiet_load(f"imagefolder:{root}", SIZE, tmp_path / "one", workers=1)
    two = quiet_load(f"imagefolder:{root}", SIZE, tmp_path / "two", workers=2)
    assert one.skipped == two.skipped == 1 and len(one) == 60
    assert np.array_equal(one.images.numpy(), two.images.numpy())
    assert np.array_equal(one.labels.numpy(), two.labels.numpy())


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkilled_decode_resumes_and_leaves_no_worker(tmp_path, monkeypatch, workers):
    root = make_folder(tmp_path / "train", 2000)
    n_shards = -(-2001 // 5)
    cache = tmp_path / "cache"
    script = (f"from zoo_sweep.data import cache\n"
              f"cache.SHARD_BYTES, cache.POOL_MIN_ITEMS = {5 * ROW}, 0\n"
              f"from zoo_sweep.data.images import load_image_set\n"
              f"load_image_set('imagefolder:{root}', {SIZE}, '{cache}', workers={workers})\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = cache / "images" / image_set_key(f"imagefolder:{root}", SIZE) / "shards"
    try:
        deadline = time.time() + 300
        # markers only: a marker being written lies beside them under a temporary name
        while not (shards.is_dir() and len(list(shards.glob("*.json"))) >= 3):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the decode never wrote three shards"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 60
        while _alive(proc.pid) and time.time() < deadline:  # its pool workers follow it
            time.sleep(0.2)
        assert not _alive(proc.pid), "decode workers outlived the killed process"
    finally:
        if _alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    finished = {p.name for p in shards.iterdir() if p.suffix == ".json"}
    assert 3 <= len(finished) < n_shards and not (shards.parent / "index.json").exists()
    seen = []
    real = image_cache.decode_shard
    monkeypatch.setattr(image_cache, "decode_shard", lambda job: seen.append(job[2]) or real(job))
    monkeypatch.setattr(image_cache, "SHARD_BYTES", 5 * ROW)
    s = quiet_load(f"imagefolder:{root}", SIZE, cache, workers=1)
    assert sorted(seen) == [i for i in range(n_shards) if f"{i:05d}.json" not in finished]  # the rest, once
    clean = quiet_load(f"imagefolder:{root}", SIZE, tmp_path / "clean", workers=1)
    assert np.array_equal(s.images.numpy(), clean.images.numpy()) and s.skipped == clean.skipped == 1


def test_a_ray_actor_decodes_with_a_process_pool(tmp_path, ray_address):
    import ray

    from zoo_sweep.pipeline.cluster import connect

    root = make_folder(tmp_path / "train", 40)

    @ray.remote(num_cpus=1)
    class Decoder:
        def load(self, root, cache):
            from zoo_sweep.data import cache as c
            from zoo_sweep.data.images import load_image_set

            c.SHARD_BYTES, c.POOL_MIN_ITEMS = 6 * ROW, 0
            s = load_image_set(f"imagefolder:{root}", SIZE, cache, workers=2)
            return s.images.numpy().copy(), os.getpid()

    connect(ray_address)
    images, _ = ray.get(Decoder.remote().load.remote(str(root), str(tmp_path / "ray")), timeout=600)
    here = quiet_load(f"imagefolder:{root}", SIZE, tmp_path / "here", workers=1)
    assert np.array_equal(images, here.images.numpy())
