"""Run in a subprocess by test_multinode.py: a two-node Ray cluster on 127.0.0.1 (a head without
the large_memory resource, a worker with it), the app deployed on it, one 1K and one 4K request.
Prints one JSON line: which node ran each stage of each request, and the worker's node id."""

from __future__ import annotations

import json
import sys

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

from serve.app import build_app
from tests.serve_harness import free_port, local_args


def main(checkpoint: str, checkpoint_4k: str) -> None:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 8, "include_dashboard": False},
    )
    # The large-memory node has no CPUs to offer: only the 4K stages (which ask for none and need
    # large_memory) can land there, and nothing else is forced onto it or can drift there.
    worker = cluster.add_node(num_cpus=0, resources={"large_memory": 1})
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = local_args(checkpoint, checkpoint_4k)
        for stage in ("denoiser", "decoder"):
            args["routes"]["sana-shapes-4k"][stage]["deployment"]["ray_actor_options"]["num_cpus"] = 0
        serve.run(build_app(args), name="sana", route_prefix="/")
        url = f"http://127.0.0.1:{port}/v1/images/generations"
        results = {}
        for label, size in (("1k", "1024x1024"), ("4k", "4096x4096")):
            response = httpx.post(url, json={"prompt": "a fox", "size": size, "num_inference_steps": 1, "seed": 1},
                                  timeout=600)
            response.raise_for_status()
            results[label] = {"model": response.json()["model"], "nodes": response.json()["nodes"]}
        print(json.dumps({"worker": worker.node_id, "head": cluster.head_node.node_id, "results": results}))
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
