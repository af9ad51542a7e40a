"""bench/run.py's arithmetic, on made-up runs: ratios are medians of per-round (and per-sample) ratios,
each sample of the stream and COPY paired only with the targets that ran beside it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SETTINGS = {"clients": [16], "extended_clients": 16, "write_clients": 16, "connect_clients": 16,
            "stream_rows": 1000, "copy_rows": 1000, "copy_lines": 100, "idle_clients": 2, "silent_sockets": 2}


def stream_row(rows):
    return next(r for r in rows if r["metric"].startswith("stream ") and r["metric"].endswith("wall"))


def test_each_sample_is_paired_with_the_targets_that_ran_beside_it():
    bench = load_bench()
    # One round, three samples; the machine slows down sample by sample, the proxy stays at 1.1x direct.
    runs = []
    for sample, scale in ((1, 1.0), (2, 2.0), (3, 4.0)):
        for target, seconds in (("direct", 1.0), ("pgbouncer", 1.2), ("proxy", 1.1)):
            runs.append(dict(kind="stream", round=1, sample=sample, target=target, seconds=seconds * scale))
    row = stream_row(bench.summarize(runs, {}, [], SETTINGS))
    assert abs(row["proxy_vs_direct"] - 1.1) < 1e-9
    assert abs(row["proxy_vs_pgbouncer"] - 1.1 / 1.2) < 1e-9
    assert row["rounds"] == 1 and row["samples"] == 3
    assert row["met"] is False  # the target is <= 1.0x direct


def test_the_ratio_is_the_median_of_the_samples_not_the_last_one():
    bench = load_bench()
    runs = []
    for rnd, sample, proxy in ((1, 1, 0.9), (1, 2, 0.95), (2, 1, 1.3)):
        runs.append(dict(kind="stream", round=rnd, sample=sample, target="direct", seconds=1.0))
        runs.append(dict(kind="stream", round=rnd, sample=sample, target="proxy", seconds=proxy))
    row = stream_row(bench.summarize(runs, {}, [], SETTINGS))
    assert abs(row["proxy_vs_direct"] - 0.95) < 1e-9
    assert row["rounds"] == 2 and row["samples"] == 3
    assert row["met"] is True


def test_every_target_leads_a_sample_in_turn():
    bench = load_bench()
    plan = bench.sampled(["direct", "pgbouncer", "proxy"], 3)
    assert [t for s, t in plan if s == 1] == ["direct", "pgbouncer", "proxy"]
    assert [next(t for s, t in plan if s == n) for n in (1, 2, 3)] == ["direct", "pgbouncer", "proxy"]
    assert sorted(plan) == sorted((n, t) for n in (1, 2, 3) for t in ("direct", "pgbouncer", "proxy"))
