"""The HTTP service of `xlt serve` (FastAPI on uvicorn).

Concurrent requests are gathered by a micro-batcher: a model thread takes every request
waiting (up to `max_batch_rows` texts, waiting at most `max_wait_ms` for more) and serves
them as ONE engine batch, so requests in different languages share a forward pass. There
are `[serve] model_threads` of them (default: the cores this worker has), each running
its own batch with one torch thread, so while one runs a forward pass the next gathers
the requests that arrive meanwhile. Model work runs on those threads, never on the event
loop, which keeps /healthz answering while batches run. A request longer than one batch
is served in chunks, one after another, so other requests are batched between them. A
batch that fails is served again request by request, so only the request that cannot be
served fails.

Auth (controller.serve.auth): every route but /healthz and /readyz needs a bearer token
with its scope (predict, feedback, admin); a prediction_id is a receipt signed for the
token that got it, and feedback is taken once per prediction, for receipts of the
caller's own token only.

Errors: every error body is {"error": "<one line>", "hint": "..."}: 401 no or an unknown
token, 403 a token without the scope or a receipt not given to it; 422 a malformed body
(including a lone surrogate or a control character in a string); 413 over a `[serve]`
limit; 400 a bad language tag; 404 an unknown task or a language without an adapter; 409
a second label for a prediction; 503 the registry database unreachable or the adapter of
that language unloadable (tampered, missing); 500 anything else, for that request alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from controller.observability.serve_metrics import REQUESTS_REFUSED, SERVE_REGISTRY
from controller.policy import ServePolicy
from controller.serve.auth import Authenticator, Caller, Receipts, receipt_key
from controller.serve.engine import AdapterUnavailable, Engine, request_from
from controller.serve.engine import Request as EngineRequest
from controller.serve.schema import FeedbackRequest, PredictRequest, PredictResponse
from registry.errors import NotFound, RefusedChange, XltError

log = logging.getLogger(__name__)
ARM_FIELDS = ("version", "role", "base")


def _error(status: int, message: str, hint: str = "",
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "hint": hint}, status_code=status,
                        headers=headers)


class Denied(Exception):
    def __init__(self, status: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint


def status_of(exc: XltError) -> int:
    if isinstance(exc, AdapterUnavailable):
        return 503
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, RefusedChange):
        return 409
    return 400


class Overloaded(Exception):
    """The batch queue holds `max_queue_rows` texts already: answered 503 + Retry-After."""


class Batcher:
    """Gathers concurrent requests into engine batches on `threads` model threads; at most
    `max_queue_rows` texts wait (a request that would pass it is refused, not queued)."""

    def __init__(self, engine: Engine, max_batch_rows: int = 64, max_wait_ms: float = 2.0,
                 max_queue_rows: int = 2048, threads: int = 1):
        self.engine = engine
        self.max_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000
        self.max_queue_rows = max_queue_rows
        self._queue: queue.Queue[tuple[EngineRequest, cf.Future[Any]] | None] = queue.Queue()
        self._queued = 0  # texts waiting
        self._count = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"xlt-serve-model-{n}",
                                          daemon=True) for n in range(max(1, threads))]
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        return self._queued

    def reserve(self, rows: int) -> None:
        """Count `rows` texts as waiting, or raise Overloaded (nothing counted)."""
        with self._count:
            if self._queued and self._queued + rows > self.max_queue_rows:
                REQUESTS_REFUSED.inc()
                raise Overloaded(f"{self._queued} texts are waiting (limit "
                                 f"{self.max_queue_rows})")
            self._queued += rows

    def submit(self, request: EngineRequest, reserved: bool = False) -> cf.Future[Any]:
        if not reserved:
            self.reserve(len(request.texts))
        fut: cf.Future[Any] = cf.Future()
        self._queue.put((request, fut))
        return fut

    def close(self) -> None:
        """Serve what is queued, then stop (every thread: the stop mark is passed on)."""
        self._queue.put(None)
        deadline = time.monotonic() + 60
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _take(self) -> list[tuple[EngineRequest, cf.Future[Any]]] | None:
        first = self._queue.get()
        if first is None:
            self._queue.put(None)  # for the other model threads
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
        self.engine.start_thread()
        while (batch := self._take()) is not None:
            try:
                self._serve(batch)
            finally:
                with self._count:
                    self._queued -= sum(len(r.texts) for r, _ in batch)

    def _serve(self, batch: list[tuple[EngineRequest, cf.Future[Any]]]) -> None:
        try:
            results = self.engine.predict([r for r, _ in batch])
        except Exception as exc:
            if len(batch) > 1:  # find the request that fails: each alone
                for item in batch:
                    self._serve([item])
                return
            if not isinstance(exc, XltError | OperationalError):
                log.error("xlt serve: a request failed: %s: %s", type(exc).__name__,
                          str(exc).splitlines()[0][:200] if str(exc) else "")
            batch[0][1].set_exception(exc)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            fut.set_result(result)


def create_app(engine: Engine, *, warm: bool = True, max_batch_rows: int | None = None,
               max_wait_ms: float | None = None, auth: Authenticator | None = None,
               receipts: Receipts | None = None) -> FastAPI:
    limits: ServePolicy = engine.policy.serve
    max_batch_rows = max_batch_rows or limits.max_batch
    max_wait_ms = limits.max_wait_ms if max_wait_ms is None else max_wait_ms
    auth = auth or Authenticator.from_config(limits.require_auth, limits.tokens_file)
    receipts = receipts or Receipts(receipt_key(engine.registry.settings.home))
    state: dict[str, Any] = {"ready": False, "reason": "starting"}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if warm:
            try:
                n = await asyncio.to_thread(engine.warm)
                log.info("xlt serve: %d adapters loaded", n)
            except Exception as exc:  # serve anyway; adapters load on first use
                log.warning("xlt serve: warm-up failed: %s", type(exc).__name__)
        if engine.writer is not None:
            try:
                await asyncio.to_thread(engine.writer.open)
            except Exception as exc:  # serve anyway: the next write tries again
                log.error("xlt serve: the traffic writer did not start: %s", exc)
        # the bases' and libraries' objects live as long as the server: out of the
        # collector's scans, so a full collection under a flood does not stall every
        # thread (and /healthz) while it walks them
        gc.collect()
        gc.freeze()
        state["batcher"] = Batcher(engine, max_batch_rows, max_wait_ms,
                                   limits.max_queue_rows, engine.model_threads)
        state.update(ready=True, reason="")
        yield
        state.update(ready=False, reason="shutting down")
        # clean shutdown: uvicorn has let in-flight requests finish; serve what is queued,
        # then write every prediction still waiting for the traffic log
        await asyncio.to_thread(state["batcher"].close)
        await asyncio.to_thread(engine.close)
        log.info("xlt serve: stopped; traffic log: %s", engine.describe().get("traffic"))

    app = FastAPI(title="xlt serve", lifespan=lifespan,
                  description="Cross-lingual adapters served from the xlt registry.")

    def need(scope: str) -> Callable[..., Caller]:
        def check(authorization: str | None = Header(None)) -> Caller:
            caller = auth.caller(authorization)
            if caller is None:
                raise Denied(401, "no valid bearer token",
                             "send `Authorization: Bearer TOKEN` (docs/serving.md)")
            if scope not in caller.scopes:
                raise Denied(403, f"this token lacks the {scope} scope",
                             "ask an operator for a token with it")
            return caller
        return check

    @app.exception_handler(Denied)
    async def _denied(request: Request, exc: Denied) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, exc.hint, headers)

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

    async def guarded(work: Awaitable[Any]) -> Any:
        """A failure that is not the client's is a 500 JSON for this request alone, logged
        as one line (no traceback, nothing of the request)."""
        try:
            return await work
        except (XltError, OperationalError, Denied):
            raise
        except Exception as exc:
            log.error("xlt serve: internal error: %s", type(exc).__name__)
            return _error(500, f"internal error ({type(exc).__name__})",
                          "the server logged it; retry later")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not state["ready"]:
            return _error(503, f"not ready: {state['reason']}")
        try:
            await asyncio.to_thread(_ping, engine)
            broken = await asyncio.to_thread(engine.unready)
        except Exception as exc:
            return _error(503, f"registry unreachable: {type(exc).__name__}")
        if broken:
            return _error(503, f"not ready: {len(broken)} routed adapter(s) cannot be "
                          f"loaded: {'; '.join(broken)}",
                          "restore the adapter's file or roll its track back")
        return JSONResponse({"status": "ready", "adapters": len(engine.describe()["adapters"])})

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True)
    async def predict(body: PredictRequest, caller: Caller = Depends(need("predict"))) -> Any:
        if len(body.texts) > limits.max_texts_per_request:
            return _error(413, f"{len(body.texts)} texts in one request; the limit is "
                          f"{limits.max_texts_per_request}", "split the request")
        longest = max(len(t) for t in body.texts)
        if longest > limits.max_text_chars:
            return _error(413, f"a text of {longest} characters; the limit is "
                          f"{limits.max_text_chars}", "shorten or split the text")
        req = request_from(body.task, body.texts, body.language, body.languages,
                           body.routing_key, body.routing_keys)
        return await guarded(_predict(req, caller))

    async def _predict(req: EngineRequest, caller: Caller) -> Any:
        batcher: Batcher = state["batcher"]
        try:
            batcher.reserve(len(req.texts))  # the whole request, or none of it
        except Overloaded as exc:
            return _error(503, f"overloaded: {exc}", "retry after the Retry-After seconds",
                          {"Retry-After": "1"})
        served = []
        step = max(1, max_batch_rows)
        for lo in range(0, len(req.texts), step):  # chunks, one after another
            part = EngineRequest(req.task, req.languages[lo:lo + step],
                                 req.texts[lo:lo + step], req.routing_keys[lo:lo + step])
            fut = batcher.submit(part, reserved=True)
            try:
                result = await asyncio.wrap_future(fut)
            except BaseException:
                _release_rest(batcher, len(req.texts) - lo - len(part.texts))
                raise
            if isinstance(result, XltError):
                _release_rest(batcher, len(req.texts) - lo - len(part.texts))
                raise result
            served += result
        ids: dict[int, list[int] | None] = {}  # the traffic writer's answers, per batch
        for s in served:
            if s.logged is not None and id(s.logged[0]) not in ids:
                ids[id(s.logged[0])] = await asyncio.wrap_future(s.logged[0])
        rows = []
        for s in served:
            row = vars(s).copy()
            logged = row.pop("logged")
            row.pop("prediction_id")
            got = ids.get(id(logged[0])) if logged is not None else None
            pid = got[logged[1]] if got is not None and logged is not None else None
            row["prediction_id"] = (receipts.issue(pid, req.task, caller.token_id)
                                    if pid is not None else None)
            if not limits.reveal_arm:
                for name in ARM_FIELDS:
                    row.pop(name)
            rows.append(row)
        return {"task": req.task, "predictions": rows}

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest,
                       caller: Caller = Depends(need("feedback"))) -> Any:
        if len(body.feedback) > limits.max_feedback_per_request:
            return _error(413, f"{len(body.feedback)} labels in one request; the limit is "
                          f"{limits.max_feedback_per_request}", "split the request")
        items = []
        for f in body.feedback:
            pid = receipts.check(f.prediction_id, body.task, caller.token_id)
            if pid is None:
                raise Denied(403, "a prediction_id is not one this token was given for "
                             f"task {body.task}; nothing was recorded",
                             "send the prediction_id /v1/predict returned to this token")
            items.append((pid, f.label))
        n = await guarded(asyncio.to_thread(engine.feedback, body.task, items))
        if isinstance(n, JSONResponse):
            return n
        return {"task": body.task, "recorded": n}

    @app.get("/v1/models")
    async def models(caller: Caller = Depends(need("admin"))) -> dict[str, Any]:
        return engine.describe()

    @app.get("/metrics")
    async def metrics(caller: Caller = Depends(need("admin"))) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(SERVE_REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def _release_rest(batcher: Batcher, rows: int) -> None:
    """Chunks of a request never submitted (an earlier one failed): no longer waiting."""
    if rows > 0:
        with batcher._count:
            batcher._queued -= rows


def _ping(engine: Engine) -> None:
    with engine.registry.db.read_engine.connect() as conn:
        conn.execute(text("SELECT 1"))


CONFIG_ENV = "XLT_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """The app of one `xlt serve --workers N` worker process (uvicorn's factory), built from
    the JSON the CLI put in $XLT_SERVE_CONFIG: its own registry connection, engine (the
    bases loaded once in this process, torch threads = cores / workers) and traffic
    writer; routes come from the shared registry, revalidated per batch, so every worker
    follows a promotion made anywhere."""
    import json
    import os

    from controller.policy import load_policy
    from registry.service import Registry
    from registry.settings import load_settings

    cfg = json.loads(os.environ[CONFIG_ENV])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    reg = Registry(load_settings(cfg["home"], cfg["database_url"]), cfg["actor"])
    policy = load_policy(cfg["policy"])
    engine = Engine(reg, policy, device=cfg["device"], backend_name=cfg["backend"],
                    log_embeddings=cfg["log_embeddings"], workers=cfg["workers"],
                    model_threads=cfg.get("model_threads") or 0)
    return create_app(engine, warm=cfg["warm"], max_batch_rows=cfg["max_batch"],
                      max_wait_ms=cfg["max_wait_ms"])
