"""The `lodestar` CLI without any server: argument parsing, error rendering, the demo data."""

from __future__ import annotations

import io
import json
from datetime import date

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from lodestar.common.v1 import common_pb2
from lodestar.risk.v1 import screening_pb2
from lodestar_cli import demo
from lodestar_cli.main import build_parser, error_info, run, service_addresses, table
from lodestar_cli.stack import Stack
from services.profile.handlers import customer_from_proto


class FakeRpcError(grpc.RpcError, grpc.Call):
    """What a failed unary call raises: a status code, a message and the rich status in trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str | None) -> None:
        self._code, self._message = code, message
        status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
        if reason is not None:
            packed = any_pb2.Any()
            packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="lodestar.profile"))
            status.details.append(packed)
        self._trailing = (("grpc-status-details-bin", status.SerializeToString()),) if reason is not None else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self):
        return self._trailing

    def initial_metadata(self):
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self):
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback) -> bool:
        return False


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, failure: Exception | None = None) -> tuple[int, str, str]:
    if failure is not None:
        def fail(ctx):
            raise failure

        monkeypatch.setattr("lodestar_cli.main.cmd_customers_get", fail)
    out, err = io.StringIO(), io.StringIO()
    code = run(argv, out, err)
    return code, out.getvalue(), err.getvalue()


# -- parsing -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--json", "health"], ["health", "--json"]])
def test_json_is_accepted_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.json is True
    assert args.timeout == 10.0


def test_defaults_without_global_options() -> None:
    args = build_parser().parse_args(["customers", "list"])
    assert args.json is False
    assert (args.page_size, args.page_token, args.region) == (20, "", "")


def test_timeout_before_the_command_is_not_overwritten_by_the_command_default() -> None:
    args = build_parser().parse_args(["--timeout", "2.5", "decide", "demo-0001"])
    assert args.timeout == 2.5
    assert (args.channel, args.max_offers) == ("app_push", 3)


def test_decide_options() -> None:
    args = build_parser().parse_args(["decide", "demo-0007", "--channel", "partner", "--max-offers", "5"])
    assert (args.customer_id, args.channel, args.max_offers) == ("demo-0007", "partner", 5)


@pytest.mark.parametrize("argv", [
    ["decide", "x", "--channel", "fax"],
    ["consent", "record", "x", "--channel", "sms", "--purpose", "marketing", "--action", "grant"],  # no --source
    ["consent", "record", "x", "--channel", "sms", "--purpose", "spam", "--action", "grant", "--source", "s"],
    ["customers", "list", "--page-size", "-1"],
    ["up", "--gateway-port", "70000"],
    ["customers"],
])
def test_invalid_arguments_exit_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2


def test_up_ports_come_from_flags_then_environment_then_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISK_PORT", "0")
    args = build_parser().parse_args(["up", "--gateway-port", "6000", "--data-dir", "/tmp/x"])
    assert (args.gateway_port, args.profile_port, args.campaign_port, args.risk_port) == (6000, 50051, 50052, 0)
    assert args.data_dir == "/tmp/x"


def test_consent_record_arguments() -> None:
    args = build_parser().parse_args(["consent", "record", "demo-0002", "--channel", "email", "--purpose",
                                      "partner_sharing", "--action", "withdraw", "--source", "branch"])
    assert (args.channel, args.purpose, args.action, args.source) == ("email", "partner_sharing", "withdraw",
                                                                       "branch")
    assert args.actor == "lodestar-cli"


def test_addresses_from_environment_with_defaults() -> None:
    addresses = service_addresses({"CAMPAIGN_SERVICE_ADDR": "10.0.0.5:7000"})
    assert addresses == {"gateway": "127.0.0.1:50050", "profile": "127.0.0.1:50051",
                         "campaign": "10.0.0.5:7000", "risk": "127.0.0.1:50053"}


# -- errors ------------------------------------------------------------------------------------------------

def test_error_info_takes_the_reason_from_error_info() -> None:
    error = FakeRpcError(grpc.StatusCode.NOT_FOUND, "customer customers/x not found", "CUSTOMER_NOT_FOUND")
    assert error_info(error) == {"code": "NOT_FOUND", "reason": "CUSTOMER_NOT_FOUND",
                                 "message": "customer customers/x not found"}


def test_error_info_without_rich_status_has_an_empty_reason() -> None:
    error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", None)
    assert error_info(error) == {"code": "UNAVAILABLE", "reason": "", "message": "failed to connect to all addresses"}


def test_json_error_is_one_object_on_stdout_and_exit_code_1(monkeypatch: pytest.MonkeyPatch) -> None:
    failure = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "name: must be customers/{id}", "INVALID_NAME")
    code, out, err = run_cli(["customers", "get", "", "--json"], monkeypatch, failure)
    assert code == 1
    assert err == ""
    assert json.loads(out) == {"error": {"code": "INVALID_ARGUMENT", "reason": "INVALID_NAME",
                                         "message": "name: must be customers/{id}"}}
    assert out.count("\n") == 1


def test_human_error_goes_to_stderr_with_code_reason_and_message(monkeypatch: pytest.MonkeyPatch) -> None:
    failure = FakeRpcError(grpc.StatusCode.NOT_FOUND, "customer customers/x not found", "CUSTOMER_NOT_FOUND")
    code, out, err = run_cli(["customers", "get", "x"], monkeypatch, failure)
    assert code == 1
    assert out == ""
    assert err == "error: NOT_FOUND CUSTOMER_NOT_FOUND: customer customers/x not found\n"


def test_partner_offers_without_a_key_is_an_error_before_any_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LODESTAR_API_KEY", raising=False)
    code, out, _ = run_cli(["partner", "offers", "p_abc", "--json"], monkeypatch)
    assert code == 1
    assert json.loads(out)["error"]["reason"] == "API_KEY_MISSING"


def test_table_aligns_columns() -> None:
    assert table([("a", "long value"), ("bbb", "x")], ("K", "V")).splitlines() == [
        "K    V", "---  ----------", "a    long value", "bbb  x",
    ]


# -- demo data ---------------------------------------------------------------------------------------------

def test_same_seed_gives_identical_customers_and_consents() -> None:
    first, second = demo.demo_customers(seed=7), demo.demo_customers(seed=7)
    assert first == second
    assert [c.to_proto() for c in first] == [c.to_proto() for c in second]
    assert demo.demo_consents(first, seed=7) == demo.demo_consents(second, seed=7)
    assert demo.demo_customers(seed=8) != first


def test_two_hundred_customers_with_sequential_ids() -> None:
    customers = demo.demo_customers()
    assert [c.customer_id for c in customers] == [f"demo-{n:04d}" for n in range(1, 201)]


def test_demo_0001_is_an_adult_c4_customer_in_good_standing() -> None:
    first = demo.demo_customers()[0]
    assert first.customer_id == "demo-0001"
    assert first.age_on(date.today()) >= 18
    assert first.risk_tolerance == "C4"
    assert first.in_collections is False and first.vulnerable is False
    assert first.time_zone
    consents = demo.demo_consents(demo.demo_customers())
    granted = {(c.channel, c.purpose) for c in consents if c.customer_id == "demo-0001"}
    assert granted == {(channel, purpose) for channel in demo.CHANNEL_NAMES for purpose in demo.PURPOSE_NAMES}


def test_demo_population_exercises_the_risk_rules() -> None:
    customers = demo.demo_customers()
    assert {c.region for c in customers} == {"CN-31", "CN-11", "CN-44", "HK", "PT-11"}
    assert {c.risk_tolerance for c in customers} == {"C1", "C2", "C3", "C4", "C5"}
    assert 0 < sum(not c.time_zone for c in customers) < 30, "mostly set, a few empty"
    assert any(c.in_collections for c in customers)
    assert any(c.vulnerable for c in customers)
    assert any(c.age_on(demo.REFERENCE_DATE) < 18 for c in customers)
    consents = demo.demo_consents(customers)
    with_marketing = {c.customer_id for c in consents if c.purpose == "marketing" and c.channel == "sms"}
    assert len(with_marketing) > len(customers) / 2, "most customers grant marketing"


def test_every_demo_customer_passes_the_profile_services_validation() -> None:
    for customer in demo.demo_customers():
        message = customer.to_proto()
        customer_from_proto(message)  # raises InvalidArgument on any problem
        assert set(message.attributes) == {"income", "risk_tolerance", "in_collections", "vulnerable", "segment"}
        assert message.attributes["income"].WhichOneof("kind") == "decimal_value"
        assert message.email.rsplit("@", 1)[1] in demo.EMAIL_DOMAINS, "only reserved example domains"


def test_demo_offers_cover_the_product_types_and_carry_disclosures() -> None:
    offers = demo.demo_offers()
    kinds = {(o.product_type, o.risk_level) for o in offers}
    assert {
        (common_pb2.PRODUCT_TYPE_CREDIT_CARD, common_pb2.PRODUCT_RISK_LEVEL_R2),
        (common_pb2.PRODUCT_TYPE_CONSUMER_LOAN, common_pb2.PRODUCT_RISK_LEVEL_R3),
        (common_pb2.PRODUCT_TYPE_INSTALMENT, common_pb2.PRODUCT_RISK_LEVEL_R2),
        (common_pb2.PRODUCT_TYPE_DEPOSIT, common_pb2.PRODUCT_RISK_LEVEL_R1),
        (common_pb2.PRODUCT_TYPE_WEALTH, common_pb2.PRODUCT_RISK_LEVEL_R4),
    } <= kinds
    assert len({o.offer_id for o in offers}) == len(offers)
    for offer in offers:
        assert offer.title and offer.conversion_value > 0 and offer.contact_cost > 0 and offer.disclosures
        credit = offer.product_type in (common_pb2.PRODUCT_TYPE_CREDIT_CARD, common_pb2.PRODUCT_TYPE_CONSUMER_LOAN,
                                        common_pb2.PRODUCT_TYPE_INSTALMENT)
        assert ("apr" in {d.kind for d in offer.disclosures}) == credit
        text = " ".join(d.text.lower() for d in offer.disclosures) + offer.title.lower()
        assert "guarantee" not in text and "no risk" not in text


def test_request_ids_are_derived_from_the_data() -> None:
    one, two = demo.demo_consents(demo.demo_customers())[:2]
    assert demo.request_id("consent", "k", one.to_proto()) == demo.request_id("consent", "k", one.to_proto())
    assert demo.request_id("consent", "k", one.to_proto()) != demo.request_id("consent", "k", two.to_proto())
    assert one.to_proto().action == screening_pb2.CONSENT_ACTION_GRANT
    assert (one.to_proto().source, one.to_proto().actor) == ("demo", "demo-loader")


# -- stack configuration -----------------------------------------------------------------------------------

def test_stack_environment_per_service(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere")  # never leaks into a stack service
    stack = Stack(tmp_path, {"profile": 0, "risk": 0, "campaign": 0, "gateway": 6000}, {"LOG_LEVEL": "DEBUG"})
    stack.addresses["profile"] = "127.0.0.1:4001"
    env = stack.environment("risk")
    assert env["GRPC_PORT"] == "0"
    assert env["DATABASE_URL"] == f"sqlite+aiosqlite:///{tmp_path / 'risk.db'}"
    assert env["LODESTAR_TRACE_FILE"] == str(tmp_path / "traces" / "risk.jsonl")
    assert env["OTEL_TRACES_EXPORTER"] == "file"
    assert env["PROFILE_SERVICE_ADDR"] == "127.0.0.1:4001"
    assert env["GATEWAY_SERVICE_ADDR"] == "127.0.0.1:6000", "risk gets the configured port of a later service"
    assert "CAMPAIGN_SERVICE_ADDR" not in env, "port 0 and not started yet: left to the service default"
    assert env["LOG_LEVEL"] == "DEBUG"
    assert env["GATEWAY_ADMIN_TOKEN"] == stack.admin_token and len(stack.admin_token) >= 32
    assert Stack(tmp_path).admin_token != stack.admin_token
