"""Airflow Assets: one per source, updated when a day's batches of that source have landed, and
the retrain request of model monitoring."""

from __future__ import annotations

from airflow.sdk import Asset

from sources.contract import DEALER, ERP

SOURCE_ASSETS: dict[str, Asset] = {
    ERP: Asset(name="warehouse_erp", uri="chainlend://warehouse/erp", group="chainlend"),
    DEALER: Asset(name="warehouse_dealer", uri="chainlend://warehouse/dealer", group="chainlend"),
}

# a model monitoring run that finds a champion drifting requests a retrain: train_risk_models is
# scheduled on this asset as well as weekly
RETRAIN_REQUEST = Asset(name="model_retrain_request", uri="chainlend://models/retrain-request", group="chainlend")
