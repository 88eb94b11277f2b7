"""`lodestar`: the command-line tool of the Lodestar platform.

Addresses come from PROFILE_SERVICE_ADDR, RISK_SERVICE_ADDR, CAMPAIGN_SERVICE_ADDR and GATEWAY_SERVICE_ADDR
(default 127.0.0.1:<well-known port>), the admin token from GATEWAY_ADMIN_TOKEN, the partner key from
LODESTAR_API_KEY or --api-key. Every command takes --json: one JSON object on stdout; an error is
{"error": {"code", "reason", "message"}} with exit code 1. Every RPC has a timeout (--timeout, seconds).
Personal data (name, e-mail, phone, birth date) is masked in the output unless --show-pii is given.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc, offer_pb2
from lodestar.common.v1 import common_pb2
from lodestar.gateway.v1 import partner_service_pb2, partner_service_pb2_grpc
from lodestar.profile.v1 import customer_pb2, profile_service_pb2, profile_service_pb2_grpc
from lodestar.risk.v1 import risk_service_pb2, risk_service_pb2_grpc, screening_pb2
from lodestar_cli import demo, demo_campaign
from lodestar_cli.stack import START_ORDER, Stack, StackError, check_health
from services.platform.config import DEFAULT_PORTS
from services.platform.masking import mask_email, mask_phone

SERVICES = ("gateway", "profile", "campaign", "risk")
DEFAULT_TIMEOUT_SECONDS = 10.0
PII_FIELDS = ("full_name", "email", "phone", "birth_date")


class CliError(Exception):
    """An error found by the CLI itself, rendered like an RPC error."""

    def __init__(self, code: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


# -- configuration -----------------------------------------------------------------------------------------


def service_addresses(env: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    return {
        service: env.get(f"{service.upper()}_SERVICE_ADDR", "").strip()
        or f"127.0.0.1:{DEFAULT_PORTS[service]}"
        for service in SERVICES
    }


TLS_ENV = ("LODESTAR_TLS_CA_FILE", "LODESTAR_TLS_CERT_FILE", "LODESTAR_TLS_KEY_FILE", "LODESTAR_TLS_SERVER_NAME")


def channel_credentials(env: Mapping[str, str] | None = None) -> tuple[grpc.ChannelCredentials | None, list[Any]]:
    """TLS for the CLI's channels from LODESTAR_TLS_*: None (plain) when no CA file is set.

    LODESTAR_TLS_CA_FILE verifies the server; LODESTAR_TLS_CERT_FILE + LODESTAR_TLS_KEY_FILE present a client
    certificate (mTLS); LODESTAR_TLS_SERVER_NAME overrides the name checked against the server's certificate
    (reaching a service by IP or through a port-forward). Misconfiguration is a CliError naming the variable.
    """
    env = os.environ if env is None else env
    ca, cert, key, server_name = (env.get(name, "").strip() for name in TLS_ENV)
    if not ca:
        if cert or key or server_name:
            raise CliError("INVALID_ARGUMENT", "TLS_CA_MISSING",
                           "LODESTAR_TLS_CERT_FILE/KEY_FILE/SERVER_NAME need LODESTAR_TLS_CA_FILE")
        return None, []
    if bool(cert) != bool(key):
        raise CliError("INVALID_ARGUMENT", "TLS_CLIENT_PAIR_INCOMPLETE",
                       "LODESTAR_TLS_CERT_FILE and LODESTAR_TLS_KEY_FILE must be set together")

    def read(name: str, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as error:
            raise CliError("INVALID_ARGUMENT", "TLS_FILE_UNREADABLE",
                           f"{name}={path}: {error.strerror or error}") from error

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("LODESTAR_TLS_CA_FILE", ca),
        private_key=read("LODESTAR_TLS_KEY_FILE", key) if key else None,
        certificate_chain=read("LODESTAR_TLS_CERT_FILE", cert) if cert else None,
    )
    options: list[Any] = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return credentials, options


def open_channel(address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A blocking channel to `address`: TLS when LODESTAR_TLS_CA_FILE is set, plain otherwise."""
    credentials, tls_options = channel_credentials()
    merged = [*options, *tls_options]
    if credentials is None:
        return grpc.insecure_channel(address, options=merged)
    return grpc.secure_channel(address, credentials, options=merged)


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"lodestar: {name} must be a port number, got {raw!r}") from None


# -- error rendering ---------------------------------------------------------------------------------------


def error_info(error: grpc.RpcError) -> dict[str, str]:
    """{"code", "reason", "message"} of a failed call; reason is ErrorInfo.reason, "" when there is none."""
    if not isinstance(error, grpc.Call):
        return {"code": "UNKNOWN", "reason": "", "message": str(error)}
    code = error.code()
    reason = ""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        status = None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            break
    return {"code": code.name if code else "UNKNOWN", "reason": reason, "message": error.details() or ""}


def render_error(info: Mapping[str, str], as_json: bool, out: TextIO, err: TextIO) -> None:
    if as_json:
        out.write(json.dumps({"error": dict(info)}) + "\n")
        return
    reason = f" {info['reason']}" if info.get("reason") else ""
    err.write(f"error: {info['code']}{reason}: {info['message']}\n")
    if info["code"] == "UNAVAILABLE" and not info.get("reason"):  # could not connect at all
        err.write(
            "hint: is the platform running? Start it with `lodestar up` (or `make run`); addresses come "
            "from the *_SERVICE_ADDR variables.\n"
        )


# -- output helpers ----------------------------------------------------------------------------------------


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return str(value)


def mask_customer(data: dict[str, Any]) -> dict[str, Any]:
    masked = dict(data)
    if masked.get("full_name"):
        masked["full_name"] = masked["full_name"][:1] + "***"
    if masked.get("email"):
        masked["email"] = mask_email(masked["email"])
    if masked.get("phone"):
        masked["phone"] = mask_phone(masked["phone"])
    if masked.get("birth_date"):
        masked["birth_date"] = masked["birth_date"][:4] + "-**-**"
    return masked


def attribute_text(value: customer_pb2.AttributeValue) -> str:
    kind = value.WhichOneof("kind")
    if kind is None:
        return ""
    raw = getattr(value, kind)
    return ("true" if raw else "false") if kind == "bool_value" else str(raw)


def customer_view(customer: customer_pb2.Customer, show_pii: bool) -> dict[str, Any]:
    data = to_dict(customer)
    return data if show_pii else mask_customer(data)


# -- commands ----------------------------------------------------------------------------------------------


class Context:
    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.addresses = service_addresses()
        self.timeout: float = args.timeout

    @property
    def as_json(self) -> bool:
        return bool(self.args.json)

    def emit(self, data: Mapping[str, Any], text: str) -> None:
        self.out.write((json.dumps(data, ensure_ascii=False) if self.as_json else text) + "\n")
        self.out.flush()

    def channel(self, service: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        return open_channel(self.addresses[service], options)


def cmd_health(ctx: Context) -> int:
    statuses = {s: check_health(ctx.addresses[s], timeout=min(ctx.timeout, 3.0)) for s in SERVICES}
    ok = all(status == "SERVING" for status in statuses.values())
    data = {"services": {s: {"address": ctx.addresses[s], "status": statuses[s]} for s in SERVICES}, "ok": ok}
    text = table([(s, ctx.addresses[s], statuses[s]) for s in SERVICES], ("SERVICE", "ADDRESS", "STATUS"))
    ctx.emit(data, text)
    return 0 if ok else 1


def cmd_customers_get(ctx: Context) -> int:
    with ctx.channel("profile") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        response = stub.GetCustomer(
            profile_service_pb2.GetCustomerRequest(name=f"customers/{ctx.args.customer_id}"),
            timeout=ctx.timeout,
        )
    view = customer_view(response.customer, ctx.args.show_pii)
    rows = [
        (key, view.get(key, ""))
        for key in ("customer_id", "full_name", "email", "phone", "birth_date", "region", "time_zone", "etag")
    ]
    rows += [
        (f"attributes.{name}", attribute_text(value))
        for name, value in sorted(response.customer.attributes.items())
    ]
    text = "\n".join(f"{key:<28} {value}" for key, value in rows)
    ctx.emit({"customer": view}, text)
    return 0


def cmd_customers_list(ctx: Context) -> int:
    with ctx.channel("profile") as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        response = stub.ListCustomers(
            profile_service_pb2.ListCustomersRequest(
                page_size=ctx.args.page_size, page_token=ctx.args.page_token, region=ctx.args.region
            ),
            timeout=ctx.timeout,
        )
    views = [customer_view(c, ctx.args.show_pii) for c in response.customers]
    rows = [
        (
            c.customer_id,
            c.region,
            c.time_zone or "-",
            attribute_text(c.attributes["segment"]) if "segment" in c.attributes else "-",
            attribute_text(c.attributes["risk_tolerance"]) if "risk_tolerance" in c.attributes else "-",
        )
        for c in response.customers
    ]
    text = table(rows, ("CUSTOMER", "REGION", "TIME ZONE", "SEGMENT", "RISK TOLERANCE"))
    if response.next_page_token:
        text += f"\n\nnext page: --page-token {response.next_page_token}"
    ctx.emit({"customers": views, "next_page_token": response.next_page_token}, text)
    return 0


def _product(value: int) -> str:
    return enum_name(common_pb2.ProductType, value, "PRODUCT_TYPE_").lower()


def _risk_level(value: int) -> str:
    return enum_name(common_pb2.ProductRiskLevel, value, "PRODUCT_RISK_LEVEL_")


def cmd_offers_list(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        stub = campaign_service_pb2_grpc.CampaignServiceStub(channel)
        response = stub.ListOffers(
            campaign_service_pb2.ListOffersRequest(
                page_size=ctx.args.page_size, page_token=ctx.args.page_token
            ),
            timeout=ctx.timeout,
        )
    rows = [
        (
            o.offer_id,
            _product(o.product_type),
            _risk_level(o.risk_level),
            f"{o.conversion_value:.2f}",
            f"{o.contact_cost:.2f}",
            o.title,
        )
        for o in response.offers
    ]
    text = table(rows, ("OFFER", "TYPE", "RISK", "VALUE", "COST", "TITLE"))
    if response.next_page_token:
        text += f"\n\nnext page: --page-token {response.next_page_token}"
    ctx.emit(
        {"offers": [to_dict(o) for o in response.offers], "next_page_token": response.next_page_token}, text
    )
    return 0


def _reasons(reasons: Sequence[offer_pb2.Reason]) -> str:
    return ", ".join(r.code for r in reasons) or "-"


def cmd_decide(ctx: Context) -> int:
    request = campaign_service_pb2.DecideRequest(
        customer_id=ctx.args.customer_id,
        max_offers=ctx.args.max_offers,
        context=offer_pb2.DecisionContext(
            channel=demo.CHANNEL_NAMES[ctx.args.channel], placement=ctx.args.placement
        ),
    )
    with ctx.channel("campaign") as channel:
        stub = campaign_service_pb2_grpc.CampaignServiceStub(channel)
        response = stub.Decide(request, timeout=ctx.timeout)
    lines = [
        f"decision {response.decision or '-'}  (policy {response.policy_version or '-'}, "
        f"model {response.model_version or '-'})",
        "",
    ]
    if response.offers:
        rows = [
            (
                o.rank,
                o.offer_id,
                _product(o.product_type),
                f"{o.propensity:.3f}",
                f"{o.expected_value:.2f}",
                _reasons(o.reasons),
            )
            for o in response.offers
        ]
        lines.append(table(rows, ("RANK", "OFFER", "TYPE", "PROPENSITY", "EXP. VALUE", "REASONS")))
        explained = [(o.offer_id, r.code, r.message) for o in response.offers for r in o.reasons if r.message]
        if explained:
            lines += ["", *(f"  {offer}: {code}: {message}" for offer, code, message in explained)]
    else:
        lines.append("no offer for this customer in this context")
    if response.suppressed:
        lines += [
            "",
            "suppressed:",
            table([(s.offer_id, _reasons(s.reasons)) for s in response.suppressed], ("OFFER", "REASONS")),
        ]
    ctx.emit(to_dict(response), "\n".join(lines))
    return 0


def cmd_consent_record(ctx: Context) -> int:
    args = ctx.args
    consent = screening_pb2.ConsentRecord(
        customer_id=args.customer_id,
        channel=demo.CHANNEL_NAMES[args.channel],
        purpose=demo.PURPOSE_NAMES[args.purpose],
        action=screening_pb2.CONSENT_ACTION_GRANT
        if args.action == "grant"
        else screening_pb2.CONSENT_ACTION_WITHDRAW,
        source=args.source,
        actor=args.actor,
    )
    request = risk_service_pb2.RecordConsentRequest(
        consent=consent, request_id=args.request_id or f"cli:{uuid.uuid4()}"
    )
    with ctx.channel("risk") as channel:
        stub = risk_service_pb2_grpc.RiskServiceStub(channel)
        response = stub.RecordConsent(request, timeout=ctx.timeout)
    recorded = response.consent
    text = (
        f"recorded: {args.action} {args.purpose} on {args.channel} "
        f"for {recorded.customer_id or args.customer_id}"
        f" (source {recorded.source or args.source}, actor {recorded.actor or args.actor}"
        + (f", at {recorded.record_time.ToJsonString()}" if recorded.HasField("record_time") else "")
        + ")"
    )
    ctx.emit({"consent": to_dict(recorded)}, text)
    return 0


def cmd_partner_offers(ctx: Context) -> int:
    api_key = ctx.args.api_key or os.environ.get("LODESTAR_API_KEY", "")
    if not api_key:
        raise CliError(
            "INVALID_ARGUMENT",
            "API_KEY_MISSING",
            "no partner API key: pass --api-key or set LODESTAR_API_KEY",
        )
    request = partner_service_pb2.GetOffersRequest(
        customer_ref=ctx.args.customer_ref,
        max_offers=ctx.args.max_offers,
        context=partner_service_pb2.OfferContext(placement=ctx.args.placement),
    )
    with ctx.channel("gateway") as channel:
        stub = partner_service_pb2_grpc.PartnerServiceStub(channel)
        response = stub.GetOffers(request, timeout=ctx.timeout, metadata=(("x-api-key", api_key),))
    if response.offers:
        rows = [
            (o.rank, o.offer_id, _product(o.product_type), o.title, ", ".join(o.reason_codes) or "-")
            for o in response.offers
        ]
        text = table(rows, ("RANK", "OFFER", "TYPE", "TITLE", "REASONS"))
        disclosures = [f"  {o.offer_id} {d.kind}: {d.text}" for o in response.offers for d in o.disclosures]
        if disclosures:
            text += "\n\ndisclosures:\n" + "\n".join(disclosures)
    else:
        text = "no offer for this customer"
    text += f"\n\ndecision ref: {response.decision_ref or '-'}"
    ctx.emit(to_dict(response) | {"offers": [to_dict(o) for o in response.offers]}, text)
    return 0


def _admin_token(ctx: Context) -> str:
    token = os.environ.get("GATEWAY_ADMIN_TOKEN", "").strip()
    if token:
        return token
    token_file = Path(ctx.args.data_dir) / "run" / "admin-token"
    try:
        return token_file.read_text().strip()
    except OSError:
        raise CliError(
            "FAILED_PRECONDITION",
            "ADMIN_TOKEN_MISSING",
            f"no gateway admin token: set GATEWAY_ADMIN_TOKEN (or run `lodestar up`, which writes "
            f"{token_file})",
        ) from None


def _progress(ctx: Context) -> demo.Progress | None:
    if ctx.as_json or not ctx.err.isatty():
        return None

    def show(stage: str, done: int, total: int) -> None:
        ctx.err.write(f"\r  loading {stage:<10} {done:>4}/{total}")
        if done == total:
            ctx.err.write("\n")
        ctx.err.flush()

    return show


def cmd_demo_load(ctx: Context) -> int:
    info = demo.load_demo(ctx.addresses, _admin_token(ctx), progress=_progress(ctx), timeout=ctx.timeout)
    data = {
        "api_key": info.api_key,
        "customer_ref": info.customer_ref,
        "customers": info.customers,
        "offers": info.offers,
        "consents": info.consents,
        "partner_id": info.partner_id,
    }
    text = (
        f"demo bank loaded: {info.customers} customers, {info.offers} offers, {info.consents} consents\n"
        f"demo partner:     {info.partner_id}\n"
        f"partner API key:  {info.api_key}\n"
        f"{info.customer_id} is:   {info.customer_ref} (for partner {info.partner_id})"
    )
    if not ctx.args.no_demo_campaign:
        try:
            result = _demo_campaign_foreground(ctx, ctx.addresses, _admin_token(ctx))
        except CliError as error:  # the bank is loaded all the same: say so, with the campaign's error
            failure = {"code": error.code, "reason": error.reason, "message": error.message}
            data["error"] = failure
            ctx.emit(data, text)
            if not ctx.as_json:
                render_error(failure, False, ctx.out, ctx.err)
            return 1
        data["demo_campaign"] = result.to_dict()
        text += "\n\n" + result.summary()
    ctx.emit(data, text)
    return 0


def _demo_campaign_foreground(
    ctx: Context, addresses: Mapping[str, str], admin_token: str
) -> demo_campaign.DemoCampaignResult:
    """The demo campaign after `demo load`, with a progress bar (none with --json or without a TTY)."""
    show = not ctx.as_json and ctx.err.isatty()
    progress, close = demo_campaign.bar_progress(ctx.err)
    try:
        return demo_campaign.run_demo_campaign(
            addresses, admin_token, ctx.timeout, progress if show else None
        )
    except demo_campaign.DemoCampaignError as error:
        raise CliError("FAILED_PRECONDITION", "DEMO_CAMPAIGN_FAILED", str(error)) from None
    finally:
        close()


def _demo_campaign_background(
    ctx: Context, addresses: Mapping[str, str], admin_token: str, stop: threading.Event
) -> threading.Thread:
    """`lodestar up`: the demo campaign in a thread once the stack is reported ready; its outcome is printed
    when done (text on stdout under the banner; with --json one {"demo_campaign": ...} line on stderr)."""

    def work() -> None:
        try:
            result = demo_campaign.run_demo_campaign(
                addresses, admin_token, ctx.timeout,
                None if ctx.as_json else demo_campaign.line_progress(ctx.err), stop=stop,
            )
        except (demo_campaign.DemoCampaignError, grpc.RpcError) as error:
            if stop.is_set():
                return
            message = str(error) if isinstance(error, demo_campaign.DemoCampaignError) else error_info(error)["message"]
            if ctx.as_json:
                ctx.err.write(json.dumps({"demo_campaign": {"error": message}}) + "\n")
            else:
                ctx.err.write(f"demo campaign: {message}\n")
            ctx.err.flush()
            return
        if ctx.as_json:
            ctx.err.write(json.dumps({"demo_campaign": result.to_dict()}) + "\n")
            ctx.err.flush()
        else:
            ctx.out.write("\n" + result.summary() + "\n")
            ctx.out.flush()

    thread = threading.Thread(target=work, name="demo-campaign", daemon=True)
    thread.start()
    return thread


def up_banner(
    addresses: Mapping[str, str], api_key: str, customer_ref: str, data_dir: Path, token_file: Path
) -> str:
    gateway = addresses["gateway"].replace("127.0.0.1", "localhost")
    env_lines = "\n".join(f"  export {s.upper()}_SERVICE_ADDR={addresses[s]}" for s in SERVICES)
    return f"""Lodestar is up (data in {data_dir}).

{table([(s, addresses[s]) for s in START_ORDER], ("SERVICE", "ADDRESS"))}

demo partner API key:                  {api_key}
demo-0001 as seen by partner demo-shop: {customer_ref}
gateway admin token:                    in {token_file}

Try it:
  grpcurl -plaintext {gateway} list
  grpcurl -plaintext -H 'x-api-key: {api_key}' -d '{{"customer_ref":"{customer_ref}"}}' \\
      {gateway} lodestar.gateway.v1.PartnerService/GetOffers
  grpcurl -plaintext {gateway} grpc.health.v1.Health/Check

The same with the CLI, from another terminal:
{env_lines}
  export LODESTAR_API_KEY={api_key}
  lodestar health
  lodestar partner offers {customer_ref}
  lodestar decide demo-0001 --channel app_push
  lodestar customers list --page-size 10
  lodestar offers list
  lodestar report demo-welcome --html {demo_campaign.REPORT_FILE}   # the demo campaign (simulated responses)

Logs in {data_dir / "logs"}, traces in {data_dir / "traces"}. Ctrl-C stops everything."""


def cmd_up(ctx: Context) -> int:
    args = ctx.args
    ports = {s: getattr(args, f"{s}_port") for s in SERVICES}
    data_dir = Path(args.data_dir).resolve()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = Stack(data_dir, ports)
    campaign_thread: threading.Thread | None = None
    try:
        if not ctx.as_json:
            ctx.err.write(f"starting profile, risk, campaign and gateway (data in {data_dir}) ...\n")
        stack.start()
        stack.wait_serving(timeout=args.wait_timeout)
        if stop.is_set():
            return 0
        if demo.is_empty(stack.addresses["profile"], timeout=ctx.timeout):
            if not ctx.as_json:
                ctx.err.write("empty database: loading the demo bank ...\n")
            info = demo.load_demo(
                stack.addresses, stack.admin_token, progress=_progress(ctx), timeout=ctx.timeout
            )
            api_key, customer_ref = info.api_key, info.customer_ref
            run_campaign = not args.no_demo_campaign
        else:
            api_key, customer_ref = demo.issue_demo_access(stack.addresses, stack.admin_token, ctx.timeout)
            # Resumed when it was started before (idempotent: a finished one records nothing new).
            run_campaign = not args.no_demo_campaign and demo_campaign.campaign_exists(
                stack.addresses, ctx.timeout
            )
        data = {
            "addresses": stack.addresses,
            "api_key": api_key,
            "customer_ref": customer_ref,
            "data_dir": str(data_dir),
            "admin_token_file": str(stack.admin_token_file),
        }
        ctx.emit(data, up_banner(stack.addresses, api_key, customer_ref, data_dir, stack.admin_token_file))
        if run_campaign:
            if not ctx.as_json:
                ctx.err.write("\nrunning the demo campaign demo-welcome in the background ...\n")
            campaign_thread = _demo_campaign_background(ctx, stack.addresses, stack.admin_token, stop)
        while not stop.wait(0.5):
            exited = stack.first_exited()
            if exited is not None:
                raise StackError(stack.failure_report(exited))
        if not ctx.as_json:
            ctx.err.write("\nstopping ...\n")
        return 0
    finally:
        stop.set()
        if campaign_thread is not None:
            campaign_thread.join(timeout=5)
        codes = stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if codes and not ctx.as_json:
            ctx.err.write("stopped: " + ", ".join(f"{s} (exit {c})" for s, c in codes.items()) + "\n")


# -- parser ------------------------------------------------------------------------------------------------


def _positive(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError("must be a port between 0 and 65535")
    return number


def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before or after the command. The commands' copies default to SUPPRESS, so
    # that they never overwrite a value given before the command; the top level holds the real defaults.
    def global_options(parser: argparse.ArgumentParser, json_default: Any, timeout_default: Any) -> None:
        parser.add_argument(
            "--json",
            action="store_true",
            default=json_default,
            help="print one JSON object on stdout (errors too)",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=timeout_default,
            help=f"deadline of each RPC in seconds (default {DEFAULT_TIMEOUT_SECONDS:g})",
        )

    common = argparse.ArgumentParser(add_help=False)
    global_options(common, argparse.SUPPRESS, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="lodestar", description="Lodestar precision-marketing platform: local stack and tools."
    )
    global_options(parser, False, DEFAULT_TIMEOUT_SECONDS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", parents=[common], help="start all four services with a demo bank")
    up.add_argument(
        "--data-dir",
        default=os.environ.get("LODESTAR_DATA_DIR", "var"),
        help="databases, logs and traces go here (default var)",
    )
    for service in SERVICES:
        up.add_argument(
            f"--{service}-port",
            type=_port,
            default=_env_port(f"{service.upper()}_PORT", DEFAULT_PORTS[service]),
            help=f"0 means any free port (default {service.upper()}_PORT or {DEFAULT_PORTS[service]})",
        )
    up.add_argument("--wait-timeout", type=float, default=60.0, help="seconds to wait for SERVING")
    up.add_argument(
        "--no-demo-campaign", action="store_true",
        help="do not run the demo campaign demo-welcome (launch, delivery, simulated responses)",
    )
    up.set_defaults(handler=cmd_up)

    demo_cmd = commands.add_parser("demo", parents=[common], help="the synthetic demo bank")
    demo_sub = demo_cmd.add_subparsers(dest="demo_command", required=True, metavar="COMMAND")
    load = demo_sub.add_parser("load", parents=[common], help="load the demo bank (idempotent)")
    load.add_argument(
        "--data-dir",
        default=os.environ.get("LODESTAR_DATA_DIR", "var"),
        help="where `lodestar up` keeps the admin token, when GATEWAY_ADMIN_TOKEN is unset",
    )
    load.add_argument(
        "--no-demo-campaign", action="store_true",
        help="load the bank only: skip the demo campaign demo-welcome (launch, delivery, simulated responses)",
    )
    load.set_defaults(handler=cmd_demo_load)

    health = commands.add_parser("health", parents=[common], help="every service's health status")
    health.set_defaults(handler=cmd_health)

    customers = commands.add_parser("customers", parents=[common], help="customers in the profile service")
    customers_sub = customers.add_subparsers(dest="customers_command", required=True, metavar="COMMAND")
    get = customers_sub.add_parser("get", parents=[common], help="one customer")
    get.add_argument("customer_id")
    get.add_argument(
        "--show-pii", action="store_true", help="show name, e-mail, phone and birth date unmasked"
    )
    get.set_defaults(handler=cmd_customers_get)
    listing = customers_sub.add_parser("list", parents=[common], help="customers ordered by id")
    listing.add_argument("--page-size", type=_positive, default=20)
    listing.add_argument("--page-token", default="")
    listing.add_argument("--region", default="", help="only this region, e.g. CN-31")
    listing.add_argument("--show-pii", action="store_true", help="show personal data unmasked")
    listing.set_defaults(handler=cmd_customers_list)

    offers = commands.add_parser("offers", parents=[common], help="the offer catalog")
    offers_sub = offers.add_subparsers(dest="offers_command", required=True, metavar="COMMAND")
    offers_list = offers_sub.add_parser("list", parents=[common], help="offers in the catalog")
    offers_list.add_argument("--page-size", type=_positive, default=50)
    offers_list.add_argument("--page-token", default="")
    offers_list.set_defaults(handler=cmd_offers_list)

    decide = commands.add_parser("decide", parents=[common], help="real-time next-best-offer for a customer")
    decide.add_argument("customer_id")
    decide.add_argument("--channel", choices=sorted(demo.CHANNEL_NAMES), default="app_push")
    decide.add_argument("--max-offers", type=_positive, default=3)
    decide.add_argument("--placement", default="")
    decide.set_defaults(handler=cmd_decide)

    consent = commands.add_parser("consent", parents=[common], help="customer consent")
    consent_sub = consent.add_subparsers(dest="consent_command", required=True, metavar="COMMAND")
    record = consent_sub.add_parser("record", parents=[common], help="grant or withdraw consent")
    record.add_argument("customer_id")
    record.add_argument("--channel", choices=sorted(demo.CHANNEL_NAMES), required=True)
    record.add_argument("--purpose", choices=sorted(demo.PURPOSE_NAMES), required=True)
    record.add_argument("--action", choices=("grant", "withdraw"), required=True)
    record.add_argument("--source", required=True, help='where it came from, e.g. "branch", "mobile-app"')
    record.add_argument(
        "--actor",
        default=os.environ.get("LODESTAR_ACTOR", "lodestar-cli"),
        help="who records it: an employee or system id (default LODESTAR_ACTOR or lodestar-cli)",
    )
    record.add_argument("--request-id", default="", help="idempotency key (default: a new one)")
    record.set_defaults(handler=cmd_consent_record)

    partner = commands.add_parser("partner", parents=[common], help="the partner API, as a partner sees it")
    partner_sub = partner.add_subparsers(dest="partner_command", required=True, metavar="COMMAND")
    partner_offers = partner_sub.add_parser(
        "offers", parents=[common], help="offers for a pseudonymous customer"
    )
    partner_offers.add_argument("customer_ref", help='the partner-scoped id ("p_...")')
    partner_offers.add_argument("--api-key", default="", help="partner API key (default LODESTAR_API_KEY)")
    partner_offers.add_argument("--max-offers", type=_positive, default=3)
    partner_offers.add_argument("--placement", default="")
    partner_offers.set_defaults(handler=cmd_partner_offers)

    from lodestar_cli.commands import register_all  # late: command modules import this one

    register_all(commands, common)
    return parser


def run(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    ctx = Context(args, out, err)
    handler: Callable[[Context], int] = args.handler
    try:
        return handler(ctx)
    except grpc.RpcError as error:
        render_error(error_info(error), ctx.as_json, out, err)
    except CliError as error:
        render_error(
            {"code": error.code, "reason": error.reason, "message": error.message}, ctx.as_json, out, err
        )
    except StackError as error:
        render_error(
            {"code": "UNAVAILABLE", "reason": "STACK_FAILED", "message": str(error)}, ctx.as_json, out, err
        )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
