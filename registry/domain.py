"""Domain rules that do not need the database: adapter status transitions and the
compatibility check. Commands call these before changing anything."""

from __future__ import annotations

from registry.errors import IncompatibleAdapter, InvalidInput, InvalidTransition
from registry.schema import Adapter, BaseEncoder

REGISTERED, GATED, CANARY, CHAMPION = "registered", "gated", "canary", "champion"
RETIRED, REJECTED, ROLLED_BACK = "retired", "rejected", "rolled_back"
STATUSES = (REGISTERED, GATED, CANARY, CHAMPION, RETIRED, REJECTED, ROLLED_BACK)

# which statuses each move may start from
CAN_GATE = {REGISTERED}
CAN_START_CANARY = {REGISTERED, GATED}
CAN_PROMOTE = {REGISTERED, GATED, CANARY}
CAN_REJECT = {REGISTERED, GATED, CANARY}
CAN_ROLL_BACK_TO = {RETIRED, ROLLED_BACK, GATED, REGISTERED}


def require_status(adapter: Adapter, allowed: set[str], action: str) -> None:
    if adapter.status not in allowed:
        hints = {
            REJECTED: "it was rejected; register or train a new version",
            CHAMPION: "it is already the champion",
            RETIRED: "it is a retired champion; use `xlt rollback --to` to bring it back",
            CANARY: "it is already the canary",
        }
        raise InvalidTransition(
            f"cannot {action} {adapter.ref}: its status is {adapter.status}",
            hints.get(adapter.status, f"allowed from: {', '.join(sorted(allowed))}"),
        )


def require_compatible(adapter: Adapter, base: BaseEncoder, action: str) -> None:
    """The contract at promote (and canary): the adapter was trained on the track's base."""
    if adapter.base_fingerprint != base.fingerprint:
        raise IncompatibleAdapter(
            f"cannot {action} {adapter.ref}: it was trained on base fingerprint "
            f"{adapter.base_fingerprint[:12]} but the track serves {base.ref} "
            f"(fingerprint {base.fingerprint[:12]})",
            "retrain the adapter on the track's base (`xlt encoder impact` lists them)",
        )


def validate_weight(weight: float) -> float:
    if not 0 < weight <= 100:
        raise InvalidInput(f"canary weight {weight} is out of range",
                           "give a percentage of traffic greater than 0 and at most 100")
    return float(weight)
