"""`lodestar partners ...`: bank-side administration of gateway partners (GatewayAdminService, x-admin-token).

partners create|list, key create|list|rotate|revoke, scopes set, offers set, quota set, pseudonym, cert set. The
admin token comes from GATEWAY_ADMIN_TOKEN (or the file `lodestar up` writes under --data-dir). A new API key is
printed once: it is stored only as a hash.
"""

from __future__ import annotations

import argparse
import os
import uuid
from typing import Any

from lodestar.gateway.v1 import gateway_admin_service_pb2 as apb
from lodestar.gateway.v1 import gateway_admin_service_pb2_grpc as apbg
from lodestar_cli.main import CliError, Context, _admin_token, table, to_dict

KEY_STATES = {value: name.removeprefix("API_KEY_STATE_") for name, value in apb.ApiKeyState.items()}


def _stub(ctx: Context) -> tuple[Any, Any]:
    channel = ctx.channel("gateway")
    return channel, apbg.GatewayAdminServiceStub(channel)


def _meta(ctx: Context) -> tuple[tuple[str, str], ...]:
    return (("x-admin-token", _admin_token(ctx)),)


def _partner(ctx: Context) -> str:
    return f"partners/{ctx.args.partner_id}"


def _policy_text(policy: apb.PartnerPolicy) -> str:
    q = policy.quota
    return (f"partner: {policy.partner}\nscopes:  {', '.join(policy.scopes) or '(none)'}\n"
            f"offers:  {', '.join(policy.offer_ids) or '(none)'}\n"
            f"quota:   {q.rate_per_second:g}/s, burst {q.burst}, {q.daily_quota}/day")


def _emit_policy(ctx: Context, policy: apb.PartnerPolicy) -> int:
    ctx.emit({"policy": to_dict(policy)}, _policy_text(policy))
    return 0


def _key_row(key: apb.ApiKey) -> tuple[str, ...]:
    def when(ts: Any) -> str:
        return ts.ToDatetime().isoformat(timespec="seconds") + "Z" if ts.seconds or ts.nanos else "-"

    return (key.key_id, KEY_STATES.get(key.state, "?"), when(key.create_time), when(key.expire_time),
            when(key.revoke_time))


def cmd_create(ctx: Context) -> int:
    request = apb.CreatePartnerRequest(
        partner=apb.Partner(partner_id=ctx.args.partner_id, display_name=ctx.args.display_name),
        request_id=ctx.args.request_id or uuid.uuid4().hex,
    )
    channel, stub = _stub(ctx)
    with channel:
        partner = stub.CreatePartner(request, timeout=ctx.timeout, metadata=_meta(ctx)).partner
    ctx.emit({"partner": to_dict(partner)}, f"created {partner.name} ({partner.display_name})\n"
             "it has no scope and no offer yet: see `lodestar partners scopes set` and `offers set`")
    return 0


def cmd_list(ctx: Context) -> int:
    channel, stub = _stub(ctx)
    with channel:
        response = stub.ListPartners(apb.ListPartnersRequest(page_size=ctx.args.page_size,
                                                             page_token=ctx.args.page_token),
                                     timeout=ctx.timeout, metadata=_meta(ctx))
    rows = [(p.partner_id, p.display_name) for p in response.partners]
    text = table(rows, ("PARTNER", "NAME")) if rows else "no partner"
    if response.next_page_token:
        text += f"\n\nnext page: --page-token {response.next_page_token}"
    ctx.emit({"partners": [to_dict(p) for p in response.partners], "next_page_token": response.next_page_token},
             text)
    return 0


def cmd_key_create(ctx: Context) -> int:
    channel, stub = _stub(ctx)
    with channel:
        issued = stub.CreateApiKey(apb.CreateApiKeyRequest(partner=_partner(ctx)), timeout=ctx.timeout,
                                   metadata=_meta(ctx))
    ctx.emit({"api_key": issued.api_key, "key_id": issued.key_id},
             f"key id:  {issued.key_id}\napi key: {issued.api_key}\n(shown once: only its hash is stored)")
    return 0


def cmd_key_list(ctx: Context) -> int:
    channel, stub = _stub(ctx)
    with channel:
        response = stub.ListApiKeys(apb.ListApiKeysRequest(partner=_partner(ctx)), timeout=ctx.timeout,
                                    metadata=_meta(ctx))
    rows = [_key_row(k) for k in response.api_keys]
    ctx.emit({"api_keys": [to_dict(k) for k in response.api_keys]},
             table(rows, ("KEY", "STATE", "CREATED", "EXPIRES", "REVOKED")) if rows else "no key")
    return 0


def cmd_key_rotate(ctx: Context) -> int:
    channel, stub = _stub(ctx)
    with channel:
        response = stub.RotateApiKey(apb.RotateApiKeyRequest(partner=_partner(ctx), key_id=ctx.args.key_id,
                                                             overlap_seconds=ctx.args.overlap_seconds),
                                     timeout=ctx.timeout, metadata=_meta(ctx))
    previous = response.previous_key
    ctx.emit({"api_key": response.api_key, "key_id": response.key_id, "previous_key": to_dict(previous)},
             f"new key id:  {response.key_id}\nnew api key: {response.api_key}\n(shown once)\n"
             f"old key {previous.key_id} works until {_key_row(previous)[3]}")
    return 0


def cmd_key_revoke(ctx: Context) -> int:
    channel, stub = _stub(ctx)
    with channel:
        response = stub.RevokeApiKey(apb.RevokeApiKeyRequest(partner=_partner(ctx), key_id=ctx.args.key_id),
                                     timeout=ctx.timeout, metadata=_meta(ctx))
    ctx.emit({"api_key": to_dict(response.api_key)},
             f"revoked {response.api_key.key_id} (other gateway replicas refuse it within 60 s)")
    return 0


def cmd_scopes_set(ctx: Context) -> int:
    channel, stub = _stub(ctx)
    with channel:
        response = stub.SetPartnerScopes(apb.SetPartnerScopesRequest(partner=_partner(ctx), scopes=ctx.args.scopes),
                                         timeout=ctx.timeout, metadata=_meta(ctx))
    return _emit_policy(ctx, response.policy)


def cmd_offers_set(ctx: Context) -> int:
    channel, stub = _stub(ctx)
    with channel:
        response = stub.SetPartnerOffers(apb.SetPartnerOffersRequest(partner=_partner(ctx),
                                                                     offer_ids=ctx.args.offer_ids),
                                         timeout=ctx.timeout, metadata=_meta(ctx))
    return _emit_policy(ctx, response.policy)


def cmd_quota_set(ctx: Context) -> int:
    quota = apb.Quota(rate_per_second=ctx.args.rate, burst=ctx.args.burst, daily_quota=ctx.args.daily)
    channel, stub = _stub(ctx)
    with channel:
        response = stub.SetPartnerQuota(apb.SetPartnerQuotaRequest(partner=_partner(ctx), quota=quota),
                                        timeout=ctx.timeout, metadata=_meta(ctx))
    return _emit_policy(ctx, response.policy)


def cmd_policy(ctx: Context) -> int:
    channel, stub = _stub(ctx)
    with channel:
        response = stub.GetPartnerPolicy(apb.GetPartnerPolicyRequest(partner=_partner(ctx)), timeout=ctx.timeout,
                                         metadata=_meta(ctx))
    return _emit_policy(ctx, response.policy)


def cmd_pseudonym(ctx: Context) -> int:
    channel, stub = _stub(ctx)
    with channel:
        response = stub.IssuePseudonym(apb.IssuePseudonymRequest(partner=_partner(ctx),
                                                                 customer_id=ctx.args.customer_id),
                                       timeout=ctx.timeout, metadata=_meta(ctx))
    ctx.emit({"customer_ref": response.customer_ref}, response.customer_ref)
    return 0


def cmd_cert_set(ctx: Context) -> int:
    if ctx.args.remove:
        pem = ""
    else:
        try:
            with open(ctx.args.cert, encoding="ascii") as file:
                pem = file.read()
        except (OSError, UnicodeDecodeError) as error:
            raise CliError("INVALID_ARGUMENT", "CERT_FILE_UNREADABLE",
                           f"cannot read the certificate file {ctx.args.cert}: {error}") from None
    channel, stub = _stub(ctx)
    with channel:
        response = stub.SetPartnerClientCertificate(
            apb.SetPartnerClientCertificateRequest(partner=_partner(ctx), certificate_pem=pem),
            timeout=ctx.timeout, metadata=_meta(ctx))
    if not response.HasField("client_certificate"):
        ctx.emit({"client_certificate": None}, f"removed the client certificate of {_partner(ctx)}")
        return 0
    cert = response.client_certificate
    ctx.emit({"client_certificate": to_dict(cert)},
             f"partner:     {cert.partner}\nsubject CN:  {cert.subject_common_name or '-'}\n"
             f"fingerprint: sha256:{cert.sha256_fingerprint}\n"
             "calls over mutual TLS presenting this certificate now authenticate as this partner")
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    def with_partner(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("partner_id")
        parser.add_argument("--data-dir", default=os.environ.get("LODESTAR_DATA_DIR", "var"),
                            help="where `lodestar up` keeps the admin token, when GATEWAY_ADMIN_TOKEN is unset")
        return parser

    partners = commands.add_parser("partners", parents=[common], help="gateway partners (admin)")
    sub = partners.add_subparsers(dest="partners_command", required=True, metavar="COMMAND")

    create = with_partner(sub.add_parser("create", parents=[common], help="register a partner"))
    create.add_argument("--display-name", required=True)
    create.add_argument("--request-id", default="", help="idempotency key (default: a new one)")
    create.set_defaults(handler=cmd_create)

    listing = sub.add_parser("list", parents=[common], help="partners by id")
    listing.add_argument("--page-size", type=int, default=50)
    listing.add_argument("--page-token", default="")
    listing.add_argument("--data-dir", default=os.environ.get("LODESTAR_DATA_DIR", "var"))
    listing.set_defaults(handler=cmd_list)

    policy = with_partner(sub.add_parser("policy", parents=[common], help="a partner's scopes, offers and quota"))
    policy.set_defaults(handler=cmd_policy)

    key = sub.add_parser("key", parents=[common], help="API keys")
    key_sub = key.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    with_partner(key_sub.add_parser("create", parents=[common], help="issue a key (shown once)")).set_defaults(
        handler=cmd_key_create)
    with_partner(key_sub.add_parser("list", parents=[common], help="key ids, states and times")).set_defaults(
        handler=cmd_key_list)
    rotate = with_partner(key_sub.add_parser("rotate", parents=[common], help="new key; the old one expires"))
    rotate.add_argument("key_id")
    rotate.add_argument("--overlap-seconds", type=int, default=0, help="how long the old key works (default 1 day)")
    rotate.set_defaults(handler=cmd_key_rotate)
    revoke = with_partner(key_sub.add_parser("revoke", parents=[common], help="revoke a key now"))
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=cmd_key_revoke)

    scopes = sub.add_parser("scopes", parents=[common], help="the partner's scopes")
    scopes_set = with_partner(scopes.add_subparsers(dest="scopes_command", required=True, metavar="COMMAND")
                              .add_parser("set", parents=[common], help="replace the scopes"))
    scopes_set.add_argument("scopes", nargs="*", help="offers:read leads:write leads:read conversions:write")
    scopes_set.set_defaults(handler=cmd_scopes_set)

    offers = sub.add_parser("offers", parents=[common], help="the offers the partner may present")
    offers_set = with_partner(offers.add_subparsers(dest="offers_command", required=True, metavar="COMMAND")
                              .add_parser("set", parents=[common], help="replace the allow-list"))
    offers_set.add_argument("offer_ids", nargs="*", help='offer ids, or "*" for every offer; none allows none')
    offers_set.set_defaults(handler=cmd_offers_set)

    quota = sub.add_parser("quota", parents=[common], help="rate limit and daily quota")
    quota_set = with_partner(quota.add_subparsers(dest="quota_command", required=True, metavar="COMMAND")
                             .add_parser("set", parents=[common], help="replace the limits"))
    quota_set.add_argument("--rate", type=float, required=True, help="calls per second (token refill)")
    quota_set.add_argument("--burst", type=int, required=True, help="bucket size")
    quota_set.add_argument("--daily", type=int, required=True, help="calls per UTC day")
    quota_set.set_defaults(handler=cmd_quota_set)

    pseudonym = with_partner(sub.add_parser("pseudonym", parents=[common],
                                            help="the partner's ref for a bank customer id"))
    pseudonym.add_argument("customer_id")
    pseudonym.set_defaults(handler=cmd_pseudonym)

    cert = sub.add_parser("cert", parents=[common], help="the partner's mTLS client certificate")
    cert_set = with_partner(cert.add_subparsers(dest="cert_command", required=True, metavar="COMMAND")
                            .add_parser("set", parents=[common], help="register (replace) the client certificate"))
    source = cert_set.add_mutually_exclusive_group(required=True)
    source.add_argument("--cert", metavar="FILE", help="the partner's client certificate, PEM (no private key)")
    source.add_argument("--remove", action="store_true", help="remove the partner's client certificate")
    cert_set.set_defaults(handler=cmd_cert_set)
