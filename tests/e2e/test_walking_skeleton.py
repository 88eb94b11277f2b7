"""All four services as separate processes: partner -> gateway -> campaign -> profile + risk, one trace.

Asserts the gateway's server span is the root of the trace and the campaign, profile and risk server spans
descend from it; every service's JSON log lines carry that trace id; no personal data, bank id or API key
appears in any log line or exported span.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from lodestar.campaign.v1 import campaign_service_pb2 as cpb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
from lodestar.campaign.v1 import offer_pb2
from lodestar.common.v1 import common_pb2 as c
from lodestar.gateway.v1 import gateway_admin_service_pb2 as apb
from lodestar.gateway.v1 import gateway_admin_service_pb2_grpc as apbg
from lodestar.gateway.v1 import partner_service_pb2 as gpb
from lodestar.gateway.v1 import partner_service_pb2_grpc as gpbg
from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar.risk.v1 import risk_service_pb2 as rpb
from lodestar.risk.v1 import risk_service_pb2_grpc as rpbg
from lodestar.risk.v1 import screening_pb2 as spb
from lodestar_cli.stack import Stack
from tests.helpers import details_of

pytestmark = pytest.mark.e2e

SERVICES = ("gateway", "profile", "campaign", "risk")
CUSTOMER_ID = "e2e-bank-0042"
PII = ("Zhang Xiaoming", "zhang.xm@example.cn", "+8613912345678")


def seed(stack: Stack) -> tuple[str, str]:
    """One customer, two offers, consent, a partner with a key and a pseudonym. Returns (api_key, ref)."""
    a = stack.addresses
    with grpc.insecure_channel(a["profile"]) as ch:
        customer = customer_pb2.Customer(customer_id=CUSTOMER_ID, full_name=PII[0], email=PII[1], phone=PII[2],
                                         birth_date="1986-07-15", region="CN-31", time_zone="Asia/Shanghai")
        customer.attributes["risk_tolerance"].string_value = "C3"
        customer.attributes["income"].decimal_value = "18000"
        ppbg.ProfileServiceStub(ch).CreateCustomer(ppb.CreateCustomerRequest(customer=customer), timeout=10)
    with grpc.insecure_channel(a["campaign"]) as ch:
        stub = cpbg.CampaignServiceStub(ch)
        for oid, product, level, value in [("e2e-card", c.PRODUCT_TYPE_CREDIT_CARD, c.PRODUCT_RISK_LEVEL_R2, 400.0),
                                           ("e2e-deposit", c.PRODUCT_TYPE_DEPOSIT, c.PRODUCT_RISK_LEVEL_R1, 90.0)]:
            stub.CreateOffer(cpb.CreateOfferRequest(offer=offer_pb2.Offer(
                offer_id=oid, title=oid, product_type=product, risk_level=level, conversion_value=value,
                contact_cost=0.2)), timeout=10)
    with grpc.insecure_channel(a["risk"]) as ch:
        rpbg.RiskServiceStub(ch).RecordConsent(rpb.RecordConsentRequest(consent=spb.ConsentRecord(
            customer_id=CUSTOMER_ID, channel=c.CHANNEL_PARTNER, purpose=spb.CONSENT_PURPOSE_PARTNER_SHARING,
            action=spb.CONSENT_ACTION_GRANT, source="e2e", actor="test")), timeout=10)
    admin = (("x-admin-token", stack.admin_token),)
    with grpc.insecure_channel(a["gateway"]) as ch:
        stub = apbg.GatewayAdminServiceStub(ch)
        stub.CreatePartner(apb.CreatePartnerRequest(partner=apb.Partner(partner_id="e2e-shop", display_name="Shop")),
                           metadata=admin, timeout=10)
        stub.SetPartnerScopes(apb.SetPartnerScopesRequest(partner="partners/e2e-shop", scopes=["offers:read"]),
                              metadata=admin, timeout=10)
        stub.SetPartnerOffers(apb.SetPartnerOffersRequest(partner="partners/e2e-shop", offer_ids=["*"]),
                              metadata=admin, timeout=10)
        key = stub.CreateApiKey(apb.CreateApiKeyRequest(partner="partners/e2e-shop"), metadata=admin,
                                timeout=10).api_key
        ref = stub.IssuePseudonym(apb.IssuePseudonymRequest(partner="partners/e2e-shop", customer_id=CUSTOMER_ID),
                                  metadata=admin, timeout=10).customer_ref
    return key, ref


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path, ports=dict.fromkeys(SERVICES, 0),
              extra_env={"DRAIN_SECONDS": "0", "SHUTDOWN_GRACE_SECONDS": "2", "LOG_LEVEL": "INFO"})
    try:
        s.start()
        s.wait_serving(timeout=90)
        yield s
    finally:
        s.stop()


def test_one_trace_from_gateway_through_campaign_to_profile_and_risk(stack, tmp_path):
    api_key, ref = seed(stack)

    # Every port answers health with SERVING, and reflection lists the lodestar services.
    for service in SERVICES:
        with grpc.insecure_channel(stack.addresses[service]) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service
            names = set(ProtoReflectionDescriptorDatabase(ch).get_services())
            assert any(n.startswith(f"lodestar.{service}.v1.") for n in names), (service, names)

    with grpc.insecure_channel(stack.addresses["gateway"]) as ch:
        stub = gpbg.PartnerServiceStub(ch)
        response = stub.GetOffers(gpb.GetOffersRequest(customer_ref=ref), metadata=(("x-api-key", api_key),),
                                  timeout=10)
        assert [o.rank for o in response.offers] == list(range(1, len(response.offers) + 1))
        assert {o.offer_id for o in response.offers} <= {"e2e-card", "e2e-deposit"} and response.offers
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetOffers(gpb.GetOffersRequest(customer_ref=""), metadata=(("x-api-key", api_key),), timeout=10)
        bad = details_of(caught.value)
        assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in bad.field_violations] == ["customer_ref"]

    stack.stop()  # SIGTERM: each service flushes its spans before exiting

    spans = [s for svc in SERVICES for s in read_jsonl(stack.trace_path(svc))]
    roots = [s for s in spans if s["name"] == "/lodestar.gateway.v1.PartnerService/GetOffers"
             and s["kind"] == "SERVER" and s["attributes"].get("rpc.grpc.status_code") == 0]
    assert len(roots) == 1
    root = roots[0]
    assert root["parent_span_id"] is None and root["service"] == "gateway"
    trace = {s["span_id"]: s for s in spans if s["trace_id"] == root["trace_id"]}

    def descends_from_root(span: dict) -> bool:
        seen = 0
        while span["parent_span_id"] is not None and seen < 50:
            span = trace[span["parent_span_id"]]
            seen += 1
        return span["span_id"] == root["span_id"]

    expected = {
        "campaign": "/lodestar.campaign.v1.CampaignService/Decide",
        "profile": "/lodestar.profile.v1.ProfileService/GetCustomer",
        "risk": "/lodestar.risk.v1.RiskService/Screen",
    }
    for service, name in expected.items():
        servers = [s for s in trace.values() if s["name"] == name and s["kind"] == "SERVER"]
        assert len(servers) == 1, f"{service}: {name} server span missing from the trace"
        assert servers[0]["service"] == service
        assert descends_from_root(servers[0]), f"{name} does not descend from the gateway span"
    assert all(descends_from_root(s) for s in trace.values())

    # Each service's JSON log lines carry the trace id.
    for service in SERVICES:
        lines = read_jsonl(stack.log_path(service))
        assert any(line.get("trace_id") == root["trace_id"] for line in lines), f"{service} logged no line of it"

    # Nothing personal, no bank id and no API key in any log line or span.
    secret_key = api_key.split("_", 2)[2]  # lsk_<key id>_<secret>: the secret itself may contain "_"
    assert len(secret_key) >= 24
    for path in [*(stack.log_path(s) for s in SERVICES), *(stack.trace_path(s) for s in SERVICES)]:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        for needle in (*PII, CUSTOMER_ID, secret_key):
            assert needle not in text, f"{needle!r} leaked into {path.name}"


def test_a_dependency_down_is_unavailable_at_the_partner_door(stack):
    api_key, ref = seed(stack)
    profile = stack._processes["profile"].popen
    profile.send_signal(signal.SIGTERM)
    profile.wait(timeout=30)
    with grpc.insecure_channel(stack.addresses["gateway"]) as ch:
        with pytest.raises(grpc.RpcError) as caught:
            gpbg.PartnerServiceStub(ch).GetOffers(gpb.GetOffersRequest(customer_ref=ref),
                                                  metadata=(("x-api-key", api_key),), timeout=10)
    got = details_of(caught.value)
    assert got.code == grpc.StatusCode.UNAVAILABLE, got
    assert "profile" not in got.message  # no internal topology leaks to a partner
