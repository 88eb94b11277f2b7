"""Decision records of batch launches: every member's decision, stored compactly per partition, readable as
`decisions/{launch_id}:{customer_id}` through GetDecision, ExplainDecision and `lodestar explain`.

A partition's document (in `campaign_batch_decisions` with the partition's number) holds per member: the group
(an arm, control -1, global holdout -2) and the probability it was picked with; the probability per offer with
the offer's model version and basis; the risk verdict per option (offer x channel) with its reason codes (a
dictionary of reason sets, referenced by index); the feature snapshot (the scoring attributes, region, time
zone, age — never a birth date) and its sha256 (the same canonical hash real-time decisions use). The
allocation's document (number 0) holds each candidate's chosen option or the constraint that cut it. A record
is assembled from both when read.

Format: version 2 (written since the columnar batch path) is columnar and binary — the magic bytes `LSBD2`, a
zlib'd JSON header (scalars, ids, the arrays' layout), the snapshot columns as their own section, then the arrays
(integer ones zlib'd, probabilities and digests raw: see _pack_v2) — so that a partition of 10,000 members is
encoded in milliseconds; version 1 (zlib-compressed JSON, the same columns as lists) is still read. `unpack`
returns either as the same dictionary.

As a DecisionRecord: one candidate per option — `offer_id` is the offer's id, or "{offer_id}/{CHANNEL}" when the
campaign has several channels; `rank` 1 marks the option allocated; the context's placement says
"launch:{launch_id} {outcome}" (ALLOCATED, CONTROL, GLOBAL_HOLDOUT, or the cut reason: INELIGIBLE,
NOT_PROFITABLE, CAPACITY:<channel>, BUDGET, OUTRANKED); `action_probability` is the probability of the member's
group (the allocation itself is deterministic). ExplainDecision re-scores every allowed option from the snapshot
with the recorded model version and compares probability and expected value (the allocation is not re-run: it
depends on every other customer of the launch).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from services.campaign.clients import VERDICT_CODES, ScreenedBatch
from services.campaign.db import BatchDecisionRow, CampaignUnitOfWork, LaunchRow
from services.campaign.domain import CustomerSnapshot, Offer
from services.platform.errors import InvalidArgument, NotFound
from services.platform.masking import customer_token
from services.platform.validation import ID_PATTERN

# A HOLD for these reasons only is about *when*, not *whether*: the customer is selectable, and the dispatcher
# screens again at send time and defers the message to the customer's morning (docs/delivery.md). Any other
# hold (an unknown time zone, a frequency cap) or a deny keeps the customer out.
DEFERRABLE_HOLDS = frozenset({"QUIET_HOURS"})


def selectable(verdict: str, reasons: Sequence[str]) -> bool:
    """Whether a batch selection may pick an option risk answered `verdict` with `reasons` for."""
    return verdict == "ALLOW" or (verdict == "HOLD" and bool(reasons) and set(reasons) <= DEFERRABLE_HOLDS)


def selectable_codes(verdicts: np.ndarray, reasons: np.ndarray, reason_sets: Sequence[str]) -> np.ndarray:
    """`selectable` of every (verdict code, reason set index) pair of two arrays, once per distinct reason set."""
    deferrable = np.array([selectable("HOLD", [r for r in name.split(",") if r]) for name in reason_sets],
                          dtype=bool)
    return np.asarray((verdicts == VERDICT_CODES["ALLOW"])
                      | ((verdicts == VERDICT_CODES["HOLD"]) & deferrable[np.asarray(reasons, dtype=np.int64)]))


def selectable_mask(answer: ScreenedBatch) -> np.ndarray:
    """members x offers: `selectable` of every verdict of a ScreenBatch answer."""
    return selectable_codes(answer.verdicts, answer.reasons, answer.reason_sets)


VERDICT_NAMES = {v: k for k, v in VERDICT_CODES.items()}
GROUP_OUTCOMES = {-1: "CONTROL", -2: "GLOBAL_HOLDOUT"}
ALLOCATION_NUMBER = 0
# Erased customers' ids are replaced by "erased-<random>" (data_subject.new_pseudonym).
PSEUDONYM_PREFIX = "erased-"



def parse_batch_id(decision_id: str) -> tuple[str, str] | None:
    """'{launch_id}:{customer_id}' -> (launch_id, customer_id); None when it is not a batch decision id."""
    launch_id, sep, customer_id = decision_id.partition(":")
    if not sep:
        return None
    if not launch_id.isalnum() or len(launch_id) > 32 or not ID_PATTERN.match(customer_id):
        raise InvalidArgument.field("name", "must be decisions/{id} or decisions/{launch_id}:{customer_id}",
                                    reason="INVALID_NAME")
    return launch_id, customer_id


def decision_id_from_name(name: str) -> str:
    """The id of 'decisions/{id}' where id is a real-time decision id or '{launch_id}:{customer_id}'."""
    if not name:
        raise InvalidArgument.field("name", "is required, as decisions/{id}", reason="REQUIRED_FIELD_MISSING")
    decision_id = name.removeprefix("decisions/")
    if not name.startswith("decisions/") or not (ID_PATTERN.match(decision_id) or parse_batch_id(decision_id)):
        raise InvalidArgument.field("name", "must be decisions/{id} or decisions/{launch_id}:{customer_id}",
                                    reason="INVALID_NAME")
    return decision_id


MAGIC = b"LSBD2"
SNAPSHOT_SECTION = "snapshot.json"


def _pack(document: dict[str, Any]) -> bytes:
    """Version 1 (JSON) documents stay JSON when rewritten (an erasure); version 2 ones stay binary."""
    if document.get("v") == 2:
        return _pack_v2(document)
    return zlib.compress(json.dumps(document, separators=(",", ":"), allow_nan=False).encode(), 6)


def _pack_v2(document: dict[str, Any]) -> bytes:
    """MAGIC, the length of the header, the header (zlib level 1: the scalars, the ids, the snapshot columns and
    the layout of the arrays), then each array's bytes: integer arrays zlib'd, float and digest arrays raw (they
    hardly compress, at a tenth of the speed)."""
    arrays = {k: np.ascontiguousarray(v) for k, v in document.items() if isinstance(v, np.ndarray)}
    meta = {k: v for k, v in document.items() if not isinstance(v, np.ndarray) and k != "snapshot"}
    meta["ids"] = [str(i) for i in document["ids"]]
    if "snapshot" in document:  # its own section: the allocation reads documents without parsing it
        arrays[SNAPSHOT_SECTION] = np.frombuffer(json.dumps(document["snapshot"], separators=(",", ":")).encode(),
                                                 dtype=np.int8)
    payloads, layout = [], []
    for name, array in arrays.items():
        compressed = array.dtype.kind in "iub" and array.dtype != np.uint8
        raw = array.tobytes()
        payload = zlib.compress(raw, 1) if compressed else raw
        payloads.append(payload)
        layout.append([name, array.dtype.str, list(array.shape), compressed, len(payload)])
    meta["arrays"] = layout
    header = zlib.compress(json.dumps(meta, separators=(",", ":")).encode(), 1)
    return b"".join([MAGIC, len(header).to_bytes(8, "big"), header, *payloads])


def unpack(raw: bytes, *, snapshot: bool = True) -> dict[str, Any]:
    """A stored document as a dictionary: "ids" a list; "groups", "probability" (NaN: none), "verdicts",
    "reasons" indexable by member (arrays in version 2, lists in version 1); "snapshot" (version 2's feature
    snapshot columns) only when asked for."""
    if raw.startswith(MAGIC):
        size = int.from_bytes(raw[len(MAGIC):len(MAGIC) + 8], "big")
        position = len(MAGIC) + 8 + size
        document: dict[str, Any] = json.loads(zlib.decompress(raw[len(MAGIC) + 8:position]))
        for name, dtype, shape, compressed, length in document.pop("arrays"):
            payload = raw[position:position + length]
            position += length
            if name == SNAPSHOT_SECTION:
                if snapshot:
                    document["snapshot"] = json.loads(zlib.decompress(payload))
                continue
            data = zlib.decompress(payload) if compressed else payload
            document[name] = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
        return document
    legacy: dict[str, Any] = json.loads(zlib.decompress(raw))
    return legacy


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def encode_partition(*, launch_id: str, campaign_id: str, contact_time: datetime, offers: Sequence[Offer],
                     channels: Sequence[int], ids: Sequence[str], groups: np.ndarray,
                     group_probabilities: np.ndarray | None, probabilities: np.ndarray,
                     versions: Sequence[tuple[str, str]], features: Sequence[str],
                     attrs: Mapping[str, Sequence[Any]], regions: Sequence[Any], zones: Sequence[Any],
                     ages: np.ndarray, behaviour: Mapping[str, Sequence[float | None]] | None = None,
                     screened: dict[int, ScreenedBatch], policy_version: str) -> bytes:
    """One partition's decision records (see the module docstring), column by column."""
    from services.campaign.service import snapshot_hashes

    n, width = len(ids), len(offers) * len(channels)
    reason_sets: dict[str, int] = {"": 0}
    verdicts = np.zeros((n, width), dtype=np.int8)
    reasons = np.zeros((n, width), dtype=np.int32)
    for k, channel in enumerate(channels):
        answer = screened.get(channel)
        if answer is None:
            continue
        # This channel's reason sets, renumbered into the partition's dictionary.
        renumber = np.array([reason_sets.setdefault(name, len(reason_sets)) for name in answer.reason_sets],
                            dtype=np.int32)
        verdicts[:, k::len(channels)] = answer.verdicts
        reasons[:, k::len(channels)] = renumber[answer.reasons]
    snapshot_attributes = {f: list(attrs[f]) for f in features if f in attrs}
    region_list = [r or "" for r in regions]
    zone_list = [z or "" for z in zones]
    # Whole years; -1 where unknown (not exported, not a number, or negative): None in the record.
    ages = np.asarray(ages, dtype=float).reshape(n)
    known = np.isfinite(ages) & (ages >= 0)
    age_list = np.where(known, np.trunc(np.where(known, ages, 0)), -1).astype(np.int64).tolist()
    behaviour_columns = {name: list(values) for name, values in (behaviour or {}).items()}
    digests = snapshot_hashes(snapshot_attributes, region_list, zone_list, age_list, contact_time.isoformat(),
                              features=behaviour_columns)
    document: dict[str, Any] = {
        "v": 2, "launch_id": launch_id, "campaign_id": campaign_id, "contact_time": contact_time.isoformat(),
        "policy_version": policy_version, "offers": [o.offer_id for o in offers],
        "terms": [[o.conversion_value, o.contact_cost] for o in offers], "channels": list(channels),
        "models": [v for v, _ in versions], "bases": [b for _, b in versions],
        "reason_sets": list(reason_sets),
        "snapshot": {"attributes": snapshot_attributes, "region": region_list, "time_zone": zone_list,
                     "age": age_list, "features": behaviour_columns},
        "ids": list(ids),
        "groups": np.asarray(groups, dtype=np.int16),
        "group_probability": (np.asarray(group_probabilities, dtype=float) if group_probabilities is not None
                              else np.full(n, np.nan)),
        "probability": np.asarray(probabilities, dtype=float).reshape(n, len(offers)),
        "verdicts": verdicts, "reasons": reasons.astype(np.int16) if len(reason_sets) < 2 ** 15 else reasons,
        "snapshot_hash": np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(n, 32),
    }
    return _pack_v2(document)


def encode_allocation(partitions: Sequence[tuple[int, int]], assignment: np.ndarray, cut_by: Sequence[str]
                      ) -> bytes:
    """The allocation's document: per candidate — the treated members of the partitions, in partition order and
    member order within each — its chosen option (-1: none) and the reason it was cut. A candidate is found by
    its position, not its id: `partitions` lists (partition number, candidates) in that order."""
    cuts, codes = np.unique(np.asarray(cut_by, dtype=str) if len(cut_by) else np.zeros(0, dtype="U1"),
                            return_inverse=True)
    return _pack_v2({"v": 2, "ids": [], "partitions": [[int(n), int(k)] for n, k in partitions],
                     "chosen": np.asarray(assignment, dtype=np.int32), "cut_names": cuts.tolist(),
                     "cut_codes": codes.astype(np.int32)})


def _allocated(allocation: dict[str, Any] | None, doc: dict[str, Any], number: int, i: int
               ) -> tuple[int, str] | None:
    """(chosen option, cut reason) of member i of partition `number` (document `doc`) in the allocation's
    document; None when it is not a candidate there."""
    if allocation is None:
        return None
    if "partitions" in allocation:  # version 2: by position
        offset = 0
        for partition, candidates in allocation["partitions"]:
            if partition == number:
                k = offset + int((np.asarray(doc["groups"][:i]) >= 0).sum())
                if k >= offset + candidates:
                    return None
                return int(allocation["chosen"][k]), str(allocation["cut_names"][int(allocation["cut_codes"][k])])
            offset += candidates
        return None
    customer = doc["ids"][i]
    try:
        k = allocation["ids"].index(customer)
    except ValueError:
        return None
    return int(allocation["chosen"][k]), str(allocation["cut"][k])


def _snapshot(doc: dict[str, Any], i: int) -> dict[str, Any]:
    if "snapshots" in doc:  # version 1
        return dict(doc["snapshots"][i])
    columns = doc["snapshot"]
    age = columns["age"][i]
    snapshot = {"attributes": {f: values[i] for f, values in columns["attributes"].items() if values[i] is not None},
                "region": columns["region"][i], "time_zone": columns["time_zone"][i],
                "age": age if age is not None and age >= 0 else None, "decision_time": doc["contact_time"]}
    features = {f: values[i] for f, values in sorted((columns.get("features") or {}).items()) if values[i] is not None}
    if features:  # as real-time snapshots: only when a model read some
        snapshot["features"] = features
    return snapshot


def _snapshot_hash(doc: dict[str, Any], i: int) -> str:
    digest = doc["snapshot_hash"][i]
    return digest if isinstance(digest, str) else bytes(digest).hex()


def _record(doc: dict[str, Any], number: int, i: int, allocation: dict[str, Any] | None, create_time: datetime
            ) -> Any:
    from services.campaign.service import DecisionRecordView

    customer = doc["ids"][i]
    group = int(doc["groups"][i])
    channels, offers, terms = doc["channels"], doc["offers"], doc["terms"]
    chosen, outcome = -1, GROUP_OUTCOMES.get(group, "")
    if group >= 0:
        outcome = "NOT_ALLOCATED_YET"
        found = _allocated(allocation, doc, number, i)
        if found is not None:
            chosen = found[0]
            outcome = "ALLOCATED" if chosen >= 0 else (found[1] or "NOT_ALLOCATED")
    candidates: list[dict[str, Any]] = []
    for j, offer_id in enumerate(offers):
        for k, channel in enumerate(channels):
            option = j * len(channels) + k
            verdict = VERDICT_NAMES.get(int(doc["verdicts"][i][option]), "MISSING")
            reasons = [r for r in doc["reason_sets"][int(doc["reasons"][i][option])].split(",") if r]
            if verdict == "MISSING" and not reasons:
                reasons = ["VERDICT_MISSING"]
            name = offer_id if len(channels) == 1 else f"{offer_id}/{_channel(channel)}"
            record: dict[str, Any] = {"offer_id": name, "verdict": verdict, "reasons": reasons,
                                      "rank": 1 if option == chosen else 0}
            p = doc["probability"][i][j]
            if selectable(verdict, reasons) and p is not None and np.isfinite(p):
                value, cost = terms[j]
                record.update(propensity=round(float(p), 6), conversion_value=value, contact_cost=cost,
                              expected_value=round(float(p) * value - cost, 6), model_version=doc["models"][j],
                              basis=doc["bases"][j])
            candidates.append(record)
    probability = doc["group_probability"][i]
    return DecisionRecordView(
        decision_id=f"{doc['launch_id']}:{customer}", customer_token=customer_token(customer),
        channel=channels[chosen % len(channels)] if chosen >= 0 else (channels[0] if channels else 0),
        partner_id="", placement=f"launch:{doc['launch_id']} {outcome}",
        decision_time=datetime.fromisoformat(doc["contact_time"]), max_offers=1, candidates=candidates,
        model_version=",".join(sorted(set(doc["models"]))), policy_version=doc["policy_version"],
        snapshot=_snapshot(doc, i), snapshot_hash=_snapshot_hash(doc, i),
        action_probability=_finite(probability) if probability is not None else None, create_time=create_time)


def _channel(channel: int) -> str:
    from services.campaign.launch import channel_name

    return channel_name(channel)


async def get_batch_decision(uow_factory: Callable[[], CampaignUnitOfWork], decision_id: str) -> Any:
    """The DecisionRecordView of '{launch_id}:{customer_id}'; NOT_FOUND DECISION_NOT_FOUND when that launch has
    no record of that customer (yet)."""
    parsed = parse_batch_id(decision_id)
    assert parsed is not None
    launch_id, customer_id = parsed
    missing = NotFound("decision", f"decisions/{decision_id}")
    async with uow_factory() as uow:
        launch = await uow.session.get(LaunchRow, launch_id)
        if launch is None:
            raise missing
        doc: dict[str, Any] | None = None
        number = 0
        for in_range in (True, False):  # by the id range; else (a pseudonymised id) every partition
            query = select(BatchDecisionRow).where(BatchDecisionRow.launch_id == launch_id,
                                                   BatchDecisionRow.number > ALLOCATION_NUMBER)
            if in_range:
                query = query.where(BatchDecisionRow.first_id <= customer_id, BatchDecisionRow.last_id >= customer_id)
            for row in await uow.session.scalars(query.order_by(BatchDecisionRow.number)):
                if customer_id in unpack(row.records, snapshot=False)["ids"]:  # the snapshot only of the one found
                    doc, number = unpack(row.records), row.number
                    break
            if doc is not None:
                break
        if doc is None:
            raise missing
        allocation_row = await uow.session.get(BatchDecisionRow, (launch_id, ALLOCATION_NUMBER))
        allocation = unpack(allocation_row.records) if allocation_row is not None else None
        create_time = launch.done_time or launch.update_time or datetime.now(UTC)
    return _record(doc, number, doc["ids"].index(customer_id), allocation, create_time)


async def explain_batch_decision(service: Any, decision_id: str) -> Any:
    """Re-scores every allowed option from the snapshot with the recorded model version (the heuristic by its
    version) and compares probability and expected value with the record."""
    from services.campaign import modeling
    from services.campaign.service import (
        DecisionDifference,
        DecisionExplanation,
        birth_date_for_age,
        snapshot_hash,
    )

    record = await get_batch_decision(service.uow_factory, decision_id)

    def differs(offer_id: str, field: str, recorded: str, recomputed: str) -> Any:
        return DecisionExplanation(record, False, DecisionDifference(offer_id, field, recorded, recomputed), [])

    snapshot = record.snapshot
    if snapshot_hash(snapshot) != record.snapshot_hash:
        return differs("", "snapshot_hash", record.snapshot_hash or "-", snapshot_hash(snapshot))
    when = datetime.fromisoformat(snapshot["decision_time"])
    age = snapshot.get("age")
    customer = CustomerSnapshot("", birth_date_for_age(age, when.date()) if age is not None else None,
                                snapshot.get("region", ""), snapshot.get("time_zone", ""),
                                dict(snapshot.get("attributes") or {}))
    recomputed: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for candidate in record.candidates:
        again = dict(candidate)
        if selectable(str(candidate.get("verdict")), list(candidate.get("reasons") or [])):
            offer = await service.get_offer(str(candidate["offer_id"]).split("/")[0])
            version = str(candidate["model_version"])
            if version == service.model.version:
                probability = service.model.score(customer, offer, when.date())
            else:
                if version not in models:
                    models[version] = await service._load_model_version(version)
                trained = models[version]
                if trained is None:
                    return differs(str(candidate["offer_id"]), "model_version", version, "not in the model registry")
                frame = modeling.build_frame([modeling.Example(
                    customer.attributes, customer.birth_date, customer.region, when, {},
                    features=dict(snapshot.get("features") or {}))], trained.spec)
                probability = float(np.clip(trained.score(frame)[0], 0.0, 1.0))
            again.update(propensity=round(probability, 6), conversion_value=offer.conversion_value,
                         contact_cost=offer.contact_cost,
                         expected_value=round(probability * offer.conversion_value - offer.contact_cost, 6))
        recomputed.append(again)
    from services.campaign.service import first_difference

    difference = first_difference(record.candidates, recomputed)
    return DecisionExplanation(record, difference is None, difference, recomputed)


def narrowed_bounds(first_id: str, last_id: str, erased: str, ids: Sequence[str]) -> tuple[str, str]:
    """An id range's bounds once `erased` is gone: a bound equal to it moves to the nearest id still held (never
    to a pseudonym, whose order is random: the range must keep covering the real ids, or a later erasure of
    another customer would miss the document). No real id left: an empty range ("", "")."""
    if erased not in (first_id, last_id):
        return first_id, last_id
    real = sorted(i for i in ids if i != erased and not i.startswith(PSEUDONYM_PREFIX))
    if not real:
        return "", ""
    return (real[0] if first_id == erased else first_id), (real[-1] if last_id == erased else last_id)


async def erase_customer(uow: CampaignUnitOfWork, customer_id: str, pseudonym: str) -> int:
    """Data-subject erasure (for data_subject.py): in every batch decision document holding the customer, its id
    becomes `pseudonym` and its snapshot loses its attribute values (the hash stays: proof the record existed,
    nothing that identifies). Returns the documents changed. The caller commits."""
    rows = list(await uow.session.scalars(select(BatchDecisionRow).where(
        (BatchDecisionRow.number == ALLOCATION_NUMBER)
        | ((BatchDecisionRow.first_id <= customer_id) & (BatchDecisionRow.last_id >= customer_id)))))
    changed = 0
    for row in rows:
        doc = unpack(row.records)
        if customer_id not in doc["ids"]:
            continue
        i = doc["ids"].index(customer_id)
        doc["ids"][i] = pseudonym
        if "snapshots" in doc:  # version 1
            doc["snapshots"][i] = {**doc["snapshots"][i], "attributes": {}, "region": "", "time_zone": "",
                                   "age": None}
        if "snapshot" in doc:  # version 2: the row's values cleared, its digest kept
            columns = doc["snapshot"]
            for values in [*columns["attributes"].values(), *(columns.get("features") or {}).values()]:
                values[i] = None
            columns["region"][i], columns["time_zone"][i], columns["age"][i] = "", "", -1
        row.records = _pack(doc)
        if row.number != ALLOCATION_NUMBER:
            row.first_id, row.last_id = narrowed_bounds(row.first_id, row.last_id, customer_id, doc["ids"])
        changed += 1
    await uow.session.flush()
    return changed
