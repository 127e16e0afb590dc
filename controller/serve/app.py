"""The HTTP service of `xlt serve` (FastAPI on uvicorn).

Concurrent requests are gathered by a micro-batcher: one worker thread takes every request
waiting (up to `max_batch_rows` texts, waiting at most `max_wait_ms` for more) and serves
them as ONE engine batch, so requests in different languages share a forward pass. Model
work runs on that thread, never on the event loop, which keeps /healthz answering while a
batch runs.

Errors: a malformed body is 422 with the field and reason; an unknown task or language
without an adapter 404; an adapter refused at load (fingerprint) 409; the registry database
unreachable 503. Every error body is {"error": "<one line>", "hint": "..."}.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import queue
import threading
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from controller.serve.engine import Engine, request_from
from controller.serve.engine import Request as EngineRequest
from controller.serve.schema import FeedbackRequest, PredictRequest, PredictResponse
from registry.errors import NotFound, RefusedChange, XltError

log = logging.getLogger(__name__)


def _error(status: int, message: str, hint: str = "") -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint}, status_code=status)


def status_of(exc: XltError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, RefusedChange):
        return 409
    return 400


class Batcher:
    """Gathers concurrent requests into engine batches on one worker thread."""

    def __init__(self, engine: Engine, max_batch_rows: int = 64, max_wait_ms: float = 2.0):
        self.engine = engine
        self.max_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000
        self._queue: queue.Queue[tuple[EngineRequest, cf.Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="xlt-serve-batcher",
                                        daemon=True)
        self._thread.start()

    def submit(self, request: EngineRequest) -> cf.Future[Any]:
        fut: cf.Future[Any] = cf.Future()
        self._queue.put((request, fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _take(self) -> list[tuple[EngineRequest, cf.Future[Any]]] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch, rows = [first], len(first[0].texts)
        while rows < self.max_rows:
            try:
                item = self._queue.get(timeout=self.max_wait)
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(item)
            rows += len(item[0].texts)
        return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                results = self.engine.predict([r for r, _ in batch])
            except Exception as exc:  # the whole batch failed (e.g. database down)
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                fut.set_result(result)


def create_app(engine: Engine, *, warm: bool = True, max_batch_rows: int = 64,
               max_wait_ms: float = 2.0) -> FastAPI:
    state: dict[str, Any] = {"ready": False, "reason": "starting"}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if warm:
            try:
                n = await asyncio.to_thread(engine.warm)
                log.info("xlt serve: %d adapters loaded", n)
            except Exception as exc:  # serve anyway; adapters load on first use
                log.warning("xlt serve: warm-up failed: %s", exc)
        state["batcher"] = Batcher(engine, max_batch_rows, max_wait_ms)
        state.update(ready=True, reason="")
        yield
        state["ready"] = False
        state["batcher"].close()

    app = FastAPI(title="xlt serve", lifespan=lifespan,
                  description="Cross-lingual adapters served from the xlt registry.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        return _error(422, f"{where}: {message}" if where else message,
                      "POST JSON like {\"task\": ..., \"language\": ..., \"texts\": [...], "
                      "\"routing_key\": ...}")

    @app.exception_handler(XltError)
    async def _xlt(request: Request, exc: XltError) -> JSONResponse:
        return _error(status_of(exc), exc.message if hasattr(exc, "message") else str(exc),
                      getattr(exc, "hint", "") or "")

    @app.exception_handler(OperationalError)
    async def _db(request: Request, exc: OperationalError) -> JSONResponse:
        return _error(503, "the registry database is unreachable", "retry later")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not state["ready"]:
            return _error(503, f"not ready: {state['reason']}")
        try:
            await asyncio.to_thread(_ping, engine)
        except Exception as exc:
            return _error(503, f"registry unreachable: {type(exc).__name__}")
        return JSONResponse({"status": "ready", **engine.describe()})

    @app.post("/v1/predict", response_model=PredictResponse)
    async def predict(body: PredictRequest) -> Any:
        req = request_from(body.task, body.texts, body.language, body.languages,
                           body.routing_key, body.routing_keys)
        result = await asyncio.wrap_future(state["batcher"].submit(req))
        if isinstance(result, XltError):
            raise result
        return {"task": body.task, "predictions": [vars(s) for s in result]}

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        items = [(f.prediction_id, f.label) for f in body.feedback]
        n = await asyncio.to_thread(engine.feedback, body.task, items)
        return {"task": body.task, "recorded": n}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return engine.describe()

    return app


def _ping(engine: Engine) -> None:
    with engine.registry.db.read_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
