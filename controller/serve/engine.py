"""The serving engine behind `xlt serve`: route every row through the registry's cached
resolver (sticky canary, fallback chain), run the batch on its adapters, log what was served
to the traffic log that drift checks and canary analysis read.

One call of `predict` is one batch: routes are revalidated once (a promotion or rollback made
by any process is seen by the next batch), rows are grouped by the base their adapter was
trained on (a mixed canary during a base upgrade runs the champion's rows on base A and the
canary's on base B), and each group is one forward pass.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from controller.policy import Policy
from controller.serve.backends import Key, make_backend
from controller.serve.traffic import ProcessSink, TrafficWriter
from registry import queries
from registry.errors import InvalidInput, NotFound, RefusedChange, XltError
from registry.languages import canonical_language
from registry.routing import CachedResolver, Resolution
from registry.schema import InferenceEvent
from registry.service import Registry

log = logging.getLogger(__name__)


RELOAD_AFTER_S = 30.0  # an adapter that failed to load is tried again after this long


class AdapterUnavailable(XltError):
    """An adapter the registry routes to cannot be loaded here (its file changed on disk,
    is missing, or is refused at load): a server-side failure of that language only."""

    exit_code = 1


class BatchResolver(CachedResolver):
    """Revalidated explicitly, once per batch, rather than on a timer."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(registry.db, ttl=float("inf"))

    def revalidate(self) -> None:
        with self._lock:
            self._revalidate()


Row = tuple[int, int, Resolution, Key, str]  # request, row, route, adapter, its base


@dataclass
class Request:
    task: str
    languages: list[str]  # one per text, canonical
    texts: list[str]
    routing_keys: list[str]  # one per text


@dataclass
class Served:
    prediction_id: int | None
    label: str
    confidence: float
    probabilities: dict[str, float]
    language: str
    served_language: str
    version: int
    role: str
    base: str
    # the traffic writer's future of its batch's row ids, and this row's place in them
    logged: tuple[cf.Future[list[int] | None], int] | None = field(
        default=None, repr=False, compare=False)


def model_threads_for(workers: int = 1, setting: int = 0) -> int:
    """Model threads of one serving process: the setting, else the cores it may use shared
    among the workers (at least 1). Each runs its own batch with one torch thread; on an
    idle 2-core machine two such threads gave 1.8-2.3x one thread's texts/s, more than 2
    intra-op threads on one batch (1.6-2.0x; bench/results/scale-and-serving.md#serving)."""
    if setting:
        return setting
    return max(1, len(os.sched_getaffinity(0)) // max(1, workers))


def threads_for(workers: int = 1, setting: int = 0) -> int:
    """Torch threads of one serving process: the setting, else 1. Measured on the shared
    2-core machine (bench/results/scale-and-serving.md#serving): with other processes on
    the cores, 2 intra-op threads made a MiniLM forward pass 8-30x SLOWER than 1 (the
    threads spin waiting for each other); more cores are used by more workers."""
    if setting:
        return setting
    return 1


@dataclass
class Engine:
    registry: Registry
    policy: Policy = field(default_factory=Policy)
    device: str = "cpu"
    backend_name: str = "batched"
    log_embeddings: bool = True
    log_traffic: bool = True
    workers: int = 1  # serving processes on this machine (they share its cores)
    model_threads: int = 0  # batches run at once; 0: [serve] model_threads, else cores

    def __post_init__(self) -> None:
        import torch

        serve = self.policy.serve
        self.torch_threads = threads_for(self.workers, serve.torch_threads)
        torch.set_num_threads(self.torch_threads)
        self.model_threads = model_threads_for(self.workers,
                                               self.model_threads or serve.model_threads)
        self.resolver = BatchResolver(self.registry)
        self.backend = make_backend(self.backend_name, self._load_base)
        if hasattr(self.backend, "bucket_rows"):
            self.backend.bucket_rows = serve.bucket_rows
        sink = ProcessSink(self.registry) if serve.traffic_writer == "process" else None
        self.writer = (TrafficWriter(self.registry, max_rows=serve.traffic_queue_rows,
                                     write_rows=serve.traffic_write_rows, sink=sink)
                       if self.log_traffic else None)
        self._adapters: dict[Key, str] = {}  # -> base ref the adapter was trained on
        self.unloadable: dict[Key, tuple[float, str]] = {}  # -> (when, why) it failed
        self._lock = threading.Lock()  # routing, adapter loading, the batch count
        self._model_lock = threading.Lock()  # backends that run one batch at a time
        self.batches = 0

    def start_thread(self) -> None:
        """Called first on each model thread: OpenMP's thread count is a per-thread
        setting, so a new thread would otherwise run with the library's default (all
        cores, spinning against the other model threads)."""
        import torch

        torch.set_num_threads(self.torch_threads)

    def _load_base(self, ref: str) -> Any:
        from controller.training.pipeline import load_base

        return load_base(self.registry, ref, self.device)[1]  # fingerprint checked

    def _adapter(self, key: Key) -> str:
        """Load an adapter version on its own base (once); returns that base's ref. One
        that cannot be loaded is AdapterUnavailable (tried again after RELOAD_AFTER_S);
        the database being unreachable is raised as it is."""
        if key in self._adapters:
            return self._adapters[key]
        task, language, version = key
        failed = self.unloadable.get(key)
        if failed and time.monotonic() - failed[0] < RELOAD_AFTER_S:
            raise self._unavailable(key, failed[1])
        try:
            row, path = self.registry.adapter_weights(task, language, version)  # sha256
            base = self.registry.query(queries.show_adapter, task, language, version)["base"]
            self.backend.load(key, base, path)  # fingerprint checked against that base
        except SQLAlchemyError:
            raise
        except Exception as exc:
            why = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            self.unloadable[key] = (time.monotonic(), why)
            log.error("xlt serve: adapter %s/%s v%d cannot be loaded: %s", task, language,
                      version, why)
            raise self._unavailable(key, why) from exc
        self.unloadable.pop(key, None)
        self._adapters[key] = base
        return base

    @staticmethod
    def _unavailable(key: Key, why: str) -> AdapterUnavailable:
        task, language, version = key
        return AdapterUnavailable(f"the adapter serving {task}/{language} (v{version}) "
                                  f"cannot be loaded: {why}",
                                  "an operator must restore or roll back that adapter")

    def warm(self, task: str | None = None) -> int:
        """Load every champion and canary now, so the first requests do not pay for it;
        one that cannot be loaded is noted (readiness reports it) and the rest still load."""
        n = 0
        for row in self.registry.status(task):
            for field_name in ("champion", "canary"):
                version = row.get(field_name)
                if version:
                    try:
                        self._adapter((row["task"], row["language"], int(version)))
                        n += 1
                    except AdapterUnavailable:
                        continue
        return n

    def unready(self) -> list[str]:
        """Adapters the registry routes to (champion or canary) that failed to load."""
        if not self.unloadable:
            return []
        routed = {(r["task"], r["language"], int(r[f])) for r in self.registry.status()
                  for f in ("champion", "canary") if r.get(f)}
        for key in sorted(routed & set(self.unloadable)):  # restored since? try again
            if time.monotonic() - self.unloadable[key][0] >= RELOAD_AFTER_S:
                with self._lock, contextlib.suppress(AdapterUnavailable):
                    self._adapter(key)
        return [f"{t}/{lang} v{v}: {self.unloadable[(t, lang, v)][1]}"
                for t, lang, v in sorted(routed & set(self.unloadable))]

    def route(self, task: str, language: str, key: str) -> Resolution:
        r = self.resolver.resolve(task, language, key)
        if r.version is None or r.served_language is None:
            raise NotFound(f"no adapter serves {task}/{language}: no champion on its track "
                           "or its parent languages' tracks", "promote an adapter first "
                           "(`xlt promote`), or ask for a served language")
        return r

    def predict(self, requests: Sequence[Request]) -> list[list[Served] | XltError]:
        """Serve a batch of requests; each gets its rows or the error that refused it.
        Several model threads may call it at once: routing and adapter loading take the
        engine's lock, the forward pass does not (the batched backend keeps each thread's
        batch apart); the baselines' backends run one batch at a time."""
        started = time.perf_counter()
        with self._lock:
            results, rows = self._route(requests)
        if getattr(self.backend, "concurrent", False):
            out, embeddings = self._forward(requests, rows)
        else:
            with self._model_lock:
                out, embeddings = self._forward(requests, rows)
        for ri, req in enumerate(requests):
            if not isinstance(results[ri], XltError):
                results[ri] = [out[(ri, i)] for i in range(len(req.texts))]
        if self.log_traffic:
            self._log(requests, results, embeddings, time.perf_counter() - started)
        return results

    def _route(self, requests: Sequence[Request]
               ) -> tuple[list[list[Served] | XltError], list[Row]]:
        """Each request's rows routed (routes revalidated once per batch, adapters loaded
        on first use), or the error that refuses that request."""
        self.resolver.revalidate()
        self.batches += 1
        results: list[list[Served] | XltError] = []
        rows: list[Row] = []
        for ri, req in enumerate(requests):
            try:
                mine = []
                for i, (lang, key) in enumerate(zip(req.languages, req.routing_keys,
                                                    strict=True)):
                    r = self.route(req.task, lang, key)
                    akey = (req.task, r.served_language or "", int(r.version or 0))
                    mine.append((ri, i, r, akey, self._adapter(akey)))
                rows += mine
                results.append([])
            except XltError as exc:
                results.append(exc)
        return results, rows

    def _forward(self, requests: Sequence[Request], rows: list[Row]
                 ) -> tuple[dict[tuple[int, int], Served],
                            dict[tuple[int, int], np.ndarray]]:
        by_base: dict[str, list[int]] = {}
        for n, row in enumerate(rows):
            by_base.setdefault(row[4], []).append(n)
        out: dict[tuple[int, int], Served] = {}
        embeddings: dict[tuple[int, int], np.ndarray] = {}
        for base, members in by_base.items():  # one forward pass per base
            texts = [requests[rows[n][0]].texts[rows[n][1]] for n in members]
            keys = [rows[n][3] for n in members]
            labels, probs, names, base_emb = self.backend.classify(
                base, texts, keys, self.log_embeddings and self.log_traffic)
            for j, n in enumerate(members):
                ri, i, r, akey, _ = rows[n]
                k = len(names[j])
                out[(ri, i)] = Served(
                    None, labels[j], float(probs[j, :k].max()),
                    {name: round(float(p), 6) for name, p in zip(names[j], probs[j, :k],
                                                                 strict=True)},
                    requests[ri].languages[i], akey[1], akey[2], r.role, base)
                if base_emb is not None:
                    embeddings[(ri, i)] = base_emb[j]
        return out, embeddings

    def _log(self, requests: Sequence[Request], results: list[list[Served] | XltError],
             embeddings: dict[tuple[int, int], np.ndarray], seconds: float) -> None:
        """Hand the batch's events to the traffic writer (off the request path): each
        Served row gets the future of its id."""
        served = [(ri, i, s) for ri, res in enumerate(results) if not isinstance(res, XltError)
                  for i, s in enumerate(res)]
        if not served or self.writer is None:
            return
        latency = round(seconds * 1000 / len(served), 3)
        events, keep = [], []
        for ri, i, s in served:
            req = requests[ri]
            event = {"task": req.task, "language": s.language, "adapter_version": s.version,
                     "routing_key": req.routing_keys[i][:200], "text": req.texts[i],
                     "prediction": s.label, "confidence": s.confidence,
                     "latency_ms": latency}
            if (ri, i) in embeddings:
                event["embedding"] = embeddings[(ri, i)]
            events.append(event)
            keep.append(self.policy.keeps_text(s.language))
        fut = self.writer.submit(events, keep)
        for n, (_, _, s) in enumerate(served):
            s.logged = (fut, n)

    def close(self) -> None:
        """Write every prediction still queued for the traffic log (a clean shutdown)."""
        if self.writer is not None:
            self.writer.close()

    def feedback(self, task: str, items: Sequence[tuple[int, str]]) -> int:
        """Attach true labels to earlier predictions (canary analysis compares accuracy).
        Once each: a prediction that already has a label, or one given twice, refuses the
        whole request (a conditional update, so two racing requests cannot both land)."""
        known = self.task_labels(task)
        for pid, label in items:
            if known and label not in known:
                raise InvalidInput(f"label {label!r} of prediction {pid} is not a label of "
                                   f"{task}", f"labels: {', '.join(sorted(known))}")
        ids = [pid for pid, _ in items]
        if len(set(ids)) != len(ids):
            raise RefusedChange("a prediction is labelled twice in one request",
                                "send each prediction_id once")
        with self.registry.unit_of_work() as uow:
            rows = set(uow.session.scalars(select(InferenceEvent.id).where(
                InferenceEvent.id.in_(ids), InferenceEvent.task == task)))
            missing = sorted(set(ids) - rows)
            if missing:
                raise NotFound(f"no prediction of task {task} with {len(missing)} of the "
                               "given ids", "send the prediction_id returned by /v1/predict")
            labelled = 0  # rows that had a label when updated (before, or by a racer)
            for pid, label in items:
                done = uow.session.execute(
                    update(InferenceEvent).where(InferenceEvent.id == pid,
                                                 InferenceEvent.feedback_label.is_(None))
                    .values(feedback_label=label)).rowcount
                labelled += 0 if done else 1
            if labelled:
                raise RefusedChange(f"{labelled} of the predictions already have a label; "
                                    "nothing was recorded", "a prediction takes one label")
        return len(items)

    def task_labels(self, task: str) -> set[str]:
        loaded = dict(self._adapters)  # a copy: a model thread may load one meanwhile
        return {name for key, base in loaded.items() if key[0] == task
                for name in self.backend.labels(key, base)}

    def describe(self) -> dict[str, Any]:
        loaded = dict(self._adapters)  # a copy: a model thread may load one meanwhile
        bases = sorted(set(loaded.values()))
        return {"backend": self.backend_name, "bases": bases, "worker": os.getpid(),
                "model_threads": self.model_threads,
                "adapters": [{"task": t, "language": lang, "version": v,
                              "base": loaded[(t, lang, v)]}
                             for t, lang, v in sorted(loaded)],
                "batches": self.batches,
                "traffic": ({"queued": self.writer.queued, "written": self.writer.written,
                             "dropped": self.writer.dropped} if self.writer else None)}


def request_from(task: str, texts: list[str], language: str | None,
                 languages: list[str] | None, routing_key: str | None,
                 routing_keys: list[str] | None) -> Request:
    """A Request with one language and one routing key per text, canonicalised."""
    langs = languages if languages is not None else [language or ""] * len(texts)
    keys = routing_keys if routing_keys is not None else [routing_key or ""] * len(texts)
    try:
        canon = {lang: canonical_language(lang) for lang in set(langs)}
    except XltError as exc:
        raise InvalidInput(str(exc), "send a BCP-47 tag such as sw or sr-Latn") from exc
    return Request(task, [canon[x] for x in langs], list(texts), list(keys))
