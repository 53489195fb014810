"""Great Expectations 1.x: the suite of a table as code, and a validator that runs it.

``GxValidator(project_dir, docs_dir)`` keeps a file-mode GX project (suites, validation
definitions, checkpoints, results) and renders every validation into a static Data Docs site
under ``docs_dir`` (``index.html`` at its top). With ``project_dir=None`` it runs in an
ephemeral context and renders nothing (property tests, benchmarks).

Measured facts that shape this module (GX 1.24.1, 1M rows):
- large value sets in an expectation are serialised dozens of times per run (10 s for 100k
  keys), so referential and cross-row checks arrive as precomputed boolean flag columns and
  GX checks ``flag in [True]``;
- ``great_expectations`` takes 3-5 s to import: import this module inside task bodies.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from expectations.frames import TYPES_OK, VIN_OK, fk_flag
from expectations.rules import Check
from sources.contract import Table

SITE = "chainlend_docs"
DATASOURCE = "landing"


@dataclass
class CheckResult:
    check: str
    severity: str
    success: bool
    unexpected_count: int | None
    observed: object = None
    error: str | None = None


@dataclass
class Validation:
    success: bool
    results: dict[str, CheckResult]
    docs_url: str | None = None
    statistics: dict = field(default_factory=dict)


def suite_name(contract: Table) -> str:
    return f"{contract.source}.{contract.name}"


def build_expectations(contract: Table, checks: list[Check]) -> list:
    """The GX expectations of ``checks`` (runtime bounds are ``$PARAMETER`` references)."""
    import great_expectations.expectations as gxe

    flags = [TYPES_OK] + [fk_flag(fk.column) for fk in contract.foreign_keys]
    if contract.unique_vin and contract.key != "vin":
        flags.append(VIN_OK)
    out = []
    for c in checks:
        meta = {"severity": c.severity, "check": c.name}
        kw = {"meta": meta, "description": f"[{c.severity}] {c.name}: {c.description}"}
        if c.kind == "schema":
            out.append(gxe.ExpectTableColumnsToMatchSet(
                column_set=list(contract.column_names) + flags, exact_match=True, **kw))
        elif c.kind in ("volume", "freshness"):
            out.append(gxe.ExpectTableRowCountToBeBetween(
                min_value={"$PARAMETER": f"{c.kind}_min"}, max_value={"$PARAMETER": f"{c.kind}_max"}, **kw))
        elif c.kind == "type":
            continue  # one expectation on the combined flag below
        elif c.kind == "not_null":
            out.append(gxe.ExpectColumnValuesToNotBeNull(column=c.column, **kw))
        elif c.kind == "range":
            out.append(gxe.ExpectColumnValuesToBeBetween(column=c.column, min_value=c.min_value,
                                                         max_value=c.max_value, **kw))
        elif c.kind == "allowed":
            out.append(gxe.ExpectColumnValuesToBeInSet(column=c.column, value_set=list(c.allowed), **kw))
        elif c.kind == "not_future":
            out.append(gxe.ExpectColumnValuesToBeBetween(
                column=c.column, max_value={"$PARAMETER": "window_end"}, **kw))
        elif c.kind == "unique":
            out.append(gxe.ExpectColumnValuesToBeUnique(column=c.column, **kw))
        elif c.kind == "unique_vin":
            out.append(gxe.ExpectColumnValuesToBeInSet(column=VIN_OK, value_set=[True], **kw))
        elif c.kind == "fk":
            out.append(gxe.ExpectColumnValuesToBeInSet(column=fk_flag(c.column), value_set=[True], **kw))
        else:
            raise ValueError(f"unknown check kind {c.kind!r} ({c.name})")
    if any(c.kind == "type" for c in checks):
        out.append(gxe.ExpectColumnValuesToBeInSet(
            column=TYPES_OK, value_set=[True], meta={"severity": "row", "check": "type"},
            description="[row] type: every value can be read as its contract type"))
    return out


class GxValidator:
    """Runs table suites with Great Expectations; see the module docstring."""

    def __init__(self, project_dir: Path | None = None, docs_dir: Path | None = None):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        self.project_dir = Path(project_dir) if project_dir else None
        self.docs_dir = Path(docs_dir) if docs_dir else None
        self._ctx = None
        self._site = None
        self._defs: dict[str, object] = {}

    # -- context ------------------------------------------------------------------------------
    def _context(self):
        if self._ctx is not None:
            return self._ctx
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        if self.project_dir is None:
            ctx = gx.get_context(mode="ephemeral")
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        else:
            self.project_dir.mkdir(parents=True, exist_ok=True)
            ctx = gx.get_context(mode="file", project_root_dir=str(self.project_dir))
            if (ctx.variables.progress_bars or {}).get("globally", True):
                ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
                ctx.variables.save()
            sites = ctx.get_config().data_docs_sites or {}
            wanted = str(self.docs_dir or self.project_dir / "data_docs")
            current = (sites.get(SITE) or {}).get("store_backend", {}).get("base_directory")
            if current != wanted:
                for s in list(sites):
                    ctx.delete_data_docs_site(s)
                ctx.add_data_docs_site(SITE, {
                    "class_name": "SiteBuilder", "show_how_to_buttons": False,
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": wanted},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder",
                                           "validation_results_limit": 1000},
                })
        self._ctx = ctx
        return ctx

    @contextmanager
    def _lock(self):
        """Serialise GX project writes between processes on this machine."""
        if self.project_dir is None:
            yield
            return
        self.project_dir.mkdir(parents=True, exist_ok=True)
        with open(self.project_dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _definition(self, contract: Table, checks: list[Check]):
        """The checkpoint (file mode) or batch definition + suite (ephemeral) of a table."""
        import great_expectations as gx

        ctx = self._context()
        name = suite_name(contract)
        memo = (contract, tuple(checks))  # frozen dataclasses: same checks, same suite
        cached = self._defs.get(name)
        if cached is not None and cached[0] == memo:
            return cached[1]
        expectations = build_expectations(contract, checks)
        digest = hashlib.sha256(json.dumps(
            [e.configuration.to_json_dict() for e in expectations], sort_keys=True, default=str
        ).encode()).hexdigest()[:16]
        if self.project_dir is None:
            try:
                ds = ctx.data_sources.get(DATASOURCE)
            except (KeyError, ValueError, LookupError):
                ds = ctx.data_sources.add_pandas(DATASOURCE)
            asset = next((a for a in ds.assets if a.name == name), None) or ds.add_dataframe_asset(name)
            bd = next((b for b in asset.batch_definitions if b.name == "batch"), None) \
                or asset.add_batch_definition_whole_dataframe("batch")
            suite = ctx.suites.add_or_update(
                gx.ExpectationSuite(name=name, expectations=expectations, meta={"digest": digest}))
            definition = ("ephemeral", bd, suite)
        else:
            definition = ("file", self._checkpoint(ctx, name, expectations, digest), None)
        self._defs[name] = (memo, definition)
        return definition

    @staticmethod
    def _checkpoint(ctx, name: str, expectations: list, digest: str):
        """The stored checkpoint of a table; (re)created when the suite changed.

        GX 1.24 quirk: a validation definition built over an asset loaded from the project's
        store fails at run time (MissingDataContextError), so a changed suite gets a freshly
        added asset; an unchanged one is only read back.
        """
        import great_expectations as gx

        try:
            stored = ctx.suites.get(name)
            if (stored.meta or {}).get("digest") == digest:
                return ctx.checkpoints.get(f"{name}.cp")
        except (KeyError, ValueError, LookupError, gx.exceptions.DataContextError):
            pass  # not set up yet (or incomplete): build it below
        try:
            ds = ctx.data_sources.get(DATASOURCE)
        except (KeyError, ValueError, LookupError):
            ds = ctx.data_sources.add_pandas(DATASOURCE)
        if any(a.name == name for a in ds.assets):
            ds.delete_asset(name)
        bd = ds.add_dataframe_asset(name).add_batch_definition_whole_dataframe("batch")
        suite = ctx.suites.add_or_update(
            gx.ExpectationSuite(name=name, expectations=expectations, meta={"digest": digest}))
        vd = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{name}.vd", data=bd, suite=suite))
        # no UpdateDataDocsAction: it rebuilds the index on every run (its cost grows with the
        # number of results); validate() builds the one page, build_index() the index
        ctx.checkpoints.add_or_update(gx.Checkpoint(
            name=f"{name}.cp", validation_definitions=[vd], actions=[], result_format="SUMMARY"))
        return ctx.checkpoints.get(f"{name}.cp")

    # -- validation ---------------------------------------------------------------------------
    def validate(self, frame: pd.DataFrame, contract: Table, checks: list[Check], params: dict,
                 run_name: str) -> Validation:
        """Validate ``frame`` (a check frame with flags) against the table's suite."""
        from great_expectations.core.run_identifier import RunIdentifier

        with self._lock():
            mode, a, b = self._definition(contract, checks)
            if mode == "ephemeral":
                batch = a.get_batch(batch_parameters={"dataframe": frame})
                vres = batch.validate(b, result_format="SUMMARY", expectation_parameters=params)
                url = None
            else:
                run_id = RunIdentifier(run_name=run_name, run_time=dt.datetime.now(dt.UTC))
                vrid, vres = self._run_checkpoint(a, frame, params, run_id)
                url = self._render_page(vrid, vres)
        results = {}
        for r in vres.results:
            meta = r.expectation_config.meta or {}
            info = r.exception_info or {}
            if info and "raised_exception" not in info:
                info = next(iter(info.values()))
            error = info.get("exception_message") if info.get("raised_exception") else None
            results[meta["check"]] = CheckResult(
                check=meta["check"], severity=meta["severity"], success=bool(r.success),
                unexpected_count=(r.result or {}).get("unexpected_count"),
                observed=(r.result or {}).get("observed_value"), error=error)
        return Validation(bool(vres.success), results, url, dict(vres.statistics or {}))

    @staticmethod
    def _run_checkpoint(checkpoint, frame: pd.DataFrame, params: dict, run_id):
        """What ``checkpoint.run()`` does for a checkpoint of one validation definition and no
        actions: run the definition with the checkpoint's id and result format (it stores the
        result); returns the result's identifier and the result.

        ``Checkpoint.run`` first re-reads the checkpoint, its validation definition and suite
        from the project's stores and compares them with the objects in hand (freshness), then
        the definition does so again: ~a third of a small table's validation, re-reading YAML
        and JSON files. The objects here are the ones :meth:`_checkpoint` read back from the
        stores in this process; the definition's own freshness check still runs."""
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )

        (vd,) = checkpoint.validation_definitions
        vres = vd.run(checkpoint_id=checkpoint.id, batch_parameters={"dataframe": frame},
                      expectation_parameters=params, result_format=checkpoint.result_format, run_id=run_id)
        vrid = ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=vd.suite.name),
                                          run_id=run_id, batch_identifier=vres.batch_id)
        return vrid, vres

    def _render_page(self, vrid, vres) -> str:
        """Render the Data Docs page of one validation result; return its ``file://`` URL.

        ``build_data_docs(resource_identifiers=[id])`` lists every stored result to find the one
        to render (0.75 s after 570 validations, growing); this renders the result in hand with
        the site's own renderer, view and store, so the page is the same and the cost constant.
        """
        from great_expectations.data_context.types.resource_identifiers import SiteSectionIdentifier

        ctx = self._context()
        if self._site is None:
            self._site = ctx._init_site_builder_for_data_docs_site_creation(
                site_name=SITE, site_config=ctx.variables.data_docs_sites[SITE])
        section = self._site.site_section_builders["validations"]
        page = section.view_class.render(section.renderer_class.render(vres),
                                         data_context_id=section.data_context_id,
                                         show_how_to_buttons=False)
        section.target_store.set(SiteSectionIdentifier(site_section_name="validations",
                                                        resource_identifier=vrid), page)
        return self._site.get_resource_url(resource_identifier=vrid)

    def build_index(self) -> Path | None:
        """Rebuild the Data Docs index page (every stored validation is listed)."""
        if self.project_dir is None:
            return None
        from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

        # GX rebuilds every page when given no identifiers; one that matches no page builds the
        # index alone (it re-reads the stored results to list them)
        only_index = [ExpectationSuiteIdentifier(name="__index_only__")]
        with self._lock():
            self._context().build_data_docs(site_names=[SITE], build_index=True, resource_identifiers=only_index)
        return self.docs_index()

    def docs_index(self) -> Path | None:
        if self.project_dir is None:
            return None
        return (self.docs_dir or self.project_dir / "data_docs") / "index.html"
