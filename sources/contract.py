"""The data contract of the two source systems: tables, columns, keys and change timestamps.

One module names every source column, its type and unit, so the simulator that writes the
sources, the ingestion that lands them and the quality suites that check them agree.

Conventions:
- money is an integer number of fen (1 CNY = 100 fen), columns end in ``_fen``;
- ``*_at`` columns are naive UTC timestamps, ``*_on``/``*_date`` columns are dates;
- every table carries ``updated_at``: the source system's change timestamp, set when the row is
  written. Ingestion extracts by it (the watermark), never by business timestamps, so a row
  about an old business event that is written late is still picked up by the next run.

Source tables have no primary-key constraints on purpose: the real systems are legacy exports
that can hold duplicate keys, which the quality gate must catch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ColumnType = Literal["str", "int", "float", "bool", "date", "ts"]
WATERMARK = "updated_at"


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = False
    description: str = ""
    pii: bool = False


@dataclass(frozen=True)
class ForeignKey:
    column: str
    table: str
    ref_column: str


@dataclass(frozen=True)
class Table:
    source: str
    name: str
    columns: tuple[Column, ...]
    key: str
    description: str = ""
    foreign_keys: tuple[ForeignKey, ...] = field(default=())
    event_time: str | None = None  # the business timestamp of the row, if any
    unique_vin: bool = False  # the table's ``vin`` column must be unique

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.source}.{self.name} has no column {name!r}; it has {self.column_names}")


def _c(name: str, type_: ColumnType, desc: str = "", *, nullable: bool = False, pii: bool = False) -> Column:
    return Column(name, type_, nullable, desc, pii)


_UPDATED = _c(WATERMARK, "ts", "source change timestamp (watermark)")

ERP = "erp"
DEALER = "dealer"

ERP_TABLES: tuple[Table, ...] = (
    Table(ERP, "suppliers", (
        _c("supplier_id", "str", "supplier key"),
        _c("supplier_name", "str", "registered firm name", pii=True),
        _c("registration_no", "str", "unified social credit code", pii=True),
        _c("contact_phone", "str", "contact phone number", pii=True),
        _c("tier", "int", "1 = sells to the OEM, 2 = sells to a tier-1 supplier"),
        _c("city", "str"),
        _c("onboarded_on", "date"),
        _UPDATED,
    ), key="supplier_id", description="tier-1 and tier-2 parts suppliers"),
    Table(ERP, "supplier_links", (
        _c("link_id", "str"),
        _c("supplier_id", "str", "the tier-2 supplier"),
        _c("customer_supplier_id", "str", "the tier-1 supplier it sells to"),
        _c("since_on", "date"),
        _UPDATED,
    ), key="link_id", description="tier-2 → tier-1 customer links",
        foreign_keys=(ForeignKey("supplier_id", "suppliers", "supplier_id"),
                      ForeignKey("customer_supplier_id", "suppliers", "supplier_id"))),
    Table(ERP, "parts", (
        _c("part_id", "str"),
        _c("part_name", "str"),
        _c("category", "str"),
        _c("supplier_id", "str", "tier-1 supplier of the part"),
        _c("unit_price_fen", "int", "contract unit price, fen"),
        _UPDATED,
    ), key="part_id", foreign_keys=(ForeignKey("supplier_id", "suppliers", "supplier_id"),)),
    Table(ERP, "vehicle_models", (
        _c("model_id", "str"),
        _c("model_name", "str"),
        _c("segment", "str"),
        _c("list_price_fen", "int", "list price, fen"),
        _UPDATED,
    ), key="model_id"),
    Table(ERP, "bom", (
        _c("bom_line_id", "str"),
        _c("model_id", "str"),
        _c("part_id", "str"),
        _c("supplier_id", "str", "tier-1 supplier of the line"),
        _c("quantity", "int", "parts per vehicle"),
        _c("unit_price_fen", "int", "fen"),
        _UPDATED,
    ), key="bom_line_id", description="bill of materials per vehicle model",
        foreign_keys=(ForeignKey("model_id", "vehicle_models", "model_id"),
                      ForeignKey("part_id", "parts", "part_id"),
                      ForeignKey("supplier_id", "suppliers", "supplier_id"))),
    Table(ERP, "sub_bom", (
        _c("sub_bom_line_id", "str"),
        _c("parent_part_id", "str", "the tier-1 part"),
        _c("supplier_id", "str", "tier-2 supplier of the component"),
        _c("component_name", "str"),
        _c("quantity", "int", "components per parent part"),
        _c("unit_price_fen", "int", "fen"),
        _UPDATED,
    ), key="sub_bom_line_id", description="tier-2 components of tier-1 parts",
        foreign_keys=(ForeignKey("parent_part_id", "parts", "part_id"),
                      ForeignKey("supplier_id", "suppliers", "supplier_id"))),
    Table(ERP, "orders", (
        _c("order_id", "str"),
        _c("model_id", "str"),
        _c("channel", "str", "consumer | dealer"),
        _c("ordered_at", "ts"),
        _UPDATED,
    ), key="order_id", event_time="ordered_at",
        foreign_keys=(ForeignKey("model_id", "vehicle_models", "model_id"),)),
    Table(ERP, "production", (
        _c("vin", "str", "vehicle identification number"),
        _c("order_id", "str"),
        _c("model_id", "str"),
        _c("plant", "str"),
        _c("produced_at", "ts"),
        _UPDATED,
    ), key="vin", event_time="produced_at", unique_vin=True,
        foreign_keys=(ForeignKey("order_id", "orders", "order_id"),
                      ForeignKey("model_id", "vehicle_models", "model_id"))),
    Table(ERP, "line_off_events", (
        _c("event_id", "str"),
        _c("vin", "str"),
        _c("line_off_at", "ts"),
        _c("iot_verified", "bool", "IoT confirmed books match goods"),
        _c("verification_note", "str", "why verification failed", nullable=True),
        _UPDATED,
    ), key="event_id", event_time="line_off_at", unique_vin=True,
        foreign_keys=(ForeignKey("vin", "production", "vin"),)),
    Table(ERP, "goods_receipts", (
        _c("receipt_id", "str"),
        _c("supplier_id", "str"),
        _c("part_id", "str"),
        _c("quantity", "int"),
        _c("amount_fen", "int", "fen"),
        _c("received_at", "ts"),
        _UPDATED,
    ), key="receipt_id", event_time="received_at",
        foreign_keys=(ForeignKey("supplier_id", "suppliers", "supplier_id"),
                      ForeignKey("part_id", "parts", "part_id"))),
    Table(ERP, "payables", (
        _c("payable_id", "str"),
        _c("receipt_id", "str"),
        _c("supplier_id", "str"),
        _c("amount_fen", "int", "fen"),
        _c("due_on", "date"),
        _c("confirmation_status", "str", "pending | confirmed | disputed | withdrawn"),
        _c("confirmed_at", "ts", "when the OEM confirmed (确权)", nullable=True),
        _UPDATED,
    ), key="payable_id", event_time="confirmed_at",
        foreign_keys=(ForeignKey("receipt_id", "goods_receipts", "receipt_id"),
                      ForeignKey("supplier_id", "suppliers", "supplier_id"))),
    Table(ERP, "credit_memos", (
        _c("memo_id", "str"),
        _c("payable_id", "str"),
        _c("supplier_id", "str"),
        _c("amount_fen", "int", "fen, reduces the payable (dilution)"),
        _c("reason", "str", "return | quality_dispute | price_adjustment"),
        _c("issued_at", "ts"),
        _UPDATED,
    ), key="memo_id", event_time="issued_at",
        foreign_keys=(ForeignKey("payable_id", "payables", "payable_id"),
                      ForeignKey("supplier_id", "suppliers", "supplier_id"))),
    Table(ERP, "supplier_repayments", (
        _c("repayment_id", "str"),
        _c("supplier_id", "str"),
        _c("payable_id", "str", "the financed payable this instalment settles"),
        _c("amount_fen", "int", "fen"),
        _c("due_on", "date"),
        _c("paid_at", "ts", "payment time (rows are written when paid)"),
        _UPDATED,
    ), key="repayment_id", event_time="paid_at",
        foreign_keys=(ForeignKey("supplier_id", "suppliers", "supplier_id"),
                      ForeignKey("payable_id", "payables", "payable_id"))),
)

DEALER_TABLES: tuple[Table, ...] = (
    Table(DEALER, "dealers", (
        _c("dealer_id", "str"),
        _c("dealer_name", "str", pii=True),
        _c("owner_name", "str", pii=True),
        _c("owner_id_number", "str", "resident ID number of the owner", pii=True),
        _c("phone", "str", pii=True),
        _c("city", "str"),
        _c("city_tier", "int", "1 (largest) .. 4"),
        _c("onboarded_on", "date", "start of the relationship (tenure)"),
        _c("status", "str", "active | blocked"),
        _UPDATED,
    ), key="dealer_id", description="used-car dealers"),
    Table(DEALER, "inventory", (
        _c("vin", "str"),
        _c("dealer_id", "str"),
        _c("make_model", "str"),
        _c("model_year", "int"),
        _c("mileage_km", "int"),
        _c("purchase_price_fen", "int", "fen"),
        _c("appraised_value_fen", "int", "fen, platform appraisal"),
        _c("acquired_at", "ts"),
        _UPDATED,
    ), key="vin", event_time="acquired_at", unique_vin=True,
        foreign_keys=(ForeignKey("dealer_id", "dealers", "dealer_id"),)),
    Table(DEALER, "sales", (
        _c("sale_id", "str"),
        _c("vin", "str"),
        _c("dealer_id", "str"),
        _c("sale_price_fen", "int", "fen"),
        _c("sold_at", "ts"),
        _UPDATED,
    ), key="sale_id", event_time="sold_at", unique_vin=True,
        foreign_keys=(ForeignKey("vin", "inventory", "vin"),
                      ForeignKey("dealer_id", "dealers", "dealer_id"))),
    Table(DEALER, "floor_audits", (
        _c("audit_id", "str"),
        _c("dealer_id", "str"),
        _c("audited_at", "ts"),
        _c("vehicles_expected", "int"),
        _c("vehicles_found", "int"),
        _c("skipped", "bool", "dealer refused or missed the audit"),
        _UPDATED,
    ), key="audit_id", event_time="audited_at",
        foreign_keys=(ForeignKey("dealer_id", "dealers", "dealer_id"),)),
    Table(DEALER, "loan_applications", (
        _c("application_id", "str"),
        _c("dealer_id", "str"),
        _c("vin", "str"),
        _c("purchase_price_fen", "int", "fen"),
        _c("appraised_value_fen", "int", "fen"),
        _c("requested_fen", "int", "fen"),
        _c("term_days", "int", "30 | 60 | 90"),
        _c("applied_at", "ts"),
        _UPDATED,
    ), key="application_id", event_time="applied_at", unique_vin=True,
        foreign_keys=(ForeignKey("dealer_id", "dealers", "dealer_id"),
                      ForeignKey("vin", "inventory", "vin"))),
    Table(DEALER, "loan_repayments", (
        _c("repayment_id", "str"),
        _c("application_id", "str"),
        _c("dealer_id", "str"),
        _c("amount_fen", "int", "fen"),
        _c("due_on", "date"),
        _c("paid_at", "ts", "payment time (rows are written when paid)"),
        _UPDATED,
    ), key="repayment_id", event_time="paid_at",
        foreign_keys=(ForeignKey("application_id", "loan_applications", "application_id"),
                      ForeignKey("dealer_id", "dealers", "dealer_id"))),
)

TABLES: dict[str, tuple[Table, ...]] = {ERP: ERP_TABLES, DEALER: DEALER_TABLES}


def table(source: str, name: str) -> Table:
    """The contract of one source table; raises KeyError naming the known tables."""
    for t in TABLES[source]:
        if t.name == name:
            return t
    raise KeyError(f"source {source!r} has no table {name!r}; it has {[t.name for t in TABLES[source]]}")
