"""The transfer training loop: one student learns from one teacher (or a stack of teachers) with one method.

The student trains; the teacher(s) and the frozen copy of the student (s0) stay in eval mode. Each model
sees the same (augmented) batch through its own data config. After every epoch the student (or the weights
the method evaluates, e.g. MCL's slow weights) is evaluated on the eval set, the transfer metrics are
computed against s0's and the teacher's records, and a checkpoint is written; a rerun with the same
checkpoint folder continues from the last finished epoch and ends with the same metrics.

On CUDA the forward passes run in bf16 autocast with channels-last tensors; on the CPU everything stays in
float32 (CPU bf16 is slow and changes results).

Batches and their augmentation come from a generator seeded by the seed alone and used for nothing else, so
every job with the same transfer set, seed, batch size and augmentation feeds its models the same stream;
that is what lets a teacher's (or s0's) logits be computed once per sweep and read back
(``teacher_cache`` / ``s0_cache``, see zoo_sweep/logit_cache.py).
"""

from __future__ import annotations

import contextlib
import copy
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from zoo_sweep.config.params import TransferParams, used_rows  # noqa: F401  (TransferParams re-exported: callers import it here)
from zoo_sweep.data.images import ImageSet, augment, model_input
from zoo_sweep.ids import content_id
from zoo_sweep.paths import write_atomic
from zoo_sweep.science.records import predict
from zoo_sweep.transfer.logit_store import cacheable_roles
from zoo_sweep.transfer.methods import METHODS, Extras
from zoo_sweep.transfer.metrics import transfer_metrics


class Diverged(Exception):
    """The loss stopped being finite: the job ends as 'diverged', not as a result."""


def _checkpoint_key(method: str, hp: TransferParams, seed: int, n_teachers: int, epoch_fraction: float) -> str:
    # a checkpoint written for other settings is never resumed (the folder normally is per job anyway)
    return content_id({"method": method, "hp": asdict(hp), "seed": seed, "teachers": n_teachers,
                       "fraction": epoch_fraction})


def save_checkpoint(obj, path: Path) -> None:
    """A kill mid-write leaves the previous checkpoint intact."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def run_transfer(student: torch.nn.Module, teacher, method: str, hp: TransferParams, seed: int,
                 transfer_set: ImageSet, eval_set: ImageSet, student_cfg: dict, teacher_cfg,
                 s0_correct: np.ndarray, teacher_correct: np.ndarray, device: str = "cpu",
                 eval_batch_size: int = 256, ckpt_dir: str | Path | None = None,
                 on_epoch: Callable[[int, list[dict]], None] | None = None,
                 epoch_fraction: float = 1.0, teacher_cache=None, s0_cache=None) -> list[dict]:
    """Train ``student`` in place; returns one metrics dict per epoch (METRICS.md, transfer metrics).

    ``teacher`` / ``teacher_cfg`` are one model and its data config, or lists of them for the multi-teacher
    methods (their logits reach the loss as a K x B x C stack). ``ckpt_dir``: where the per-epoch
    checkpoint lives; an existing one is resumed and the folder is removed when the run ends (done or
    diverged). ``on_epoch(epoch, rows)`` is called after each epoch's checkpoint. ``epoch_fraction`` < 1
    trains on that share of each epoch's batches (compute-matched sequential stages). At the end the
    student holds the weights that were evaluated (MCL: the slow weights). ``teacher_cache`` / ``s0_cache``:
    ``LogitCache`` objects (single-teacher, logits-only methods): an epoch whose logits are stored is read
    back instead of running that model, one that is not is computed and stored.
    """
    m = METHODS[method]
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    t_cfgs = list(teacher_cfg) if isinstance(teacher_cfg, (list, tuple)) else [teacher_cfg]
    if m.multi != isinstance(teacher, (list, tuple)):
        raise ValueError(f"method {method!r} {'needs a list of' if m.multi else 'takes one'} teacher(s)")
    roles = cacheable_roles(method)
    if (teacher_cache is not None and "teacher" not in roles) or (s0_cache is not None and "s0" not in roles):
        raise ValueError(f"method {method!r} cannot read cached logits for that role")
    cuda = str(device).startswith("cuda")
    fmt = torch.channels_last if cuda else torch.contiguous_format
    torch.manual_seed(seed)
    s0 = copy.deepcopy(student).eval() if m.needs_s0 else None  # copied where it is: moved below when it runs
    student.to(device, memory_format=fmt)
    for mod in teachers + ([s0] if s0 is not None else []):
        mod.eval()
        for q in mod.parameters():
            q.requires_grad_(False)
    n = len(transfer_set)
    state = m.make_state(student, teachers[0], hp, {"n_train": n, "device": device, "seed": seed}) \
        if m.make_state else None
    params = list(student.parameters()) + (state.parameters() if state else [])
    opt = torch.optim.SGD(params, lr=getattr(hp, m.lr_param), momentum=hp.momentum, weight_decay=hp.weight_decay)
    gen = torch.Generator().manual_seed(seed)  # the data stream: order and augmentation only
    method_gen = torch.Generator().manual_seed(seed + 1)  # the methods' own draws (CRD negatives)
    labels = eval_set.labels.numpy()
    full = used_rows(n, hp.batch_size)
    n_batches = -(-full // hp.batch_size)
    per_epoch = max(1, round(n_batches * epoch_fraction))

    ckpt = Path(ckpt_dir) / "last.pt" if ckpt_dir is not None else None
    key = _checkpoint_key(method, hp, seed, len(teachers), epoch_fraction)
    rows: list[dict] = []
    start, step = 1, 0
    if ckpt is not None and ckpt.is_file():
        c = torch.load(ckpt, map_location=device, weights_only=False)
        if c.get("key") == key:
            student.load_state_dict(c["student"])
            opt.load_state_dict(c["opt"])
            gen.set_state(c["gen"])
            if "method_gen" in c:
                method_gen.set_state(c["method_gen"])
            torch.set_rng_state(c["rng"])
            if cuda and c.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(c["cuda_rng"])
            if state is not None:
                state.load_state_dict(c["method"])
            rows, start, step = c["rows"], c["epoch"] + 1, c["step"]

    def forward(model, x, cfg, features: bool):
        inp = model_input(x, cfg, device)
        if cuda:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
            if not features:
                return model(inp).float(), None
            f = model.forward_features(inp)
            return model.forward_head(f).float(), model.forward_head(f, pre_logits=True).float()

    stored = torch.bfloat16 if cuda else torch.float32  # exactly what forward() gives, so caching is lossless
    rows_per_epoch = min(per_epoch * hp.batch_size, full)

    images, train_labels = transfer_set.images, transfer_set.labels.to(device)
    # frozen models not yet on the GPU may still move there (a cache miss): count them as if they had
    later = sum(q.nbytes for mod in teachers + ([s0] if s0 is not None else []) for q in mod.parameters()
                if not q.is_cuda) if cuda else 0
    if cuda and images.nbytes < 0.2 * (torch.cuda.mem_get_info(device)[0] - later):
        images = images.to(device)  # the whole uint8 set fits: batches are gathered on the GPU

    def batch_source(b, b_dev):
        if images.is_cuda:
            return images[b_dev]
        if cuda:  # one pinned, asynchronous copy per batch; every model's transform then runs on the GPU
            return images[b].pin_memory().to(device, non_blocking=True)
        return images[b]

    def cached_or_run(cache, epoch, models):
        """(logits read back, list collecting this epoch's logits to store): at most one is not None. A frozen
        model moves to the device the first time an epoch computes it: a job that reads every epoch from
        the cache never holds it in device memory."""
        z = cache.load(epoch, rows_per_epoch, device) if cache is not None else None
        if z is None:
            for mod in models:
                mod.to(device, memory_format=fmt)  # a no-op once it is there
        return (z, None) if z is not None else (None, None if cache is None else [])

    try:
        for epoch in range(start, hp.epochs + 1):
            student.train()
            if state is not None:
                state.train(True)
            losses, share_sum = [], 0.0
            t_read, t_new = cached_or_run(teacher_cache, epoch, teachers)
            s0_read, s0_new = cached_or_run(s0_cache, epoch, [s0] if s0 is not None else [])
            order = torch.randperm(n, generator=gen)[:full]
            # indices move to the device once per epoch: a copy per batch would wait for the GPU each time
            batches = zip(order.split(hp.batch_size)[:per_epoch], order.to(device).split(hp.batch_size))
            at = 0  # row of this batch in the epoch's cached logits
            for b, b_dev in batches:
                x = batch_source(b, b_dev)
                if hp.augment:
                    x = augment(x, gen)
                y = train_labels[b_dev]
                span = slice(at, at + len(b))
                at += len(b)
                with torch.no_grad():
                    if t_read is not None:
                        outs = [(t_read[span].float(), None)]
                    else:
                        outs = [forward(t, x, c, m.needs_features) for t, c in zip(teachers, t_cfgs)]
                        if t_new is not None:
                            t_new.append(outs[0][0].to(stored))
                    z_t = torch.stack([o[0] for o in outs]) if m.multi else outs[0][0]
                    if s0_read is not None:
                        z_s0 = s0_read[span].float()
                    else:
                        z_s0 = forward(s0, x, student_cfg, False)[0] if s0 is not None else None
                        if s0_new is not None:
                            s0_new.append(z_s0.to(stored))
                z_s, f_s = forward(student, x, student_cfg, m.needs_features)
                ex = Extras(f_s=f_s, f_t=outs[0][1], idx=b, state=state, gen=method_gen)
                loss, share = m.loss(z_s, z_t, z_s0, y, hp, ex)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if state is not None:
                    state.after_step(student, step)
                losses.append(loss.detach())
                share_sum = share_sum + (share.detach() if torch.is_tensor(share) else share)
            epoch_losses = torch.stack(losses)
            if not torch.isfinite(epoch_losses).all():  # checked once per epoch: per step it would stall the GPU
                bad = epoch_losses[~torch.isfinite(epoch_losses)][0].item()
                raise Diverged(f"loss became {bad} in epoch {epoch}")
            for cache, new in ((teacher_cache, t_new), (s0_cache, s0_new)):
                if new:
                    cache.save(epoch, torch.cat(new))
            evaluated = state.eval_model(student) if state is not None else student
            rec = predict(evaluated, eval_set, student_cfg, batch_size=eval_batch_size, topk=1, device=device)
            row = transfer_metrics(s0_correct, rec["pred"] == labels, teacher_correct)
            row.update(epoch=epoch, train_loss=float(epoch_losses.mean()),
                       teacher_share=float(share_sum) / len(losses) * 100)
            rows.append(row)
            if ckpt is not None:
                save_checkpoint({"key": key, "epoch": epoch, "step": step, "rows": rows,
                              "student": student.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                              "method_gen": method_gen.get_state(),
                              "rng": torch.get_rng_state(),
                              "cuda_rng": torch.cuda.get_rng_state() if cuda else None,
                              "method": state.state_dict() if state is not None else {}}, ckpt)
            if on_epoch is not None:
                on_epoch(epoch, rows)
    except Diverged:
        if ckpt is not None:
            shutil.rmtree(ckpt.parent, ignore_errors=True)  # a diverged job is final; resuming would repeat it
        raise
    if state is not None and state.eval_model(student) is not student:
        student.load_state_dict(state.eval_model(student).state_dict())  # keep what was evaluated
    student.to(memory_format=torch.contiguous_format)
    if ckpt is not None:
        shutil.rmtree(ckpt.parent, ignore_errors=True)
    return rows
