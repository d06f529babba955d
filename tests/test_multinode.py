"""4K work lands on the large-memory node of a real two-node Ray cluster (on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_4k_runs_on_the_large_memory_node_and_1k_does_not_have_to(tiny_checkpoint, tiny_4k_checkpoint):
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)  # its own cluster, not the test session's
    done = subprocess.run(
        [sys.executable, "-m", "tests.multinode_driver", str(tiny_checkpoint), str(tiny_4k_checkpoint)],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"worker"')))
    worker, head = report["worker"], report["head"]
    four_k, one_k = report["results"]["4k"], report["results"]["1k"]
    assert four_k["model"] == "sana-shapes-4k" and one_k["model"] == "sana-shapes"
    assert four_k["nodes"]["denoise"] == worker and four_k["nodes"]["decode"] == worker
    assert one_k["nodes"]["denoise"] == head and one_k["nodes"]["decode"] == head
    assert four_k["nodes"]["encode"] == head  # the shared text encoder is not a 4K stage
