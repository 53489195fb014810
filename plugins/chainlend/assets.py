"""Airflow Assets: one per source, updated when a day's batches of that source have landed."""

from __future__ import annotations

from airflow.sdk import Asset

from sources.contract import DEALER, ERP

SOURCE_ASSETS: dict[str, Asset] = {
    ERP: Asset(name="warehouse_erp", uri="chainlend://warehouse/erp", group="chainlend"),
    DEALER: Asset(name="warehouse_dealer", uri="chainlend://warehouse/dealer", group="chainlend"),
}
