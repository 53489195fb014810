"""The validation pack of one trained model version, rendered as Markdown and as HTML.

A ``ValidationPack`` holds plain values that training and validation have already computed (no
model, no registry, no IO); ``render_markdown`` and ``render_html`` turn it into the same
sections: data window, features, out-of-time results per candidate, the chosen model, stability
by period, PSI of score and features with their bands, the benchmark against the WOE scorecard,
the oracle AUC beside the model's, the promotion gate and the monitoring plan. Plots are files
next to the rendered page, referenced by relative name.

The oracle is the ceiling: the AUC of the simulator's *conditional* oracle, the probability of
each OOT row's label given the simulator's state at the row's snapshot (``oracle_label`` names
it; see ``sources.sim_oracle``). For a family scored after origination (a supplier or an
outstanding loan on a snapshot date), the true PD at origination is a weaker predictor than
what the data already shows at the snapshot; it is shown beside it, as
``oracle_auc_unconditional``, when known.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from models.metrics import PSI_INVESTIGATE, PSI_SIGNIFICANT, psi_band

SAMPLES = ("train", "validation", "oot")
WINDOW_KEYS = ("start", "end", "rows", "bads")
METRIC_COLUMNS = ("n", "bad_rate", "auc", "ks", "gini", "brier", "calibration_ratio", "ece")
CONDITIONAL_ORACLE = "conditional oracle: true PD given the simulator state at the snapshot"
UNCONDITIONAL_ORACLE = "unconditional oracle: true PD at origination (not a ceiling after it)"
ORACLE_UNAVAILABLE = (
    "Oracle AUC unavailable: the true PD is known only for simulated data, so there is no ceiling "
    "to measure this model against."
)


class PackError(ValueError):
    """A validation pack is incomplete or inconsistent."""


@dataclass(frozen=True, eq=False)
class ValidationPack:
    """Everything a validator reads about one trained model version.

    ``data_window`` maps "train", "validation" and "oot" to dicts with ``start``, ``end`` (dates),
    ``rows`` and ``bads``; ``features`` are (name, description, unit, owner); ``candidates`` maps
    each algorithm tried to its out-of-time ``Evaluation.as_dict()``; ``oot`` is that of the
    chosen one (it must hold ``auc``); ``gate`` is ``{"decision": ..., "reasons": [...]}`` or None
    before the gate ran; ``scorecard_auc`` is None when no scorecard benchmark was trained;
    ``plots`` maps a plot name to a file name relative to the rendered page. A plot named (or
    whose file stem is) ``roc_ks``, ``calibration`` or ``shap_summary`` is shown with the chosen
    model, ``psi`` with the PSI section, any other under "Other plots".
    """

    family: str
    version: str | None
    model_name: str
    algorithm: str
    data_window: dict
    features: list
    candidates: dict
    chosen: str
    oot: dict
    stability: pd.DataFrame
    feature_psi: pd.Series
    score_psi: float
    scorecard_auc: float | None
    oracle_auc: float | None
    gate: dict | None
    monitoring_plan: list
    plots: dict
    parameters: dict
    git_commit: str | None
    oracle_note: str = field(default=ORACLE_UNAVAILABLE)
    oracle_label: str = field(default=CONDITIONAL_ORACLE)
    oracle_auc_unconditional: float | None = None
    unconditional_label: str = field(default=UNCONDITIONAL_ORACLE)
    # grouped splits (validation held out by entity): algo -> OOT evaluation on the rows of
    # entities with no bad training row, and {"rows", "bads"} of that subset; {} otherwise
    oot_unseen: dict = field(default_factory=dict)
    oot_unseen_rows: dict = field(default_factory=dict)
    choice: str | None = None  # why the chosen algorithm was chosen (models.training.choose)

    def __post_init__(self) -> None:
        missing = [s for s in SAMPLES if s not in self.data_window]
        if missing:
            raise PackError(f"data_window lacks the samples {missing}; it has {sorted(self.data_window)}")
        for sample in SAMPLES:
            lacking = [k for k in WINDOW_KEYS if k not in self.data_window[sample]]
            if lacking:
                raise PackError(f"data_window[{sample!r}] lacks {lacking}; expected {list(WINDOW_KEYS)}")
        for feature in self.features:
            if len(feature) != 4:
                raise PackError(f"each feature must be (name, description, unit, owner), got {feature!r}")
        if self.chosen not in self.candidates:
            raise PackError(
                f"chosen algorithm {self.chosen!r} is not among the candidates {sorted(self.candidates)}"
            )
        if "auc" not in self.oot:
            raise PackError(
                f"oot must hold the chosen model's out-of-time 'auc', got keys {sorted(self.oot)}"
            )
        if self.gate is not None and ("decision" not in self.gate or "reasons" not in self.gate):
            raise PackError(f"gate must hold 'decision' and 'reasons', got keys {sorted(self.gate)}")
        for name, file in self.plots.items():
            rel = PurePosixPath(str(file))
            if rel.is_absolute() or ".." in rel.parts or "\\" in str(file):
                raise PackError(f"plot {name!r} must be a file name relative to the page, got {file!r}")


# ---------------------------------------------------------------------------------------------
# a format-neutral document: both renderers walk the same sections


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Table:
    headers: tuple
    rows: list


@dataclass(frozen=True)
class _Bullets:
    items: list


@dataclass(frozen=True)
class _Image:
    name: str
    file: str


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "n/a"
        return f"{float(value):.{digits}f}"
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat() if value == value.normalize() else value.isoformat()
    return str(value)


def _metric(name: str, value) -> str:
    """A metric value; a count read back as a float (MLflow stores metrics as floats) shows as an integer."""
    if name == "n" and isinstance(value, float | np.floating) and float(value).is_integer():
        return _fmt(int(value))
    return _fmt(value)


def _band_text(value: float) -> str:
    return psi_band(float(value))


# where a plot is placed, by its name or its file stem; any other plot goes to "Other plots"
_PLOT_SECTIONS = {
    "roc_ks": "Chosen model",
    "calibration": "Chosen model",
    "shap_summary": "Chosen model",
    "psi": "Population stability (PSI)",
    "psi_bars": "Population stability (PSI)",
    "feature_psi": "Population stability (PSI)",
}


def _plot_key(name: str, file: str) -> str | None:
    for candidate in (str(name), PurePosixPath(str(file)).stem):
        key = candidate.strip().lower().replace(" ", "_").replace("-", "_")
        if key in _PLOT_SECTIONS:
            return key
    return None


def _images(pack: ValidationPack, section: str | None) -> list:
    """The pack's plots placed in ``section`` (None: the plots no section claims), in pack order."""
    placed = []
    for name, file in pack.plots.items():
        key = _plot_key(name, file)
        if (_PLOT_SECTIONS[key] if key else None) == section:
            placed.append(_Image(str(name), str(file)))
    return placed


def _table_rows(frame: pd.DataFrame) -> tuple[tuple, list]:
    """Headers and formatted rows of ``frame``; a default RangeIndex is not shown."""
    show_index = not (isinstance(frame.index, pd.RangeIndex) and frame.index.name is None)
    headers = tuple(map(str, frame.columns))
    rows = [tuple(_fmt(v) for v in row) for row in frame.itertuples(index=False)]
    if show_index:
        headers = (str(frame.index.name or ""), *headers)
        rows = [(_fmt(idx), *row) for idx, row in zip(frame.index, rows)]
    return headers, rows


def _sections(pack: ValidationPack) -> list[tuple[str, list]]:
    sections: list[tuple[str, list]] = []
    version = pack.version if pack.version is not None else "unregistered"

    summary = _Table(
        ("Item", "Value"),
        [
            ("Family", pack.family),
            ("Registered model", pack.model_name),
            ("Version", version),
            ("Algorithm", pack.algorithm),
            ("Git commit", pack.git_commit or "—"),
        ],
    )
    sections.append(("Summary", [summary]))

    window_rows = []
    for sample in SAMPLES:
        w = pack.data_window[sample]
        rows, bads = int(w["rows"]), int(w["bads"])
        window_rows.append(
            (
                sample,
                _fmt(w["start"]),
                _fmt(w["end"]),
                _fmt(rows),
                _fmt(bads),
                _fmt(bads / rows) if rows else "n/a",
            )
        )
    window_blocks: list = [
        _Text("Out-of-time (oot) is the latest window, never seen in training or model selection."),
        _Table(("Sample", "Start", "End", "Rows", "Bads", "Bad rate"), window_rows),
    ]
    group = pack.data_window["validation"].get("held_out_by")
    if group:
        window_blocks.append(_Text(
            f"Validation is held out by {group}: over the same dates as training, a stable hash of "
            f"{group} sends {pack.data_window['validation'].get('entities', '?')} of them to validation and "
            f"{pack.data_window['train'].get('entities', '?')} to training, so early stopping and the choice "
            f"of algorithm are measured on entities whose defaults the model has not seen."))
    sections.append(("Data window", window_blocks))

    feature_rows = [tuple(str(v) for v in f) for f in pack.features]
    sections.append(
        (
            "Features",
            [
                _Text(f"Features used by the model: {len(feature_rows)}."),
                _Table(("Name", "Description", "Unit", "Owner"), feature_rows),
            ],
        )
    )

    candidate_rows = []
    for algo, ev in pack.candidates.items():
        marker = f"{algo} (chosen)" if algo == pack.chosen else algo
        candidate_rows.append((marker, *(_metric(c, ev.get(c)) for c in METRIC_COLUMNS)))
    sections.append(
        (
            "Out-of-time results per candidate",
            [
                _Table(("Algorithm", *METRIC_COLUMNS), candidate_rows),
            ],
        )
    )

    chosen_blocks: list = [
        _Text(
            f"Chosen: {pack.chosen} ({pack.algorithm}), out-of-time AUC {_fmt(pack.oot.get('auc'))}, "
            f"KS {_fmt(pack.oot.get('ks'))}, Gini {_fmt(pack.oot.get('gini'))}."
        ),
        _Table(("Metric", "Out-of-time"), [(k, _metric(k, v)) for k, v in pack.oot.items()]),
    ]
    if pack.choice:
        chosen_blocks.insert(1, _Text(f"Choice on the validation sample: {pack.choice}."))
    if pack.parameters:
        chosen_blocks.append(
            _Table(("Parameter", "Value"), [(str(k), _fmt(v)) for k, v in pack.parameters.items()])
        )
    if pack.oot_unseen:
        rows_ = pack.oot_unseen_rows
        chosen_blocks.append(_Text(
            f"Out-of-time rows of entities with no bad training row ({rows_.get('rows', '?')} rows, "
            f"{rows_.get('bads', '?')} bads): the defaults no training label announced."))
        chosen_blocks.append(_Table(("Algorithm", "AUC", "KS"), [
            (f"{a} (chosen)" if a == pack.chosen else a, _metric("auc", ev.get("auc")), _metric("ks", ev.get("ks")))
            for a, ev in pack.oot_unseen.items()]))
    chosen_blocks += _images(pack, "Chosen model")
    sections.append(("Chosen model", chosen_blocks))

    headers, rows = _table_rows(pack.stability)
    sections.append(("Stability by period", [_Table(headers, rows)]))

    psi_blocks: list = [
        _Text(
            f"Bands: below {PSI_INVESTIGATE:.2f} stable, {PSI_INVESTIGATE:.2f} to {PSI_SIGNIFICANT:.2f} "
            f"investigate, above {PSI_SIGNIFICANT:.2f} significant shift."
        ),
        _Text(
            f"Score PSI (out-of-time against development): {_fmt(pack.score_psi)} — "
            f"{_band_text(pack.score_psi)}."
        ),
    ]
    feature_psi = pack.feature_psi.astype(float).sort_values(ascending=False, kind="mergesort")
    psi_blocks.append(
        _Table(("Feature", "PSI", "Band"), [(str(k), _fmt(v), _band_text(v)) for k, v in feature_psi.items()])
    )
    psi_blocks += _images(pack, "Population stability (PSI)")
    sections.append(("Population stability (PSI)", psi_blocks))

    model_auc = float(pack.oot["auc"])
    if pack.scorecard_auc is None:
        benchmark: list = [
            _Text("No WOE scorecard benchmark was trained for this version."),
            _Table(
                ("Model", "OOT AUC", "OOT Gini"),
                [
                    (f"{pack.chosen} (chosen)", _fmt(model_auc), _fmt(2 * model_auc - 1)),
                    ("WOE scorecard", "—", "—"),
                ],
            ),
        ]
    else:
        sc_auc = float(pack.scorecard_auc)
        benchmark = [
            _Table(
                ("Model", "OOT AUC", "OOT Gini"),
                [
                    (f"{pack.chosen} (chosen)", _fmt(model_auc), _fmt(2 * model_auc - 1)),
                    ("WOE scorecard", _fmt(sc_auc), _fmt(2 * sc_auc - 1)),
                ],
            ),
            _Text(
                f"AUC lift over the scorecard: {model_auc - sc_auc:+.4f} "
                f"({'better' if model_auc > sc_auc else 'not better'} than the benchmark)."
            ),
        ]
    sections.append(("Benchmark against the WOE scorecard", benchmark))

    extra = ([(pack.unconditional_label, _fmt(float(pack.oracle_auc_unconditional)))]
             if pack.oracle_auc_unconditional is not None else [])
    if pack.oracle_auc is None:
        oracle_blocks: list = [
            _Text(pack.oracle_note),
            _Table(
                ("Model", "OOT AUC"),
                [(f"{pack.chosen} (chosen)", _fmt(model_auc)), (pack.oracle_label, "unavailable"), *extra],
            ),
        ]
    else:
        oracle = float(pack.oracle_auc)
        attainable = (2 * model_auc - 1) / (2 * oracle - 1) if oracle > 0.5 else math.nan
        oracle_blocks = [
            _Table(
                ("Model", "OOT AUC"),
                [(f"{pack.chosen} (chosen)", _fmt(model_auc)), (pack.oracle_label, _fmt(oracle)), *extra],
            ),
            _Text(
                f"Gap to the oracle ({pack.oracle_label}): {oracle - model_auc:+.4f} AUC; the model reaches "
                f"{_fmt(attainable * 100, 1)}% of the attainable Gini."
            ),
        ]
    sections.append(("Oracle AUC", oracle_blocks))

    if pack.gate is None:
        gate_blocks: list = [_Text("The promotion gate has not been evaluated for this version.")]
    else:
        reasons = [str(r) for r in pack.gate["reasons"]] or ["(no reasons given)"]
        gate_blocks = [_Text(f"Decision: {pack.gate['decision']}"), _Bullets(reasons)]
    sections.append(("Promotion gate", gate_blocks))

    plan = [str(item) for item in pack.monitoring_plan] or ["(no monitoring plan given)"]
    sections.append(("Monitoring plan", [_Bullets(plan)]))

    others = _images(pack, None)
    if others:
        sections.append(("Other plots", others))
    return sections


def _title(pack: ValidationPack) -> str:
    version = f"version {pack.version}" if pack.version is not None else "unregistered"
    return f"Validation pack: {pack.model_name} ({version})"


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_block(block) -> str:
    if isinstance(block, _Text):
        return block.text
    if isinstance(block, _Table):
        lines = [
            "| " + " | ".join(_md_cell(h) for h in block.headers) + " |",
            "|" + "|".join("---" for _ in block.headers) + "|",
        ]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        if not block.rows:
            lines.append("| " + " | ".join("—" for _ in block.headers) + " |")
        return "\n".join(lines)
    if isinstance(block, _Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, _Image):
        return f"![{block.name}]({block.file})"
    raise TypeError(f"unknown block {block!r}")


def render_markdown(pack: ValidationPack) -> str:
    """The pack as a Markdown page (tables in GitHub pipe syntax, plots as relative images)."""
    parts = [f"# {_title(pack)}"]
    for title, blocks in _sections(pack):
        parts.append(f"## {title}")
        parts += [_md_block(b) for b in blocks]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; display: block; margin: 0.8em 0; }
""".strip()


def _html_block(block) -> str:
    esc = html.escape
    if isinstance(block, _Text):
        return f"<p>{esc(block.text)}</p>"
    if isinstance(block, _Table):
        head = "".join(f"<th>{esc(str(h))}</th>" for h in block.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, _Bullets):
        return "<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, _Image):
        return f'<img src="{esc(block.file, quote=True)}" alt="{esc(block.name, quote=True)}">'
    raise TypeError(f"unknown block {block!r}")


def render_html(pack: ValidationPack) -> str:
    """The pack as one self-contained HTML page (inline CSS, every text escaped, plots as ``<img>``)."""
    title = html.escape(_title(pack))
    body = [f"<h1>{title}</h1>"]
    for heading, blocks in _sections(pack):
        body.append(f"<section><h2>{html.escape(heading)}</h2>")
        body += [_html_block(b) for b in blocks]
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_pack(pack: ValidationPack, directory) -> dict[str, Path]:
    """Write ``validation_pack.md`` and ``validation_pack.html`` into ``directory`` (beside the plots).

    Raises:
        PackError: if a plot the pack references is not a file in ``directory``.
    """
    directory = Path(directory)
    absent = [f for f in pack.plots.values() if not (directory / f).is_file()]
    if absent:
        raise PackError(f"plots referenced by the pack are not in {directory}: {absent}")
    paths = {"markdown": directory / "validation_pack.md", "html": directory / "validation_pack.html"}
    paths["markdown"].write_text(render_markdown(pack), encoding="utf-8")
    paths["html"].write_text(render_html(pack), encoding="utf-8")
    return paths
