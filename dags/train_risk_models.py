"""Train the risk model families weekly (and on demand): for ``dealer_pd``, ``supplier_pd`` and
``post_loan_behaviour``, build the point-in-time dataset from published warehouse tables, train
LightGBM, XGBoost, CatBoost and a WOE scorecard on an out-of-time split, register the best
candidate in MLflow with alias ``challenger``, and gate it against ``champion`` (promote, wait for
a named approval, or refuse with reasons). Training runs in the one-slot ``training`` pool.
Scheduled weekly and on the ``model_retrain_request`` asset that ``monitor_post_loan`` emits when a
champion drifts.

Params: ``business_date`` (features and labels use data published through that date) and
``families`` (a subset to train)."""

from airflow.sdk import AssetOrTimeSchedule, Param, dag, get_current_context, task
from airflow.timetables.trigger import CronTriggerTimetable

from chainlend.assets import RETRAIN_REQUEST
from chainlend.dag_defaults import BUSINESS_DATE_PARAMS, DEFAULT_ARGS, START, TRAINING_POOL, WEEKLY_SAT_0200

FAMILIES = ("dealer_pd", "supplier_pd", "post_loan_behaviour")


def _as_of():
    import datetime as dt

    from chainlend.dates import business_date_from_context

    # data published through the business date: as_of is the following midnight
    return business_date_from_context(get_current_context()) + dt.timedelta(days=1)


@task(task_id="build_dataset")
def build_dataset(family: str) -> dict:
    from airflow.sdk.exceptions import AirflowSkipException

    from chainlend.model_ops import build_dataset as build

    if family not in (get_current_context()["params"].get("families") or FAMILIES):
        raise AirflowSkipException(f"{family} not requested in this run")
    return build(family, _as_of())


@task(task_id="train", pool=TRAINING_POOL)
def train(pointer: dict) -> dict:
    from chainlend.model_ops import train as train_family

    context = get_current_context()
    # the run id makes a retry find the version it already registered instead of adding one
    return train_family(pointer["family"], pointer, training_key=f"{context['dag_run'].run_id}")


@task(task_id="gate")
def gate(trained: dict) -> dict:
    from chainlend.model_ops import gate as gate_version

    return gate_version(trained["family"], trained)


@dag(
    # weekly, and whenever model monitoring requests a retrain (a champion drifting)
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(WEEKLY_SAT_0200, timezone="UTC"),
                                 assets=[RETRAIN_REQUEST]),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "owner": "risk-modelling"},
    params={**BUSINESS_DATE_PARAMS,
            "families": Param(list(FAMILIES), type="array", description="model families to train")},
    tags=["models"],
    doc_md=__doc__,
)
def train_risk_models():
    for family in FAMILIES:
        pointer = build_dataset.override(task_id=f"build_dataset_{family}")(family)
        trained = train.override(task_id=f"train_{family}")(pointer)
        gate.override(task_id=f"gate_{family}")(trained)


train_risk_models()
