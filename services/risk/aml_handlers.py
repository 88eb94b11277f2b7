"""gRPC handlers of AmlService (lodestar.risk.v1.AmlService): validate, map proto <-> domain, call aml.AmlMonitor.

Customers appear in spans and logs only as masking.customer_token; a transaction's counterparty is never logged.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from opentelemetry import trace

from lodestar.risk.v1 import aml_pb2, aml_pb2_grpc
from services.platform import pagination
from services.platform.errors import InvalidArgument
from services.platform.idempotency import key_for
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN
from services.platform.validation import ID_PATTERN, ID_RULE, Violations, check_enum, check_id, parse_name
from services.risk import aml

MAX_TRANSACTIONS = 10_000
MAX_SKEW = timedelta(minutes=5)
MAX_ACTOR = 64
MAX_NOTE = 1000
_AMOUNT = re.compile(r"^\d{1,15}(\.\d{1,4})?$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CHANNEL = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_ACTOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    if value is not None:
        out.FromDatetime(value)
    return out


def _duration(value: timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(value)
    return out


def rule_to_proto(rule: aml.AmlRule) -> aml_pb2.AmlRule.ValueType:
    return aml_pb2.AmlRule.Value(f"AML_RULE_{rule.value}")


def rule_from_proto(value: int) -> aml.AmlRule:
    return aml.AmlRule(aml_pb2.AmlRule.Name(value).removeprefix("AML_RULE_"))  # type: ignore[arg-type]


def state_to_proto(state: aml.CaseState) -> aml_pb2.AmlCaseState.ValueType:
    return aml_pb2.AmlCaseState.Value(f"AML_CASE_STATE_{state.value}")


def state_from_proto(value: int) -> aml.CaseState:
    return aml.CaseState(aml_pb2.AmlCaseState.Name(value).removeprefix("AML_CASE_STATE_"))  # type: ignore[arg-type]


def transactions_from_proto(request: aml_pb2.MonitorTransactionsRequest, now: datetime) -> list[aml.Transaction]:
    if not request.transactions:
        raise InvalidArgument.field("transactions", "must hold 1 to 10000 transactions",
                                    reason="REQUIRED_FIELD_MISSING")
    if len(request.transactions) > MAX_TRANSACTIONS:
        raise InvalidArgument.field("transactions", f"must hold at most {MAX_TRANSACTIONS} transactions",
                                    reason="TOO_MANY_TRANSACTIONS")
    out = []
    violations = Violations()
    latest = now + MAX_SKEW
    for n, t in enumerate(request.transactions):
        where = f"transactions[{n}]"
        if not ID_PATTERN.match(t.transaction_id):
            violations.add(f"{where}.transaction_id", ID_RULE)
        if not ID_PATTERN.match(t.customer_id):
            violations.add(f"{where}.customer_id", ID_RULE)
        if not t.HasField("occurred_at"):
            violations.add(f"{where}.occurred_at", "is required")
            occurred = now
        else:
            try:
                occurred = t.occurred_at.ToDatetime(tzinfo=UTC)
            except (ValueError, OverflowError):
                violations.add(f"{where}.occurred_at", "is not a valid time")
                break
            if occurred > latest:
                violations.add(f"{where}.occurred_at", "must not be more than 5 minutes in the future")
        amount = float(t.amount) if _AMOUNT.match(t.amount) else 0.0
        if amount <= 0 or not math.isfinite(amount):
            violations.add(f"{where}.amount", "must be positive decimal text with at most 4 decimals, e.g. 9800.00")
        if not _CURRENCY.match(t.currency):
            violations.add(f"{where}.currency", "must be an ISO 4217 code such as CNY")
        if t.direction not in (aml_pb2.AML_DIRECTION_IN, aml_pb2.AML_DIRECTION_OUT):
            violations.add(f"{where}.direction", "must be AML_DIRECTION_IN or AML_DIRECTION_OUT")
        if t.country and not _COUNTRY.match(t.country):
            violations.add(f"{where}.country", "must be an ISO 3166-1 alpha-2 code such as CN, or empty")
        if len(t.counterparty) > 128:
            violations.add(f"{where}.counterparty", "must be at most 128 characters")
        if t.channel and not _CHANNEL.match(t.channel):
            violations.add(f"{where}.channel", "must be lower_snake_case, at most 32 characters")
        if violations.items:
            break  # the first bad transaction is enough to reject the batch
        out.append(aml.Transaction(t.transaction_id, t.customer_id, occurred, amount, t.currency,
                                   aml.IN if t.direction == aml_pb2.AML_DIRECTION_IN else aml.OUT, t.country,
                                   t.counterparty, t.channel))
    violations.raise_if_any()
    return out


def _window(message: Any, name: str, path: str, violations: Violations) -> timedelta:
    value: duration_pb2.Duration = getattr(message, name)
    if not message.HasField(name):
        violations.add(f"rules.{path}", "is required (a positive duration of at most 90 days)")
        return timedelta(0)
    if value.nanos:
        violations.add(f"rules.{path}", "must be a whole number of seconds, more than 0 and at most 90 days")
    return timedelta(seconds=value.seconds)


def rules_from_proto(message: aml_pb2.AmlRules) -> aml.AmlRules:
    """The rules of SetAmlRules: an unset rule message takes the defaults; a set one is taken in full."""
    d = aml.DEFAULT_RULES
    v = Violations()
    sections: dict[str, Any] = {}
    if message.HasField("structuring"):
        m = message.structuring
        sections["structuring"] = aml.StructuringRule(m.disabled, m.reporting_threshold, m.margin, m.min_count,
                                                      _window(m, "window", "structuring.window", v))
    if message.HasField("rapid_movement"):
        r = message.rapid_movement
        sections["rapid_movement"] = aml.RapidMovementRule(r.disabled, r.min_amount, r.out_ratio,
                                                           _window(r, "window", "rapid_movement.window", v))
    if message.HasField("geography"):
        g = message.geography
        sections["geography"] = aml.GeographyRule(g.disabled, tuple(g.high_risk_countries), g.min_amount,
                                                  g.min_history)
    if message.HasField("counterparties"):
        c = message.counterparties
        sections["counterparties"] = aml.CounterpartyRule(c.disabled, c.min_new_counterparties,
                                                          _window(c, "window", "counterparties.window", v),
                                                          c.min_history)
    if message.HasField("volume_spike"):
        s = message.volume_spike
        sections["volume_spike"] = aml.VolumeSpikeRule(s.disabled, _window(s, "period", "volume_spike.period", v),
                                                       s.baseline_periods, s.multiplier, s.min_amount)
    if message.HasField("anomaly"):
        a = message.anomaly
        sections["anomaly"] = aml.AnomalyRule(a.disabled, a.contamination, a.min_customers)
    v.raise_if_any(reason="INVALID_WINDOW")
    return aml.AmlRules(**{name: sections.get(name, getattr(d, name)) for name in (
        "structuring", "rapid_movement", "geography", "counterparties", "volume_spike", "anomaly")})


def rules_to_proto(rules: aml.AmlRules) -> aml_pb2.AmlRules:
    s, r, g, c, v, a = (rules.structuring, rules.rapid_movement, rules.geography, rules.counterparties,
                        rules.volume_spike, rules.anomaly)
    out = aml_pb2.AmlRules(
        structuring=aml_pb2.AmlStructuringRule(disabled=s.disabled, reporting_threshold=s.reporting_threshold,
                                               margin=s.margin, min_count=s.min_count, window=_duration(s.window)),
        rapid_movement=aml_pb2.AmlRapidMovementRule(disabled=r.disabled, min_amount=r.min_amount,
                                                    out_ratio=r.out_ratio, window=_duration(r.window)),
        geography=aml_pb2.AmlGeographyRule(disabled=g.disabled, high_risk_countries=list(g.high_risk_countries),
                                           min_amount=g.min_amount, min_history=g.min_history),
        counterparties=aml_pb2.AmlCounterpartyRule(disabled=c.disabled, min_new_counterparties=c.min_new_counterparties,
                                                   window=_duration(c.window), min_history=c.min_history),
        volume_spike=aml_pb2.AmlVolumeSpikeRule(disabled=v.disabled, period=_duration(v.period),
                                                baseline_periods=v.baseline_periods, multiplier=v.multiplier,
                                                min_amount=v.min_amount),
        anomaly=aml_pb2.AmlAnomalyRule(disabled=a.disabled, contamination=a.contamination,
                                       min_customers=a.min_customers),
        version=rules.version, actor=rules.actor,
    )
    if rules.update_time is not None:
        out.update_time.CopyFrom(_ts(rules.update_time))
    return out


def alert_to_proto(stored: aml.StoredAlert) -> aml_pb2.AmlAlert:
    a = stored.alert
    return aml_pb2.AmlAlert(
        name=f"amlAlerts/{stored.alert_id}", customer_id=a.customer_id, rule=rule_to_proto(a.rule),
        reasons=list(a.reasons), detail=a.detail, amount=a.amount, anomaly_score=a.anomaly_score,
        window_start=_ts(a.window_start), window_end=_ts(a.window_end), transaction_ids=list(a.transaction_ids),
        case=f"amlCases/{stored.case_id}", rules_version=stored.rules_version, create_time=_ts(stored.create_time))


def case_to_proto(case: aml.Case) -> aml_pb2.AmlCase:
    return aml_pb2.AmlCase(
        name=f"amlCases/{case.case_id}", customer_id=case.customer_id, state=state_to_proto(case.state),
        alert_count=case.alert_count, rules=[rule_to_proto(aml.AmlRule(r)) for r in case.rules],
        create_time=_ts(case.create_time), update_time=_ts(case.update_time), actor=case.actor, etag=case.etag)


def _case_id(name: str, field: str) -> int:
    raw = parse_name(name, "amlCases", field)
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidArgument.field(field, "must be amlCases/{id} with a numeric id", reason="INVALID_NAME")
    return int(raw)


def _before(token: str, fingerprint: str) -> int | None:
    position = pagination.decode_page_token(token, fingerprint)
    if position is None:
        return None
    before = position.get("before")
    if not isinstance(before, int):
        raise InvalidArgument.field("page_token", "is not a token this list returned", reason="INVALID_PAGE_TOKEN")
    return before


def _token(before: int | None, fingerprint: str) -> str:
    return pagination.encode_page_token({"before": before}, fingerprint) if before is not None else ""


def _actor(value: str) -> str:
    if not value:
        raise InvalidArgument.field("actor", "is required", reason="REQUIRED_FIELD_MISSING")
    if not _ACTOR.match(value):
        raise InvalidArgument.field("actor", "must be 1-64 letters, digits, '.', '_', ':', '@' or '-'")
    return value


class AmlHandlers(aml_pb2_grpc.AmlServiceServicer):
    def __init__(self, monitor: aml.AmlMonitor) -> None:
        self.monitor = monitor

    async def MonitorTransactions(self, request_iterator: AsyncIterator[aml_pb2.MonitorTransactionsRequest],
                                  context: grpc.aio.ServicerContext) -> aml_pb2.MonitorTransactionsResponse:
        accepted = duplicates = alerts = opened = batches = 0
        version = ""
        async for request in request_iterator:
            transactions = transactions_from_proto(request, datetime.now(UTC))
            outcome = await self.monitor.monitor(transactions)
            batches += 1
            accepted += outcome.accepted
            duplicates += outcome.duplicates
            alerts += outcome.alerts
            opened += outcome.cases_opened
            version = outcome.rules_version
        if not version:
            version = (await self.monitor.rules()).version
        return aml_pb2.MonitorTransactionsResponse(accepted=accepted, duplicates=duplicates, batches=batches,
                                                   alerts=alerts, cases_opened=opened, rules_version=version)

    async def ListAlerts(self, request: aml_pb2.ListAlertsRequest,
                         context: grpc.aio.ServicerContext) -> aml_pb2.ListAlertsResponse:
        size = pagination.page_size(request.page_size)
        customer_id = check_id(request.customer_id, "customer_id") if request.customer_id else None
        if customer_id:
            trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))
        check_enum(request.rule, aml_pb2.AmlRule, "rule", required=False)
        rule = rule_from_proto(request.rule) if request.rule else None
        case_id = _case_id(request.case, "case") if request.case else None
        fingerprint = pagination.query_fingerprint(collection="amlAlerts", customer=customer_id or "",
                                                   rule=request.rule, case=case_id or 0)
        before = _before(request.page_token, fingerprint)
        alerts, next_before = await self.monitor.list_alerts(customer_id=customer_id, rule=rule, case_id=case_id,
                                                             before_id=before, page_size=size)
        return aml_pb2.ListAlertsResponse(alerts=[alert_to_proto(a) for a in alerts],
                                          next_page_token=_token(next_before, fingerprint))

    async def ListCases(self, request: aml_pb2.ListCasesRequest,
                        context: grpc.aio.ServicerContext) -> aml_pb2.ListCasesResponse:
        size = pagination.page_size(request.page_size)
        check_enum(request.state, aml_pb2.AmlCaseState, "state", required=False)
        state = state_from_proto(request.state) if request.state else None
        customer_id = check_id(request.customer_id, "customer_id") if request.customer_id else None
        if customer_id:
            trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))
        fingerprint = pagination.query_fingerprint(collection="amlCases", state=request.state,
                                                   customer=customer_id or "")
        before = _before(request.page_token, fingerprint)
        cases, next_before = await self.monitor.list_cases(state=state, customer_id=customer_id, before_id=before,
                                                           page_size=size)
        return aml_pb2.ListCasesResponse(cases=[case_to_proto(c) for c in cases],
                                         next_page_token=_token(next_before, fingerprint))

    async def UpdateCase(self, request: aml_pb2.UpdateCaseRequest,
                         context: grpc.aio.ServicerContext) -> aml_pb2.UpdateCaseResponse:
        case_id = _case_id(request.name, "name")
        check_enum(request.state, aml_pb2.AmlCaseState, "state")
        actor = _actor(request.actor)
        if len(request.note) > MAX_NOTE:
            raise InvalidArgument.field("note", f"must be at most {MAX_NOTE} characters")
        case = await self.monitor.update_case(case_id, state_from_proto(request.state), actor=actor,
                                              note=request.note, etag=request.etag,
                                              key=key_for("UpdateCase", request))
        trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(case.customer_id))
        return aml_pb2.UpdateCaseResponse(case=case_to_proto(case))

    async def GetAmlRules(self, request: aml_pb2.GetAmlRulesRequest,
                          context: grpc.aio.ServicerContext) -> aml_pb2.GetAmlRulesResponse:
        return aml_pb2.GetAmlRulesResponse(rules=rules_to_proto(await self.monitor.rules()))

    async def SetAmlRules(self, request: aml_pb2.SetAmlRulesRequest,
                          context: grpc.aio.ServicerContext) -> aml_pb2.SetAmlRulesResponse:
        actor = _actor(request.actor)
        rules = rules_from_proto(request.rules)
        stored = await self.monitor.set_rules(rules, actor, key_for("SetAmlRules", request))
        return aml_pb2.SetAmlRulesResponse(rules=rules_to_proto(stored))
