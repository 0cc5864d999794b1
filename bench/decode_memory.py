"""Peak memory of ``sslmed serve`` while every concurrent slot decodes the worst image
the limits allow (issue 21: target under 2 GB above idle), on loopback only.

Builds, from a real radiograph, the images just under the decode limits of
``sslmed.data.imaging`` (decoded pixels x samples x bytes per sample at most
``MAX_DECODED_BYTES``, the file under the upload limit): an RGBA PNG, an 8-bit grey
PNG, a 16-bit grey PNG, a float32 TIFF and a deflated 12-bit DICOM. For each kind a
fresh ``sslmed serve`` (a ResNet-18 classifier export at 224 px,
``sslmed.testing.models.make_model_export`` on the real covid3 images) is started on
127.0.0.1, warmed with one small real image, and then sent ``DEFAULT_CONCURRENCY + 3``
copies of the image at once on ``POST /api/classify``. The server's RSS is polled from
``/proc/<pid>/status`` every 10 ms (and its ``VmHWM`` read at the end): idle RSS, peak
RSS, peak minus idle, and the time per request as the client sees it (queueing behind
the concurrency limit included). A last round sends all kinds at once.

    .venv/bin/python bench/decode_memory.py            # Markdown table on stdout
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import IMAGE, export_resnet18, start_server  # noqa: E402

sys.path.pop(0)

from sslmed.data.imaging import MAX_DECODED_BYTES  # noqa: E402
from sslmed.serving.web.service import DEFAULT_CONCURRENCY, DEFAULT_MAX_UPLOAD_MB  # noqa: E402

EXTRA_REQUESTS = 3


def _side(samples: int, bytes_per_sample: int) -> int:
    """The largest square side whose decoded size is within ``MAX_DECODED_BYTES``."""
    side = int((MAX_DECODED_BYTES / (samples * bytes_per_sample)) ** 0.5)
    while side * side * samples * bytes_per_sample > MAX_DECODED_BYTES:
        side -= 1
    return side


def _radiograph(side: int) -> np.ndarray:
    """The real radiograph, enlarged (bilinear) to ``side`` x ``side``, 8-bit grey."""
    return np.asarray(Image.open(IMAGE).convert("L").resize((side, side), Image.Resampling.BILINEAR))


def worst_images() -> dict[str, tuple[str, bytes, str]]:
    """kind -> (file name, bytes, what it is), each just under the decode limit."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from sslmed.testing.dicom import dicom_bytes, dicom_dataset

    found: dict[str, tuple[str, bytes, str]] = {}

    def png(image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.save(out, "PNG", compress_level=6)
        return out.getvalue()

    side = _side(4, 1)
    grey = _radiograph(side)
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
    found["RGBA PNG"] = ("rgba.png", png(Image.fromarray(rgba, "RGBA")), f"{side}x{side} RGBA 8-bit")
    side = _side(1, 1)
    found["grey PNG 8-bit"] = ("grey8.png", png(Image.fromarray(_radiograph(side), "L")), f"{side}x{side} L")
    side = _side(1, 2)
    words = _radiograph(side).astype(np.uint16) * 257
    found["16-bit PNG"] = ("grey16.png", png(Image.fromarray(words)), f"{side}x{side} I;16")
    side = _side(1, 4)
    floats = (_radiograph(side).astype(np.float32) / 255.0).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(floats).save(out, "TIFF", compression="tiff_adobe_deflate")
    found["float TIFF"] = ("float.tif", out.getvalue(), f"{side}x{side} F (float32), deflate")
    side = _side(1, 2)
    ds = dicom_dataset(side, side, syntax=DeflatedExplicitVRLittleEndian, bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = (_radiograph(side).astype(np.uint16) * 16).tobytes()
    found["deflated DICOM"] = ("deflated.dcm", dicom_bytes(ds), f"{side}x{side} 12-bit in 16, deflated")
    return found


class RssSampler:
    """Polls ``VmRSS`` of ``pid`` in a thread; ``peak`` is the largest value seen (bytes)."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def read(self, field: str = "VmRSS") -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = self.read()
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.read())


def post_all(url: str, items: list[tuple[str, bytes]], timeout: float) -> list[tuple[int, float, str]]:
    """Every item at once on ``POST /api/classify``: (status, seconds, label or error) each."""
    import httpx

    def one(item: tuple[str, bytes]) -> tuple[int, float, str]:
        name, data = item
        started = time.perf_counter()
        with httpx.Client(timeout=timeout) as client:
            answer = client.post(url + "api/classify", params={"name": name}, content=data)
        body = answer.json()
        return answer.status_code, time.perf_counter() - started, str(body.get("label") or body.get("error"))[:120]

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(one, items))


def measure(model: Path, items: list[tuple[str, bytes]], folder: Path, concurrency: int, timeout: float) -> dict:
    process, url = start_server(model, concurrency, None, folder / "server.log")
    try:
        sampler = RssSampler(process.pid)
        warm = post_all(url, [(IMAGE.name, IMAGE.read_bytes())], timeout)
        assert warm[0][0] == 200, warm
        time.sleep(1.0)
        idle = sampler.read()
        started = time.perf_counter()
        with sampler:
            answers = post_all(url, items, timeout)
        wall = time.perf_counter() - started
        hwm = sampler.read("VmHWM")
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {"idle": idle, "peak": max(sampler.peak, hwm), "answers": answers, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="the server's --concurrency")
    parser.add_argument("--extra", type=int, default=EXTRA_REQUESTS, help="requests beyond the concurrency limit")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    count = args.concurrency + args.extra
    with tempfile.TemporaryDirectory(prefix="sslmed-decode-mem-") as temp:
        folder = Path(temp)
        model = export_resnet18(folder / "model", image_size=224, trust=True)
        images = worst_images()
        limit = DEFAULT_MAX_UPLOAD_MB * 1e6
        rows = []
        for kind, (name, data, what) in images.items():
            assert len(data) <= limit, f"{kind}: {len(data)} bytes is over the upload limit"
            rows.append(
                (kind, what, len(data), measure(model, [(name, data)] * count, folder, args.concurrency, args.timeout))
            )
        mixed = [(name, data) for name, data, _ in images.values()]
        mixed = (mixed * (count // len(mixed) + 1))[: max(count, len(mixed))]
        rows.append(
            (
                "all kinds at once",
                f"{len(mixed)} requests, each kind",
                sum(len(d) for _, d in mixed) // len(mixed),
                measure(model, mixed, folder, args.concurrency, args.timeout),
            )
        )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), load average {load:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"server --concurrency {args.concurrency}, {count} requests at once per kind, "
        f"decode cap {MAX_DECODED_BYTES / 2**20:.0f} MiB, upload limit {DEFAULT_MAX_UPLOAD_MB:g} MB\n"
    )
    print(
        "| image | decoded as | file (MB) | idle RSS (MB) | peak RSS (MB) | peak - idle (MB) "
        "| s/request mean (max) | answers |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, what, size, r in rows:
        times = [t for _, t, _ in r["answers"]]
        statuses = sorted({f"{s} {label}" if s != 200 else "200" for s, _, label in r["answers"]})
        print(
            f"| {kind} | {what} | {size / 1e6:.2f} | {r['idle'] / 2**20:.0f} | {r['peak'] / 2**20:.0f} | "
            f"{(r['peak'] - r['idle']) / 2**20:.0f} | {np.mean(times):.2f} ({max(times):.2f}) | "
            f"{len(times)} x {', '.join(statuses)} |"
        )


if __name__ == "__main__":
    main()
