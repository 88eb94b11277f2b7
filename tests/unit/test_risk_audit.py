"""The audit hash chain: canonical hashing and the location of edits, insertions and deletions."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime

from services.risk import audit

T = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def _log(n: int = 5) -> list[audit.AuditEntry]:
    items = [("SCREEN", "risk", f"cust_{i:016x}", {"i": i}, audit.payload_hash({"i": i})) for i in range(n)]
    return audit.chain(0, audit.GENESIS, T, items)


def test_chain_links_each_entry_to_the_previous_hash() -> None:
    log = _log()
    assert [e.seq for e in log] == [1, 2, 3, 4, 5]
    assert log[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(log))
    expected = audit.entry_hash(log[1].hash, 3, T, "SCREEN", "risk", log[2].subject, '{"i":2}', log[2].payload_hash)
    assert log[2].hash == expected


def test_an_intact_log_verifies() -> None:
    log = _log()
    result = audit.verify(log, (5, log[-1].hash))
    assert (result.intact, result.entries_checked, result.head_hash) == (True, 5, log[-1].hash)


def test_an_edit_is_located() -> None:
    log = _log()
    log[2] = dataclasses.replace(log[2], summary='{"i":99}')
    result = audit.verify(log, (5, log[-1].hash))
    assert (result.intact, result.problem, result.first_bad_seq, result.entries_checked) == (False, "EDITED", 3, 2)


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link() -> None:
    log = _log()
    e = log[2]
    forged = audit.entry_hash(e.prev_hash, e.seq, e.entry_time, e.kind, e.actor, e.subject, '{"i":99}', e.payload_hash)
    log[2] = dataclasses.replace(e, summary='{"i":99}', hash=forged)
    result = audit.verify(log, (5, log[-1].hash))
    assert (result.problem, result.first_bad_seq) == ("INSERTED", 4)


def test_a_deletion_is_a_gap() -> None:
    log = _log()
    del log[1]
    result = audit.verify(log, (5, log[-1].hash))
    assert (result.problem, result.first_bad_seq, result.detail) == ("DELETED", 2, "entry 2 is missing")


def test_a_deleted_tail_is_caught_by_the_head() -> None:
    log = _log()
    head = (5, log[-1].hash)
    result = audit.verify(log[:3], head)
    assert (result.problem, result.first_bad_seq) == ("DELETED", 4)


def test_an_inserted_entry_does_not_link() -> None:
    log = _log()
    stranger = audit.chain(1, "e" * 64, T, [("CONSENT", "x", "cust_y", {}, audit.payload_hash({}))])[0]
    log[1] = stranger  # seq 2 replaced by a forged, self-consistent entry
    result = audit.verify(log, (5, log[-1].hash))
    assert (result.problem, result.first_bad_seq) == ("INSERTED", 2)


def test_an_entry_beyond_the_head_is_inserted() -> None:
    log = _log()
    head = (5, log[-1].hash)
    log += audit.chain(5, log[-1].hash, T, [("CONSENT", "x", "cust_y", {}, audit.payload_hash({}))])
    result = audit.verify(log, head)
    assert (result.problem, result.first_bad_seq) == ("INSERTED", 6)


def test_an_empty_log_is_intact() -> None:
    assert audit.verify([], None).intact
