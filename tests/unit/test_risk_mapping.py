"""The risk domain enums mirror the contract's enums exactly, so no proto value is unmappable."""

from __future__ import annotations

from lodestar.common.v1 import common_pb2
from lodestar.risk.v1 import screening_pb2
from services.risk import handlers
from services.risk.domain import Channel, ConsentAction, ConsentPurpose, ProductType, Reason, Verdict


def _names(enum: object, prefix: str) -> set[str]:
    return {v.name.removeprefix(prefix) for v in enum.DESCRIPTOR.values if v.number != 0}  # type: ignore[attr-defined]


def test_domain_enums_have_exactly_the_contract_values() -> None:
    assert {c.value for c in Channel} == _names(common_pb2.Channel, "CHANNEL_")
    assert {p.value for p in ProductType} == _names(common_pb2.ProductType, "PRODUCT_TYPE_")
    assert {p.value for p in ConsentPurpose} == _names(screening_pb2.ConsentPurpose, "CONSENT_PURPOSE_")
    assert {a.value for a in ConsentAction} == _names(screening_pb2.ConsentAction, "CONSENT_ACTION_")
    assert {r.value for r in Reason} == _names(screening_pb2.ReasonCode, "REASON_CODE_")
    assert {v.value for v in Verdict} == _names(screening_pb2.Verdict, "VERDICT_")


def test_round_trips_by_number() -> None:
    assert handlers.channel_from_proto(common_pb2.CHANNEL_APP_PUSH) == Channel.APP_PUSH
    assert handlers.channel_to_proto(Channel.PARTNER) == common_pb2.CHANNEL_PARTNER
    for channel in Channel:
        assert handlers.channel_from_proto(handlers.channel_to_proto(channel)) == channel
    for purpose in ConsentPurpose:
        assert handlers.purpose_from_proto(handlers.purpose_to_proto(purpose)) == purpose
    for action in ConsentAction:
        assert handlers.action_from_proto(handlers.action_to_proto(action)) == action
    assert handlers.product_type_from_proto(common_pb2.PRODUCT_TYPE_INSTALMENT) == ProductType.INSTALMENT
    assert handlers.reason_to_proto(Reason.AGE_UNKNOWN) == screening_pb2.REASON_CODE_AGE_UNKNOWN
    assert handlers.verdict_to_proto(Verdict.HOLD) == screening_pb2.VERDICT_HOLD
