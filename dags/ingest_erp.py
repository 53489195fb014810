"""Land the OEM ERP/MES tables (suppliers, BOM, production, IoT line-offs, receipts, payables…)
into the warehouse by watermark, gate every batch with its Great Expectations suite (publish,
quarantine, alert the data owners), then update the ``warehouse_erp`` Airflow Asset."""

from chainlend.ingest_dag import build_ingest_dag

build_ingest_dag("erp", doc_md=__doc__)
