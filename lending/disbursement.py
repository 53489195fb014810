"""Disbursement planning and the double-entry ledger, as pure functions.

Money moves exactly once because every payment instruction carries an **idempotency key derived
from business keys**, which the warehouse enforces with a unique constraint:

- a used-car order loan: ``loan:<application_id>`` (one instruction per approved application).
  The loan is the instruction's only *item* and its item key is the idempotency key itself, so
  the warehouse stores no item row for it (:func:`implied_items` rebuilds it for reconciliation);
- supplier credit: ``sc:<micro-batch>:<supplier_id>``: one instruction aggregates a supplier's
  credits of one micro-batch; each credit it carries is an item ``credit:<credit_id>`` (the
  credit id is VIN + supplier), stored with the credit as primary key, so a credit belongs to at
  most one instruction (:func:`stored_items`).

The ledger is double-entry and stored as *entries* (transfers, as TigerBeetle does): one row per
entry with a debit account, a credit account and one positive amount, so every entry balances by
construction and carries two *postings* (legs): the debit leg and the credit leg
(:func:`entry_legs`). A disbursement debits the borrower's receivable account and credits the
payment clearing account (what the bank owes the payment rail); a repayment debits the nostro
account and credits the receivable; a reversal ``rev:<entry>`` is a new entry with the accounts
of the original swapped. Entries are never updated or deleted.

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
ENTRY_COLUMNS = ["entry_id", "debit_account", "credit_account", "amount_fen", "borrower_type", "borrower_id"]
LEG_COLUMNS = ["entry_id", "account", "borrower_type", "borrower_id", "debit_fen", "credit_fen"]
LOAN_PREFIX, CREDIT_PREFIX = "loan:", "credit:"  # item keys: a loan's is its instruction's idempotency key


class LedgerError(ValueError):
    """An entry does not balance, an amount is not a positive integer, or a key repeats."""


class ReconciliationError(RuntimeError):
    """Decisions, instructions, postings and the outbox disagree; the message lists how."""


def instruction_id(idempotency_key: str) -> str:
    """The instruction id the payment rail sees: a stable hash of the idempotency key."""
    return _instruction_ids([idempotency_key])[idempotency_key]


def _instruction_ids(keys: list[str]) -> dict[str, str]:
    """:func:`instruction_id` of each key (one comprehension: 100,000 keys are a plan's hot spot)."""
    sha = hashlib.sha256
    return {k: "pi_" + sha(k.encode()).hexdigest()[:29] for k in keys}


def receivable_account(borrower_type: str, borrower_id: str) -> str:
    return f"{RECEIVABLE[borrower_type]}:{borrower_id}"


def _positive_int(values: pd.Series, what: str) -> np.ndarray:
    a = pd.to_numeric(values, errors="coerce")
    bad = a.isna() | (a <= 0) | (a != np.floor(a))
    if bad.any():
        raise LedgerError(f"{what}: expected positive integer fen amounts, got {int(bad.sum())} bad "
                          f"value(s), e.g. {values[bad].head(3).tolist()}")
    return a.to_numpy(dtype=np.int64)


def _texts(values) -> list[str]:
    """Plain Python strings (pandas' Arrow-backed strings are slow element by element)."""
    if isinstance(values, pd.Series) and pd.api.types.infer_dtype(values, skipna=False) == "string":
        return values.tolist()
    return [v if isinstance(v, str) else str(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def _frame(columns: dict[str, object]) -> pd.DataFrame:
    """A frame whose text columns stay numpy objects (plain ``str``, not pandas' inferred Arrow
    strings); typed numpy arrays (amounts) keep their type."""
    return pd.DataFrame({c: v if isinstance(v, np.ndarray) and v.dtype != object else pd.Series(v, dtype=object)
                         for c, v in columns.items()})


def plan_instructions(loans: pd.DataFrame, credits: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Instructions and their items from payable loans and supplier credits.

    Args:
        loans: ``application_id, dealer_id, amount_fen, source_batch`` (approved amounts).
        credits: ``credit_id, batch_id, supplier_id, amount_fen`` (credits with an amount > 0).

    Returns:
        ``(instructions, items)`` with :data:`INSTRUCTION_COLUMNS` and :data:`ITEM_COLUMNS`,
        ordered by (borrower, source batch, key): the order limits are checked in. Every payable
        loan and credit is one item; a loan's item key is its instruction's idempotency key.

    Raises:
        LedgerError: an amount is not a positive integer, a loan or credit repeats, or two
            (micro-batch, supplier) pairs would share one idempotency key.
    """
    _check_loans(loans)
    if credits["credit_id"].duplicated().any():
        raise LedgerError(f"plan_instructions: credit_id repeats: "
                          f"{credits.credit_id[credits.credit_id.duplicated()].head(3).tolist()}")
    la = _positive_int(loans["amount_fen"], "loan amounts")
    ca = _positive_int(credits["amount_fen"], "credit amounts")
    lkey = [LOAN_PREFIX + a for a in _texts(loans["application_id"])]
    cid, cbatch, sup = _texts(credits["credit_id"]), _texts(credits["batch_id"]), _texts(credits["supplier_id"])
    # a supplier's credits of one micro-batch: one instruction (vectorised: millions of credits a day)
    bcode, batches = pd.factorize(np.asarray(cbatch, dtype=object))
    scode, suppliers = pd.factorize(np.asarray(sup, dtype=object))
    pcode, pairs = pd.factorize(bcode.astype(np.int64) * max(len(suppliers), 1) + scode)  # in order of appearance
    pbatch = batches[pairs // max(len(suppliers), 1)].tolist()
    psup = suppliers[pairs % max(len(suppliers), 1)].tolist()
    psum = np.zeros(len(pairs), dtype=np.int64)
    np.add.at(psum, pcode, ca)
    pkey = _pair_keys(pbatch, psup)
    instructions, ids = _instructions(loans, la, lkey, pbatch, psup, psum.tolist(), pkey)
    items = _frame({"item_key": lkey + [CREDIT_PREFIX + c for c in cid],
                    "instruction_id": [ids[k] for k in lkey] + np.asarray([ids[k] for k in pkey] or [None],
                                                                            dtype=object)[pcode].tolist(),
                    "amount_fen": np.concatenate([la, ca]).astype(np.int64)})
    return instructions, items


def plan_from_totals(loans: pd.DataFrame, credit_totals: pd.DataFrame) -> pd.DataFrame:
    """The instructions :func:`plan_instructions` plans, from payable loans and the totals of the
    supplier credits per (micro-batch, supplier): the same rows in the same order, without the
    millions of credits themselves (the warehouse writes their items, see
    :func:`chainlend.disbursement_ops.post_instructions`).

    Args:
        loans: as for :func:`plan_instructions`.
        credit_totals: ``batch_id, supplier_id, amount_fen`` (the sum of the pair's payable
            credits, each > 0), one row per pair.

    Raises:
        LedgerError: an amount is not a positive integer, a loan or a pair repeats, or two pairs
            would share one idempotency key.
    """
    _check_loans(loans)
    pairs = credit_totals[["batch_id", "supplier_id"]]
    if pairs.duplicated().any():
        raise LedgerError(f"plan_from_totals: (batch_id, supplier_id) repeats: "
                          f"{pairs[pairs.duplicated()].head(3).values.tolist()}")
    la = _positive_int(loans["amount_fen"], "loan amounts")
    psum = _positive_int(credit_totals["amount_fen"], "credit totals")
    lkey = [LOAN_PREFIX + a for a in _texts(loans["application_id"])]
    pbatch, psup = _texts(credit_totals["batch_id"]), _texts(credit_totals["supplier_id"])
    return _instructions(loans, la, lkey, pbatch, psup, psum.tolist(), _pair_keys(pbatch, psup))[0]


def _check_loans(loans: pd.DataFrame) -> None:
    if loans["application_id"].duplicated().any():
        raise LedgerError(f"plan_instructions: application_id repeats: "
                          f"{loans.application_id[loans.application_id.duplicated()].head(3).tolist()}")


def _pair_keys(pbatch: list[str], psup: list[str]) -> list[str]:
    """The idempotency key ``sc:<batch>:<supplier>`` of each (micro-batch, supplier) pair, which
    must not collide (e.g. batch "a:b" + supplier "c" and batch "a" + supplier "b:c")."""
    pkey = [f"sc:{b}:{s}" for b, s in zip(pbatch, psup)]
    if len(set(pkey)) < len(pkey):
        seen: set[str] = set()
        k = next(k for k in pkey if k in seen or seen.add(k))
        raise LedgerError(f"plan_instructions: key(s) {[k]} would aggregate credits of different (micro-batch, "
                          "supplier) pairs; a batch id must not contain ':'")
    return pkey


def _instructions(loans: pd.DataFrame, la: np.ndarray, lkey: list[str], pbatch: list[str], psup: list[str],
                  psum: list[int], pkey: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The instruction frame of the loans and the credit pairs, in limit-check order, and the
    instruction id of each key."""
    dealers, lbatch = _texts(loans["dealer_id"]), _texts(loans["source_batch"])
    ikey = lkey + pkey
    ids = _instruction_ids(ikey)
    bt = ["dealer"] * len(lkey) + ["supplier"] * len(pkey)
    bid = dealers + psup
    batch = lbatch + pbatch
    amount = la.tolist() + psum
    # the order limits are checked in; keys are unique, so the order is total (and often already sorted)
    order = sorted(range(len(ikey)), key=list(zip(bt, bid, batch, ikey)).__getitem__)
    instructions = _frame({
        "instruction_id": [ids[ikey[j]] for j in order], "idempotency_key": [ikey[j] for j in order],
        "kind": [KINDS[bt[j]] for j in order], "borrower_type": [bt[j] for j in order],
        "borrower_id": [bid[j] for j in order], "amount_fen": np.asarray([amount[j] for j in order], dtype=np.int64),
        "source_batch": [batch[j] for j in order],
    })[INSTRUCTION_COLUMNS]
    return instructions, ids


def stored_items(items: pd.DataFrame) -> pd.DataFrame:
    """The items the warehouse stores (``instruction_items``): a supplier's credits. A loan's item
    is its instruction itself (same key, unique in ``payment_instructions``): not stored."""
    return items[~items["item_key"].str.startswith(LOAN_PREFIX)]


def implied_items(instructions: pd.DataFrame) -> pd.DataFrame:
    """The items the warehouse does not store, rebuilt from ``instructions``
    (``instruction_id, idempotency_key, amount_fen``): each loan instruction's own loan."""
    loans = instructions[instructions["idempotency_key"].str.startswith(LOAN_PREFIX)]
    return pd.DataFrame({"item_key": loans["idempotency_key"].to_numpy(), "instruction_id":
                         loans["instruction_id"].to_numpy(), "amount_fen": loans["amount_fen"].to_numpy()},
                        columns=ITEM_COLUMNS)


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


# --------------------------------------------------------------------------------------------
# entries and their legs


def _entries(entry_id: list[str], debit: list[str], credit: list[str], amount: np.ndarray, borrower_type: list[str],
             borrower_id: list[str]) -> pd.DataFrame:
    return _frame({"entry_id": entry_id, "debit_account": debit, "credit_account": credit,
                   "amount_fen": np.asarray(amount, dtype=np.int64), "borrower_type": borrower_type,
                   "borrower_id": borrower_id})[ENTRY_COLUMNS]


def disbursement_entries(instructions: pd.DataFrame) -> pd.DataFrame:
    """One entry per instruction: debit the borrower's receivable, credit the clearing account.

    The entry id is ``disb:<idempotency key>``, so one instruction has exactly one entry."""
    bt, bid = _texts(instructions["borrower_type"]), _texts(instructions["borrower_id"])
    return _entries(["disb:" + k for k in _texts(instructions["idempotency_key"])],
                    [RECEIVABLE[t] + ":" + b for t, b in zip(bt, bid)], [CLEARING] * len(bt),
                    instructions["amount_fen"].to_numpy(dtype=np.int64), bt, bid)


def repayment_entries(repayments: pd.DataFrame) -> pd.DataFrame:
    """Debit nostro, credit the receivable: ``entry_id, borrower_type, borrower_id, amount_fen``."""
    n = len(repayments)
    amount = _positive_int(repayments["amount_fen"], "repayment amounts") if n else np.zeros(0, np.int64)
    bt, bid = _texts(repayments["borrower_type"]), _texts(repayments["borrower_id"])
    return _entries(_texts(repayments["entry_id"]), [NOSTRO] * n, [RECEIVABLE[t] + ":" + b for t, b in zip(bt, bid)],
                    amount, bt, bid)


def reversal_entries(entries: pd.DataFrame, entry_ids: list[str]) -> pd.DataFrame:
    """The entries ``rev:<entry_id>`` that undo ``entry_ids``: the same amount, accounts swapped.

    Raises:
        LedgerError: an entry id is not among ``entries``.
    """
    orig = entries.set_index("entry_id")
    missing = [e for e in entry_ids if e not in orig.index]
    if missing:
        raise LedgerError(f"reversal: entry {missing[0]!r} has no postings ({len(missing)} unknown entries)")
    o = orig.loc[list(entry_ids)]
    return _entries([f"rev:{e}" for e in entry_ids], _texts(o["credit_account"]), _texts(o["debit_account"]),
                    o["amount_fen"].to_numpy(dtype=np.int64), _texts(o["borrower_type"]), _texts(o["borrower_id"]))


def check_entries(entries: pd.DataFrame) -> None:
    """Raise :class:`LedgerError` naming the entries the ledger would refuse: an amount that is not
    a positive integer, the same account on both sides, an entry id that repeats."""
    amount = pd.to_numeric(entries["amount_fen"], errors="coerce")
    bad = (amount.isna() | (amount <= 0) | (amount != np.floor(amount))).to_numpy()
    if bad.any():
        raise LedgerError(f"entries need a positive integer amount; bad entries {_texts(entries.entry_id[bad])[:5]}")
    same = (entries["debit_account"].to_numpy(dtype=object) == entries["credit_account"].to_numpy(dtype=object))
    if same.any():
        raise LedgerError(f"an entry must debit and credit two different accounts; bad entries "
                          f"{_texts(entries.entry_id[same])[:5]}")
    dup = entries["entry_id"].duplicated().to_numpy()
    if dup.any():
        raise LedgerError(f"entry ids repeat: {_texts(entries.entry_id[dup])[:5]}")


def entry_legs(entries: pd.DataFrame) -> pd.DataFrame:
    """The postings of ``entries``: every debit leg, then every credit leg (what the
    ``ledger_postings`` view shows), :data:`LEG_COLUMNS` followed by any other column of
    ``entries`` (e.g. ``instruction_id``), repeated on both legs."""
    amount = entries["amount_fen"].to_numpy(dtype=np.int64)
    zero = np.zeros(len(entries), np.int64)

    def twice(column: str) -> np.ndarray:
        v = entries[column].to_numpy(dtype=object if column in LEG_COLUMNS else None)
        return np.concatenate([v, v])

    extra = [c for c in entries.columns if c not in ENTRY_COLUMNS]
    return _frame({
        "entry_id": twice("entry_id"),
        "account": np.concatenate([entries["debit_account"].to_numpy(dtype=object),
                                   entries["credit_account"].to_numpy(dtype=object)]),
        "borrower_type": twice("borrower_type"), "borrower_id": twice("borrower_id"),
        "debit_fen": np.concatenate([amount, zero]), "credit_fen": np.concatenate([zero, amount]),
        **{c: twice(c) for c in extra}})


def disbursement_legs(instructions: pd.DataFrame) -> pd.DataFrame:
    """The two legs of each instruction's entry (:func:`disbursement_entries`)."""
    return entry_legs(disbursement_entries(instructions))


def repayment_legs(repayments: pd.DataFrame) -> pd.DataFrame:
    """The two legs of each repayment's entry (:func:`repayment_entries`)."""
    return entry_legs(repayment_entries(repayments))


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
