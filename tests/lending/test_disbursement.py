"""Disbursement planning and the double-entry ledger (:mod:`lending.disbursement`), pure.

Parametrised tables for each function and its failure paths, one test per kind of difference
:func:`reconcile` reports, and hypothesis properties: disbursement legs always balance, legs plus
their reversals (and entries plus their reversal entries) net to zero on every account, an
instruction's items add up to it, and the stored items plus the implied ones are the plan's."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lending.disbursement import (
    CLEARING,
    ENTRY_COLUMNS,
    INSTRUCTION_COLUMNS,
    ITEM_COLUMNS,
    LEG_COLUMNS,
    NOSTRO,
    LedgerError,
    account_deltas,
    apply_limits,
    check_balanced,
    check_entries,
    disbursement_entries,
    disbursement_legs,
    entry_legs,
    implied_items,
    instruction_id,
    plan_from_totals,
    plan_instructions,
    receivable_account,
    reconcile,
    repayment_entries,
    repayment_legs,
    reversal_entries,
    reversal_legs,
    stored_items,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BATCH = "approve.20260302"
SC1, SC2 = "sc.20260302T0915", "sc.20260302T0930"


def loans(*rows) -> pd.DataFrame:
    """``(application_id, dealer_id, amount_fen[, source_batch])`` rows."""
    return pd.DataFrame([(*r, BATCH) if len(r) == 3 else r for r in rows],
                        columns=["application_id", "dealer_id", "amount_fen", "source_batch"])


def credits(*rows) -> pd.DataFrame:
    """``(vin, batch_id, supplier_id, amount_fen)`` rows; the credit id is VIN + supplier."""
    return pd.DataFrame([(f"{vin}:{sup}", batch, sup, amount) for vin, batch, sup, amount in rows],
                        columns=["credit_id", "batch_id", "supplier_id", "amount_fen"])


NO_LOANS, NO_CREDITS = loans(), credits()


def holds(out: pd.Series) -> list[str | None]:
    return [None if pd.isna(v) else v for v in out]


# --------------------------------------------------------------------------------------------
# plan_instructions


def test_a_loan_is_one_instruction_keyed_by_its_application():
    ins, items = plan_instructions(loans(("LA1", "D1", 10_000_000)), NO_CREDITS)
    assert list(ins.columns) == INSTRUCTION_COLUMNS and list(items.columns) == ITEM_COLUMNS
    assert ins.iloc[0].to_dict() == {
        "instruction_id": instruction_id("loan:LA1"), "idempotency_key": "loan:LA1", "kind": "dealer_loan",
        "borrower_type": "dealer", "borrower_id": "D1", "amount_fen": 10_000_000, "source_batch": BATCH}
    assert items.to_dict("records") == [
        {"item_key": "loan:LA1", "instruction_id": instruction_id("loan:LA1"), "amount_fen": 10_000_000}]


@pytest.mark.parametrize(("rows", "expected"), [
    pytest.param([("V1", SC1, "S1", 100)], {f"sc:{SC1}:S1": ("S1", SC1, 100, {"credit:V1:S1"})}, id="one credit"),
    pytest.param([("V1", SC1, "S1", 100), ("V2", SC1, "S1", 250), ("V3", SC1, "S1", 7)],
                 {f"sc:{SC1}:S1": ("S1", SC1, 357, {"credit:V1:S1", "credit:V2:S1", "credit:V3:S1"})},
                 id="a supplier's credits of one batch: one instruction"),
    pytest.param([("V1", SC1, "S1", 100), ("V2", SC2, "S1", 250)],
                 {f"sc:{SC1}:S1": ("S1", SC1, 100, {"credit:V1:S1"}),
                  f"sc:{SC2}:S1": ("S1", SC2, 250, {"credit:V2:S1"})}, id="two batches: two instructions"),
    pytest.param([("V1", SC1, "S1", 100), ("V1", SC1, "S2", 40)],
                 {f"sc:{SC1}:S1": ("S1", SC1, 100, {"credit:V1:S1"}),
                  f"sc:{SC1}:S2": ("S2", SC1, 40, {"credit:V1:S2"})}, id="one vehicle, two suppliers"),
])
def test_supplier_credits_aggregate_per_batch_and_supplier(rows, expected):
    ins, items = plan_instructions(NO_LOANS, credits(*rows))
    got = {}
    for r in ins.itertuples():
        assert r.instruction_id == instruction_id(r.idempotency_key)
        assert (r.kind, r.borrower_type) == ("supplier_credit", "supplier")
        mine = items[items.instruction_id == r.instruction_id]
        assert mine.amount_fen.sum() == r.amount_fen
        got[r.idempotency_key] = (r.borrower_id, r.source_batch, r.amount_fen, set(mine.item_key))
    assert got == expected
    assert len(items) == len(rows) and items.item_key.is_unique


def test_instruction_ids_are_stable_across_runs_and_input_order():
    ln = loans(("LA1", "D2", 5), ("LA2", "D1", 6), ("LA3", "D1", 7))
    cr = credits(("V1", SC1, "S1", 1), ("V2", SC1, "S1", 2), ("V3", SC2, "S2", 3))
    ins, items = plan_instructions(ln, cr)
    ins2, items2 = plan_instructions(ln.iloc[::-1].reset_index(drop=True), cr.sample(frac=1, random_state=3))
    pd.testing.assert_frame_equal(ins, ins2)
    by_key = ["item_key"]
    pd.testing.assert_frame_equal(items.sort_values(by_key, ignore_index=True),
                                  items2.sort_values(by_key, ignore_index=True))
    assert instruction_id("loan:LA1") == instruction_id("loan:LA1") != instruction_id("loan:LA2")
    assert all(i.startswith("pi_") and len(i) == 32 for i in ins.instruction_id)


def test_instructions_are_ordered_by_borrower_batch_and_key():
    ln = loans(("LA9", "D2", 1, "approve.20260302"), ("LA1", "D2", 1, "approve.20260303"),
               ("LA5", "D2", 1, "approve.20260302"), ("LA3", "D1", 1, "approve.20260303"))
    cr = credits(("V1", SC2, "S0", 1), ("V2", SC1, "S0", 1), ("V3", SC1, "A9", 1))
    ins, _ = plan_instructions(ln, cr)
    assert ins.idempotency_key.tolist() == [
        "loan:LA3",  # dealer D1
        "loan:LA5", "loan:LA9", "loan:LA1",  # dealer D2: batch 0302 (by key), then 0303
        f"sc:{SC1}:A9", f"sc:{SC1}:S0", f"sc:{SC2}:S0",  # suppliers after dealers, A9 before S0
    ]


def test_nothing_payable_plans_nothing():
    ins, items = plan_instructions(NO_LOANS, NO_CREDITS)
    assert ins.empty and items.empty
    assert list(ins.columns) == INSTRUCTION_COLUMNS and list(items.columns) == ITEM_COLUMNS


@pytest.mark.parametrize("amount", [0, -1, 1.5, float("nan"), "ten", None])
@pytest.mark.parametrize("side", ["loan", "credit"])
def test_amounts_must_be_positive_integers(side, amount):
    ln = loans(("LA1", "D1", 10), ("LA2", "D1", amount if side == "loan" else 10))
    cr = credits(("V1", SC1, "S1", 10), ("V2", SC1, "S1", amount if side == "credit" else 10))
    with pytest.raises(LedgerError, match=f"{side} amounts: expected positive integer fen amounts, got 1 bad"):
        plan_instructions(ln, cr)


def test_whole_float_amounts_are_accepted_as_integers():
    ins, _ = plan_instructions(loans(("LA1", "D1", 10.0)), credits(("V1", SC1, "S1", 5.0)))
    assert ins.amount_fen.dtype == np.int64 and sorted(ins.amount_fen) == [5, 10]


@pytest.mark.parametrize(("ln", "cr", "message"), [
    pytest.param(loans(("LA1", "D1", 10), ("LA1", "D2", 20)), NO_CREDITS, r"application_id repeats: \['LA1'\]",
                 id="loan twice"),
    pytest.param(NO_LOANS, credits(("V1", SC1, "S1", 10), ("V1", SC2, "S1", 20)), r"credit_id repeats: \['V1:S1'\]",
                 id="credit twice"),
    pytest.param(NO_LOANS, pd.DataFrame({"credit_id": ["X1", "X2"], "batch_id": ["a:b", "a"],
                                         "supplier_id": ["c", "b:c"], "amount_fen": [10, 20]}),
                 r"key\(s\) \['sc:a:b:c'\] would aggregate credits of different \(micro-batch, supplier\)",
                 id="two suppliers behind one key"),
])
def test_duplicate_keys_are_refused(ln, cr, message):
    with pytest.raises(LedgerError, match=message):
        plan_instructions(ln, cr)


# --------------------------------------------------------------------------------------------
# apply_limits


def _one_borrower(amounts: list[int]) -> pd.DataFrame:
    ins, _ = plan_instructions(loans(*[(f"LA{k}", "D1", a) for k, a in enumerate(amounts)]), NO_CREDITS)
    assert ins.amount_fen.tolist() == amounts  # keys LA0..LA9 sort in input order
    return ins


def _per_borrower(values: dict[tuple[str, str], object], dtype=None) -> pd.Series:
    """A value per ``(borrower_type, borrower_id)``, what :func:`apply_limits` takes."""
    index = pd.MultiIndex.from_arrays([[k[0] for k in values], [k[1] for k in values]])
    return pd.Series(list(values.values()), index=index, dtype=dtype)


D1 = ("dealer", "D1")


@pytest.mark.parametrize(("amounts", "headroom", "frozen", "expected"), [
    pytest.param([5, 5], {D1: 10}, {D1: False}, [None, None], id="fits exactly"),
    pytest.param([5, 6], {D1: 10}, {D1: False}, [None, "over_limit"], id="second one over"),
    pytest.param([5, 7, 1], {D1: 6}, {D1: False}, [None, "over_limit", "over_limit"],
                 id="a later smaller one does not overtake"),
    pytest.param([20, 1, 1], {D1: 10}, {D1: False}, ["over_limit"] * 3, id="first over holds all"),
    pytest.param([1], {}, {}, ["over_limit"], id="no headroom row = no headroom"),
    pytest.param([1], {D1: -5}, {D1: False}, ["over_limit"], id="already drawn beyond the limit"),
    pytest.param([1, 2], {D1: 100}, {D1: True}, ["frozen", "frozen"], id="frozen"),
    pytest.param([50, 60], {D1: 100}, {D1: True}, ["frozen", "frozen"], id="frozen wins over over_limit"),
    pytest.param([1, 2], {D1: 100}, {}, [None, None], id="no control row = not frozen"),
])
def test_limits_first_come_first_served(amounts, headroom, frozen, expected):
    ins = _one_borrower(amounts)
    out = apply_limits(ins, _per_borrower(headroom), _per_borrower(frozen))
    assert out.index.equals(ins.index) and holds(out) == expected


def test_limits_are_per_borrower_and_keep_the_instruction_index():
    ln = loans(("LA1", "D1", 6), ("LA2", "D1", 1), ("LB1", "D2", 6), ("LB2", "D2", 1))
    cr = credits(("V1", SC1, "S1", 3), ("V2", SC2, "S1", 3), ("V3", SC1, "S2", 1))
    ins, _ = plan_instructions(ln, cr)
    ins.index = ins.index + 1000  # a chunk is a slice of the plan
    shuffled = ins.sample(frac=1, random_state=7)  # interleaved borrowers: order within each is kept
    shuffled = shuffled.sort_values("idempotency_key", kind="stable")
    headroom = _per_borrower({("dealer", "D1"): 5, ("dealer", "D2"): 7, ("supplier", "S1"): 3,
                              ("supplier", "S2"): 9})
    frozen = _per_borrower({("supplier", "S2"): True})
    out = apply_limits(shuffled, headroom, frozen)
    assert out.index.equals(shuffled.index)
    got = dict(zip(shuffled.idempotency_key, holds(out)))
    assert got == {"loan:LA1": "over_limit", "loan:LA2": "over_limit", "loan:LB1": None, "loan:LB2": None,
                   f"sc:{SC1}:S1": None, f"sc:{SC2}:S1": "over_limit", f"sc:{SC1}:S2": "frozen"}


# --------------------------------------------------------------------------------------------
# legs


@pytest.mark.parametrize(("ln", "cr", "account"), [
    pytest.param(loans(("LA1", "D7", 900)), NO_CREDITS, "loans_receivable:D7", id="dealer loan"),
    pytest.param(NO_LOANS, credits(("V1", SC1, "S3", 400), ("V2", SC1, "S3", 500)), "supplier_receivable:S3",
                 id="supplier credit"),
])
def test_disbursement_debits_the_receivable_and_credits_clearing(ln, cr, account):
    ins, _ = plan_instructions(ln, cr)
    legs = disbursement_legs(ins)
    assert list(legs.columns) == LEG_COLUMNS and len(legs) == 2
    entry = "disb:" + ins.idempotency_key.iloc[0]
    rows = {r.account: (r.entry_id, r.debit_fen, r.credit_fen) for r in legs.itertuples()}
    assert rows == {account: (entry, 900, 0), CLEARING: (entry, 0, 900)}
    assert set(legs.borrower_id) == {ins.borrower_id.iloc[0]}
    check_balanced(legs)
    assert account_deltas(legs).to_dict() == {account: 900, CLEARING: -900}


def test_two_legs_per_instruction_and_one_entry_each():
    ins, _ = plan_instructions(loans(("LA1", "D1", 1), ("LA2", "D1", 2), ("LA3", "D2", 3)),
                               credits(("V1", SC1, "S1", 4)))
    legs = disbursement_legs(ins)
    assert len(legs) == 2 * len(ins)
    assert legs.groupby("entry_id").size().to_dict() == {f"disb:{k}": 2 for k in ins.idempotency_key}
    check_balanced(legs)
    assert disbursement_legs(ins.iloc[:0]).empty


@pytest.mark.parametrize(("borrower_type", "account"), [("dealer", "loans_receivable:D1"),
                                                        ("supplier", "supplier_receivable:D1")])
def test_repayment_debits_nostro_and_credits_the_receivable(borrower_type, account):
    rp = pd.DataFrame({"entry_id": ["repay:1"], "borrower_type": [borrower_type], "borrower_id": ["D1"],
                       "amount_fen": [300]})
    legs = repayment_legs(rp)
    assert list(legs.columns) == LEG_COLUMNS
    assert {r.account: (r.debit_fen, r.credit_fen) for r in legs.itertuples()} == {NOSTRO: (300, 0),
                                                                                  account: (0, 300)}
    check_balanced(legs)
    assert receivable_account(borrower_type, "D1") == account


@pytest.mark.parametrize("amount", [0, -300, 2.5, float("nan")])
def test_repayment_amounts_must_be_positive_integers(amount):
    rp = pd.DataFrame({"entry_id": ["repay:1"], "borrower_type": ["dealer"], "borrower_id": ["D1"],
                       "amount_fen": [amount]})
    with pytest.raises(LedgerError, match="repayment amounts"):
        repayment_legs(rp)


def test_no_repayments_no_legs():
    rp = pd.DataFrame({"entry_id": [], "borrower_type": [], "borrower_id": [], "amount_fen": []})
    assert repayment_legs(rp).empty


# --------------------------------------------------------------------------------------------
# entries: one row per balanced entry (what ledger_entries stores), its two legs


def test_a_disbursement_is_one_entry_per_instruction():
    ins, _ = plan_instructions(loans(("LA1", "D7", 900)), credits(("V1", SC1, "S3", 400), ("V2", SC1, "S3", 500)))
    entries = disbursement_entries(ins)
    assert list(entries.columns) == ENTRY_COLUMNS
    assert entries.to_dict("records") == [
        {"entry_id": "disb:loan:LA1", "debit_account": "loans_receivable:D7", "credit_account": CLEARING,
         "amount_fen": 900, "borrower_type": "dealer", "borrower_id": "D7"},
        {"entry_id": f"disb:sc:{SC1}:S3", "debit_account": "supplier_receivable:S3", "credit_account": CLEARING,
         "amount_fen": 900, "borrower_type": "supplier", "borrower_id": "S3"}]
    check_entries(entries)
    assert disbursement_entries(ins.iloc[:0]).empty


def test_an_entry_is_its_debit_leg_and_its_credit_leg():
    ins, _ = plan_instructions(loans(("LA1", "D1", 5), ("LA2", "D2", 7)), NO_CREDITS)
    entries = disbursement_entries(ins).assign(instruction_id=ins.instruction_id.to_numpy())
    legs = entry_legs(entries)
    assert list(legs.columns) == [*LEG_COLUMNS, "instruction_id"]  # other columns ride on both legs
    assert [(r.entry_id, r.account, r.debit_fen, r.credit_fen, r.instruction_id) for r in legs.itertuples()] == [
        ("disb:loan:LA1", "loans_receivable:D1", 5, 0, ins.instruction_id[0]),
        ("disb:loan:LA2", "loans_receivable:D2", 7, 0, ins.instruction_id[1]),
        ("disb:loan:LA1", CLEARING, 0, 5, ins.instruction_id[0]),
        ("disb:loan:LA2", CLEARING, 0, 7, ins.instruction_id[1])]
    check_balanced(legs)
    pd.testing.assert_frame_equal(entry_legs(disbursement_entries(ins)), disbursement_legs(ins))


def test_a_repayment_entry_debits_nostro_and_credits_the_receivable():
    rp = pd.DataFrame({"entry_id": ["repay:loan:LA1", "repay:sc:x:S1"], "borrower_type": ["dealer", "supplier"],
                       "borrower_id": ["D1", "S1"], "amount_fen": [300, 40]})
    entries = repayment_entries(rp)
    assert [(r.entry_id, r.debit_account, r.credit_account, r.amount_fen) for r in entries.itertuples()] == [
        ("repay:loan:LA1", NOSTRO, "loans_receivable:D1", 300), ("repay:sc:x:S1", NOSTRO, "supplier_receivable:S1", 40)]
    check_entries(entries)
    with pytest.raises(LedgerError, match="repayment amounts"):
        repayment_entries(rp.assign(amount_fen=[300, 0]))


def test_a_reversal_entry_swaps_the_accounts():
    ins, _ = plan_instructions(loans(("LA1", "D1", 700), ("LA2", "D2", 500)), NO_CREDITS)
    entries = disbursement_entries(ins)
    rev = reversal_entries(entries, ["disb:loan:LA2"])
    assert rev.to_dict("records") == [{"entry_id": "rev:disb:loan:LA2", "debit_account": CLEARING,
                                       "credit_account": "loans_receivable:D2", "amount_fen": 500,
                                       "borrower_type": "dealer", "borrower_id": "D2"}]
    pd.testing.assert_frame_equal(entry_legs(rev)[LEG_COLUMNS].sort_values("account", ignore_index=True),
                                  reversal_legs(entry_legs(entries), "disb:loan:LA2").sort_values(
                                      "account", ignore_index=True), check_dtype=False)
    with pytest.raises(LedgerError, match=r"entry 'disb:loan:NOPE' has no postings"):
        reversal_entries(entries, ["disb:loan:LA1", "disb:loan:NOPE"])


def _entry(entry_id="e1", debit="a", credit="b", amount=5):
    return (entry_id, debit, credit, amount, "dealer", "D1")


@pytest.mark.parametrize(("bad", "message"), [
    pytest.param([_entry(amount=0)], r"positive integer amount; bad entries \['e1'\]", id="zero"),
    pytest.param([_entry(amount=-5)], r"positive integer amount; bad entries \['e1'\]", id="negative"),
    pytest.param([_entry(amount=2.5)], r"positive integer amount; bad entries \['e1'\]", id="fraction"),
    pytest.param([_entry(amount=None)], r"positive integer amount; bad entries \['e1'\]", id="missing"),
    pytest.param([_entry(credit="a")], r"two different accounts; bad entries \['e1'\]", id="one account"),
    pytest.param([_entry(), _entry(amount=7)], r"entry ids repeat: \['e1'\]", id="an id twice"),
])
def test_check_entries_names_what_the_ledger_would_refuse(bad, message):
    good = [_entry("ok1"), _entry("ok2", "c", "d", 9)]
    with pytest.raises(LedgerError, match=message) as info:
        check_entries(pd.DataFrame(good + bad, columns=ENTRY_COLUMNS))
    assert "ok" not in str(info.value)
    check_entries(pd.DataFrame(good, columns=ENTRY_COLUMNS))


def test_a_loans_item_is_implied_by_its_instruction_and_only_credits_are_stored():
    ins, items = plan_instructions(loans(("LA1", "D1", 10), ("LA2", "D2", 20)),
                                   credits(("V1", SC1, "S1", 3), ("V2", SC1, "S1", 4)))
    assert stored_items(items).item_key.tolist() == ["credit:V1:S1", "credit:V2:S1"]
    assert implied_items(ins).to_dict("records") == [
        {"item_key": "loan:LA1", "instruction_id": instruction_id("loan:LA1"), "amount_fen": 10},
        {"item_key": "loan:LA2", "instruction_id": instruction_id("loan:LA2"), "amount_fen": 20}]
    assert list(implied_items(ins.iloc[:0]).columns) == ITEM_COLUMNS


# --------------------------------------------------------------------------------------------
# reversal_legs, check_balanced, account_deltas


def _ledger() -> pd.DataFrame:
    ins, _ = plan_instructions(loans(("LA1", "D1", 700), ("LA2", "D2", 500)), credits(("V1", SC1, "S1", 90)))
    rp = pd.DataFrame({"entry_id": ["repay:1"], "borrower_type": ["dealer"], "borrower_id": ["D1"],
                       "amount_fen": [200]})
    return pd.concat([disbursement_legs(ins), repayment_legs(rp)], ignore_index=True)


@pytest.mark.parametrize("entry", ["disb:loan:LA1", f"disb:sc:{SC1}:S1", "repay:1"])
def test_a_reversal_undoes_its_entry_and_nothing_else(entry):
    legs = _ledger()
    rev = reversal_legs(legs, entry)
    orig = legs[legs.entry_id == entry]
    assert list(rev.columns) == LEG_COLUMNS and len(rev) == len(orig) == 2
    assert set(rev.entry_id) == {f"rev:{entry}"}
    assert rev.debit_fen.tolist() == orig.credit_fen.tolist() and rev.credit_fen.tolist() == orig.debit_fen.tolist()
    check_balanced(rev)
    net = account_deltas(pd.concat([orig, rev]))
    assert (net == 0).all() and set(net.index) == set(orig.account)
    before, after = account_deltas(legs), account_deltas(pd.concat([legs, rev]))
    assert (after.reindex(before.index) == before - account_deltas(orig).reindex(before.index, fill_value=0)).all()


def test_reversing_an_unknown_entry_raises():
    with pytest.raises(LedgerError, match=r"entry 'disb:loan:NOPE' has no postings"):
        reversal_legs(_ledger(), "disb:loan:NOPE")


def test_account_deltas_are_debits_minus_credits():
    assert account_deltas(_ledger()).to_dict() == {
        "loans_receivable:D1": 700 - 200, "loans_receivable:D2": 500, "supplier_receivable:S1": 90,
        CLEARING: -(700 + 500 + 90), NOSTRO: 200}


def test_check_balanced_accepts_a_balanced_ledger():
    check_balanced(_ledger())
    check_balanced(_ledger().iloc[:0])


def _leg(entry, account, debit, credit):
    return (entry, account, "dealer", "D1", debit, credit)


@pytest.mark.parametrize(("bad", "message"), [
    pytest.param([_leg("e1", "a", 5, 0), _leg("e1", "b", 0, 4)], r"unbalanced entries .*'e1': 1", id="debit > credit"),
    pytest.param([_leg("e1", "a", 5, 0), _leg("e1", "b", 0, 5), _leg("e1", "c", 0, 1)], r"'e1': -1",
                 id="an extra credit leg"),
    pytest.param([_leg("e1", "a", 5, 0)], r"'e1': 5", id="one leg only"),
    pytest.param([_leg("e1", "a", 5, 5), _leg("e1", "b", 0, 0)], r"exactly one positive side.*\['e1'\]",
                 id="both sides, neither side"),
    pytest.param([_leg("e1", "a", -5, 0), _leg("e1", "b", 0, -5)], r"exactly one positive side.*\['e1'\]",
                 id="negative amounts, though they net to zero"),
    pytest.param([_leg("e1", "a", 3, -2), _leg("e1", "b", 0, 1)], r"exactly one positive side.*\['e1'\]",
                 id="a negative credit"),
])
def test_check_balanced_names_the_bad_entries(bad, message):
    legs = pd.concat([_ledger(), pd.DataFrame(bad, columns=LEG_COLUMNS)], ignore_index=True)
    with pytest.raises(LedgerError, match=message) as info:
        check_balanced(legs)
    assert "disb:" not in str(info.value) and "repay:" not in str(info.value)  # only the bad entry is named


# --------------------------------------------------------------------------------------------
# reconcile


def _books() -> dict[str, object]:
    """A consistent set: 4 loans (one held), 3 credits in 2 instructions, a repayment."""
    ln = loans(("LA1", "D1", 700), ("LA2", "D1", 300), ("LA3", "D2", 500), ("LA4", "D3", 800))
    cr = credits(("V1", SC1, "S1", 40), ("V2", SC1, "S1", 60), ("V3", SC2, "S1", 25))
    ins, items = plan_instructions(ln, cr)
    held_key = "loan:LA4"
    payable = items[["item_key", "amount_fen"]].copy()
    posted_ids = items.instruction_id[items.item_key != held_key]
    ins = ins[ins.instruction_id.isin(posted_ids)].reset_index(drop=True)
    items = items[items.item_key != held_key].reset_index(drop=True)
    legs = disbursement_legs(ins)
    legs["instruction_id"] = np.concatenate([ins.instruction_id.to_numpy()] * 2)
    rp = repayment_legs(pd.DataFrame({"entry_id": ["repay:1"], "borrower_type": ["dealer"],
                                      "borrower_id": ["D1"], "amount_fen": [150]}))
    rp["instruction_id"] = None
    legs = pd.concat([legs, rp], ignore_index=True)
    deltas = account_deltas(legs)
    return {
        "payable": payable, "held": pd.DataFrame({"item_key": [held_key]}), "items": items,
        "instructions": ins[["instruction_id", "amount_fen"]], "legs": legs,
        "outbox": ins[["instruction_id", "amount_fen"]].copy(),
        "balances": deltas[~deltas.index.isin([CLEARING, NOSTRO])],
    }


def _reconcile(books: dict, out_of_scope: frozenset[str] = frozenset()):
    return reconcile(books["payable"], books["held"], books["items"], books["instructions"], books["legs"],
                     books["outbox"], books["balances"], out_of_scope=out_of_scope)


def test_consistent_books_reconcile():
    rec = _reconcile(_books())
    assert rec.reconciled and rec.differences == ()
    assert (rec.payable_items, rec.held_items, rec.instructions, rec.postings, rec.outbox) == (7, 1, 5, 12, 5)
    assert rec.amount_fen == 700 + 300 + 500 + 40 + 60 + 25


def _iid(key: str) -> str:
    return instruction_id(key)


def _append(frame: pd.DataFrame, **row) -> pd.DataFrame:
    return pd.concat([frame, pd.DataFrame([row])], ignore_index=True)


def _set(frame: pd.DataFrame, where, column: str, value) -> pd.DataFrame:
    out = frame.copy()
    out.loc[where(out), column] = value
    return out


LA1, SUP1 = _iid("loan:LA1"), _iid(f"sc:{SC1}:S1")
GHOST = _iid("loan:GHOST")
MUTATIONS = [  # (id, which input, how, the kinds of difference reported)
    ("an item neither instructed nor held", "payable",
     lambda b: _append(b["payable"], item_key="loan:LA9", amount_fen=10),
     {"payable items neither instructed nor held"}),
    ("an instructed item also held", "held", lambda b: _append(b["held"], item_key="loan:LA1"),
     {"payable items both instructed and held"}),
    ("an instructed item nothing pays", "payable", lambda b: b["payable"][b["payable"].item_key != "loan:LA2"],
     {"instruction items that no decision or allocation pays"}),
    ("decision amount changed", "payable",
     lambda b: _set(b["payable"], lambda f: f.item_key == "loan:LA2", "amount_fen", 301),
     {"items whose instructed amount differs from the decision"}),
    ("an instruction without items", "instructions",
     lambda b: _append(b["instructions"], instruction_id=GHOST, amount_fen=10),
     {"instructions without items", "instructions without postings", "instructions missing from the outbox"}),
    ("an item of an unknown instruction", "items",
     lambda b: _set(b["items"], lambda f: f.item_key == "credit:V1:S1", "instruction_id", GHOST),
     {"items of unknown instructions", "instructions whose amount ≠ the sum of their items"}),
    ("item amount changed", "items",
     lambda b: _set(b["items"], lambda f: f.item_key == "credit:V1:S1", "amount_fen", 41),
     {"items whose instructed amount differs from the decision",
      "instructions whose amount ≠ the sum of their items"}),
    ("an instruction's postings missing", "legs", lambda b: b["legs"][b["legs"].instruction_id != LA1],
     {"instructions without postings", "account balances ≠ the sum of their postings"}),
    ("postings of an unknown instruction", "legs",
     lambda b: _set(b["legs"], lambda f: f.instruction_id == LA1, "instruction_id", GHOST),
     {"instructions without postings", "postings of unknown instructions"}),
    ("one leg of an entry changed", "legs",
     lambda b: _set(b["legs"], lambda f: (f.instruction_id == SUP1) & (f.account == CLEARING), "credit_fen", 99),
     {"instructions whose postings ≠ the amount", "unbalanced entries"}),
    ("both legs of an entry changed", "legs",
     lambda b: _set(_set(b["legs"], lambda f: (f.instruction_id == SUP1) & (f.account == CLEARING),
                         "credit_fen", 99),
                    lambda f: (f.instruction_id == SUP1) & (f.account != CLEARING), "debit_fen", 99),
     {"instructions whose postings ≠ the amount", "account balances ≠ the sum of their postings"}),
    ("an unbalanced repayment", "legs", lambda b: _set(b["legs"], lambda f: f.account == NOSTRO, "debit_fen", 151),
     {"unbalanced entries"}),
    ("an outbox row missing", "outbox", lambda b: b["outbox"][b["outbox"].instruction_id != LA1],
     {"instructions missing from the outbox"}),
    ("an outbox row without instruction", "outbox",
     lambda b: _append(b["outbox"], instruction_id=GHOST, amount_fen=10),
     {"outbox rows without an instruction"}),
    ("outbox amount changed", "outbox",
     lambda b: _set(b["outbox"], lambda f: f.instruction_id == SUP1, "amount_fen", 101),
     {"outbox amounts ≠ instruction amounts"}),
    ("stored balance off", "balances",
     lambda b: b["balances"].add(pd.Series({"loans_receivable:D2": 1}), fill_value=0),
     {"account balances ≠ the sum of their postings"}),
    ("a balance without postings", "balances",
     lambda b: b["balances"].add(pd.Series({"loans_receivable:D9": 5}), fill_value=0),
     {"account balances ≠ the sum of their postings"}),
]


@pytest.mark.parametrize(("part", "mutate", "expected"), [pytest.param(*m[1:], id=m[0]) for m in MUTATIONS])
def test_each_difference_is_named(part, mutate, expected):
    books = _books()
    assert _reconcile(books).reconciled
    books[part] = mutate(books)
    rec = _reconcile(books)
    assert not rec.reconciled
    assert {d.split(":")[0] for d in rec.differences} == expected, rec.differences


def test_a_difference_names_an_example_key():
    books = _books()
    books["outbox"] = books["outbox"][books["outbox"].instruction_id != LA1]
    assert _reconcile(books).differences == (f"instructions missing from the outbox: 1 (e.g. ['{LA1}'])",)


def test_a_later_runs_payments_are_out_of_scope_but_still_in_the_balances():
    books = _books()
    later, later_items = plan_instructions(loans(("LA8", "D1", 50)), NO_CREDITS)
    legs = disbursement_legs(later).assign(instruction_id=later.instruction_id.iloc[0])
    books["items"] = pd.concat([books["items"], later_items], ignore_index=True)
    books["instructions"] = pd.concat([books["instructions"], later[["instruction_id", "amount_fen"]]],
                                      ignore_index=True)
    books["legs"] = pd.concat([books["legs"], legs], ignore_index=True)
    books["outbox"] = pd.concat([books["outbox"], later[["instruction_id", "amount_fen"]]], ignore_index=True)
    assert {d.split(":")[0] for d in _reconcile(books).differences} == {
        "instruction items that no decision or allocation pays", "account balances ≠ the sum of their postings"}
    books["balances"] = books["balances"].add(pd.Series({"loans_receivable:D1": 50}), fill_value=0)
    rec = _reconcile(books, out_of_scope=frozenset(later.instruction_id))
    assert rec.reconciled, rec.differences
    assert rec.instructions == 5 and rec.postings == 14  # the later legs count in the balance check


# --------------------------------------------------------------------------------------------
# properties

ids = st.sampled_from([f"D{k}" for k in range(4)])
amounts = st.integers(1, 10**13)


@st.composite
def payables(draw) -> tuple[pd.DataFrame, pd.DataFrame]:
    n_loans = draw(st.integers(0, 25))
    ln = loans(*[(f"LA{k:04d}", draw(ids), draw(amounts), draw(st.sampled_from([BATCH, "approve.20260303"])))
                 for k in range(n_loans)])
    rows = draw(st.lists(st.tuples(st.integers(0, 30), st.sampled_from([SC1, SC2]),
                                   st.sampled_from(["S1", "S2", "S3"]), amounts),
                         max_size=40, unique_by=lambda r: (r[0], r[2])))
    cr = credits(*[(f"V{v:03d}", batch, sup, a) for v, batch, sup, a in rows])
    if n_loans + len(rows) == 0:  # the empty plan has its own test
        ln = loans(("LA0000", "D0", 1))
    return ln, cr


@SETTINGS
@given(payables())
def test_disbursement_legs_always_balance(world):
    ins, _ = plan_instructions(*world)
    legs = disbursement_legs(ins)
    check_balanced(legs)
    assert len(legs) == 2 * len(ins)
    per_entry = legs.groupby("entry_id")[["debit_fen", "credit_fen"]].sum()
    amount = ins.set_index("disb:" + ins.idempotency_key).amount_fen
    assert (per_entry.debit_fen == amount.reindex(per_entry.index)).all()
    assert (per_entry.credit_fen == per_entry.debit_fen).all()
    assert account_deltas(legs).sum() == 0


@SETTINGS
@given(payables(), st.randoms(use_true_random=False))
def test_legs_plus_their_reversals_net_to_zero_on_every_account(world, rnd: random.Random):
    ins, _ = plan_instructions(*world)
    legs = disbursement_legs(ins)
    entries = list(legs.entry_id.unique())
    rnd.shuffle(entries)
    revs = pd.concat([reversal_legs(legs, e) for e in entries], ignore_index=True)
    check_balanced(revs)
    deltas = account_deltas(pd.concat([legs, revs], ignore_index=True))
    assert (deltas == 0).all() and set(deltas.index) == set(legs.account)


@SETTINGS
@given(payables(), st.randoms(use_true_random=False))
def test_entries_plus_their_reversal_entries_net_to_zero(world, rnd: random.Random):
    ins, _ = plan_instructions(*world)
    entries = disbursement_entries(ins)
    check_entries(entries)
    ids = list(entries.entry_id)
    rnd.shuffle(ids)
    rev = reversal_entries(entries, ids)
    check_entries(pd.concat([entries, rev], ignore_index=True))
    legs = entry_legs(pd.concat([entries, rev], ignore_index=True))
    check_balanced(legs)
    assert (account_deltas(legs) == 0).all() and len(legs) == 4 * len(ins)


@SETTINGS
@given(payables())
def test_stored_plus_implied_items_are_the_plans_items(world):
    ins, items = plan_instructions(*world)
    rebuilt = pd.concat([stored_items(items), implied_items(ins)], ignore_index=True)
    assert sorted(map(tuple, rebuilt.astype(str).values)) == sorted(map(tuple, items.astype(str).values))
    assert not stored_items(items).item_key.isin(ins.idempotency_key).any()


@SETTINGS
@given(payables(), st.randoms(use_true_random=False))
def test_the_plan_from_credit_totals_is_the_plan_from_the_credits(world, rnd: random.Random):
    """Disbursement plans from the totals per (micro-batch, supplier) the warehouse sums: the same
    instructions in the same order as from the credits themselves, whatever the totals' order."""
    ln, cr = world
    totals = cr.groupby(["batch_id", "supplier_id"], as_index=False).amount_fen.sum()
    totals = totals.iloc[rnd.sample(range(len(totals)), len(totals))].reset_index(drop=True)
    pd.testing.assert_frame_equal(plan_from_totals(ln, totals), plan_instructions(ln, cr)[0])


@pytest.mark.parametrize(("totals", "message"), [
    pytest.param([(SC1, "S1", 10), (SC1, "S1", 20)], r"\(batch_id, supplier_id\) repeats: \[\['sc\.20260302T0915', 'S1'\]\]",
                 id="pair twice"),
    pytest.param([("a:b", "c", 10), ("a", "b:c", 20)], r"key\(s\) \['sc:a:b:c'\] would aggregate", id="one key"),
    pytest.param([(SC1, "S1", 0)], "credit totals: expected positive integer fen amounts, got 1 bad", id="zero"),
])
def test_credit_totals_are_checked_like_credits(totals, message):
    with pytest.raises(LedgerError, match=message):
        plan_from_totals(NO_LOANS, pd.DataFrame(totals, columns=["batch_id", "supplier_id", "amount_fen"]))


@SETTINGS
@given(payables())
def test_items_add_up_to_their_instruction(world):
    ln, cr = world
    ins, items = plan_instructions(ln, cr)
    per = items.groupby("instruction_id").amount_fen.sum()
    assert per.index.sort_values().equals(pd.Index(sorted(ins.instruction_id)))
    assert (per.reindex(ins.instruction_id).to_numpy() == ins.amount_fen.to_numpy()).all()
    assert len(items) == len(ln) + len(cr) and items.item_key.is_unique and ins.idempotency_key.is_unique
    assert int(ins.amount_fen.sum()) == int(ln.amount_fen.sum()) + int(cr.amount_fen.sum())
    assert ins.instruction_id.tolist() == [instruction_id(k) for k in ins.idempotency_key]


@SETTINGS
@given(payables(), st.dictionaries(st.sampled_from([f"D{k}" for k in range(4)]), st.integers(-10**12, 5 * 10**13)),
       st.sets(st.sampled_from([f"D{k}" for k in range(4)])))
def test_posted_instructions_are_a_prefix_that_fits(world, room, frozen_ids):
    ins, _ = plan_instructions(*world)
    headroom = _per_borrower({("dealer", d): v for d, v in room.items()}, dtype="int64")
    frozen = _per_borrower({("dealer", d): True for d in frozen_ids}, dtype=bool)
    out = holds(apply_limits(ins, headroom, frozen))
    for (bt, bid), group in ins.assign(hold=out).groupby(["borrower_type", "borrower_id"], sort=False):
        posted = group.hold.isna().to_numpy()
        assert not (np.diff(posted.astype(int)) > 0).any()  # held once, held for the rest
        if bt == "dealer" and bid in frozen_ids:
            assert set(group.hold) == {"frozen"}
            continue
        fits = int(group.amount_fen[posted].sum()) <= (room.get(bid, 0) if bt == "dealer" else 0)
        assert fits or not posted.any()
        if not posted.all():  # the first held one did not fit
            first = group.amount_fen.to_numpy()[posted.sum()]
            assert int(group.amount_fen[posted].sum()) + first > (room.get(bid, 0) if bt == "dealer" else 0)
