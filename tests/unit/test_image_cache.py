"""The sharded, memory-mapped decode cache: resume after a kill, damaged shards, unreadable files, old caches,
subsets, the decoders, and batches streamed from the map (single process; worker processes are in
tests/integration/test_decode_workers.py)."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.model_selection import StratifiedShuffleSplit

from zoo_sweep.data import cache as image_cache
from zoo_sweep.data.decode import DECODERS, decode_file
from zoo_sweep.data.images import load_image_set
from zoo_sweep.data.sets import (
    count_images,
    folder_items,
    image_set_key,
    subset_positions,
)
from zoo_sweep.errors import UserError
from zoo_sweep.ids import content_id

SIZE = 24
ROW = 3 * SIZE * SIZE


class Killed(Exception):
    """Stands in for a SIGKILL at that point (a real one: tests/integration/test_decode_workers.py)."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes of JPEGs (landscape, portrait, smaller than SIZE, large enough for draft) and PNGs, with one
    unreadable file in the middle of the first class."""
    root = tmp_path_factory.mktemp("imgs") / "train"
    rng = np.random.default_rng(0)
    shapes = [(50, 40), (40, 56), (20, 18), (120, 90), (64, 64), (130, 100)]
    for c in range(3):
        (root / f"n0{c}").mkdir(parents=True)
        for i in range(10):
            w, h = shapes[(i + c) % len(shapes)]
            smooth = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
            smooth.save(root / f"n0{c}" / f"{i:02d}.{'png' if i % 4 == 3 else 'jpg'}", quality=90)
    (root / "n00" / "05b.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(image_cache, "SHARD_BYTES", 4 * ROW)  # 4 images per shard: 8 shards for 31 files


def expected_rows(root):
    """What the set must hold: every readable file, decoded alone, in ImageFolder order."""
    _, files, labels = folder_items(root, None)
    rows = [(decode_file(str(f), SIZE), y) for f, y in zip(files, labels)]
    return np.stack([r for r, _ in rows if r is not None]), np.array([y for r, y in rows if r is not None])


def mapped(path) -> bool:
    """Whether this process maps ``path`` (the set is the shared file, not a private copy)."""
    with open("/proc/self/maps") as f:
        return str(path) in f.read()


def counting(monkeypatch):
    """Record which shards get decoded."""
    seen = []
    real = image_cache.decode_shard

    def decode_shard(job):
        seen.append(job[2])
        return real(job)

    monkeypatch.setattr(image_cache, "decode_shard", decode_shard)
    return seen


def load(root, cache, **kw):
    with pytest.warns(UserWarning, match="1 unreadable"):
        return load_image_set(f"imagefolder:{root}", SIZE, cache, workers=1, **kw)


def test_set_holds_every_readable_file_in_order_contiguously(folder, tmp_path, small_shards):
    s = load(folder, tmp_path)
    rows, labels = expected_rows(folder)
    assert s.skipped == 1 and len(s) == 30 and s.classes == ["n00", "n01", "n02"]
    # the unreadable file sat in shard 1: every later shard was moved down over its free row
    assert np.array_equal(s.images.numpy(), rows) and np.array_equal(s.labels.numpy(), labels)
    assert s.source_ids.tolist() == [i for i in range(31) if i != 6]  # positions in the folder's file list
    key = image_set_key(f"imagefolder:{folder}", SIZE)
    assert (tmp_path / "images" / key / "images.u8").stat().st_size == 30 * ROW
    assert mapped(tmp_path / "images" / key / "images.u8")  # the shared map, not a copy


def test_killed_decode_resumes_at_the_first_missing_shard(folder, tmp_path, monkeypatch, small_shards):
    real = image_cache.decode_shard
    seen = []

    def killed_after_three(job):
        if len(seen) == 3:
            raise Killed  # what a kill leaves: three shard markers, no index
        seen.append(job[2])
        return real(job)

    monkeypatch.setattr(image_cache, "decode_shard", killed_after_three)
    with pytest.raises(Killed):
        load_image_set(f"imagefolder:{folder}", SIZE, tmp_path, workers=1)
    folder_key = tmp_path / "images" / image_set_key(f"imagefolder:{folder}", SIZE)
    assert sorted(p.name for p in (folder_key / "shards").iterdir()) == ["00000.json", "00001.json", "00002.json"]
    assert not (folder_key / "index.json").exists()
    monkeypatch.setattr(image_cache, "decode_shard", real)
    seen_again = counting(monkeypatch)
    s = load(folder, tmp_path)
    assert seen_again == [3, 4, 5, 6, 7]  # only the shards the kill left undone
    assert np.array_equal(s.images.numpy(), expected_rows(folder)[0])


def test_a_damaged_shard_is_decoded_again(folder, tmp_path, monkeypatch, small_shards):
    load(folder, tmp_path)
    data = tmp_path / "images" / image_set_key(f"imagefolder:{folder}", SIZE) / "images.u8"
    st = data.stat()
    with open(data, "r+b") as f:  # flip bytes inside the third shard (rows 7..10 after the move)
        f.seek(8 * ROW + 5)
        f.write(b"\x00\x01\x02")
    seen = counting(monkeypatch)
    s = load(folder, tmp_path, verify=True)  # found by the checksums even with the stamp as it was
    assert seen == [2]
    assert np.array_equal(s.images.numpy(), expected_rows(folder)[0])
    # a write after the stamp makes the next reader verify on its own
    with open(data, "r+b") as f:
        f.seek(20 * ROW)
        f.write(b"\xff" * 9)
    import os

    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a write a second later (mtime granularity)
    s = load(folder, tmp_path)
    assert seen == [2, 5] and np.array_equal(s.images.numpy(), expected_rows(folder)[0])


def test_a_build_killed_while_moving_shards_down_is_repaired(folder, tmp_path, monkeypatch, small_shards):
    moves = []
    real_move = image_cache._move

    def killed_in_second_move(data, src, dst, length):
        if len(moves) == 1:
            real_move(data, src, dst, 2 * ROW)  # half a move: its first source rows are overwritten
            raise Killed
        moves.append(src)
        real_move(data, src, dst, length)

    monkeypatch.setattr(image_cache, "_move", killed_in_second_move)
    with pytest.raises(Killed):
        load_image_set(f"imagefolder:{folder}", SIZE, tmp_path, workers=1)
    monkeypatch.setattr(image_cache, "_move", real_move)
    seen = counting(monkeypatch)
    s = load(folder, tmp_path)
    assert seen == [3]  # the shard caught mid-move, and only it
    assert np.array_equal(s.images.numpy(), expected_rows(folder)[0])


def test_old_single_file_cache_is_converted_not_decoded(tmp_path, monkeypatch):
    key = image_set_key("digits:eval", 8)
    old = {"ref": "digits:eval", "images": torch.arange(5 * 3 * 8 * 8).remainder(251).to(torch.uint8).view(5, 3, 8, 8),
           "labels": torch.tensor([0, 1, 2, 3, 4]), "classes": [str(i) for i in range(10)],
           "source_ids": torch.tensor([9, 8, 7, 6, 5]), "skipped": 0}
    (tmp_path / "images").mkdir()
    torch.save(old, tmp_path / "images" / f"{key}.pt")
    s = load_image_set("digits:eval", 8, tmp_path)
    assert torch.equal(s.images, old["images"]) and s.source_ids.tolist() == [9, 8, 7, 6, 5]
    assert not (tmp_path / "images" / f"{key}.pt").exists() and (tmp_path / "images" / key / "index.json").exists()


def test_subset_is_scikit_learns_stratified_split():
    labels = np.repeat(np.arange(7), [30, 12, 50, 9, 21, 40, 18])
    np.random.default_rng(3).shuffle(labels)
    for subset, seed in ((0.1, 1234), (0.25, 0), (35, 1234)):
        _, test = next(StratifiedShuffleSplit(n_splits=1, test_size=subset, random_state=seed)
                       .split(np.zeros(len(labels)), labels))
        got = subset_positions(labels, subset, seed)
        assert np.array_equal(got, np.sort(test))
    with pytest.raises(UserError, match="stratified subset"):
        subset_positions(labels, 3, 1234)  # fewer than the 7 classes


def test_subset_count_follows_scikit_learns_rounding():
    n = count_images("digits:transfer", 32)
    assert count_images("digits:transfer", 32, subset=0.1) == int(np.ceil(0.1 * n))
    assert count_images("digits:transfer", 32, subset=100) == 100


def test_cache_key_changes_with_the_subset(folder):
    ref = f"imagefolder:{folder}"
    keys = {image_set_key(ref, SIZE), image_set_key(ref, SIZE, subset=0.5), image_set_key(ref, SIZE, subset=0.25),
            image_set_key(ref, SIZE, subset=6), image_set_key(ref, SIZE, subset=0.5, subset_seed=1)}
    assert len(keys) == 5
    # without a subset the key is the one earlier versions computed: their caches and records stay valid
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert image_set_key(ref, SIZE) == content_id({"ref": ref, "size": SIZE, "class_map": None,
                                                   "files": content_id(files)})


def test_subset_decodes_only_its_files(folder, tmp_path):
    ref = f"imagefolder:{folder}"
    _, files, labels = folder_items(folder, None)
    keep = subset_positions(labels, 0.5, 1234)
    rows = {int(i): decode_file(str(files[i]), SIZE) for i in keep}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = load_image_set(ref, SIZE, tmp_path, subset=0.5, workers=1)
    readable = [i for i in keep.tolist() if rows[i] is not None]
    assert s.skipped == len(keep) - len(readable) and s.source_ids.tolist() == readable
    assert np.array_equal(s.images.numpy(), np.stack([rows[i] for i in readable]))
    assert np.array_equal(s.labels.numpy(), labels[readable])
    assert sorted(np.bincount(labels[keep]).tolist()) == [5, 5, 6]  # stratified: half of each class, 16 in all
    assert len(list((tmp_path / "images").iterdir())) == 1  # one cache, for the subset alone


def _old_square(path, size):
    """The decode earlier versions used: Pillow's full decode, bicubic resize of the short side, centre crop."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8).transpose(2, 0, 1)


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_decoders_match_the_earlier_decode(folder, decoder):
    for f in sorted(folder.rglob("0[0-4].*")):  # every shape, up- and downscaled
        ours, ref = decode_file(str(f), SIZE, decoder), _old_square(f, SIZE)
        if decoder == "torchvision" and f.suffix == ".png":
            assert ours is None  # JPEGs only; "auto" sends other files to Pillow
            continue
        assert ours.shape == ref.shape == (3, SIZE, SIZE)
        diff = np.abs(ours.astype(int) - ref.astype(int))
        # full-scale decodes agree within a level or two (resize rounding); draft()'s DCT-domain downscaling is a
        # slightly different image of the same geometry (a misplaced crop would differ by tens of levels)
        short, jpeg = min(Image.open(f).size), f.suffix == ".jpg"
        big = jpeg and (decoder == "pil" and short >= 2 * SIZE or decoder == "auto" and short >= 4 * SIZE)
        assert diff.max() <= (8 if big else 2) and diff.mean() < (1.5 if big else 0.05), (f.name, diff.max())
    assert decode_file(str(folder / "n00" / "05b.jpg"), SIZE, decoder) is None


def test_streamed_batches_equal_in_memory_batches(tmp_path):
    from tests.tiny import CFG, assert_same_rows, cnn, mlp
    from zoo_sweep.science.records import predict
    from zoo_sweep.transfer.train import TransferJob, TransferParams, run_transfer

    tr = load_image_set("digits:transfer", 32, tmp_path).head(192)
    ev = load_image_set("digits:eval", 32, tmp_path).head(128)
    assert sum(mapped(p) for p in tmp_path.rglob("images.u8")) == 2
    tr_ram, ev_ram = tr.in_memory(), ev.in_memory()
    a, b = predict(cnn(), ev, CFG, batch_size=50), predict(cnn(), ev_ram, CFG, batch_size=50)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    hp = TransferParams(epochs=1, batch_size=64, lr=1e-3)
    correct = np.zeros(len(ev), dtype=bool)
    rows = [run_transfer(TransferJob(mlp(), cnn(), "kl", hp, 0, t, e, CFG, CFG, correct, correct))
            for t, e in ((tr, ev), (tr_ram, ev_ram))]
    assert_same_rows(rows[0], rows[1], rel=0, abs=0)  # bit-identical: the same bytes, read another way


def test_subset_keys_are_checked_in_the_spec():
    from zoo_sweep.config.spec import parse_spec

    d = parse_spec({"name": "x", "data": {"transfer_subset": 0.1, "eval_subset": 5000}}).data
    assert d.transfer_subset == 0.1 and d.eval_subset == 5000 and isinstance(d.eval_subset, int)
    assert d.subset_seed == 1234
    for bad in (1.0, 0, -3, "10%"):
        with pytest.raises(UserError, match="transfer_subset"):
            parse_spec({"name": "x", "data": {"transfer_subset": bad}})


def test_index_names_unreadable_files(folder, tmp_path):
    load(folder, tmp_path)
    index = json.loads((tmp_path / "images" / image_set_key(f"imagefolder:{folder}", SIZE) / "index.json").read_text())
    assert index["unreadable"] == ["n00/05b.jpg"] and index["skipped"] == 1


def test_subsets_reach_every_job_key_and_the_worker(tmp_path):
    from zoo_sweep.config.spec import parse_spec
    from zoo_sweep.paths import Paths
    from zoo_sweep.pipeline.plan import make_plan
    from zoo_sweep.pipeline.worker import Worker

    def plan(data):
        spec = parse_spec({"name": "x", "zoo": {"source": "digits", "recipe": "micro"}, "data": data,
                           "pairs": {"policy": "all"}})
        return make_plan(spec, Paths(tmp_path))

    full, sub = plan({}), plan({"eval_subset": 0.25, "transfer_subset": 300})
    assert full.eval_key != sub.eval_key and full.transfer_key != sub.transfer_key
    jobs = [full.predict_jobs, full.transfer_jobs, sub.predict_jobs, sub.transfer_jobs]
    assert not {j.id for j in jobs[0] + jobs[1]} & {j.id for j in jobs[2] + jobs[3]}
    keys = set().union(*(json.loads(j.to_row(tmp_path)["payload"]) for j in jobs[0] + jobs[1]))
    assert not {"eval_subset", "transfer_subset", "subset_seed"} & keys  # payloads as they were without subsets
    payload = sub.transfer_jobs[0].payload
    assert (payload.eval_subset, payload.transfer_subset, payload.subset_seed) == (0.25, 300, 1234)
    worker = Worker(str(tmp_path))
    assert len(worker.image_set(payload, "transfer")) == 300
    assert len(worker.image_set(payload, "eval")) == count_images("digits:eval", 32, subset=0.25)


def test_jpeg_size_reads_the_frame_header(folder):
    import io

    from zoo_sweep.data.decode import jpeg_size

    for f in sorted(folder.rglob("*.jpg")):
        data = f.read_bytes()
        if data.startswith(b"\xff\xd8\xff"):
            assert jpeg_size(data) == Image.open(io.BytesIO(data)).size
    progressive = io.BytesIO()
    Image.new("RGB", (77, 33), (9, 99, 199)).save(progressive, "JPEG", progressive=True)
    assert jpeg_size(progressive.getvalue()) == (77, 33)
    assert jpeg_size(b"\xff\xd8 not a jpeg") is None


def test_impossible_subsets_fail_when_the_key_is_made(folder):
    with pytest.raises(UserError, match="at least one per class"):
        image_set_key("digits:transfer", 32, subset=5)  # 10 classes
    with pytest.raises(UserError, match="at least one per class"):
        image_set_key(f"imagefolder:{folder}", SIZE, subset=0.95)  # 30 of 31: one left outside, 3 classes
    image_set_key(f"imagefolder:{folder}", SIZE, subset=3)
    image_set_key("imagefolder:/not/reachable/from/here", SIZE, subset=5)  # checked where the set is decoded
