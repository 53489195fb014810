"""Point-in-time feature and label builders of the three model families (pure: pandas/numpy only).

Point-in-time rule: an as-of date (a ``datetime.date``) means midnight at the start of that day;
a transactional row is known at it iff its ``updated_at`` and its event time are both earlier.
Features use only known rows; labels only rows known at the dataset's as-of date.
"""

from features.dealer import application_features, dealer_pd_dataset
from features.definitions import FEATURES, Feature, feature_names
from features.frames import FeatureError
from features.post_loan import post_loan_dataset, post_loan_features
from features.supplier import supplier_features, supplier_pd_dataset

__all__ = [
    "FEATURES",
    "Feature",
    "FeatureError",
    "application_features",
    "dealer_pd_dataset",
    "feature_names",
    "post_loan_dataset",
    "post_loan_features",
    "supplier_features",
    "supplier_pd_dataset",
]
