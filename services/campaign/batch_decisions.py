"""Decision records of batch launches: every member's decision, stored compactly per partition, readable as
`decisions/{launch_id}:{customer_id}` through GetDecision, ExplainDecision and `lodestar explain`.

A partition's document (zlib-compressed JSON, columnar, in `campaign_batch_decisions` with the partition's
number) holds per member: the group (an arm, control -1, global holdout -2) and the probability it was picked
with; the probability per offer with the offer's model version and basis; the risk verdict per option
(offer x channel) with its reason codes (a dictionary of reason sets, referenced by index); the feature snapshot
(the scoring attributes, region, time zone, age — never a birth date) and its sha256 (the same canonical hash
real-time decisions use). The allocation's document (number 0) holds each candidate's chosen option or the
constraint that cut it. A record is assembled from both when read.

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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import numpy as np
from google.protobuf import timestamp_pb2
from sqlalchemy import select

from lodestar.risk.v1 import screening_pb2
from services.campaign.db import BatchDecisionRow, CampaignUnitOfWork, LaunchRow
from services.campaign.domain import CustomerSnapshot, Offer
from services.platform.clients import call_timeout, translate_rpc_error
from services.platform.errors import InvalidArgument, NotFound
from services.platform.masking import customer_token
from services.platform.validation import ID_PATTERN

VERDICT_CODES = {"MISSING": 0, "ALLOW": 1, "DENY": 2, "HOLD": 3}
# A HOLD for these reasons only is about *when*, not *whether*: the customer is selectable, and the dispatcher
# screens again at send time and defers the message to the customer's morning (docs/delivery.md). Any other
# hold (an unknown time zone, a frequency cap) or a deny keeps the customer out.
DEFERRABLE_HOLDS = frozenset({"QUIET_HOURS"})


def selectable(verdict: str, reasons: Sequence[str]) -> bool:
    """Whether a batch selection may pick an option risk answered `verdict` with `reasons` for."""
    return verdict == "ALLOW" or (verdict == "HOLD" and bool(reasons) and set(reasons) <= DEFERRABLE_HOLDS)
VERDICT_NAMES = {v: k for k, v in VERDICT_CODES.items()}
GROUP_OUTCOMES = {-1: "CONTROL", -2: "GLOBAL_HOLDOUT"}
ALLOCATION_NUMBER = 0
# Erased customers' ids are replaced by "erased-<random>" (data_subject.new_pseudonym).
PSEUDONYM_PREFIX = "erased-"

Details = dict[str, dict[str, tuple[str, tuple[str, ...]]]]  # customer -> offer -> (verdict, reasons)


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


def _pack(document: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(document, separators=(",", ":"), allow_nan=False).encode(), 6)


def unpack(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(zlib.decompress(raw))
    return data


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


async def screen_detailed(risk: Any, offers: Sequence[Offer], channel: int, contact_time: datetime,
                          items: Sequence[Any], *, chunk: int = 10_000, timeout: float = 120.0
                          ) -> tuple[Details, str]:
    """ScreenBatch with the reason codes and the policy version kept (clients.screen_batches keeps only the
    verdicts): customer -> offer -> (verdict, reasons)."""
    subjects = [screening_pb2.OfferSubject(offer_id=o.offer_id, product_type=o.product_type,  # type: ignore[arg-type]
                                           risk_level=o.risk_level) for o in offers]  # type: ignore[arg-type]
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(contact_time)

    def requests() -> Any:
        for start in range(0, len(items), chunk):
            yield screening_pb2.ScreenBatchRequest(
                batch_id=str(start // chunk), offers=subjects,
                items=[screening_pb2.ScreenBatchItem(customer_id=i.customer_id, facts=i.facts, channel=channel,  # type: ignore[arg-type]
                                                     contact_time=when) for i in items[start:start + chunk]])

    out: Details = {}
    policy = ""
    if not items:
        return out, policy
    verdicts = {v: screening_pb2.Verdict.Name(v).removeprefix("VERDICT_") for v in screening_pb2.Verdict.values()}
    call = risk.stub.ScreenBatch(requests(), timeout=call_timeout(timeout))
    try:
        async for response in call:
            policy = response.policy_version or policy
            for result in response.results:
                out[result.customer_id] = {v.offer_id: (verdicts.get(v.verdict, "MISSING"), tuple(
                    screening_pb2.ReasonCode.Name(r).removeprefix("REASON_CODE_") for r in v.reasons))
                    for v in result.verdicts}
    except grpc.aio.AioRpcError as error:
        raise translate_rpc_error(error, risk.dependency) from None
    return out, policy


def encode_partition(*, launch_id: str, campaign_id: str, contact_time: datetime, offers: Sequence[Offer],
                     channels: Sequence[int], ids: Sequence[str], groups: np.ndarray,
                     group_probabilities: np.ndarray | None, probabilities: np.ndarray,
                     versions: Sequence[tuple[str, str]], features: Sequence[str], attrs: dict[str, list[Any]],
                     regions: Sequence[Any], zones: Sequence[Any], ages: np.ndarray,
                     details: dict[int, Details], policy_version: str) -> bytes:
    """One partition's decision records (see the module docstring)."""
    from services.campaign.service import snapshot_hash

    reason_sets: dict[str, int] = {"": 0}
    verdict_rows, reason_rows, hashes, snapshots = [], [], [], []
    for i, customer in enumerate(ids):
        codes, reasons = [], []
        for offer in offers:
            for channel in channels:
                verdict, why = details.get(channel, {}).get(customer, {}).get(offer.offer_id, ("MISSING", ()))
                codes.append(VERDICT_CODES.get(verdict, 0))
                key = ",".join(why) if why else ("VERDICT_MISSING" if verdict == "MISSING" else "")
                reasons.append(reason_sets.setdefault(key, len(reason_sets)))
        verdict_rows.append(codes)
        reason_rows.append(reasons)
        age = ages[i] if ages is not None and i < len(ages) and np.isfinite(ages[i]) else None
        snapshot = {"attributes": {f: attrs[f][i] for f in features if f in attrs and attrs[f][i] is not None},
                    "region": regions[i] or "", "time_zone": zones[i] or "",
                    "age": int(age) if age is not None else None, "decision_time": contact_time.isoformat()}
        snapshots.append(snapshot)
        hashes.append(snapshot_hash(snapshot))
    document = {
        "v": 1, "launch_id": launch_id, "campaign_id": campaign_id, "contact_time": contact_time.isoformat(),
        "policy_version": policy_version, "offers": [o.offer_id for o in offers],
        "terms": [[o.conversion_value, o.contact_cost] for o in offers], "channels": list(channels),
        "models": [v for v, _ in versions], "bases": [b for _, b in versions], "ids": list(ids),
        "groups": [int(g) for g in groups],
        "group_probability": ([_finite(p) for p in group_probabilities] if group_probabilities is not None
                              else [None] * len(ids)),
        "probability": [[_finite(p) for p in row] for row in probabilities],
        "verdicts": verdict_rows, "reasons": reason_rows,
        "reason_sets": [k for k, _ in sorted(reason_sets.items(), key=lambda kv: kv[1])],
        "snapshots": snapshots, "snapshot_hash": hashes,
    }
    return _pack(document)


def encode_allocation(ids: Sequence[str], assignment: np.ndarray, cut_by: Sequence[str]) -> bytes:
    return _pack({"v": 1, "ids": [str(i) for i in ids], "chosen": [int(a) for a in assignment],
                  "cut": [c or "" for c in cut_by]})


def _record(doc: dict[str, Any], i: int, allocation: dict[str, Any] | None, create_time: datetime) -> Any:
    from services.campaign.service import DecisionRecordView

    customer = doc["ids"][i]
    group = int(doc["groups"][i])
    channels, offers, terms = doc["channels"], doc["offers"], doc["terms"]
    chosen, outcome = -1, GROUP_OUTCOMES.get(group, "")
    if group >= 0:
        outcome = "NOT_ALLOCATED_YET"
        if allocation is not None:
            try:
                k = allocation["ids"].index(customer)
            except ValueError:
                k = -1
            if k >= 0:
                chosen = int(allocation["chosen"][k])
                outcome = "ALLOCATED" if chosen >= 0 else (allocation["cut"][k] or "NOT_ALLOCATED")
    candidates: list[dict[str, Any]] = []
    for j, offer_id in enumerate(offers):
        for k, channel in enumerate(channels):
            option = j * len(channels) + k
            verdict = VERDICT_NAMES.get(int(doc["verdicts"][i][option]), "MISSING")
            reasons = [r for r in doc["reason_sets"][int(doc["reasons"][i][option])].split(",") if r]
            name = offer_id if len(channels) == 1 else f"{offer_id}/{_channel(channel)}"
            record: dict[str, Any] = {"offer_id": name, "verdict": verdict, "reasons": reasons,
                                      "rank": 1 if option == chosen else 0}
            p = doc["probability"][i][j]
            if selectable(verdict, reasons) and p is not None:
                value, cost = terms[j]
                record.update(propensity=round(float(p), 6), conversion_value=value, contact_cost=cost,
                              expected_value=round(float(p) * value - cost, 6), model_version=doc["models"][j],
                              basis=doc["bases"][j])
            candidates.append(record)
    snapshot = doc["snapshots"][i]
    probability = doc["group_probability"][i]
    return DecisionRecordView(
        decision_id=f"{doc['launch_id']}:{customer}", customer_token=customer_token(customer),
        channel=channels[chosen % len(channels)] if chosen >= 0 else (channels[0] if channels else 0),
        partner_id="", placement=f"launch:{doc['launch_id']} {outcome}",
        decision_time=datetime.fromisoformat(doc["contact_time"]), max_offers=1, candidates=candidates,
        model_version=",".join(sorted(set(doc["models"]))), policy_version=doc["policy_version"],
        snapshot=snapshot, snapshot_hash=doc["snapshot_hash"][i],
        action_probability=float(probability) if probability is not None else None, create_time=create_time)


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
        for in_range in (True, False):  # by the id range; else (a pseudonymised id) every partition
            query = select(BatchDecisionRow).where(BatchDecisionRow.launch_id == launch_id,
                                                   BatchDecisionRow.number > ALLOCATION_NUMBER)
            if in_range:
                query = query.where(BatchDecisionRow.first_id <= customer_id, BatchDecisionRow.last_id >= customer_id)
            for row in await uow.session.scalars(query.order_by(BatchDecisionRow.number)):
                candidate = unpack(row.records)
                if customer_id in candidate["ids"]:
                    doc = candidate
                    break
            if doc is not None:
                break
        if doc is None:
            raise missing
        allocation_row = await uow.session.get(BatchDecisionRow, (launch_id, ALLOCATION_NUMBER))
        allocation = unpack(allocation_row.records) if allocation_row is not None else None
        create_time = launch.done_time or launch.update_time or datetime.now(UTC)
    return _record(doc, doc["ids"].index(customer_id), allocation, create_time)


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
                frame = modeling.build_frame([modeling.Example(customer.attributes, customer.birth_date,
                                                               customer.region, when, {})], trained.spec)
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
        if "snapshots" in doc:
            doc["snapshots"][i] = {**doc["snapshots"][i], "attributes": {}, "region": "", "time_zone": "",
                                   "age": None}
        row.records = _pack(doc)
        if row.number != ALLOCATION_NUMBER:
            row.first_id, row.last_id = narrowed_bounds(row.first_id, row.last_id, customer_id, doc["ids"])
        changed += 1
    await uow.session.flush()
    return changed
