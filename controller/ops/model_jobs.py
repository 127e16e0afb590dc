"""What a gate job and a drift job do in their worker (a thread, a subprocess, a Ray actor):
the model work the tick no longer does. Each takes the job's params, which the tick
resolved when it queued the job (the floors as for the candidate's base, the languages
whose fairness it affects, the drift thresholds, the traffic window), so a worker needs no
policy file and a rerun after a lost worker computes the same thing.

The results are JSON (written on the job row); nothing here writes a registry row the
loop acts on: the tick applies the result in one guarded transaction
(controller.loop.gate_steps, controller.loop.drift_steps)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controller.analysis.gates import evaluate_gates
from controller.drift.check import check_language
from controller.policy import DriftPolicy, GatePolicy
from controller.traffic.log import read_window

# `ops` below is a controller.ops.live.LiveOperations (its evaluation, fairness and drift
# reference, with their per-process caches); not imported here, as live imports this
LiveOperations = Any


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def run_gate(ops: LiveOperations, params: dict[str, Any]) -> dict[str, Any]:
    """Evaluate candidate and champion on the same held-out items, the candidate in every
    language it affects, and judge the gates: {"version", "gates", "failed", "metrics"}."""
    task, language, version = params["task"], params["language"], int(params["version"])
    champion = params.get("champion")
    candidate = ops.evaluate(task, language, version)
    champ = ops.evaluate(task, language, int(champion)) if champion is not None else None
    fairness = ops.fairness_of(task, language, version,
                               {k: float(v) for k, v in params["fairness"].items()})
    gates = evaluate_gates(candidate, champ, GatePolicy(**params["gates"]), fairness)
    report = [g.to_dict() for g in gates]
    return {"version": version, "gates": report,
            "failed": [g.name for g in gates if not g.passed],
            "metrics": {k: v for k, v in candidate.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)}}


def run_drift(ops: LiveOperations, params: dict[str, Any]) -> dict[str, Any]:
    """One track's drift check over the window the tick fixed: the report's fields (as
    `record_drift_report` takes them, times as timestamps) and its files' paths."""
    task, language = params["task"], params["language"]
    reference = ops.reference(task, language)
    events = read_window(ops.reg, task, language, start=_dt(float(params["start"])),
                         end=_dt(float(params["end"])), limit=int(params["limit"]))
    result = check_language(reference, events, DriftPolicy(**params["drift"]),
                            reports_dir=ops.reg.settings.reports_dir,
                            html=params.get("html", ops.html))  # type: ignore[arg-type]
    kwargs = result.registry_kwargs()
    # the registered datasets the reference was read from: the MLflow run names them
    # and the job: the mirror logs the MLflow run of a job's report (`xlt drift check`,
    # which runs no job, logs its own)
    kwargs["reference"] = {**kwargs["reference"], "job_id": params.get("job_id"),
                           "datasets": ops.reference_datasets(task, language)}
    for key in ("window_start", "window_end"):
        kwargs[key] = kwargs[key].timestamp() if kwargs[key] is not None else None
    return {"verdict": result.verdict, "drifted_signals": result.drifted_signals,
            "report": kwargs, "elapsed_s": round(result.elapsed_s, 3)}
