"""Store at scale: 1,000,000 pair rows and 100,000 transfer results written through the store's own
upsert path, then a typical analysis query (success rate per method and student family).

    .venv/bin/python bench/store.py [--db URL] [--pairs 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default=None, help="SQLAlchemy URL (default: a new SQLite file)")
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--results", type=int, default=100_000)
    args = ap.parse_args()

    from zoo_sweep.storage.store import Store, models, pairs, transfer_results

    url = args.db or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    store = Store(url)
    rng = np.random.default_rng(0)
    m = int(np.ceil(np.sqrt(args.pairs))) + 1  # m*(m-1) >= pairs ordered pairs
    names = [f"model_{i:04d}" for i in range(m)]
    fams = rng.choice(["cnn", "transformer", "mlp"], m)
    with store.engine.begin() as c:
        store._upsert(c, models, [{"name": n, "eval_set": "val", "arch": n, "family": f, "params": 1, "accuracy": 70.0}
                                  for n, f in zip(names, fams)])

    t0 = time.perf_counter()
    batch, written = [], 0
    with store.engine.begin() as c:
        for s in range(m):
            for t in range(m):
                if s == t or written >= args.pairs:
                    continue
                batch.append({"eval_set": "val", "student": names[s], "teacher": names[t], "rho_pos": float(s % 17),
                              "rho_neg": float(t % 13), "acc_gap": float(t - s) / 10, "flip_entropy": 1.0})
                written += 1
                if len(batch) == 50_000:
                    store._upsert(c, pairs, batch)
                    batch = []
        store._upsert(c, pairs, batch)
    t1 = time.perf_counter()
    res = [{"job_id": f"t-{i:016x}", "epoch": 1, "final": True, "eval_set": "val",
            "student": names[i % m], "teacher": names[(i * 7 + 1) % m], "method": ["kl", "kl_dp"][i % 2], "seed": 0,
            "delta": float(rng.normal())} for i in range(args.results)]
    with store.engine.begin() as c:
        store._upsert(c, transfer_results, res)
    t2 = time.perf_counter()
    q = """select r.method, m.family, count(*) as pairs, avg(case when r.delta > 0 then 1.0 else 0 end) as success
           from transfer_results r join models m on m.name = r.student and m.eval_set = r.eval_set
           where r.final group by r.method, m.family"""
    df = store.query(q)
    t3 = time.perf_counter()
    n = store.query("select count(*) from pairs").iloc[0, 0]
    print(f"{store.engine.dialect.name}: {n:,} pair rows written in {t1 - t0:.1f} s ({n / (t1 - t0):,.0f} rows/s); "
          f"{args.results:,} transfer results in {t2 - t1:.1f} s; success-rate query "
          f"({len(df)} groups) in {(t3 - t2) * 1000:.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
