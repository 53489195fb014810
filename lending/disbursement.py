"""Disbursement planning and the double-entry ledger, as pure functions.

Money moves exactly once because every payment instruction carries an **idempotency key derived
from business keys**, which the warehouse enforces with a unique constraint:

- a used-car order loan: ``loan:<application_id>`` (one instruction per approved application);
- supplier credit: ``sc:<micro-batch>:<supplier_id>``: one instruction aggregates a supplier's
  credits of one micro-batch; each credit it carries is an *item* ``credit:<credit_id>`` (the
  credit id is VIN + supplier), and an item belongs to at most one instruction (primary key).

The ledger is double-entry: an *entry* is a set of *postings* (legs) whose debits equal its
credits. A disbursement debits the borrower's receivable account and credits the payment
clearing account (what the bank owes the payment rail); a repayment debits the nostro account
and credits the receivable; a reversal is a new entry with every leg of the original swapped.
Postings are never updated or deleted.

Limits are checked at posting time in instruction order per borrower, first come first served:
an instruction that does not fit the borrower's headroom is held, and so is every later one of
that borrower in the same run (a smaller later one does not overtake it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

CLEARING = "payments_clearing"  # liability: instructed, owed to the payment rail
NOSTRO = "nostro"  # the bank's cash account at the rail
RECEIVABLE = {"dealer": "loans_receivable", "supplier": "supplier_receivable"}
KINDS = {"dealer": "dealer_loan", "supplier": "supplier_credit"}

INSTRUCTION_COLUMNS = ["instruction_id", "idempotency_key", "kind", "borrower_type", "borrower_id",
                       "amount_fen", "source_batch"]
ITEM_COLUMNS = ["item_key", "instruction_id", "amount_fen"]
LEG_COLUMNS = ["entry_id", "account", "borrower_type", "borrower_id", "debit_fen", "credit_fen"]


class LedgerError(ValueError):
    """An entry does not balance, an amount is not a positive integer, or a key repeats."""


class ReconciliationError(RuntimeError):
    """Decisions, instructions, postings and the outbox disagree; the message lists how."""


def instruction_id(idempotency_key: str) -> str:
    """The instruction id the payment rail sees: a stable hash of the idempotency key."""
    return "pi_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:29]


def receivable_account(borrower_type: str, borrower_id: str) -> str:
    return f"{RECEIVABLE[borrower_type]}:{borrower_id}"


def _positive_int(values: pd.Series, what: str) -> np.ndarray:
    a = pd.to_numeric(values, errors="coerce")
    bad = a.isna() | (a <= 0) | (a != np.floor(a))
    if bad.any():
        raise LedgerError(f"{what}: expected positive integer fen amounts, got {int(bad.sum())} bad "
                          f"value(s), e.g. {values[bad].head(3).tolist()}")
    return a.to_numpy(dtype=np.int64)


def plan_instructions(loans: pd.DataFrame, credits: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Instructions and their items from payable loans and supplier credits.

    Args:
        loans: ``application_id, dealer_id, amount_fen, source_batch`` (approved amounts).
        credits: ``credit_id, batch_id, supplier_id, amount_fen`` (credits with an amount > 0).

    Returns:
        ``(instructions, items)`` with :data:`INSTRUCTION_COLUMNS` and :data:`ITEM_COLUMNS`,
        ordered by (borrower, source batch, key): the order limits are checked in.

    Raises:
        LedgerError: an amount is not a positive integer, a loan or credit repeats, or two
            (micro-batch, supplier) pairs would share one idempotency key.
    """
    for frame, key in ((loans, "application_id"), (credits, "credit_id")):
        if frame[key].duplicated().any():
            raise LedgerError(f"plan_instructions: {key} repeats: {frame[key][frame[key].duplicated()].head(3).tolist()}")
    la = _positive_int(loans["amount_fen"], "loan amounts")
    lkey = "loan:" + loans["application_id"].astype(str)
    li = pd.DataFrame({
        "idempotency_key": lkey.to_numpy(), "kind": KINDS["dealer"], "borrower_type": "dealer",
        "borrower_id": loans["dealer_id"].astype(str).to_numpy(), "amount_fen": la,
        "source_batch": loans["source_batch"].astype(str).to_numpy(),
    })
    litems = pd.DataFrame({"item_key": lkey.to_numpy(), "idempotency_key": lkey.to_numpy(), "amount_fen": la})
    ca = _positive_int(credits["amount_fen"], "credit amounts")
    c = pd.DataFrame({"credit_id": credits["credit_id"].astype(str).to_numpy(),
                      "batch_id": credits["batch_id"].astype(str).to_numpy(),
                      "supplier_id": credits["supplier_id"].astype(str).to_numpy(), "amount_fen": ca})
    c["idempotency_key"] = "sc:" + c.batch_id + ":" + c.supplier_id
    pairs = c[["idempotency_key", "batch_id", "supplier_id"]].drop_duplicates()
    clash = pairs.idempotency_key[pairs.idempotency_key.duplicated()]
    if len(clash):  # e.g. batch "a:b" + supplier "c" and batch "a" + supplier "b:c"
        raise LedgerError(f"plan_instructions: key(s) {clash.head(3).tolist()} would aggregate credits of "
                          "different (micro-batch, supplier) pairs; a batch id must not contain ':'")
    ci = c.groupby("idempotency_key", sort=True).agg(
        borrower_id=("supplier_id", "first"), amount_fen=("amount_fen", "sum"), source_batch=("batch_id", "first"),
    ).reset_index()
    ci.insert(1, "kind", KINDS["supplier"])
    ci.insert(2, "borrower_type", "supplier")
    citems = pd.DataFrame({"item_key": ("credit:" + c.credit_id).to_numpy(), "idempotency_key": c.idempotency_key,
                           "amount_fen": ca})
    instructions = pd.concat([li, ci], ignore_index=True)
    instructions["amount_fen"] = instructions["amount_fen"].astype(np.int64)
    instructions.insert(0, "instruction_id", instructions.idempotency_key.map(instruction_id))
    instructions = instructions.sort_values(["borrower_type", "borrower_id", "source_batch", "idempotency_key"],
                                            ignore_index=True)[INSTRUCTION_COLUMNS]
    items = pd.concat([litems, citems], ignore_index=True)
    items.insert(1, "instruction_id", items.pop("idempotency_key").map(instruction_id))
    items["amount_fen"] = items["amount_fen"].astype(np.int64)
    return instructions, items[ITEM_COLUMNS]


def apply_limits(instructions: pd.DataFrame, headroom_fen: pd.Series, frozen: pd.Series) -> pd.Series:
    """Why each instruction is held (``None`` where it may be posted), in instruction order.

    Args:
        instructions: :data:`INSTRUCTION_COLUMNS`, in the order of :func:`plan_instructions`.
        headroom_fen: limit − current drawn balance per ``(borrower_type, borrower_id)``
            (a borrower without a row has no headroom).
        frozen: bool per ``(borrower_type, borrower_id)``: an early-warning freeze.

    Returns:
        Series aligned with ``instructions``: ``"frozen"``, ``"over_limit"`` or ``None``.
    """
    key = pd.MultiIndex.from_frame(instructions[["borrower_type", "borrower_id"]])
    room = pd.Series(headroom_fen.reindex(key).to_numpy(), index=instructions.index).fillna(0).astype(np.int64)
    is_frozen = pd.Series(frozen.reindex(key).to_numpy(), index=instructions.index).fillna(False).astype(bool)
    cum = instructions.groupby(["borrower_type", "borrower_id"], sort=False)["amount_fen"].cumsum()
    over = cum > room
    # once one instruction of a borrower is over, every later one of it is held too
    over = over.astype(np.int64).groupby([instructions.borrower_type, instructions.borrower_id]).cummax().astype(bool)
    out = pd.Series(None, index=instructions.index, dtype=object)
    out[over] = "over_limit"
    out[is_frozen] = "frozen"
    return out


def disbursement_legs(instructions: pd.DataFrame) -> pd.DataFrame:
    """Two legs per instruction: debit the borrower's receivable, credit the clearing account.

    The entry id is ``disb:<idempotency key>``, so one instruction has exactly one entry."""
    n = len(instructions)
    entry = ("disb:" + instructions["idempotency_key"].astype(str)).to_numpy()
    amount = instructions["amount_fen"].to_numpy(dtype=np.int64)
    bt = instructions["borrower_type"].to_numpy(dtype=object)
    bid = instructions["borrower_id"].to_numpy(dtype=object)
    accounts = np.array([receivable_account(t, b) for t, b in zip(bt, bid)], dtype=object)
    legs = pd.DataFrame({
        "entry_id": np.concatenate([entry, entry]),
        "account": np.concatenate([accounts, np.full(n, CLEARING, dtype=object)]),
        "borrower_type": np.concatenate([bt, bt]), "borrower_id": np.concatenate([bid, bid]),
        "debit_fen": np.concatenate([amount, np.zeros(n, np.int64)]),
        "credit_fen": np.concatenate([np.zeros(n, np.int64), amount]),
    })
    return legs[LEG_COLUMNS]


def repayment_legs(repayments: pd.DataFrame) -> pd.DataFrame:
    """Debit nostro, credit the receivable: ``entry_id, borrower_type, borrower_id, amount_fen``."""
    n = len(repayments)
    amount = _positive_int(repayments["amount_fen"], "repayment amounts") if n else np.zeros(0, np.int64)
    bt = repayments["borrower_type"].to_numpy(dtype=object)
    bid = repayments["borrower_id"].to_numpy(dtype=object)
    entry = repayments["entry_id"].to_numpy(dtype=object)
    accounts = np.array([receivable_account(t, b) for t, b in zip(bt, bid)], dtype=object)
    legs = pd.DataFrame({
        "entry_id": np.concatenate([entry, entry]),
        "account": np.concatenate([np.full(n, NOSTRO, dtype=object), accounts]),
        "borrower_type": np.concatenate([bt, bt]), "borrower_id": np.concatenate([bid, bid]),
        "debit_fen": np.concatenate([amount, np.zeros(n, np.int64)]),
        "credit_fen": np.concatenate([np.zeros(n, np.int64), amount]),
    })
    return legs[LEG_COLUMNS]


def reversal_legs(legs: pd.DataFrame, entry_id: str) -> pd.DataFrame:
    """The entry ``rev:<entry_id>`` that undoes ``entry_id``: every leg with debit and credit swapped."""
    orig = legs[legs.entry_id == entry_id]
    if orig.empty:
        raise LedgerError(f"reversal: entry {entry_id!r} has no postings")
    rev = orig.copy()
    rev["entry_id"] = f"rev:{entry_id}"
    rev["debit_fen"], rev["credit_fen"] = orig["credit_fen"].to_numpy(), orig["debit_fen"].to_numpy()
    return rev[LEG_COLUMNS].reset_index(drop=True)


def check_balanced(legs: pd.DataFrame) -> None:
    """Raise :class:`LedgerError` naming the entries whose debits ≠ credits or with a bad leg."""
    d = legs["debit_fen"].to_numpy(dtype=np.int64)
    c = legs["credit_fen"].to_numpy(dtype=np.int64)
    bad_leg = (d < 0) | (c < 0) | ((d > 0) == (c > 0))
    if bad_leg.any():
        raise LedgerError(f"every posting must have exactly one positive side; bad legs in entries "
                          f"{sorted(set(legs.entry_id[bad_leg]))[:5]}")
    net = pd.Series(d - c).groupby(legs["entry_id"].to_numpy()).sum()
    if (net != 0).any():
        raise LedgerError(f"unbalanced entries (debits − credits, fen): {net[net != 0].head(5).to_dict()}")


def account_deltas(legs: pd.DataFrame) -> pd.Series:
    """Debits − credits per account (what the legs add to each account's balance)."""
    return (legs["debit_fen"].astype(np.int64) - legs["credit_fen"].astype(np.int64)).groupby(
        legs["account"].to_numpy()).sum()


@dataclass(frozen=True)
class Reconciliation:
    """Counts and the differences found (each a short description; empty when reconciled)."""

    payable_items: int
    held_items: int
    instructions: int
    postings: int
    outbox: int
    amount_fen: int
    differences: tuple[str, ...]

    @property
    def reconciled(self) -> bool:
        return not self.differences


def reconcile(payable: pd.DataFrame, held: pd.DataFrame, items: pd.DataFrame, instructions: pd.DataFrame,
              legs: pd.DataFrame, outbox: pd.DataFrame, balances: pd.Series,
              out_of_scope: frozenset[str] = frozenset(), all_legs: pd.DataFrame | None = None) -> Reconciliation:
    """Prove decisions = instructions = postings = outbox.

    Args:
        payable: ``item_key, amount_fen``: what decisions and allocations say should be paid.
        held: ``item_key``: payable items held (frozen borrower, over limit) and not instructed.
        items: ``item_key, instruction_id, amount_fen`` of the instructions.
        instructions: ``instruction_id, amount_fen``.
        legs: disbursement postings ``entry_id, instruction_id, account, debit_fen, credit_fen``
            (and any other entries, e.g. repayments, for the balance check).
        outbox: ``instruction_id, amount_fen``.
        balances: stored running balance per borrower receivable account (what the limit check
            reads); the house accounts (clearing, nostro) keep no running balance.
        out_of_scope: instruction ids of payments decided after this reconciliation's cutoff (a
            later run's): left out of the item and instruction checks, kept in the balance checks.
        all_legs: every posting of the ledger, for the entry-balance and account-balance checks
            when ``legs`` holds only the scope's (default: ``legs``).
    """
    diffs: list[str] = []
    all_legs = legs if all_legs is None else all_legs
    if out_of_scope:
        items = items[~items.instruction_id.isin(out_of_scope)]
        instructions = instructions[~instructions.instruction_id.isin(out_of_scope)]
        legs = legs[~legs.instruction_id.isin(out_of_scope)]
        outbox = outbox[~outbox.instruction_id.isin(out_of_scope)]

    def note(what: str, keys) -> None:
        keys = sorted(map(str, keys))
        if keys:
            diffs.append(f"{what}: {len(keys)} (e.g. {keys[:3]})")

    pay = payable.set_index("item_key")["amount_fen"]
    it = items.set_index("item_key")
    held_keys = set(held["item_key"])
    note("payable items neither instructed nor held", set(pay.index) - set(it.index) - held_keys)
    note("payable items both instructed and held", set(it.index) & held_keys)
    note("instruction items that no decision or allocation pays", set(it.index) - set(pay.index))
    common = pay.index.intersection(it.index)
    note("items whose instructed amount differs from the decision", common[pay[common] != it.loc[common, "amount_fen"]])
    ins = instructions.set_index("instruction_id")["amount_fen"]
    per_instr = items.groupby("instruction_id")["amount_fen"].sum()
    note("instructions without items", set(ins.index) - set(per_instr.index))
    note("items of unknown instructions", set(per_instr.index) - set(ins.index))
    both = ins.index.intersection(per_instr.index)
    note("instructions whose amount ≠ the sum of their items", both[ins[both] != per_instr[both]])
    disb = legs[legs.entry_id.str.startswith("disb:")]
    dr = disb.groupby("instruction_id")["debit_fen"].sum()
    cr = disb.groupby("instruction_id")["credit_fen"].sum()
    note("instructions without postings", set(ins.index) - set(dr.index))
    note("postings of unknown instructions", set(dr.index) - set(ins.index))
    b = ins.index.intersection(dr.index)
    note("instructions whose postings ≠ the amount", b[(dr[b] != ins[b]) | (cr[b] != ins[b])])
    net = (all_legs["debit_fen"] - all_legs["credit_fen"]).groupby(all_legs["entry_id"]).sum()
    note("unbalanced entries", net.index[net != 0])
    ob = outbox.set_index("instruction_id")["amount_fen"]
    note("instructions missing from the outbox", set(ins.index) - set(ob.index))
    note("outbox rows without an instruction", set(ob.index) - set(ins.index))
    o = ins.index.intersection(ob.index)
    note("outbox amounts ≠ instruction amounts", o[ob[o] != ins[o]])
    computed = account_deltas(all_legs) if len(all_legs) else pd.Series(dtype=np.int64)
    computed = computed[~computed.index.isin([CLEARING, NOSTRO])]  # running balances: borrower accounts only
    accounts = computed.index.union(balances.index)
    diff = computed.reindex(accounts, fill_value=0) - balances.reindex(accounts, fill_value=0)
    note("account balances ≠ the sum of their postings", diff.index[diff != 0])
    return Reconciliation(
        payable_items=int(len(pay)), held_items=int(len(held_keys)), instructions=int(len(ins)),
        postings=int(len(all_legs)), outbox=int(len(ob)), amount_fen=int(ins.sum()) if len(ins) else 0,
        differences=tuple(diffs))
