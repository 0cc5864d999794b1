"""Latency of the web API under concurrent clients, on loopback only.

Starts ``sslmed serve`` for a model in a separate process on 127.0.0.1 (or talks to
one already running on loopback with ``--url``), then runs rounds of requests
against the ``/predict`` endpoint (no Grad-CAM): each of C clients sends its
requests one after another, all clients at once. A request is timed from the
client's side: upload of a 224×224 PNG (a real radiograph), queue, inference,
answer. Two clients: plain HTTP (the three requests of docs/serving.md's curl
example, with httpx) and ``gradio_client`` (which adds its own overhead per call).
Also timed: the model alone (``Predictor.predict``) in this process, with the
server's threads per request, for the share of the time that is not HTTP.

Without ``--model`` a ResNet-18 at 224 px (ImageNet stem, 1 channel) with a linear
head is exported to a temporary folder: random weights, because speed does not
depend on them.

    .venv/bin/python bench/serve_load.py                          # rounds: 1 client, 50 clients
    .venv/bin/python bench/serve_load.py --clients 1 4 50 --requests 100 --concurrency 2

``--load-test N`` is a separate mode (the hardening load test): N requests sent at
once to ``/predict`` and then to ``/explain`` (whose output images are downloaded and
checked whole), zero errors expected, p50/p95 and the server's RSS before and after:

    .venv/bin/python bench/serve_load.py --load-test 200 --size 512

Bounded: at most 64 clients and 2,000 requests per round, and every round stops at
``--time-limit`` seconds (unfinished requests count as errors). Results go to stdout
as a Markdown table (for docs/benchmarks.md); note the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from sslmed.data.roots import resolve_data_root

MAX_CLIENTS = 64
MAX_REQUESTS = 2000
DATA = resolve_data_root()
IMAGE = DATA / "samples" / "darkcovidnet_00001304_001.png"


def export_resnet18(directory: Path, image_size: int = 224, trust: bool = False) -> Path:
    """A ResNet-18 classifier export (random init, ImageNet stem, the covid3 classes) at
    ``image_size``: :func:`sslmed.testing.models.make_model_export`; ``trust`` adds the
    temperature and OOD score, so the server runs the full prediction path."""
    from sslmed.testing.models import make_model_export

    return make_model_export(directory, DATA, arch="resnet18", small_input=False, image_size=image_size, trust=trust)


def check_loopback(url: str) -> None:
    from sslmed.serving.web.auth import is_loopback

    if not is_loopback(urllib.parse.urlparse(url).hostname or ""):
        raise SystemExit(f"--url {url}: this benchmark only talks to loopback (127.0.0.1)")


def start_server(
    model: Path,
    concurrency: int,
    threads: int | None,
    log: Path,
    source: Path | None = None,
    start_timeout: float = 120,
) -> tuple[subprocess.Popen, str]:
    """``sslmed serve`` on a free loopback port (``source``: run that copy of the package instead)."""
    env = dict(os.environ, PYTHONPATH=str(source)) if source else None
    from sslmed.testing.models import free_port

    port = free_port()
    sslmed = Path(sys.executable).with_name("sslmed")
    command = [
        str(sslmed),
        "-q",
        "serve",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
    ]
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the server
        process = subprocess.Popen(
            command + (["--threads", str(threads)] if threads else []), stdout=subprocess.DEVNULL, stderr=out, env=env
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"the server did not start within {start_timeout:.0f} s")


class HttpClient:
    """The plain HTTP protocol of docs/serving.md (upload, call, read the result)."""

    def __init__(self, url: str, timeout: float) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, timeout=timeout)

    def predict(self, image: str, timeout: float) -> dict:
        with open(image, "rb") as handle:
            uploaded = self.http.post(
                "gradio_api/upload", files={"files": (Path(image).name, handle, "image/png")}, timeout=timeout
            )
        uploaded.raise_for_status()
        data = {"data": [{"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}]}
        event = self.http.post("gradio_api/call/predict", json=data, timeout=timeout)
        event.raise_for_status()
        answer = self.http.get(f"gradio_api/call/predict/{event.json()['event_id']}", timeout=timeout).text
        if "event: complete" not in answer:
            raise RuntimeError(answer[-300:])
        return json.loads(answer.split("data:", 1)[1])[0]

    def close(self) -> None:
        self.http.close()


class GradioClient:
    """``gradio_client.Client`` (what docs/serving.md shows for Python)."""

    def __init__(self, url: str, timeout: float) -> None:
        from gradio_client import Client

        self.client = Client(url, verbose=False, download_files=False)

    def predict(self, image: str, timeout: float) -> dict:
        from gradio_client import handle_file

        return self.client.submit(handle_file(image), api_name="/predict").result(timeout=timeout)

    def close(self) -> None:
        self.client.close()


class ClassifyClient:
    """``POST /api/classify`` with the image as the body: one request, JSON back."""

    def __init__(self, url: str, timeout: float) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, timeout=timeout)

    def predict(self, image: str, timeout: float) -> dict:
        with open(image, "rb") as handle:
            answer = self.http.post("api/classify", content=handle.read(), timeout=timeout)
        answer.raise_for_status()
        return answer.json()

    def close(self) -> None:
        self.http.close()


def run_round(url: str, image: str, clients: int, requests: int, time_limit: float, kind: str) -> dict[str, float]:
    """``clients`` clients at once, ``requests`` requests in all; latencies in ms."""
    make = {"http": HttpClient, "gradio_client": GradioClient, "api": ClassifyClient}[kind]
    with ThreadPoolExecutor(clients) as pool:
        connections = list(pool.map(lambda _: make(url, time_limit), range(clients)))
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    remaining = [requests]
    deadline = time.monotonic() + time_limit
    start = threading.Barrier(clients)

    def client_loop(client: HttpClient | GradioClient) -> None:
        nonlocal errors
        start.wait()
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            if time.monotonic() > deadline:
                with lock:
                    errors += 1
                continue
            began = time.perf_counter()
            try:
                result = client.predict(image, timeout=max(0.1, deadline - time.monotonic()))
                assert "label" in result, result
                with lock:
                    latencies.append((time.perf_counter() - began) * 1000)
            except Exception:
                with lock:
                    errors += 1

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, connections))
    wall = time.perf_counter() - began
    for client in connections:
        client.close()
    ordered = sorted(latencies) or [float("nan")]
    return {
        "client": kind,
        "clients": clients,
        "requests": requests,
        "ok": len(latencies),
        "errors": errors,
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
        "max": ordered[-1],
        "per_s": len(latencies) / wall,
    }


# ----------------------------------------------------------------- load test mode
# Separate from the latency rounds above: N requests all at once (one client each),
# on each endpoint, every answer checked (and /explain's images downloaded whole),
# with the server's resident memory before and after.

MAX_LOAD_REQUESTS = 500


def server_rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux ``/proc``), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def call_endpoint(http: object, endpoint: str, image: str, timeout: float) -> list:
    """Upload ``image``, call ``endpoint``, return the result data; for /explain, download
    every output image and check it is complete (the length the server declared, PNG)."""
    with open(image, "rb") as handle:
        uploaded = http.post("gradio_api/upload", files={"files": (Path(image).name, handle, "image/png")})
    uploaded.raise_for_status()
    data = {"data": [{"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}]}
    event = http.post(f"gradio_api/call/{endpoint}", json=data)
    event.raise_for_status()
    answer = http.get(f"gradio_api/call/{endpoint}/{event.json()['event_id']}", timeout=timeout).text
    if "event: complete" not in answer:
        raise RuntimeError(answer[-300:])
    result = json.loads(answer.split("event: complete", 1)[1].split("data:", 1)[1])
    if endpoint == "explain":
        for output in result:
            if not isinstance(output, dict):  # no image (None), or the Grad-CAM caption
                continue
            body = http.get(output["url"])  # httpx raises on a body shorter than Content-Length
            body.raise_for_status()
            if not body.content.startswith(b"\x89PNG") or len(body.content) != int(body.headers["content-length"]):
                raise RuntimeError(f"incomplete image: {len(body.content)} bytes")
    elif "label" not in result[0]:
        raise RuntimeError(f"no label in {result!r:.200}")
    return result


def load_round(url: str, image: str, endpoint: str, requests: int, time_limit: float) -> dict:
    """``requests`` requests of ``endpoint`` sent at once, one connection each."""
    import httpx

    barrier = threading.Barrier(requests)
    errors: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        with httpx.Client(base_url=url, timeout=time_limit) as http:
            barrier.wait()
            began = time.perf_counter()
            try:
                call_endpoint(http, endpoint, image, time_limit)
                with lock:
                    latencies.append((time.perf_counter() - began) * 1000)
            except Exception as exc:  # counted and reported: the test is that there are none
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])

    began = time.perf_counter()
    with ThreadPoolExecutor(requests) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - began
    ordered = sorted(latencies) or [float("nan")]
    return {
        "endpoint": endpoint,
        "requests": requests,
        "ok": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
        "wall_s": wall,
    }


def load_test(args: argparse.Namespace) -> None:
    """``--load-test N``: N concurrent requests on /predict, then on /explain; RSS around."""
    if not 1 <= args.load_test <= MAX_LOAD_REQUESTS:
        raise SystemExit(f"--load-test must be 1..{MAX_LOAD_REQUESTS}")
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="sslmed-serve-load-") as temp:
        image = str(Path(temp) / f"xray_{args.size}.png")
        Image.open(IMAGE).convert("L").resize((args.size, args.size), Image.Resampling.BILINEAR).save(image)
        model = args.model or export_resnet18(Path(temp) / "model")
        process, url = start_server(model, args.concurrency, args.threads, Path(temp) / "server.log", start_timeout=900)
        try:
            rss = {"start": server_rss_mb(process.pid)}
            for endpoint in ("predict", "explain"):  # warm-up: both endpoints, a few times
                load_round(url, image, endpoint, 4, args.time_limit)
            rss["warm"] = server_rss_mb(process.pid)
            rows = []
            for endpoint in ("predict", "explain"):
                rows.append(load_round(url, image, endpoint, args.load_test, args.time_limit))
                rss[f"after {endpoint}"] = server_rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
        f"load average {load_at_start:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
        f"model {model if args.model else 'ResNet-18, 224 px, random weights'}; server concurrency {args.concurrency}"
    )
    print("server RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()) + "\n")
    print("| endpoint | concurrent requests | ok | errors | p50 ms | p95 ms | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| /{r['endpoint']} | {r['requests']} | {r['ok']} | {r['errors']} | {r['p50']:.0f} | {r['p95']:.0f} "
            f"| {r['wall_s']:.0f} |"
        )
    for r in rows:
        if r["errors"]:
            print(f"first error on /{r['endpoint']}: {r['first_error']}")
    if any(r["errors"] for r in rows):
        raise SystemExit(1)


def model_only_ms(model: Path, image: str, repeats: int = 30) -> tuple[float, float]:
    """Median ms of loading + predicting one image in-process (load+predict, predict only)."""
    from sslmed.serving.predict import Predictor

    predictor = Predictor(model, device="cpu")
    loaded = predictor.load(image)
    predictor.predict_images([loaded])  # warm-up
    full, bare = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        predictor.predict([image])
        full.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        predictor.predict_images([loaded])
        bare.append((time.perf_counter() - began) * 1000)
    return statistics.median(full), statistics.median(bare)


# ------------------------------------------------------------------ old against new, side by side


def export_source(ref: str, folder: Path) -> Path:
    """The package as committed at git ``ref`` (e.g. ``main``), unpacked into ``folder``."""
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "archive", ref, "sslmed"], cwd=repo, capture_output=True, check=False)
    if archive.returncode:
        raise SystemExit(f"--compare {ref}: git archive failed: {archive.stderr.decode(errors='replace')[-300:]}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def model_parts_ms(model: Path, image: str, repeats: int) -> dict[str, float]:
    """In this process, median ms of: the forward pass as the server ran it before (plain
    modules) and now (batch norm folded, channels-last), and the OOD score alone."""
    from sslmed.serving.predict import Predictor

    predictor = Predictor(model, device="cpu")
    x = predictor.model_input(predictor.load(image))
    fast = predictor._inference_backbone()
    x_last = x.contiguous(memory_format=torch.channels_last)
    features = predictor.model.backbone(x).detach()
    timings: dict[str, list[float]] = {"forward, plain": [], "forward, folded + channels-last": [], "OOD score": []}
    with torch.inference_mode():
        for _ in range(3):
            predictor.model(x), predictor.model.head(fast(x_last))
        for _ in range(repeats):  # alternating, so that a change of machine load hits both alike
            for name, call in (
                ("forward, plain", lambda: predictor.model(x)),
                ("forward, folded + channels-last", lambda: predictor.model.head(fast(x_last))),
                ("OOD score", lambda: predictor.ood.score(features.numpy())),
            ):
                began = time.perf_counter()
                call()
                timings[name].append((time.perf_counter() - began) * 1000)
    return {name: statistics.median(values) for name, values in timings.items()}


def compare_main(args: argparse.Namespace) -> None:
    """One client, requests one after another, against the server as committed at
    ``--compare`` (Gradio's upload/call/result protocol) and this tree's server (the
    same protocol, and ``POST /api/classify``), in alternating rounds."""
    load_at_start = os.getloadavg()
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.concurrency))  # as the servers
    with tempfile.TemporaryDirectory(prefix="sslmed-serve-compare-") as temp:
        folder = Path(temp)
        image = str(folder / f"xray_{args.size}.png")
        Image.open(IMAGE).convert("L").resize((args.size, args.size), Image.Resampling.BILINEAR).save(image)
        old_model = export_resnet18(folder / "old-model")
        new_model = export_resnet18(folder / "new-model", trust=True)
        (folder / "old-src").mkdir()
        old_source = export_source(args.compare, (folder / "old-src").resolve())
        servers = {}
        try:
            servers["old"] = start_server(old_model, args.concurrency, args.threads, folder / "old.log", old_source)
            servers["new"] = start_server(new_model, args.concurrency, args.threads, folder / "new.log")
            setups = [("old", "http"), ("new", "http"), ("new", "api")]
            for name, kind in setups:
                run_round(servers[name][1], image, 1, 5, 60, kind)  # warm-up
            per_round: dict[tuple[str, str], list[float]] = {setup: [] for setup in setups}
            errors = dict.fromkeys(setups, 0)
            for _ in range(args.rounds):
                for setup in setups:
                    result = run_round(servers[setup[0]][1], image, 1, args.requests, args.time_limit, setup[1])
                    per_round[setup].append(result["p50"])
                    errors[setup] += result["errors"]
        finally:
            for process, _url in servers.values():
                process.terminate()
                process.wait(timeout=30)
        parts = model_parts_ms(new_model, image, 30)
    load_at_end = os.getloadavg()
    base = statistics.median(per_round[("old", "http")])
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}; "
        f"load average (1/5/15 min) {'/'.join(f'{v:.1f}' for v in load_at_start)} at start, "
        f"{'/'.join(f'{v:.1f}' for v in load_at_end)} at end; ResNet-18, {args.size} px PNG, random weights; "
        f"server concurrency {args.concurrency}; "
        f"1 client, {args.rounds} alternating rounds of {args.requests} requests\n"
    )
    print("| server | request | p50 ms (median of rounds) | p50 per round | errors | vs old |")
    print("|---|---|---|---|---|---|")
    names = {"http": "Gradio upload + call + result (3 requests)", "api": "POST /api/classify (1 request)"}
    labels = {"old": f"as committed at {args.compare}", "new": "this tree"}
    for setup in setups:
        median = statistics.median(per_round[setup])
        rounds = ", ".join(f"{v:.0f}" for v in per_round[setup])
        cells = [labels[setup[0]], names[setup[1]], f"{median:.1f}", rounds, str(errors[setup]), f"{median / base:.2f}"]
        print("| " + " | ".join(cells) + " |")
    print("\nIn this process, one image, median of 30 (alternating):\n")
    print("| part | ms |\n|---|---|")
    for name, value in parts.items():
        print(f"| {name} | {value:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="run folder or model folder (default: a random ResNet-18 at 224 px)")
    parser.add_argument("--url", help="a server already running on loopback (default: start one)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 50], help="concurrent clients of each round")
    parser.add_argument("--requests", type=int, default=100, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=2, help="the server's queue concurrency (when started here)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per request in the server (default: its own, cores / concurrency)",
    )
    parser.add_argument(
        "--client",
        choices=["http", "gradio_client", "both"],
        default="both",
        help="plain HTTP (the curl protocol) and/or gradio_client, which adds its own overhead",
    )
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per round at most")
    parser.add_argument("--size", type=int, default=224, help="side of the PNG sent (px)")
    parser.add_argument(
        "--compare",
        metavar="GIT_REF",
        help="instead of the load rounds: the server as committed at GIT_REF (e.g. main) against this tree's, "
        "one client, alternating rounds",
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of --compare")
    parser.add_argument(
        "--load-test",
        type=int,
        metavar="N",
        help="instead of latency rounds: N requests at once on /predict, then on /explain; "
        "every answer checked, server RSS before and after (exit 1 on any error)",
    )
    args = parser.parse_args()
    if args.compare:
        if not IMAGE.is_file():
            raise SystemExit(f"{IMAGE} not found: the benchmark needs ../shared/data/samples")
        compare_main(args)
        return
    if args.load_test:
        load_test(args)
        return
    if any(not 1 <= c <= MAX_CLIENTS for c in args.clients) or not 1 <= args.requests <= MAX_REQUESTS:
        raise SystemExit(f"clients must be 1..{MAX_CLIENTS} and requests 1..{MAX_REQUESTS}")
    if not IMAGE.is_file():
        raise SystemExit(f"{IMAGE} not found: the benchmark needs ../shared/data/samples")

    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="sslmed-serve-bench-") as temp:
        image = str(Path(temp) / f"xray_{args.size}.png")
        Image.open(IMAGE).convert("L").resize((args.size, args.size), Image.Resampling.BILINEAR).save(image)
        model = args.model or export_resnet18(Path(temp) / "model")
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.concurrency)  # what the server uses
        torch.set_num_threads(threads)
        before = model_only_ms(model, image)
        process = None
        if args.url:
            check_loopback(args.url)
            url = args.url
        else:
            process, url = start_server(model, args.concurrency, args.threads, Path(temp) / "server.log")
        try:
            kinds = ["http", "gradio_client"] if args.client == "both" else [args.client]
            run_round(url, image, 1, 5, 60, kinds[0])  # warm-up
            rows = [
                run_round(url, image, clients, max(args.requests, clients), args.time_limit, kind)
                for kind in kinds
                for clients in args.clients
            ]
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
        after = model_only_ms(model, image)  # again: on a shared machine the load changes

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
        f"load average {load_at_start:.1f} at start, {os.getloadavg()[0]:.1f} at end; model "
        f"{model if args.model else 'ResNet-18, 224 px, random weights'}; "
        f"server concurrency {args.concurrency}, torch threads per request {threads}"
    )
    print(
        f"model alone, in-process ({threads} thread(s)), median before / after the rounds: "
        f"load + predict {before[0]:.1f} / {after[0]:.1f} ms, predict only {before[1]:.1f} / {after[1]:.1f} ms\n"
    )
    print("| client | clients | requests | ok | errors | p50 ms | p95 ms | max ms | requests/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['client']} | {r['clients']} | {r['requests']} | {r['ok']} | {r['errors']} | "
            f"{r['p50']:.0f} | {r['p95']:.0f} | {r['max']:.0f} | {r['per_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
