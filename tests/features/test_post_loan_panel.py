"""post_loan_features on a panel its caller shares: the same features as on its own panel."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from features.dealer import DealerPanel, application_features, shared_loans
from features.frames import FeatureError
from features.post_loan import post_loan_features

AS_OFS = (dt.date(2025, 11, 3), dt.date(2025, 12, 10), dt.date(2026, 1, 20))


def _book(frames: dict, as_of: dt.date) -> pd.DataFrame:
    apps = frames["dealer.loan_applications"]
    drawn = apps[(apps["updated_at"] < pd.Timestamp(as_of)) & (apps["applied_at"] < pd.Timestamp(as_of))]
    return pd.DataFrame({"application_id": drawn["application_id"].to_numpy(), "as_of": pd.Timestamp(as_of)})


@pytest.mark.parametrize("as_of", AS_OFS)
@pytest.mark.parametrize("extra_days", [0, 1, 45])
def test_a_panel_reaching_further_gives_identical_features(frames, as_of, extra_days):
    loans = _book(frames, as_of)
    expected = post_loan_features(frames, loans, indexed=False)
    asked = []

    def make_panel(lo: int, hi: int) -> DealerPanel:
        asked.append((lo, hi))
        return DealerPanel(frames, lo, hi + extra_days)

    got = post_loan_features(frames, loans, indexed=False, make_panel=make_panel)
    assert len(asked) == 1 and asked[0][1] == (as_of - dt.date(1970, 1, 1)).days
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


@pytest.mark.parametrize("as_of", AS_OFS)
def test_application_features_read_the_shared_panel_identically(frames, as_of):
    """The dealer_pd population of monitoring reads the book's panel when both start on the
    same day: its features are those of application_features' own panel."""
    loans = _book(frames, as_of)
    with shared_loans():
        kept = []
        post_loan_features(frames, loans, indexed=False,
                           make_panel=lambda lo, hi: kept.append(DealerPanel(frames, lo, hi + 30)) or kept[-1])
        panel = kept[0]
        apps = frames["dealer.loan_applications"]
        day = pd.Timestamp(dt.date(1970, 1, 1) + dt.timedelta(days=panel.grid.first))
        same_start = apps[(apps["applied_at"] >= day) & (apps["applied_at"] < pd.Timestamp(as_of))]
        first = same_start["applied_at"].dt.normalize().min()
        population = same_start[same_start["applied_at"].dt.normalize() == first]
        population = pd.concat([population, same_start.sample(min(200, len(same_start)), random_state=1)])
        population = population.drop_duplicates("application_id")
        expected = application_features(frames, population)
        got = application_features(frames, population, panel=panel)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_a_panel_starting_on_another_day_is_refused(frames):
    loans = _book(frames, AS_OFS[1])
    with pytest.raises(FeatureError, match="must start on day"):
        post_loan_features(frames, loans, make_panel=lambda lo, hi: DealerPanel(frames, lo - 1, hi))
    with pytest.raises(FeatureError, match="reach day"):
        post_loan_features(frames, loans, make_panel=lambda lo, hi: DealerPanel(frames, lo, hi - 1))


def test_a_panel_over_other_dealers_is_refused(frames):
    loans = _book(frames, AS_OFS[1])
    fewer = {**frames, "dealer.dealers": frames["dealer.dealers"].iloc[:-1]}
    with pytest.raises(FeatureError, match="dealers of the frames"):
        post_loan_features(frames, loans, make_panel=lambda lo, hi: DealerPanel(fewer, lo, hi))
