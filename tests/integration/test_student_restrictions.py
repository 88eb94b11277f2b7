"""Student restrictions (rules.py rule 9, RISK_STUDENT_RULES) through Screen and ScreenBatch, over a real server
and database: STUDENT_RESTRICTED on credit products and on products above the risk cap, from the student flag or
the occupation, configurable, and a bad setting refused at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from lodestar.common.v1 import common_pb2
from lodestar.risk.v1 import risk_service_pb2_grpc, screening_pb2
from services.platform.config import ConfigError
from services.risk import rules
from services.risk.app import DEFINITION
from tests.helpers import expect_error
from tests.integration.test_risk_service import screen_request

S = screening_pb2
ALLOW, DENY = S.VERDICT_ALLOW, S.VERDICT_DENY
RESTRICTED = S.REASON_CODE_STUDENT_RESTRICTED
OFFERS = [
    S.OfferSubject(offer_id="card", product_type=common_pb2.PRODUCT_TYPE_CREDIT_CARD),
    S.OfferSubject(offer_id="fund-r3", product_type=common_pb2.PRODUCT_TYPE_WEALTH,
                   risk_level=common_pb2.PRODUCT_RISK_LEVEL_R3),
    S.OfferSubject(offer_id="fund-r4", product_type=common_pb2.PRODUCT_TYPE_WEALTH,
                   risk_level=common_pb2.PRODUCT_RISK_LEVEL_R4),
    S.OfferSubject(offer_id="deposit", product_type=common_pb2.PRODUCT_TYPE_DEPOSIT),
]
ADULT: dict[str, Any] = {"birth_date": "2004-02-01", "risk_tolerance": common_pb2.RISK_TOLERANCE_C5}


async def _stub(start: Callable[..., Any], **env: str) -> AsyncIterator[risk_service_pb2_grpc.RiskServiceStub]:
    svc = await start(DEFINITION, **env)
    async with grpc.aio.insecure_channel(svc.address) as channel:
        yield risk_service_pb2_grpc.RiskServiceStub(channel)


@pytest.fixture
async def risk(start: Callable[..., Any]) -> AsyncIterator[risk_service_pb2_grpc.RiskServiceStub]:
    async for stub in _stub(start):
        yield stub


async def verdicts(stub: risk_service_pb2_grpc.RiskServiceStub, **facts: Any) -> list[tuple[str, int, list[int]]]:
    response = await stub.Screen(screen_request(channel=common_pb2.CHANNEL_IN_APP, offers=OFFERS,
                                                **{**ADULT, **facts}))
    return [(v.offer_id, v.verdict, list(v.reasons)) for v in response.verdicts]


Verdicts = list[tuple[str, int, list[int]]]
DEFAULT_RESTRICTED: Verdicts = [("card", DENY, [RESTRICTED]), ("fund-r3", ALLOW, []), ("fund-r4", DENY, [RESTRICTED]),
                      ("deposit", ALLOW, [])]
UNRESTRICTED: Verdicts = [("card", ALLOW, []), ("fund-r3", ALLOW, []), ("fund-r4", ALLOW, []), ("deposit", ALLOW, [])]


@pytest.mark.parametrize("facts", [{"student": True}, {"occupation": "student"}, {"occupation": " Student "}])
async def test_default_rules_deny_credit_and_cap_risk_for_students(
        risk: risk_service_pb2_grpc.RiskServiceStub, facts: dict[str, Any]) -> None:
    assert await verdicts(risk, **facts) == DEFAULT_RESTRICTED


async def test_non_students_are_not_restricted(risk: risk_service_pb2_grpc.RiskServiceStub) -> None:
    assert await verdicts(risk) == UNRESTRICTED
    assert await verdicts(risk, occupation="engineer") == UNRESTRICTED


async def test_student_reason_comes_beside_the_other_reasons(risk: risk_service_pb2_grpc.RiskServiceStub) -> None:
    got = await verdicts(risk, student=True, birth_date="2012-01-01")
    assert got[0] == ("card", DENY, [S.REASON_CODE_UNDERAGE, RESTRICTED])


async def test_screen_batch_applies_the_student_rules(risk: risk_service_pb2_grpc.RiskServiceStub) -> None:
    async def requests() -> AsyncIterator[S.ScreenBatchRequest]:
        yield S.ScreenBatchRequest(offers=OFFERS, items=[
            S.ScreenBatchItem(customer_id=f"c-{n}", channel=common_pb2.CHANNEL_IN_APP,
                              facts=S.CustomerFacts(**ADULT, student=n % 2 == 0)) for n in range(4)])

    results = [r async for response in risk.ScreenBatch(requests()) for r in response.results]
    got = [[(v.offer_id, v.verdict, list(v.reasons)) for v in r.verdicts] for r in results]
    assert got == [DEFAULT_RESTRICTED, UNRESTRICTED, DEFAULT_RESTRICTED, UNRESTRICTED]


async def test_configured_rules(start: Callable[..., Any]) -> None:
    async for stub in _stub(start, RISK_STUDENT_RULES="max_risk=R2,occupations=student|apprentice"):
        assert await verdicts(stub, occupation="apprentice") == [
            ("card", ALLOW, []), ("fund-r3", DENY, [RESTRICTED]), ("fund-r4", DENY, [RESTRICTED]),
            ("deposit", ALLOW, [])]
    async for stub in _stub(start, RISK_STUDENT_RULES="none"):
        assert await verdicts(stub, student=True) == UNRESTRICTED


async def test_a_bad_setting_stops_the_service(start: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match="RISK_STUDENT_RULES"):
        await start(DEFINITION, RISK_STUDENT_RULES="deny_credit,max_risk=R9")


def test_parse_student_rules() -> None:
    assert rules.parse_student_rules(None) == rules.StudentRules(True, 3)
    assert rules.parse_student_rules("deny_credit") == rules.StudentRules(True, 0)
    assert rules.parse_student_rules(" NONE ") == rules.NO_STUDENT_RULES
    with pytest.raises(ValueError, match="'cap=3'"):
        rules.parse_student_rules("deny_credit,cap=3")


async def test_an_overlong_occupation_is_invalid(risk: risk_service_pb2_grpc.RiskServiceStub) -> None:
    error = await expect_error(risk.Screen(screen_request(occupation="x" * 65)), grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in error.field_violations] == ["facts.occupation"]
