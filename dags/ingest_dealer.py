"""Land the used-car dealer platform tables (dealers, inventory, sales, floor audits, order-loan
applications, repayments)
into the warehouse by watermark, gate every batch with its Great Expectations suite (publish,
quarantine, alert the data owners), then update the ``warehouse_dealer`` Airflow Asset."""

from chainlend.ingest_dag import build_ingest_dag

build_ingest_dag("dealer", doc_md=__doc__)
