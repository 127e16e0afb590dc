"""What the mirror writes about each object: tags (for search and filters in the UI) and
descriptions (for people). Pure functions of registry views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.mlflow_mirror.naming import tag_value

MANAGED = {"managed_by": "xlt"}
HANDS_OFF = ("Aliases champion / canary / previous follow the xlt registry's track; a change "
             "made here is put back by `xlt mlflow sync`. Act with the xlt CLI "
             "(`xlt promote`, `xlt rollback`, `xlt canary ...`).")


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def adapter_tags(a: dict[str, Any]) -> dict[str, str]:
    """Few tags, the ones people filter by: the UI lists every tag in each row of the
    versions table. Everything else is in the description."""
    tags = {"status": a["status"], "base": tag_value(a["base"]),
            "teacher": tag_value(a["teacher_language"])}
    gates = a.get("gates")
    if gates is not None:
        tags["gates"] = "passed" if gates["passed"] else "failed"
    if a.get("canary_steps"):
        last = a["canary_steps"][-1]
        tags["canary"] = f"step {last['step']} at {last['weight']:g}%: {last['verdict']}"
    return tags


def _reason(a: dict[str, Any]) -> str | None:
    for event in reversed(a.get("history") or []):
        if event["action"] in ("reject", "canary_abort", "rollback") and event["reason"]:
            return str(event["reason"])
    return None


def _gate_lines(gates: dict[str, Any]) -> list[str]:
    lines = [f"### Gate report ({'passed' if gates['passed'] else 'FAILED'}, {gates['at']})",
             "| gate | value | threshold | result |", "|---|---|---|---|"]
    for g in gates.get("gates") or []:
        if isinstance(g, dict):
            lines.append(f"| {g.get('name')} | {tag_value(g.get('value'))} | "
                         f"{tag_value(g.get('threshold'))} | "
                         f"{'pass' if g.get('passed') else 'FAIL'} |")
    return lines


def _canary_lines(steps: list[dict[str, Any]]) -> list[str]:
    lines = ["### Canary steps", "| step | weight % | verdict | at | metrics |",
             "|---|---|---|---|---|"]
    for c in steps:
        metrics = ", ".join(f"{k}={tag_value(v)}" for k, v in sorted((c["metrics"] or {})
                                                                     .items())
                            if not isinstance(v, dict | list))
        lines.append(f"| {c['step']} | {c['weight']:g} | {c['verdict']} | {c['at']} | "
                     f"{metrics} |")
    return lines


def adapter_description(a: dict[str, Any], artifact_uri: str) -> str:
    """The version page, in Markdown: current status first (with the reason of a rejection
    or rollback), then what the adapter is, its gate report, every canary step, history."""
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(_scalar_metrics(a["metrics"]).items()))
    status = f"**Status: {a['status']}**"
    if (reason := _reason(a)) and a["status"] in ("rejected", "rolled_back", "retired"):
        status += f" — {reason}"
    lines = [
        status, "",
        f"{a['task']}/{a['language']} v{a['version']}: {a['kind']} adapter on base "
        f"**{a['base']}** (fingerprint {a['base_fingerprint']}), teacher language "
        f"{a['teacher_language'] or '-'}.",
        f"Training datasets: {', '.join(a['datasets']) or '-'}.",
        f"Metrics: {metrics or '-'}.",
        f"Registry artifact: {artifact_uri} (sha256 {a['artifact_sha256']}).",
        f"Config: {tag_value(a['config'])}; hyperparameters: {tag_value(a['hyperparams'])}.",
        f"Registered by {a['created_by']} at {a['created_at']} (registry adapter id "
        f"{a['id']}).",
    ]
    if a["parent_version"] is not None:
        lines.insert(3, f"Continued from v{a['parent_version']}.")
    if a.get("gates"):
        lines += ["", *_gate_lines(a["gates"])]
    if a.get("canary_steps"):
        lines += ["", *_canary_lines(a["canary_steps"])]
    history = a.get("history") or []
    if history:
        lines += ["", "### History"]
        lines += [f"- {e['at']} {e['action']} by {e['actor']}"
                  + (f": {e['reason']}" if e["reason"] else "") for e in history]
    return "\n".join(lines)


def track_tags(t: dict[str, Any]) -> dict[str, str]:
    return {**MANAGED, "task": t["task"], "language": t["language"],
            "base": tag_value(t.get("base")), "phase": tag_value(t.get("phase")),
            "canary_weight": tag_value(t.get("canary_weight")),
            "revision": tag_value(t.get("revision"))}


def track_description(task: str, language: str) -> str:
    return (f"Adapter lineage of task {task} in language {language}, mirrored from the xlt "
            f"registry: one model version per registry version (tag xlt_version). {HANDS_OFF}")


def encoder_tags(e: dict[str, Any], artifact_uri: str) -> dict[str, str]:
    inputs = e.get("fingerprint_inputs") or {}
    tags = {"ref": e["ref"], "fingerprint": e["fingerprint"],
            "artifact_sha256": e["artifact_sha256"], "artifact_uri": artifact_uri,
            "source": e["source"], "created_by": e["created_by"],
            "created_at": tag_value(e["created_at"])}
    for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "vocab_size"):
        if key in inputs:
            tags[key] = tag_value(inputs[key])
    return tags


def encoder_description(e: dict[str, Any], artifact_uri: str) -> str:
    return (f"Base encoder {e['ref']}, fingerprint {e['fingerprint']}. Model directory "
            f"manifest: {artifact_uri}. Registered by {e['created_by']} at {e['created_at']}.")


def encoder_model_description(name: str) -> str:
    return (f"Base encoder {name}, shared by every language's adapters; mirrored from the xlt "
            "registry, one model version per registered version (tag xlt_version).")


def blob_uri(blob_path: Path) -> str:
    return blob_path.resolve().as_uri()
