"""The load generator's bookkeeping and its loopback-only guard (the full runs live in bench/)."""

from __future__ import annotations

import asyncio

import pytest

from bench.load import Result, closed_loop, summarize, workload


def test_summary_counts_images_errors_and_percentiles():
    results = [Result(200, 1.0, 2, {"denoise": 800.0, "total": 1000.0}), Result(200, 3.0, 1, {"denoise": 2000.0}),
               Result(503, 0.01, 0)]
    summary = summarize(results, wall_s=4.0)
    assert summary["requests"] == 3 and summary["errors"] == 1 and summary["images"] == 3
    assert summary["images_per_s"] == 0.75
    assert summary["latency_ms"]["p50"] in (1000.0, 3000.0) and summary["latency_ms"]["p99"] == 3000.0
    assert summary["server_stage_mean_ms"]["denoise"] == 1400.0


def test_workload_repeats_prompts_with_fresh_seeds():
    bodies = [workload(i, ["512x512", "768x512"], 20) for i in range(16)]
    assert len({b["seed"] for b in bodies}) == 16
    assert len({b["prompt"] for b in bodies}) == 8
    assert {b["size"] for b in bodies} == {"512x512", "768x512"}


def test_refuses_non_loopback_targets():
    with pytest.raises(SystemExit, match="loopback"):
        asyncio.run(closed_loop("http://example.com", 1, 1, 1, ["512x512"], 1))
