"""The promotion gate: every rule on its own, the floors for a first champion, maker/checker."""

from __future__ import annotations

import pytest

from models.governance import PASSED, REFUSED, GatePolicy, GovernanceError, check_approver, gate

GOOD = {"auc": 0.80, "ks": 0.45, "calibration_ratio": 1.02, "score_psi": 0.03}
POLICY = GatePolicy(auc_margin=0.01, ks_margin=0.02, psi_max=0.25, calibration_bounds=(0.75, 1.33),
                    floor_auc=0.65, floor_ks=0.20)


def test_a_better_challenger_passes():
    d = gate(GOOD, {"auc": 0.79, "ks": 0.44}, POLICY)
    assert d.decision == PASSED and d.reasons == ()


@pytest.mark.parametrize("challenger, champion, fragment", [
    ({**GOOD, "auc": 0.78}, {"auc": 0.80, "ks": 0.45}, "OOT AUC 0.7800 is worse than the champion's 0.8000"),
    ({**GOOD, "ks": 0.40}, {"auc": 0.80, "ks": 0.45}, "OOT KS 0.4000 is worse than the champion's 0.4500"),
    ({**GOOD, "score_psi": 0.25}, None, "score PSI train vs OOT 0.2500 is not below 0.25"),
    ({**GOOD, "calibration_ratio": 1.5}, None, "calibration ratio (mean PD / bad rate) 1.500 is outside"),
    ({**GOOD, "calibration_ratio": 0.5}, None, "calibration ratio (mean PD / bad rate) 0.500 is outside"),
    ({**GOOD, "auc": 0.60}, None, "first champion: OOT AUC 0.6000 is below the floor 0.6500"),
    ({**GOOD, "ks": 0.10}, None, "first champion: OOT KS 0.1000 is below the floor 0.2000"),
])
def test_each_rule_refuses_with_its_reason(challenger, champion, fragment):
    d = gate(challenger, champion, POLICY)
    assert d.decision == REFUSED
    assert any(fragment in r for r in d.reasons), d.reasons


def test_within_the_margin_passes():
    d = gate({**GOOD, "auc": 0.795, "ks": 0.44}, {"auc": 0.80, "ks": 0.45}, POLICY)
    assert d.passed


def test_all_failures_are_listed():
    d = gate({"auc": 0.5, "ks": 0.0, "calibration_ratio": 3.0, "score_psi": 0.9}, None, POLICY)
    assert len(d.reasons) == 4


@pytest.mark.parametrize("metrics, fragment", [
    ({"auc": 0.8, "ks": 0.4, "calibration_ratio": 1.0}, "lack 'score_psi'"),
    ({**GOOD, "auc": float("nan")}, "'auc' is NaN"),
])
def test_missing_or_nan_metrics_are_errors(metrics, fragment):
    with pytest.raises(GovernanceError, match=fragment):
        gate(metrics, None, POLICY)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"auc_margin": -0.1}, "auc_margin"),
    ({"psi_max": 0.0}, "psi_max"),
    ({"calibration_bounds": (1.1, 1.2)}, "calibration_bounds"),
    ({"floor_auc": 0.4}, "floors"),
])
def test_invalid_policy(kwargs, fragment):
    with pytest.raises(GovernanceError, match=fragment):
        GatePolicy(**kwargs)


def test_maker_cannot_check():
    assert check_approver(" Li Wei ", "train_risk_models") == "Li Wei"
    with pytest.raises(GovernanceError, match="maker/checker"):
        check_approver("li wei", "Li Wei")
    with pytest.raises(GovernanceError, match="approver's name"):
        check_approver("  ", "x")
