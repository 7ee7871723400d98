"""The app under load: N concurrent gradio_client users calling /compare for a while.

    python benchmarks/app_load.py [--clients 16] [--seconds 60] [--sft CKPT --grqo CKPT]

Starts the app (the default models, or tiny random ones with --tiny) on a free local port, runs
the users, and writes benchmarks/results/app_load.json: requests, errors, p50 / p95 / max latency.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

EXAMPLE = HERE.parent / "examples" / "shapes" / "images" / "shapes_000002.png"
BOX = {"xmin": 133, "ymin": 155, "xmax": 190, "ymax": 205, "label": "red solid star"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_load(url: str, clients: int, seconds: float) -> dict:
    """``clients`` threads, each its own gradio_client, calling /compare until time is up."""
    from gradio_client import Client, handle_file

    latencies, errors, lock = [], [], threading.Lock()
    stop = time.monotonic() + seconds

    def user(k: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as err:
            with lock:
                errors.append(f"client {k} could not connect: {err}")
            return
        box = {**BOX, "xmin": BOX["xmin"] - (k % 8), "color": "rgb(255, 0, 0)"}
        target = {"image": handle_file(str(EXAMPLE)), "boxes": [box]}
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                out = client.predict(target, None, "", 0.3, api_name="/compare")
                if not str(out[4]).startswith("Searched "):
                    raise RuntimeError(f"unexpected status {out[4]!r}")
            except Exception as err:
                with lock:
                    errors.append(f"client {k}: {type(err).__name__}: {err}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=user, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None  # noqa: E731
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "p50_s": pick(0.5),
        "p95_s": pick(0.95),
        "max_s": ordered[-1] if ordered else None,
        "mean_s": statistics.fmean(ordered) if ordered else None,
    }


def start_app(tiny: bool, sft: str | None, grqo: str | None):
    import torch

    from app import MODELS_DIR, build_demo, serve
    from workbench.app.models import Models

    if tiny:
        from workbench.model.build import build_detector
        from workbench.predictor import Predictor

        torch.manual_seed(0)
        predictor = Predictor(build_detector("tiny"), min_size=256, max_size=512)
        models = {"sft": predictor, "grqo": predictor}
    else:
        models = Models.from_checkpoints(sft, grqo, default_folder=MODELS_DIR)
    demo = build_demo(models)
    port = free_port()
    serve(demo, "127.0.0.1", port, block=False)
    return demo, f"http://127.0.0.1:{port}/"


def main() -> None:
    from common import write_result

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--tiny", action="store_true", help="tiny random models")
    parser.add_argument("--sft")
    parser.add_argument("--grqo")
    args = parser.parse_args()
    demo, url = start_app(args.tiny, args.sft, args.grqo)
    try:
        result = run_load(url, args.clients, args.seconds)
    finally:
        demo.close()
    result["models"] = "tiny (random)" if args.tiny else {"sft": args.sft, "grqo": args.grqo}
    print(result)
    print(write_result("app_load", result))


if __name__ == "__main__":
    main()
