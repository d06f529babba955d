"""`sana-serve run` on the embedded default answers a request end to end, then stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from tests.serve_harness import decode_images, free_port


def test_run_embedded_default_end_to_end(tmp_path):
    port = free_port()
    env = {**os.environ, "SANA_SERVE_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, not the test session's
    log = open(tmp_path / "run.log", "w+")
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
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert "shutting down" in (tmp_path / "run.log").read_text()
