"""The promotion gate: may a challenger replace the champion?

Pure functions over plain metric dicts (``auc``, ``ks``, ``calibration_ratio`` and ``score_psi``
as computed by :mod:`models.metrics` on the *same* out-of-time window for both models).

Rules (each failure is a reason naming the metric, the value and the bound):

- with a champion: challenger AUC >= champion AUC - ``auc_margin`` and KS >= champion KS -
  ``ks_margin``;
- without a champion (the first one): AUC >= ``floor_auc`` and KS >= ``floor_ks``;
- always: PSI of the score between training and out-of-time < ``psi_max`` (0.25, the
  "significant shift" band) and calibration-in-the-large (mean PD / observed bad rate) within
  ``calibration_bounds``.

A passing challenger becomes champion at once, or waits for a named approval when
``require_approval`` is set (maker/checker: the engineer who trained it cannot approve it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PASSED = "passed"
REFUSED = "refused"

CHALLENGER = "challenger"
CHAMPION = "champion"


class GovernanceError(ValueError):
    """A gate policy or an approval request is invalid; the message says what and why."""


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds of the automatic gate (versioned with the code: ``version``)."""

    version: str = "gate-2026.11"
    auc_margin: float = 0.01
    ks_margin: float = 0.02
    psi_max: float = 0.25
    calibration_bounds: tuple[float, float] = (0.75, 1.33)
    floor_auc: float = 0.65
    floor_ks: float = 0.20
    require_approval: bool = False

    def __post_init__(self) -> None:
        for name in ("auc_margin", "ks_margin"):
            v = getattr(self, name)
            if not 0.0 <= v < 0.5:
                raise GovernanceError(f"GatePolicy.{name} must be in [0, 0.5), got {v!r}")
        if not 0.0 < self.psi_max <= 1.0:
            raise GovernanceError(f"GatePolicy.psi_max must be in (0, 1], got {self.psi_max!r}")
        lo, hi = self.calibration_bounds
        if not 0.0 < lo < 1.0 < hi:
            raise GovernanceError(f"GatePolicy.calibration_bounds must satisfy 0 < lo < 1 < hi, got {(lo, hi)!r}")
        if not 0.5 <= self.floor_auc < 1.0 or not 0.0 <= self.floor_ks < 1.0:
            raise GovernanceError(f"GatePolicy floors must be AUC in [0.5, 1) and KS in [0, 1), got "
                                  f"{self.floor_auc!r} and {self.floor_ks!r}")

    def as_dict(self) -> dict:
        return {"version": self.version, "auc_margin": self.auc_margin, "ks_margin": self.ks_margin,
                "psi_max": self.psi_max, "calibration_bounds": list(self.calibration_bounds),
                "floor_auc": self.floor_auc, "floor_ks": self.floor_ks,
                "require_approval": self.require_approval}


@dataclass(frozen=True)
class GateDecision:
    decision: str  # PASSED | REFUSED
    reasons: tuple[str, ...]
    challenger: dict
    champion: dict | None
    policy: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.decision == PASSED

    def as_dict(self) -> dict:
        return {"decision": self.decision, "reasons": list(self.reasons), "challenger": self.challenger,
                "champion": self.champion, "policy": self.policy}


REQUIRED = ("auc", "ks", "calibration_ratio", "score_psi")


def _metric(metrics: dict, name: str, who: str) -> float:
    if name not in metrics or metrics[name] is None:
        raise GovernanceError(f"{who} metrics lack {name!r}; got {sorted(metrics)}")
    v = float(metrics[name])
    if math.isnan(v):
        raise GovernanceError(f"{who} metric {name!r} is NaN")
    return v


def gate(challenger: dict, champion: dict | None, policy: GatePolicy) -> GateDecision:
    """Decide whether ``challenger`` may replace ``champion`` (None: there is no champion yet)."""
    c = {k: _metric(challenger, k, "challenger") for k in REQUIRED}
    reasons: list[str] = []
    if champion is None:
        if c["auc"] < policy.floor_auc:
            reasons.append(f"first champion: OOT AUC {c['auc']:.4f} is below the floor {policy.floor_auc:.4f}")
        if c["ks"] < policy.floor_ks:
            reasons.append(f"first champion: OOT KS {c['ks']:.4f} is below the floor {policy.floor_ks:.4f}")
        ch = None
    else:
        ch = {k: _metric(champion, k, "champion") for k in ("auc", "ks")}
        if c["auc"] < ch["auc"] - policy.auc_margin:
            reasons.append(f"OOT AUC {c['auc']:.4f} is worse than the champion's {ch['auc']:.4f} "
                           f"beyond the margin {policy.auc_margin:.4f}")
        if c["ks"] < ch["ks"] - policy.ks_margin:
            reasons.append(f"OOT KS {c['ks']:.4f} is worse than the champion's {ch['ks']:.4f} "
                           f"beyond the margin {policy.ks_margin:.4f}")
    if c["score_psi"] >= policy.psi_max:
        reasons.append(f"score PSI train vs OOT {c['score_psi']:.4f} is not below {policy.psi_max:.2f}")
    lo, hi = policy.calibration_bounds
    if not lo <= c["calibration_ratio"] <= hi:
        reasons.append(f"calibration ratio (mean PD / bad rate) {c['calibration_ratio']:.3f} is outside "
                       f"[{lo:.2f}, {hi:.2f}]")
    return GateDecision(REFUSED if reasons else PASSED, tuple(reasons), c, ch, policy.as_dict())


def check_approver(approver: str, trained_by: str | None) -> str:
    """The approver's name, checked: not empty, and not the maker (four eyes)."""
    name = (approver or "").strip()
    if not name:
        raise GovernanceError("an approval needs the approver's name (--by NAME)")
    if trained_by and name.casefold() == trained_by.strip().casefold():
        raise GovernanceError(f"{name!r} trained this version and cannot approve it (maker/checker)")
    return name
