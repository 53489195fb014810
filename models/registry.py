"""The model registry behind one small interface, over an explicit ``MlflowClient``.

MLflow 3 conventions only: registered model per family (``dealer_pd``, ``supplier_pd``,
``post_loan_behaviour``), aliases ``challenger`` and ``champion`` (never stages), and version
tags for everything a reviewer needs: data window, feature list, parameters, git commit,
metrics, and the history of alias changes (who, when, why, metrics).

The audit *table* lives in the warehouse and is written by the caller
(:mod:`chainlend.model_ops`); :meth:`Registry.set_alias` returns the :class:`AliasChange` it
records, so both are written from the same value.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass

TAG_LIMIT = 5_000  # MLflow's version tag values are limited; longer values are refused, not cut


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message names the model, version or alias."""


@dataclass(frozen=True)
class AliasChange:
    family: str
    alias: str
    action: str  # set | removed | refused | pending
    version: str
    previous_version: str | None
    actor: str
    reason: str
    metrics: dict
    at: dt.datetime

    def as_row(self) -> dict:
        row = asdict(self)
        row["metrics"] = json.dumps(self.metrics, sort_keys=True, default=float)
        return row


def _tag(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) > TAG_LIMIT:
        raise RegistryError(f"tag value of {len(text)} characters exceeds MLflow's limit {TAG_LIMIT}")
    return text


class Registry:
    """Register versions, read and move aliases, tag versions."""

    def __init__(self, client):
        self.client = client

    def register(self, family: str, model_uri: str, *, run_id: str, tags: dict, model_id: str | None = None) -> str:
        """Register ``model_uri`` as a new version of ``family``; returns the version number.

        ``model_id``: the MLflow 3 logged model behind a ``models:/m-…`` URI (``ModelInfo.model_id``);
        a tracking server (REST store) refuses such a source without it, a SQL store does not."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(family)
        except MlflowException:
            self.client.create_registered_model(
                family, description=f"chainlend {family} risk model (PD per row; aliases champion/challenger)")
        mv = self.client.create_model_version(
            family, source=model_uri, run_id=run_id, tags={k: _tag(v) for k, v in tags.items()}, model_id=model_id)
        return str(mv.version)

    def version(self, family: str, alias: str) -> str | None:
        """The version holding ``alias``, or None when the alias is not set."""
        from mlflow.exceptions import MlflowException

        try:
            rm = self.client.get_registered_model(family)
        except MlflowException:
            return None
        v = (rm.aliases or {}).get(alias)
        return str(v) if v is not None else None

    def tags(self, family: str, version: str) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.client.get_model_version(family, str(version)).tags)
        except MlflowException as exc:
            raise RegistryError(f"{family} has no version {version}: {exc}") from exc

    def tag(self, family: str, version: str, key: str, value) -> None:
        self.client.set_model_version_tag(family, str(version), key, _tag(value))

    def set_alias(self, family: str, alias: str, version: str, *, actor: str, reason: str,
                  metrics: dict, at: dt.datetime) -> AliasChange:
        """Point ``alias`` at ``version`` and tag the version with the change."""
        self.tags(family, version)  # raises RegistryError if the version does not exist
        previous = self.version(family, alias)
        self.client.set_registered_model_alias(family, alias, str(version))
        change = AliasChange(family, alias, "set", str(version), previous, actor, reason, metrics, at)
        self._tag_change(change)
        return change

    def record(self, family: str, alias: str, version: str, action: str, *, actor: str, reason: str,
               metrics: dict, at: dt.datetime) -> AliasChange:
        """An alias decision that moved nothing (refused, pending approval): tagged and returned."""
        change = AliasChange(family, alias, action, str(version), self.version(family, alias), actor, reason,
                             metrics, at)
        self._tag_change(change)
        return change

    def _tag_change(self, c: AliasChange) -> None:
        stamp = c.at.strftime("%Y%m%dT%H%M%S")
        self.tag(c.family, c.version, f"alias.{c.alias}.{c.action}.{stamp}",
                 {"by": c.actor, "at": c.at.isoformat(), "why": c.reason, "previous": c.previous_version,
                  "metrics": c.metrics})
        self.tag(c.family, c.version, f"alias.{c.alias}.last", c.action)
