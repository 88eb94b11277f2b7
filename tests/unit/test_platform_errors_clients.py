import time

import grpc
import pytest
import sqlalchemy.exc
from google.rpc import error_details_pb2

from services.platform import clients
from services.platform.context import RequestContext, reset_current_request, set_current_request
from services.platform.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    from_infrastructure,
    to_status_proto,
)


def _unpack(status, cls):
    for detail in status.details:
        if detail.Is(cls.DESCRIPTOR):
            out = cls()
            detail.Unpack(out)
            return out
    return None


def test_invalid_argument_carries_error_info_and_bad_request():
    status = to_status_proto(InvalidArgument.field("customer.email", "must be an e-mail address"), "lodestar.x")
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    info = _unpack(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain, info.metadata["field"]) == ("INVALID_ARGUMENT", "lodestar.x", "customer.email")
    bad = _unpack(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [("customer.email", "must be an e-mail address")]


def test_not_found_reason_and_resource_info():
    status = to_status_proto(NotFound("customer", "customers/x"), "d")
    assert _unpack(status, error_details_pb2.ErrorInfo).reason == "CUSTOMER_NOT_FOUND"
    assert "customers/x" not in status.message  # names can be personal data; they stay in ResourceInfo
    assert _unpack(status, error_details_pb2.ResourceInfo).resource_name == "customers/x"


def test_quota_error_has_retry_info():
    status = to_status_proto(ResourceExhausted("QUOTA", "over", subject="partners/p", retry_after_seconds=1.5), "d")
    assert _unpack(status, error_details_pb2.RetryInfo).retry_delay.ToNanoseconds() == 1_500_000_000
    assert _unpack(status, error_details_pb2.QuotaFailure).violations[0].subject == "partners/p"


def test_database_failures_map_to_unavailable_and_bugs_to_none():
    err = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("disk I/O error"))
    mapped = from_infrastructure(err)
    assert mapped is not None
    assert (mapped.code, mapped.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
    assert from_infrastructure(KeyError("bug")) is None


def test_call_timeout_passes_on_the_remaining_deadline():
    assert clients.call_timeout(2.0) == 2.0  # no request in flight
    token = set_current_request(RequestContext("m", time.monotonic() + 0.5, {}))
    try:
        assert 0.4 < clients.call_timeout(2.0) <= 0.5 - clients.DEADLINE_MARGIN_SECONDS
    finally:
        reset_current_request(token)


def test_call_timeout_refuses_an_expired_deadline():
    token = set_current_request(RequestContext("m", time.monotonic() - 1, {}))
    try:
        with pytest.raises(DeadlineExceeded):
            clients.call_timeout(2.0)
    finally:
        reset_current_request(token)


def test_retry_policy_retries_unavailable_only():
    import json

    config = json.loads(clients.service_config(["lodestar.profile.v1.ProfileService"]))
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]


@pytest.mark.parametrize(("seconds", "nanos"), [(253402300800, 0), (-62135596801, 0), (0, -1), (0, 10**9)])
def test_out_of_range_timestamps_are_invalid_argument_on_the_field(seconds, nanos):
    from google.protobuf import timestamp_pb2

    from services.platform import timestamps

    with pytest.raises(InvalidArgument) as caught:
        timestamps.to_datetime(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos), "context.time")
    assert caught.value.reason == "INVALID_TIMESTAMP" and caught.value.violations[0].field == "context.time"


def test_timestamps_round_trip_and_unset_fields():
    from datetime import UTC, datetime

    from lodestar.campaign.v1 import offer_pb2
    from services.platform import timestamps

    when = datetime(2026, 11, 25, 1, 2, 3, 456000, tzinfo=UTC)
    context = offer_pb2.DecisionContext(decision_time=timestamps.to_timestamp(when))
    assert timestamps.from_field(context, "decision_time") == when
    assert timestamps.from_field(offer_pb2.DecisionContext(), "decision_time") is None


def test_a_missing_handler_is_unimplemented_not_internal():
    mapped = from_infrastructure(NotImplementedError("Method not implemented!"))
    assert mapped is not None and mapped.code == grpc.StatusCode.UNIMPLEMENTED and mapped.reason == "NOT_IMPLEMENTED"
