"""The policy file (TOML): what the controller controls and every threshold it acts on.

Every field has a default, so an empty file is a valid policy. A bad file is refused with
the field's path and the reason (pydantic's validation, reworded into one line).

One module per group of tables: fields (what they share), analysis ([drift], [gates],
[canary]), training ([training], [attempts], [upgrade]), jobs ([jobs.gate], [jobs.drift]),
operations ([alerts], [metrics], [serve]), tracks ([[tracks]]) and document (the file
itself, parse_policy, load_policy).
"""

from controller.policy.analysis import CanaryPolicy, DriftPolicy, DriftThresholds, GatePolicy
from controller.policy.document import MAX_POLICY_BYTES, Policy, load_policy, parse_policy
from controller.policy.fields import (
    ALL_EVIDENCE,
    Evidence,
    Strict,
    base_ref,
    canonical_languages,
)
from controller.policy.jobs import JobLimits, JobsPolicy
from controller.policy.operations import (
    AlertsPolicy,
    MetricsPolicy,
    ServePolicy,
    WebhookPolicy,
)
from controller.policy.tracks import TrackPolicy
from controller.policy.training import AttemptPolicy, TrainingPolicy, UpgradePolicy

__all__ = [
    "ALL_EVIDENCE", "MAX_POLICY_BYTES", "AlertsPolicy", "AttemptPolicy", "CanaryPolicy",
    "DriftPolicy", "DriftThresholds", "Evidence", "GatePolicy", "JobLimits", "JobsPolicy",
    "MetricsPolicy", "Policy", "ServePolicy", "Strict", "TrackPolicy", "TrainingPolicy",
    "UpgradePolicy", "WebhookPolicy", "base_ref", "canonical_languages", "load_policy",
    "parse_policy",
]
