"""Decide used-car order-loan applications with the ``dealer_pd`` champion: the applications
published up to the business date without a decision → point-in-time features → one batch call
to the champion → hard rules, PD band policy, amount, expected loss and reason codes
(``lending.approval``) → decisions upserted by application id; the review band goes to the
manual review queue (``chainlend review``). Runs several times a business day and on demand;
only gated, published rows are decided on."""

from airflow.sdk import dag, get_current_context, task

from chainlend.dag_defaults import BUSINESS_DATE_PARAMS, DEFAULT_ARGS, START

APPROVAL_TIMES = "0 1,9,13,17 * * 1-5"  # 01:00 after the nightly ingestion, then during the day


@task
def decide_applications() -> dict:
    from chainlend.dates import business_date_from_context
    from chainlend.lending_ops import approve_batch

    return approve_batch(business_date_from_context(get_current_context()))


@dag(
    schedule=APPROVAL_TIMES,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "owner": "credit-operations"},
    params=BUSINESS_DATE_PARAMS,
    tags=["lending", "dealer"],
    doc_md=__doc__,
)
def approve_dealer_loans():
    decide_applications()


approve_dealer_loans()
