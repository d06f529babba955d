"""`sana-serve run` on the embedded default answers a request end to end, then drains on SIGTERM:
requests in flight finish, new ones get 503 + Retry-After, and it exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.serve_harness import decode_images, free_port


def test_run_embedded_default_end_to_end(tmp_path):
    port = free_port()
    env = {**os.environ, "SANA_SERVE_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, not the test session's
    log = open(tmp_path / "run.log", "w+")
    terminated = False
    process = subprocess.Popen(
        [sys.executable, "-m", "serve.cli", "run", "--port", str(port), "--metrics-port", str(free_port())],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            if "sana-serve is up" in (tmp_path / "run.log").read_text():
                break
            time.sleep(1)
        else:
            raise AssertionError("sana-serve run did not come up:\n" + (tmp_path / "run.log").read_text()[-3000:])
        output = (tmp_path / "run.log").read_text()
        assert f"SANA_SERVE_CACHE={tmp_path / 'cache'}" in output
        assert (tmp_path / "cache" / "shapes" / "model_index.json").exists()  # the shipped model, copied

        response = httpx.post(f"{url}/v1/images/generations", timeout=120,
                              json={"prompt": "a red fox", "size": "512x512", "num_inference_steps": 2})
        assert response.status_code == 200, response.text
        assert decode_images(response.json()).shape == (1, 512, 512, 3)

        # Graceful drain: SIGTERM while three requests run; they finish with 200, a new one gets
        # 503 + Retry-After, and the process exits 0.
        slow = {"prompt": "a blue star", "size": "1024x1024", "num_inference_steps": 50}
        with ThreadPoolExecutor(3) as pool:
            running = [pool.submit(httpx.post, f"{url}/v1/images/generations", json={**slow, "seed": seed},
                                   timeout=120) for seed in range(3)]
            time.sleep(1.5)  # all three admitted and denoising
            assert not any(future.done() for future in running)
            process.send_signal(signal.SIGTERM)
            terminated = True
            _wait_for_line(tmp_path / "run.log", "draining", process)
            refused = httpx.post(f"{url}/v1/images/generations", json=slow, timeout=30)
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1, refused.text
            assert "shutting down" in refused.json()["error"]["message"]
            assert [future.result().status_code for future in running] == [200, 200, 200]
    finally:
        if not terminated:  # once is enough: a second SIGTERM during Ray's shutdown may kill it
            process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    log_text = (tmp_path / "run.log").read_text()
    assert returncode == 0, log_text[-3000:]
    assert "shutting down" in log_text and "still in flight" not in log_text


def _wait_for_line(log, text: str, process, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
