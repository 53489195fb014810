"""Daily post-loan monitoring: repayments into the ledger; days past due, DPD buckets and roll
rates; the early-warning rules (``lending.early_warning``, versioned thresholds) for dealers and
suppliers and the ``post_loan_behaviour`` champion's score → a level per borrower (green / yellow /
orange / red) with actions (freeze new drawdowns, cut the limit, site visit) that approval and
disbursement obey; the watchlist with history; one digest e-mail per business date to credit
operations. Beside it, model monitoring: PSI of each champion's score and features against its
training window (bands 0.10 / 0.25) and AUC once labels mature; a drift past the retrain threshold
emits the ``model_retrain_request`` asset, which schedules ``train_risk_models``."""

from airflow.sdk import dag, get_current_context, task

from chainlend.assets import RETRAIN_REQUEST
from chainlend.dag_defaults import BUSINESS_DATE_PARAMS, DEFAULT_ARGS, START

BUSINESS_DAYS_2345 = "45 23 * * 1-5"  # after the 23:00 ingestion; the logical date is the business date


def _business_date():
    from chainlend.dates import business_date_from_context

    return business_date_from_context(get_current_context())


@task
def post_repayments() -> dict:
    from chainlend.monitoring_ops import post_repayments

    return post_repayments(_business_date())


@task
def early_warning(repayments: dict) -> dict:
    from chainlend.monitoring_ops import early_warning

    return early_warning(_business_date())


@task
def send_digest(ew: dict) -> dict:
    from chainlend.mail import Mailer
    from chainlend.monitoring_ops import credit_ops_recipients, send_digest

    return send_digest(_business_date(), Mailer(), credit_ops_recipients())


@task
def monitor_models(ew: dict) -> dict:
    from chainlend.monitoring_ops import monitor_models

    # the behaviour features and PDs, the other populations' features and the matured labels
    # early_warning computed, through its side files (XCom: the paths)
    return monitor_models(_business_date(), behaviour_file=ew["behaviour_file"],
                          population_files=ew["population_files"])


@task.short_circuit
def retrain_needed(monitoring: dict) -> bool:
    return bool(monitoring["retrain"])


@task(outlets=[RETRAIN_REQUEST])
def request_retrain(monitoring: dict) -> dict:
    return {"families": monitoring["retrain"], "as_of": monitoring["as_of"]}


@dag(
    schedule=BUSINESS_DAYS_2345,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "owner": "credit-operations"},
    params=BUSINESS_DATE_PARAMS,
    tags=["lending", "monitoring"],
    doc_md=__doc__,
)
def monitor_post_loan():
    ew = early_warning(post_repayments())
    send_digest(ew)
    monitoring = monitor_models(ew)
    retrain_needed(monitoring) >> request_retrain(monitoring)


monitor_post_loan()
