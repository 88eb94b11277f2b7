"""gRPC handlers of CampaignService: validate, map proto <-> domain, call the service layer. No SQL here."""

from __future__ import annotations

import math
from typing import Any

import grpc
from google.protobuf import json_format

from lodestar.campaign.v1 import (
    campaign_pb2,
    campaign_service_pb2,
    campaign_service_pb2_grpc,
    decision_pb2,
    history_pb2,
    launch_pb2,
    model_pb2,
    offer_pb2,
)
from lodestar.common.v1 import common_pb2
from services.campaign.batch_decisions import decision_id_from_name
from services.campaign.domain import (
    APPROVED,
    CAMPAIGN_UPDATABLE,
    CANCELLED,
    COMPLETED,
    DRAFT,
    PAUSED,
    RUNNING,
    SCHEDULED,
    SUBMITTED,
    Arm,
    Campaign,
    Decision,
    DecisionContext,
    Disclosure,
    Offer,
)
from services.campaign.launch import LaunchService, LaunchView, OutboxEntry
from services.campaign.learning import HistoryEntry, LearningService, ModelVersionInfo
from services.campaign.lifecycle import CampaignLifecycle, check_consistency
from services.campaign.service import CampaignService, DecisionExplanation, DecisionRecordView
from services.platform import pagination, timestamps
from services.platform.db import utcnow
from services.platform.errors import FailedPrecondition, InvalidArgument
from services.platform.idempotency import key_for
from services.platform.validation import ID_PATTERN, Violations, check_enum, check_id, check_mask, parse_name

MAX_OFFERS_LIMIT = 20
DEFAULT_MAX_OFFERS = 3


_ts = timestamps.to_timestamp


def offer_to_proto(offer: Offer) -> offer_pb2.Offer:
    return offer_pb2.Offer(
        name=f"offers/{offer.offer_id}", offer_id=offer.offer_id, title=offer.title,
        product_type=offer.product_type, risk_level=offer.risk_level,  # type: ignore[arg-type]
        conversion_value=offer.conversion_value, contact_cost=offer.contact_cost,
        disclosures=[common_pb2.Disclosure(kind=d.kind, text=d.text) for d in offer.disclosures],
        valid_from=_ts(offer.valid_from), valid_until=_ts(offer.valid_until), etag=offer.etag,
        create_time=_ts(offer.create_time),
    )


def offer_from_proto(message: offer_pb2.Offer) -> Offer:
    check_id(message.offer_id, "offer.offer_id")
    violations = Violations()
    if not message.title.strip():
        violations.add("offer.title", "is required")
    elif len(message.title) > 200:
        violations.add("offer.title", "must be at most 200 characters")
    for field, enum in (("product_type", common_pb2.ProductType), ("risk_level", common_pb2.ProductRiskLevel)):
        value = getattr(message, field)
        if value not in {v.number for v in enum.DESCRIPTOR.values}:
            violations.add(f"offer.{field}", f"unknown value {value}")
        elif value == 0:
            violations.add(f"offer.{field}", "is required")
    for field in ("conversion_value", "contact_cost"):
        value = getattr(message, field)
        if not math.isfinite(value) or value < 0:
            violations.add(f"offer.{field}", "must be a finite number, zero or more")
    for i, disclosure in enumerate(message.disclosures):
        if not disclosure.kind.strip() or not disclosure.text.strip():
            violations.add(f"offer.disclosures[{i}]", "needs a kind and a text")
    valid_from = timestamps.from_field(message, "valid_from", "offer.valid_from")
    valid_until = timestamps.from_field(message, "valid_until", "offer.valid_until")
    if valid_from and valid_until and valid_until <= valid_from:
        violations.add("offer.valid_until", "must be after valid_from")
    violations.raise_if_any()
    return Offer(
        offer_id=message.offer_id, title=message.title.strip(), product_type=message.product_type,
        risk_level=message.risk_level, conversion_value=message.conversion_value,
        contact_cost=message.contact_cost,
        disclosures=[Disclosure(d.kind.strip(), d.text.strip()) for d in message.disclosures],
        valid_from=valid_from, valid_until=valid_until,
    )


def decision_to_proto(decision: Decision) -> campaign_service_pb2.DecideResponse:
    return campaign_service_pb2.DecideResponse(
        decision=f"decisions/{decision.decision_id}",
        offers=[
            offer_pb2.RankedOffer(
                offer_id=r.offer.offer_id, title=r.offer.title, product_type=r.offer.product_type,  # type: ignore[arg-type]
                rank=r.rank, propensity=r.propensity, expected_value=r.expected_value,
                reasons=[offer_pb2.Reason(code=x.code, message=x.message) for x in r.reasons],
                disclosures=[common_pb2.Disclosure(kind=d.kind, text=d.text) for d in r.offer.disclosures],
                chosen_terms=json_format.ParseDict(r.chosen_terms, offer_pb2.ChosenTerms()) if r.chosen_terms else None,
            )
            for r in decision.offers
        ],
        suppressed=[
            offer_pb2.SuppressedOffer(offer_id=s.offer_id,
                                      reasons=[offer_pb2.Reason(code=x.code, message=x.message) for x in s.reasons])
            for s in decision.suppressed
        ],
        policy_version=decision.policy_version,
        model_version=decision.model_version,
    )


def state_to_proto(state: str) -> int:
    return campaign_pb2.CampaignState.Value(f"CAMPAIGN_STATE_{state}")


def state_from_proto(value: int) -> str:
    return campaign_pb2.CampaignState.Name(value).removeprefix("CAMPAIGN_STATE_")  # type: ignore[arg-type]


def campaign_to_proto(campaign: Campaign) -> campaign_pb2.Campaign:
    return campaign_pb2.Campaign(
        name=f"campaigns/{campaign.campaign_id}", campaign_id=campaign.campaign_id,
        display_name=campaign.display_name, description=campaign.description,
        state=state_to_proto(campaign.state),  # type: ignore[arg-type]
        segment=campaign.segment, offer_ids=campaign.offer_ids, channels=campaign.channels,  # type: ignore[arg-type]
        start_time=_ts(campaign.start_time), end_time=_ts(campaign.end_time), budget=campaign.budget,
        capacities=[campaign_pb2.ChannelCapacity(channel=c, max_contacts=n)  # type: ignore[arg-type]
                    for c, n in sorted(campaign.capacities.items())],
        control_share=campaign.control_share,
        arms=[campaign_pb2.Arm(arm_id=a.arm_id, share=a.share, content=a.content) for a in campaign.arms],
        arm_selection=campaign_pb2.ArmSelection.Value(f"ARM_SELECTION_{campaign.arm_selection}"),
        created_by=campaign.created_by, approved_by=campaign.approved_by, etag=campaign.etag,
        create_time=_ts(campaign.create_time), update_time=_ts(campaign.update_time),
        history=[campaign_pb2.StateChange(
            from_state=state_to_proto(h.from_state), to_state=state_to_proto(h.to_state),  # type: ignore[arg-type]
            actor=h.actor, reason=h.reason, change_time=_ts(h.change_time)) for h in campaign.history],
    )


MAX_ARMS = 20
MAX_CONTENT = 2000


def campaign_from_proto(message: campaign_pb2.Campaign) -> Campaign:
    """The client-settable fields, each checked on its own (INVALID_ARGUMENT listing every problem)."""
    v = Violations()
    if len(message.display_name) > 200:
        v.add("campaign.display_name", "must be at most 200 characters")
    if len(message.description) > 4000:
        v.add("campaign.description", "must be at most 4000 characters")
    if message.segment:
        try:
            parse_name(message.segment, "segments", field="campaign.segment")
        except Exception as error:  # the violation's own text is the clearest message
            v.add("campaign.segment", str(error).split(": ", 1)[-1])
    for i, offer_id in enumerate(message.offer_ids):
        try:
            check_id(offer_id, f"campaign.offer_ids[{i}]")
        except Exception:
            v.add(f"campaign.offer_ids[{i}]", "is not an offer id")
    if len(set(message.offer_ids)) != len(message.offer_ids):
        v.add("campaign.offer_ids", "lists an offer twice")
    known_channels = {c.number for c in common_pb2.Channel.DESCRIPTOR.values} - {0}
    for i, channel in enumerate(message.channels):
        if channel not in known_channels:
            v.add(f"campaign.channels[{i}]", f"unknown channel {channel}")
    if len(set(message.channels)) != len(message.channels):
        v.add("campaign.channels", "lists a channel twice")
    if not math.isfinite(message.budget) or message.budget < 0:
        v.add("campaign.budget", "must be a finite amount, zero or more")
    capacities: dict[int, int] = {}
    for i, capacity in enumerate(message.capacities):
        if capacity.channel not in known_channels:
            v.add(f"campaign.capacities[{i}].channel", f"unknown channel {capacity.channel}")
        elif capacity.channel in capacities:
            v.add(f"campaign.capacities[{i}].channel", "given twice")
        if capacity.max_contacts < 0:
            v.add(f"campaign.capacities[{i}].max_contacts", "must be zero or more")
        capacities[capacity.channel] = capacity.max_contacts
    if not math.isfinite(message.control_share) or not 0 <= message.control_share < 1:
        v.add("campaign.control_share", "must be at least 0 and below 1")
    if len(message.arms) > MAX_ARMS:
        v.add("campaign.arms", f"at most {MAX_ARMS} arms")
    arm_ids: set[str] = set()
    for i, arm in enumerate(message.arms):
        if not arm.arm_id or not ID_PATTERN.match(arm.arm_id):
            v.add(f"campaign.arms[{i}].arm_id", "is required: letters, digits, '.', '_' or '-'")
        elif arm.arm_id in arm_ids:
            v.add(f"campaign.arms[{i}].arm_id", "is used by another arm")
        arm_ids.add(arm.arm_id)
        if not math.isfinite(arm.share) or not 0 < arm.share <= 1:
            v.add(f"campaign.arms[{i}].share", "must be above 0 and at most 1")
        if not arm.content.strip():
            v.add(f"campaign.arms[{i}].content", "is required")
        elif len(arm.content) > MAX_CONTENT:
            v.add(f"campaign.arms[{i}].content", f"must be at most {MAX_CONTENT} characters")
    if message.arm_selection not in campaign_pb2.ArmSelection.values():
        v.add("campaign.arm_selection", f"unknown value {message.arm_selection}")
    v.raise_if_any()
    return Campaign(
        campaign_id=message.campaign_id, display_name=message.display_name.strip(),
        description=message.description, segment=message.segment, offer_ids=list(message.offer_ids),
        channels=list(message.channels),
        start_time=timestamps.from_field(message, "start_time", "campaign.start_time"),
        end_time=timestamps.from_field(message, "end_time", "campaign.end_time"),
        budget=message.budget, capacities=capacities,
        control_share=message.control_share,
        arms=[Arm(a.arm_id, a.share, a.content) for a in message.arms],
        arm_selection=("THOMPSON_SAMPLING" if message.arm_selection == campaign_pb2.ARM_SELECTION_THOMPSON_SAMPLING
                       else "FIXED_SHARES"),
    )


def _actor(actor: str) -> str:
    return check_id(actor, "actor")


MAX_HISTORY_BATCH = 10_000
MAX_SCORE_BATCH = 10_000
_KINDS: dict[int, str] = {model_pb2.MODEL_KIND_PROPENSITY: "propensity", model_pb2.MODEL_KIND_UPLIFT: "uplift",
                          model_pb2.MODEL_KIND_CHURN: "churn"}
_KIND_VALUES = {v: k for k, v in _KINDS.items()}
_STATUS = {"CHALLENGER": model_pb2.MODEL_STATUS_CHALLENGER, "CHAMPION": model_pb2.MODEL_STATUS_CHAMPION,
           "RETIRED": model_pb2.MODEL_STATUS_RETIRED}


def history_from_proto(record: history_pb2.HistoryRecord, index: int) -> tuple[HistoryEntry | None,
                                                                                list[history_pb2.HistoryRowError]]:
    """One record, or the problems that keep it out (each with its row number and field)."""
    row = record.row_number or index + 1
    problems: list[history_pb2.HistoryRowError] = []

    def bad(field: str, reason: str) -> None:
        problems.append(history_pb2.HistoryRowError(row_number=row, field=field, reason=reason))

    for field in ("customer_id", "campaign_ref", "offer_id"):
        value = getattr(record, field)
        if not value:
            bad(field, "REQUIRED_FIELD_MISSING")
        elif not ID_PATTERN.match(value):
            bad(field, "INVALID_ID")
    if len(record.arm) > 64:
        bad("arm", "TOO_LONG")
    if not record.HasField("contact_time"):
        bad("contact_time", "REQUIRED_FIELD_MISSING")
    elif not timestamps.is_valid(record.contact_time):
        bad("contact_time", "INVALID_TIMESTAMP")
    if record.channel not in {c.number for c in common_pb2.Channel.DESCRIPTOR.values}:
        bad("channel", "UNKNOWN_ENUM_VALUE")
    if not math.isfinite(record.revenue) or record.revenue < 0:
        bad("revenue", "OUT_OF_RANGE")
    if len(record.context) > 50 or any(len(k) > 64 or len(v) > 200 for k, v in record.context.items()):
        bad("context", "TOO_LARGE")
    if problems:
        return None, problems
    return HistoryEntry(
        customer_id=record.customer_id, campaign_ref=record.campaign_ref, offer_id=record.offer_id,
        arm=record.arm, treated=record.treated,
        contact_time=timestamps.to_datetime(record.contact_time, "contact_time"),
        channel=record.channel, responded=record.responded, converted=record.converted, revenue=record.revenue,
        context=dict(record.context),
    ), []


def model_version_to_proto(info: ModelVersionInfo) -> model_pb2.ModelVersion:
    m = info.metrics
    return model_pb2.ModelVersion(
        name=f"models/{info.model_id}/versions/{info.version}", model_id=info.model_id, version=info.version,
        kind=_KIND_VALUES[info.kind], offer_id=info.offer_id, features=info.features,  # type: ignore[arg-type]
        window_start=_ts(info.window_start), window_end=_ts(info.window_end),
        metrics=model_pb2.ModelMetrics(
            auc=m.auc, auc_std=m.auc_std, folds=m.folds, lift_by_decile=m.lift_by_decile,
            calibration=[model_pb2.CalibrationBin(mean_predicted=p, observed_rate=o, count=n)
                         for p, o, n in m.calibration],
            qini=m.qini, training_rows=m.training_rows, positive_rate=m.positive_rate, validation=m.validation),
        status=_STATUS[info.status], algorithm=info.algorithm, create_time=_ts(info.create_time),  # type: ignore[arg-type]
    )


def parse_model_name(name: str, field: str = "name") -> tuple[str, int | None]:
    """'models/{id}/versions/{n}' -> (id, n); 'models/{id}' -> (id, None)."""
    parts = name.split("/")
    if len(parts) == 2 and parts[0] == "models" and ID_PATTERN.match(parts[1]):
        return parts[1], None
    if len(parts) == 4 and parts[0] == "models" and parts[2] == "versions" and ID_PATTERN.match(parts[1]) \
            and parts[3].isdigit() and 0 < int(parts[3]) < 2**31:
        return parts[1], int(parts[3])
    raise InvalidArgument.field(field, "must be models/{model_id} or models/{model_id}/versions/{version}",
                                reason="INVALID_NAME")


_LAUNCH_STATES = {"PLANNING": launch_pb2.LAUNCH_STATE_PLANNING, "SELECTING": launch_pb2.LAUNCH_STATE_SELECTING,
                  "ALLOCATING": launch_pb2.LAUNCH_STATE_ALLOCATING, "DONE": launch_pb2.LAUNCH_STATE_DONE,
                  "CANCELLED": launch_pb2.LAUNCH_STATE_CANCELLED}
_OUTBOX_STATES = {"PENDING": launch_pb2.OUTBOX_STATE_PENDING, "SENT": launch_pb2.OUTBOX_STATE_SENT,
                  "FAILED": launch_pb2.OUTBOX_STATE_FAILED}


def launch_to_proto(view: LaunchView) -> launch_pb2.Launch:
    report = view.report
    counts = view.counts
    message = launch_pb2.Launch(
        name=f"launches/{view.launch_id}", launch_id=view.launch_id, campaign=f"campaigns/{view.campaign_id}",
        state=_LAUNCH_STATES.get(view.state, launch_pb2.LAUNCH_STATE_UNSPECIFIED), actor=view.actor,
        progress=launch_pb2.LaunchProgress(
            partitions_total=view.partitions_total, partitions_done=view.partitions_done,
            audience_size=view.audience_size, customers_done=counts.get("customers", 0),
            control_customers=counts.get("control", 0), candidates=counts.get("candidates", 0),
            outbox_messages=view.outbox_messages, global_holdout_customers=counts.get("global_holdout", 0)),
        status_message=view.status_message, as_of=_ts(view.as_of), create_time=_ts(view.create_time),
        update_time=_ts(view.update_time), done_time=_ts(view.done_time), exported_fields=view.fields,
    )
    if report:
        message.report.CopyFrom(launch_pb2.AllocationReport(
            objective=report["objective"] or 0.0, method=report["method"], spend=report["spend"] or 0.0,
            contacts_by_channel=report["contacts_by_channel"], binding_constraints=report["binding"],
            constraint_costs=[launch_pb2.LaunchConstraintCost(
                constraint=c["constraint"], step=c["step"], value_gain=c["value_gain"] or 0.0,
                conversions_gain=c["conversions_gain"] or 0.0) for c in report["constraint_costs"]],
            customers_cut_by=report["cut_by"], expected_conversions=report["expected_conversions"] or 0.0))
    return message


def outbox_to_proto(entry: OutboxEntry) -> launch_pb2.OutboxMessage:
    return launch_pb2.OutboxMessage(
        launch_id=entry.launch_id, customer_id=entry.customer_id, offer_id=entry.offer_id,
        channel=entry.channel, arm_id=entry.arm_id, delivery_key=entry.delivery_key,  # type: ignore[arg-type]
        state=_OUTBOX_STATES.get(entry.state, launch_pb2.OUTBOX_STATE_UNSPECIFIED),
        expected_value=entry.expected_value, probability=entry.probability)


def candidate_to_proto(candidate: dict[str, Any]) -> decision_pb2.DecisionCandidate:
    return decision_pb2.DecisionCandidate(
        offer_id=str(candidate.get("offer_id", "")), verdict=str(candidate.get("verdict", "")),
        risk_reasons=[str(r) for r in candidate.get("reasons") or ()],
        probability=float(candidate.get("propensity") or 0.0),
        conversion_value=float(candidate.get("conversion_value") or 0.0),
        contact_cost=float(candidate.get("contact_cost") or 0.0),
        expected_value=float(candidate.get("expected_value") or 0.0),
        model_version=str(candidate.get("model_version", "")), basis=str(candidate.get("basis", "")),
        rank=int(candidate.get("rank") or 0),
    )


def decision_record_to_proto(record: DecisionRecordView) -> decision_pb2.DecisionRecord:
    message = decision_pb2.DecisionRecord(
        name=f"decisions/{record.decision_id}", customer_token=record.customer_token,
        context=offer_pb2.DecisionContext(channel=record.channel,  # type: ignore[arg-type]
                                          partner_id=record.partner_id, placement=record.placement,
                                          decision_time=_ts(record.decision_time)),
        max_offers=record.max_offers or 0, candidates=[candidate_to_proto(c) for c in record.candidates],
        model_version=record.model_version, policy_version=record.policy_version,
        snapshot_hash=record.snapshot_hash or "", action_probability=record.action_probability or 0.0,
        create_time=_ts(record.create_time),
    )
    if record.snapshot is not None:
        message.snapshot.region = str(record.snapshot.get("region", ""))
        message.snapshot.time_zone = str(record.snapshot.get("time_zone", ""))
        message.snapshot.attributes.update(record.snapshot.get("attributes") or {})
        if record.snapshot.get("age") is not None:
            message.snapshot.age = int(record.snapshot["age"])
        message.snapshot.features.update({k: float(v) for k, v in (record.snapshot.get("features") or {}).items()})
    return message


def explanation_to_proto(explanation: DecisionExplanation) -> campaign_service_pb2.ExplainDecisionResponse:
    response = campaign_service_pb2.ExplainDecisionResponse(
        decision=decision_record_to_proto(explanation.record), reproduced=explanation.reproduced,
        recomputed=[candidate_to_proto(c) for c in explanation.recomputed])
    if explanation.difference is not None:
        d = explanation.difference
        response.difference.CopyFrom(decision_pb2.DecisionDifference(
            offer_id=d.offer_id, field=d.field, recorded=d.recorded, recomputed=d.recomputed))
    return response


class CampaignHandlers(campaign_service_pb2_grpc.CampaignServiceServicer):
    def __init__(self, service: CampaignService, lifecycle: CampaignLifecycle, learning: LearningService,
                 launches: LaunchService | None = None) -> None:
        self.service = service
        self.lifecycle = lifecycle
        self.learning = learning
        self.launches = launches

    def _launch_service(self) -> LaunchService:
        if self.launches is None:
            raise FailedPrecondition("LAUNCHES_DISABLED", "batch launches are not enabled on this server")
        return self.launches

    # --- batch launch -------------------------------------------------------------------------------------

    async def LaunchCampaign(self, request: campaign_service_pb2.LaunchCampaignRequest,
                             context: grpc.aio.ServicerContext) -> campaign_service_pb2.LaunchCampaignResponse:
        campaign_id = parse_name(request.name, "campaigns")
        actor = _actor(request.actor)
        view = await self._launch_service().launch(campaign_id, actor, key_for("LaunchCampaign", request))
        return campaign_service_pb2.LaunchCampaignResponse(launch=launch_to_proto(view))

    async def GetLaunch(self, request: campaign_service_pb2.GetLaunchRequest,
                        context: grpc.aio.ServicerContext) -> campaign_service_pb2.GetLaunchResponse:
        if request.name.startswith("campaigns/"):
            view = await self._launch_service().get(campaign_id=parse_name(request.name, "campaigns"))
        else:
            view = await self._launch_service().get(parse_name(request.name, "launches"))
        return campaign_service_pb2.GetLaunchResponse(launch=launch_to_proto(view))

    async def ListOutbox(self, request: campaign_service_pb2.ListOutboxRequest,
                         context: grpc.aio.ServicerContext) -> campaign_service_pb2.ListOutboxResponse:
        launch_id = parse_name(request.launch, "launches", field="launch")
        size = pagination.page_size(request.page_size)
        fingerprint = pagination.query_fingerprint(launch=launch_id)
        position = pagination.decode_page_token(request.page_token, fingerprint)
        after = position.get("after") if position else None
        entries, next_after = await self._launch_service().list_outbox(
            launch_id, after_customer=after if isinstance(after, str) else None, page_size=size)
        token = pagination.encode_page_token({"after": next_after}, fingerprint) if next_after else ""
        return campaign_service_pb2.ListOutboxResponse(messages=[outbox_to_proto(e) for e in entries],
                                                       next_page_token=token)

    async def Decide(self, request: campaign_service_pb2.DecideRequest,
                     context: grpc.aio.ServicerContext) -> campaign_service_pb2.DecideResponse:
        check_id(request.customer_id, "customer_id")
        channel = check_enum(request.context.channel, common_pb2.Channel, "context.channel", required=False)
        if not 0 <= request.max_offers <= MAX_OFFERS_LIMIT:
            violations = Violations()
            violations.add("max_offers", f"must be between 1 and {MAX_OFFERS_LIMIT} (0 means {DEFAULT_MAX_OFFERS})")
            violations.raise_if_any(reason="OUT_OF_RANGE")
        if request.context.partner_id:
            check_id(request.context.partner_id, "context.partner_id")
        if len(request.context.placement) > 128:
            violations = Violations()
            violations.add("context.placement", "must be at most 128 characters")
            violations.raise_if_any()
        decision_context = DecisionContext(
            channel=channel or common_pb2.CHANNEL_IN_APP,
            partner_id=request.context.partner_id,
            placement=request.context.placement,
            decision_time=timestamps.from_field(request.context, "decision_time", "context.decision_time") or utcnow(),
        )
        decision = await self.service.decide(request.customer_id, decision_context,
                                             request.max_offers or DEFAULT_MAX_OFFERS)
        return decision_to_proto(decision)

    async def GetDecision(self, request: campaign_service_pb2.GetDecisionRequest,
                          context: grpc.aio.ServicerContext) -> campaign_service_pb2.GetDecisionResponse:
        record = await self.service.get_decision(decision_id_from_name(request.name))
        return campaign_service_pb2.GetDecisionResponse(decision=decision_record_to_proto(record))

    async def ExplainDecision(self, request: campaign_service_pb2.ExplainDecisionRequest,
                              context: grpc.aio.ServicerContext) -> campaign_service_pb2.ExplainDecisionResponse:
        explanation = await self.service.explain_decision(decision_id_from_name(request.name))
        return explanation_to_proto(explanation)

    async def CreateOffer(self, request: campaign_service_pb2.CreateOfferRequest,
                          context: grpc.aio.ServicerContext) -> campaign_service_pb2.CreateOfferResponse:
        offer = offer_from_proto(request.offer)
        created = await self.service.create_offer(offer, key_for("CreateOffer", request))
        return campaign_service_pb2.CreateOfferResponse(offer=offer_to_proto(created))

    async def GetOffer(self, request: campaign_service_pb2.GetOfferRequest,
                       context: grpc.aio.ServicerContext) -> campaign_service_pb2.GetOfferResponse:
        offer = await self.service.get_offer(parse_name(request.name, "offers"))
        return campaign_service_pb2.GetOfferResponse(offer=offer_to_proto(offer))

    async def ListOffers(self, request: campaign_service_pb2.ListOffersRequest,
                         context: grpc.aio.ServicerContext) -> campaign_service_pb2.ListOffersResponse:
        size = pagination.page_size(request.page_size)
        fingerprint = pagination.query_fingerprint()
        position = pagination.decode_page_token(request.page_token, fingerprint)
        after = position.get("after") if position else None
        page = await self.service.list_offers(after_id=after if isinstance(after, str) else None, page_size=size)
        token = pagination.encode_page_token({"after": page.next_after_id}, fingerprint) if page.next_after_id else ""
        return campaign_service_pb2.ListOffersResponse(offers=[offer_to_proto(o) for o in page.offers],
                                                       next_page_token=token)

    # --- campaigns ----------------------------------------------------------------------------------------

    async def CreateCampaign(self, request: campaign_service_pb2.CreateCampaignRequest,
                             context: grpc.aio.ServicerContext) -> campaign_service_pb2.CreateCampaignResponse:
        check_id(request.campaign.campaign_id, "campaign.campaign_id")
        actor = _actor(request.actor)
        campaign = campaign_from_proto(request.campaign)
        check_consistency(campaign)
        created = await self.lifecycle.create(campaign, actor, key_for("CreateCampaign", request))
        return campaign_service_pb2.CreateCampaignResponse(campaign=campaign_to_proto(created))

    async def GetCampaign(self, request: campaign_service_pb2.GetCampaignRequest,
                          context: grpc.aio.ServicerContext) -> campaign_service_pb2.GetCampaignResponse:
        campaign = await self.lifecycle.get(parse_name(request.name, "campaigns"))
        return campaign_service_pb2.GetCampaignResponse(campaign=campaign_to_proto(campaign))

    async def ListCampaigns(self, request: campaign_service_pb2.ListCampaignsRequest,
                            context: grpc.aio.ServicerContext) -> campaign_service_pb2.ListCampaignsResponse:
        size = pagination.page_size(request.page_size)
        state = check_enum(request.state, campaign_pb2.CampaignState, "state", required=False)
        fingerprint = pagination.query_fingerprint(state=state)
        position = pagination.decode_page_token(request.page_token, fingerprint)
        after = position.get("after") if position else None
        page = await self.lifecycle.list_page(after_id=after if isinstance(after, str) else None, page_size=size,
                                         state=state_from_proto(state) if state else None)
        token = pagination.encode_page_token({"after": page.next_after_id}, fingerprint) if page.next_after_id else ""
        return campaign_service_pb2.ListCampaignsResponse(
            campaigns=[campaign_to_proto(c) for c in page.campaigns], next_page_token=token)

    async def UpdateCampaign(self, request: campaign_service_pb2.UpdateCampaignRequest,
                             context: grpc.aio.ServicerContext) -> campaign_service_pb2.UpdateCampaignResponse:
        campaign_id = parse_name(request.campaign.name, "campaigns", field="campaign.name")
        _actor(request.actor)
        paths = check_mask(request.update_mask.paths, set(CAMPAIGN_UPDATABLE))
        changes = campaign_from_proto(request.campaign)
        changes.campaign_id = campaign_id
        updated = await self.lifecycle.update(changes, paths, request.campaign.etag,
                                              key_for("UpdateCampaign", request))
        return campaign_service_pb2.UpdateCampaignResponse(campaign=campaign_to_proto(updated))

    async def _move(self, request: Any, to_state: str, method: str, *, reason_required: bool = False) -> Campaign:
        campaign_id = parse_name(request.name, "campaigns")
        actor = _actor(request.actor)
        reason = getattr(request, "reason", "")
        if reason_required and not reason.strip():
            raise InvalidArgument.field("reason", "is required", reason="REQUIRED_FIELD_MISSING")
        if len(reason) > 1000:
            raise InvalidArgument.field("reason", "must be at most 1000 characters")
        return await self.lifecycle.transition(campaign_id, to_state, actor, expected_etag=request.etag,
                                               reason=reason.strip(), key=key_for(method, request))

    async def SubmitCampaign(self, request: campaign_service_pb2.SubmitCampaignRequest,
                             context: grpc.aio.ServicerContext) -> campaign_service_pb2.SubmitCampaignResponse:
        moved = await self._move(request, SUBMITTED, "SubmitCampaign")
        return campaign_service_pb2.SubmitCampaignResponse(campaign=campaign_to_proto(moved))

    async def ApproveCampaign(self, request: campaign_service_pb2.ApproveCampaignRequest,
                              context: grpc.aio.ServicerContext) -> campaign_service_pb2.ApproveCampaignResponse:
        moved = await self._move(request, APPROVED, "ApproveCampaign")
        return campaign_service_pb2.ApproveCampaignResponse(campaign=campaign_to_proto(moved))

    async def RejectCampaign(self, request: campaign_service_pb2.RejectCampaignRequest,
                             context: grpc.aio.ServicerContext) -> campaign_service_pb2.RejectCampaignResponse:
        moved = await self._move(request, DRAFT, "RejectCampaign", reason_required=True)
        return campaign_service_pb2.RejectCampaignResponse(campaign=campaign_to_proto(moved))

    async def ScheduleCampaign(self, request: campaign_service_pb2.ScheduleCampaignRequest,
                               context: grpc.aio.ServicerContext) -> campaign_service_pb2.ScheduleCampaignResponse:
        moved = await self._move(request, SCHEDULED, "ScheduleCampaign")
        return campaign_service_pb2.ScheduleCampaignResponse(campaign=campaign_to_proto(moved))

    async def PauseCampaign(self, request: campaign_service_pb2.PauseCampaignRequest,
                            context: grpc.aio.ServicerContext) -> campaign_service_pb2.PauseCampaignResponse:
        moved = await self._move(request, PAUSED, "PauseCampaign")
        return campaign_service_pb2.PauseCampaignResponse(campaign=campaign_to_proto(moved))

    async def ResumeCampaign(self, request: campaign_service_pb2.ResumeCampaignRequest,
                             context: grpc.aio.ServicerContext) -> campaign_service_pb2.ResumeCampaignResponse:
        moved = await self._move(request, RUNNING, "ResumeCampaign")
        return campaign_service_pb2.ResumeCampaignResponse(campaign=campaign_to_proto(moved))

    async def CompleteCampaign(self, request: campaign_service_pb2.CompleteCampaignRequest,
                               context: grpc.aio.ServicerContext) -> campaign_service_pb2.CompleteCampaignResponse:
        moved = await self._move(request, COMPLETED, "CompleteCampaign")
        return campaign_service_pb2.CompleteCampaignResponse(campaign=campaign_to_proto(moved))

    async def CancelCampaign(self, request: campaign_service_pb2.CancelCampaignRequest,
                             context: grpc.aio.ServicerContext) -> campaign_service_pb2.CancelCampaignResponse:
        moved = await self._move(request, CANCELLED, "CancelCampaign")
        return campaign_service_pb2.CancelCampaignResponse(campaign=campaign_to_proto(moved))

    # --- history and models -------------------------------------------------------------------------------

    async def ImportCampaignHistory(self, request_iterator: Any, context: grpc.aio.ServicerContext
                                    ) -> campaign_service_pb2.ImportCampaignHistoryResponse:
        imported = duplicates = 0
        errors: list[history_pb2.HistoryRowError] = []
        async for batch in request_iterator:
            if len(batch.records) > MAX_HISTORY_BATCH:
                raise InvalidArgument.field("records", f"at most {MAX_HISTORY_BATCH} records per message",
                                            reason="BATCH_TOO_LARGE")
            entries = []
            for i, record in enumerate(batch.records):
                entry, problems = history_from_proto(record, i)
                errors.extend(problems)
                if entry is not None:
                    entries.append(entry)
            outcome = await self.learning.import_history(entries, key_for("ImportCampaignHistory", batch))
            imported += outcome.imported
            duplicates += outcome.duplicates
        return campaign_service_pb2.ImportCampaignHistoryResponse(
            imported=imported, duplicates=duplicates, failed=len({e.row_number for e in errors}), errors=errors[:1000])

    async def TrainModel(self, request: campaign_service_pb2.TrainModelRequest,
                         context: grpc.aio.ServicerContext) -> campaign_service_pb2.TrainModelResponse:
        kind = check_enum(request.kind, model_pb2.ModelKind, "kind")
        if kind == model_pb2.MODEL_KIND_CHURN:
            raise InvalidArgument.field("kind", "churn models are trained by RecommendationService.TrainChurnModel "
                                        "(a label from events, not campaign history)", reason="TRAINED_ELSEWHERE")
        check_id(request.offer_id, "offer_id")
        if request.folds and not 2 <= request.folds <= 10:
            raise InvalidArgument.field("folds", "must be between 2 and 10 (0 means 5)", reason="OUT_OF_RANGE")
        await self.service.get_offer(request.offer_id)  # NOT_FOUND for an offer the catalog does not have
        info = await self.learning.train(_KINDS[kind], request.offer_id, request.folds or 5,
                                         key_for("TrainModel", request))
        return campaign_service_pb2.TrainModelResponse(model_version=model_version_to_proto(info))

    async def ListModelVersions(self, request: campaign_service_pb2.ListModelVersionsRequest,
                                context: grpc.aio.ServicerContext) -> campaign_service_pb2.ListModelVersionsResponse:
        if request.model_id:
            check_id(request.model_id, "model_id")
        size = pagination.page_size(request.page_size)
        fingerprint = pagination.query_fingerprint(model_id=request.model_id)
        position = pagination.decode_page_token(request.page_token, fingerprint)
        after = (str(position["m"]), int(position["v"])) if position and "m" in position else None
        versions, next_after = await self.learning.list_versions(request.model_id or None, after, size)
        token = (pagination.encode_page_token({"m": next_after[0], "v": next_after[1]}, fingerprint)
                 if next_after else "")
        return campaign_service_pb2.ListModelVersionsResponse(
            model_versions=[model_version_to_proto(v) for v in versions], next_page_token=token)

    async def PromoteModelVersion(self, request: campaign_service_pb2.PromoteModelVersionRequest,
                                  context: grpc.aio.ServicerContext
                                  ) -> campaign_service_pb2.PromoteModelVersionResponse:
        model_id, version = parse_model_name(request.name)
        if version is None:
            raise InvalidArgument.field("name", "name the version: models/{model_id}/versions/{version}",
                                        reason="INVALID_NAME")
        info = await self.learning.promote(model_id, version, key_for("PromoteModelVersion", request))
        return campaign_service_pb2.PromoteModelVersionResponse(model_version=model_version_to_proto(info))

    async def ScoreCustomers(self, request: campaign_service_pb2.ScoreCustomersRequest,
                             context: grpc.aio.ServicerContext) -> campaign_service_pb2.ScoreCustomersResponse:
        model_id, version = parse_model_name(request.model, field="model")
        if not 1 <= len(request.customer_ids) <= MAX_SCORE_BATCH:
            raise InvalidArgument.field("customer_ids", f"give 1 to {MAX_SCORE_BATCH} customer ids",
                                        reason="OUT_OF_RANGE")
        for i, customer_id in enumerate(request.customer_ids):
            check_id(customer_id, f"customer_ids[{i}]")
        info, scores = await self.learning.score(model_id, version, list(request.customer_ids))
        return campaign_service_pb2.ScoreCustomersResponse(
            scores=[model_pb2.CustomerScore(customer_id=c, score=s) for c, s in scores],
            model_version=f"models/{info.model_id}/versions/{info.version}")
