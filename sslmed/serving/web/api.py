"""HTTP routes beside Gradio's: ``POST /api/classify`` takes the image file as the
request body and answers JSON in one round trip, without Gradio's queue;
``POST /api/classify_batch`` does the same for several files (or a zip) and answers a
table (JSON rows, or CSV with ``?format=csv``); and the upload size limit on every request.
"""

from __future__ import annotations

from typing import Any

from sslmed.serving.predict import Prediction
from sslmed.serving.web.auth import CLIENT_ADDRESS, LoginGuard
from sslmed.serving.web.service import FORMATS_TEXT, MAX_BATCH_FILES, DemoError, DemoService

#: a batch request's body may be this many times the per-file limit
BATCH_BODY_FACTOR = 10


def api_routes(service: DemoService, guard: LoginGuard | None = None, concurrency: int = 2) -> list[Any]:
    """``POST /api/classify``: the image file as the request body (or a multipart field
    ``file``) -> ``{"label": top class, "probabilities": ..., "calibrated": ...,
    "out_of_distribution": ...}`` in one round trip.

    It skips Gradio's upload-then-queue protocol (three requests, a temporary file and
    an event stream), which costs more than the model itself for small images. At most
    ``concurrency`` predictions of this route run at once; errors are JSON
    ``{"error": message, "title": ...}`` with 400 (not an image), 401 (login needed)
    or 413 (over the size limit).
    """
    import anyio
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    limiter: list[anyio.CapacityLimiter] = []  # made in the server's event loop, on first use
    limit = int(service.max_upload_mb * 1e6)

    def refuse(error: DemoError) -> JSONResponse:
        return JSONResponse({"error": error.text, "title": error.title}, status_code=error.status)

    async def classify(request: Request) -> JSONResponse:
        if guard is not None and not guard.check_basic(request.headers.get("authorization")):
            return JSONResponse(
                {"error": "login required: send HTTP basic credentials (curl -u USER)", "title": "Not logged in"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="sslmed"'},
            )
        name = request.query_params.get("name", "upload")
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit + 65536:  # refused before reading: a huge body never reaches memory
            return refuse(DemoError(service.too_large_message(name, declared), "File too large", 413))
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4, max_part_size=limit + 1)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return refuse(DemoError("No image received: send the file as the multipart field 'file'.", "No image"))
            name, data = upload.filename or name, await upload.read()
        else:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    break
            data = bytes(body)
        if not data:
            return refuse(
                DemoError(f"No image received: send the image file ({FORMATS_TEXT}) as the body.", "No image")
            )
        if len(data) > limit:
            return refuse(DemoError(service.too_large_message(name, len(data)), "File too large", 413))
        if not limiter:
            limiter.append(anyio.CapacityLimiter(concurrency))

        def run() -> Prediction:
            return service.predictor.analyse_images([service.decode(data, name)])[0]

        try:
            result = await anyio.to_thread.run_sync(run, limiter=limiter[0])
        except DemoError as error:
            return refuse(error)
        top = max(result.probabilities, key=lambda c: result.probabilities[c])
        answer = {"label": top, **result.as_dict()}
        fields = service.dicom_fields(data)  # what explains the picture; never a patient identifier
        if fields:
            answer["dicom"] = fields
        return JSONResponse(answer)

    async def classify_batch(request: Request) -> Any:
        """Several files as multipart fields ``files`` (each within the per-file limit, at
        most :data:`MAX_BATCH_FILES`), or one zip (or image) as the body -> ``{"classes",
        "rows": [{"file", "label", "probabilities", ..., "out_of_distribution"} or
        {"file", "error"}]}``; ``?format=csv`` answers the page's CSV instead."""
        from starlette.responses import Response

        if guard is not None and not guard.check_basic(request.headers.get("authorization")):
            return JSONResponse(
                {"error": "login required: send HTTP basic credentials (curl -u USER)", "title": "Not logged in"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="sslmed"'},
            )
        body_limit = limit * BATCH_BODY_FACTOR
        declared = int(request.headers.get("content-length") or 0)
        if declared > body_limit + 65536:
            return refuse(
                DemoError(
                    f"the request is {declared / 1e6:.3g} MB; a batch may be at most "
                    f"{body_limit / 1e6:g} MB ({BATCH_BODY_FACTOR} times the per-file limit)",
                    "Batch too large",
                    413,
                )
            )
        items: list[tuple[str, bytes]] = []
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(
                max_files=MAX_BATCH_FILES + 1, max_fields=MAX_BATCH_FILES + 4, max_part_size=body_limit + 1
            )  # a file over the per-file limit becomes a row with its error, not a refused request
            for upload in form.getlist("files") + form.getlist("file"):
                if not isinstance(upload, str):
                    items.append((upload.filename or f"file{len(items) + 1}", await upload.read()))
        else:
            data = bytearray()
            async for chunk in request.stream():
                data += chunk
                if len(data) > limit:
                    break
            if data:
                items.append((request.query_params.get("name", "upload.zip"), bytes(data)))
        if not items:
            return refuse(
                DemoError(
                    "No images received: send the files as multipart fields 'files', or a zip as the body.",
                    "No images",
                )
            )
        if not limiter:
            limiter.append(anyio.CapacityLimiter(concurrency))
        rows = await anyio.to_thread.run_sync(service.classify_many, items, limiter=limiter[0])
        if request.query_params.get("format") == "csv":
            return Response(service.batch_csv(rows), media_type="text/csv; charset=utf-8")
        return JSONResponse({"classes": service.predictor.classes, "rows": [row.as_dict() for row in rows]})

    return [
        Route("/api/classify", classify, methods=["POST"]),
        Route("/api/classify_batch", classify_batch, methods=["POST"]),
    ]


class _BodyTooLarge(Exception):
    """Raised inside a request when its body passes the limit (no Content-Length needed)."""


class UploadLimit:
    """ASGI middleware: every ``POST`` body is counted as it arrives, so a body over
    ``limit`` bytes is answered with 413 and sslmed's message whether it declares its size
    or not (``Transfer-Encoding: chunked``). An upload (``POST .../upload``) whose declared
    size is over the limit is refused before any of it is read; one that declares nothing
    is stopped at the first chunk past the limit, before Gradio stores more. A
    Content-Length that is not a number is refused with 400. It also records the client's
    address for :class:`~sslmed.serving.web.auth.LoginGuard` (Gradio's login form does not
    pass it on)."""

    def __init__(self, app: Any, limit: int, max_upload_mb: float) -> None:
        self.app, self.limit, self.max_upload_mb = app, limit, max_upload_mb

    def message(self, size: int | None) -> str:
        about = f"about {size / 1e6:.3g} MB" if size is not None else f"over {self.limit / 1e6:.3g} MB"
        return (
            f"The file is {about}; the limit is {self.max_upload_mb:g} MB. "
            "Upload a smaller export of the image (e.g. PNG or JPEG)."
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        token = CLIENT_ADDRESS.set(str(client[0]) if client else None)
        try:
            await self._http(scope, receive, send)
        finally:
            CLIENT_ADDRESS.reset(token)

    async def _http(self, scope: dict, receive: Any, send: Any) -> None:
        from starlette.responses import PlainTextResponse

        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        raw = headers.get(b"content-length", b"").strip()
        if raw and not raw.isdigit():
            await PlainTextResponse("Content-Length must be a number of bytes", status_code=400)(scope, receive, send)
            return
        declared = int(raw) if raw else None
        if declared is not None and declared > self.limit:
            # plain text: the page shows the body as it is ("HTTP 413: The file is ...")
            await PlainTextResponse(self.message(declared), status_code=413)(scope, receive, send)
            return
        seen, started = 0, False

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def watched(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLarge:
            if not started:
                await PlainTextResponse(self.message(None), status_code=413)(scope, receive, send)
        except Exception as error:  # a handler that wrapped our signal: still the size, not a crash
            if not started and isinstance(error.__cause__ or error.__context__, _BodyTooLarge):
                await PlainTextResponse(self.message(None), status_code=413)(scope, receive, send)
            else:
                raise
