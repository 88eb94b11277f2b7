"""mTLS client identity at the gateway: a throwaway CA, a server certificate and client certificates made here
with `cryptography`; the gateway started with the TLS settings and a fake campaign."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from lodestar.gateway.v1 import (
    gateway_admin_service_pb2,
    gateway_admin_service_pb2_grpc,
    partner_service_pb2,
    partner_service_pb2_grpc,
)
from lodestar_cli.main import run
from services.gateway.app import DEFINITION
from services.gateway.db import PartnerClientCertRow
from services.platform.config import ConfigError, ServiceSettings
from services.platform.server import RunningService
from tests.helpers import expect_error
from tests.integration.test_gateway_service import ADMIN, CUSTOMER, FakeCampaign, api, fake_campaign

__all__ = ["fake_campaign"]  # the fixture, re-used


# --- a throwaway PKI ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes

    @property
    def fingerprint(self) -> str:
        return x509.load_pem_x509_certificate(self.cert_pem).fingerprint(hashes.SHA256()).hex()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class CertificateAuthority:
    def __init__(self, common_name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM),
                      key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: Issued
    acme: Issued  # registered to partner acme
    globex: Issued  # registered to partner globex
    stranger: Issued  # signed by the CA, registered to no one
    operator: Issued  # what the bank's admin tooling presents (admin calls don't look at it)
    env: dict[str, str]  # TLS_* for TLS_CLIENT_AUTH=required


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = CertificateAuthority("Lodestar test partner CA")
    server = ca.issue("localhost", server=True)
    folder: Path = tmp_path_factory.mktemp("pki")
    (folder / "server.pem").write_bytes(server.cert_pem)
    (folder / "server.key").write_bytes(server.key_pem)
    (folder / "ca.pem").write_bytes(ca.pem)
    env = {"TLS_CERT_FILE": str(folder / "server.pem"), "TLS_KEY_FILE": str(folder / "server.key"),
           "TLS_CLIENT_CA_FILE": str(folder / "ca.pem"), "TLS_CLIENT_AUTH": "required"}
    return Pki(ca, server, ca.issue("acme-gw-client"), ca.issue("globex-gw-client"), ca.issue("stranger"),
               ca.issue("bank-operator"), env)


@dataclass
class Stubs:
    admin: Any
    partner: Any


@pytest.fixture
async def channels() -> AsyncIterator[list[grpc.aio.Channel]]:
    opened: list[grpc.aio.Channel] = []
    yield opened
    for channel in opened:
        await channel.close()


def tls_stubs(channels: list[grpc.aio.Channel], running: RunningService, pki: Pki,
              client: Issued | None) -> Stubs:
    credentials = grpc.ssl_channel_credentials(pki.ca.pem, client.key_pem if client else None,
                                               client.cert_pem if client else None)
    channel = grpc.aio.secure_channel(running.address, credentials,
                                      options=[("grpc.ssl_target_name_override", "localhost")])
    channels.append(channel)
    return Stubs(gateway_admin_service_pb2_grpc.GatewayAdminServiceStub(channel),
                 partner_service_pb2_grpc.PartnerServiceStub(channel))


async def onboard(admin: Any, partner_id: str, cert: Issued | None) -> str:
    """A partner with every scope and offer, its client certificate registered; its ref for CUSTOMER."""
    name = f"partners/{partner_id}"
    await admin.CreatePartner(gateway_admin_service_pb2.CreatePartnerRequest(
        partner=gateway_admin_service_pb2.Partner(partner_id=partner_id, display_name=partner_id)), metadata=ADMIN)
    await admin.SetPartnerScopes(gateway_admin_service_pb2.SetPartnerScopesRequest(
        partner=name, scopes=["offers:read", "leads:write", "leads:read", "conversions:write"]), metadata=ADMIN)
    await admin.SetPartnerOffers(gateway_admin_service_pb2.SetPartnerOffersRequest(
        partner=name, offer_ids=["*"]), metadata=ADMIN)
    if cert is not None:
        await admin.SetPartnerClientCertificate(gateway_admin_service_pb2.SetPartnerClientCertificateRequest(
            partner=name, certificate_pem=cert.cert_pem.decode()), metadata=ADMIN)
    response = await admin.IssuePseudonym(gateway_admin_service_pb2.IssuePseudonymRequest(
        partner=name, customer_id=CUSTOMER), metadata=ADMIN)
    return str(response.customer_ref)


def offers(stubs: Stubs, ref: str, key: str | None = None) -> Any:
    return stubs.partner.GetOffers(partner_service_pb2.GetOffersRequest(customer_ref=ref),
                                   metadata=api(key) if key else None)


@pytest.fixture
async def mtls_gateway(start: Any, fake_campaign: tuple[FakeCampaign, str], pki: Pki) -> RunningService:
    running: RunningService = await start(DEFINITION, GATEWAY_ADMIN_TOKEN="t0k",
                                          CAMPAIGN_SERVICE_ADDR=fake_campaign[1], **pki.env)
    return running


# --- mutual TLS, client certificates required ---------------------------------------------------------------------


async def test_registered_certificate_authenticates_without_api_key(
    mtls_gateway: RunningService, pki: Pki, channels: list[grpc.aio.Channel],
    fake_campaign: tuple[FakeCampaign, str], caplog: pytest.LogCaptureFixture,
) -> None:
    admin = tls_stubs(channels, mtls_gateway, pki, pki.operator).admin
    ref = await onboard(admin, "acme", pki.acme)
    acme = tls_stubs(channels, mtls_gateway, pki, pki.acme)
    with caplog.at_level(logging.INFO, logger="lodestar.gateway.audit"):
        response = await offers(acme, ref)
    assert [o.offer_id for o in response.offers] == ["card-gold", "instal-12"]
    fake, _ = fake_campaign
    assert [r.context.partner_id for r in fake.requests] == ["acme"]
    assert fake.requests[0].customer_id == CUSTOMER
    audit = [r for r in caplog.records if r.name == "lodestar.gateway.audit" and getattr(r, "rpc", "") == "GetOffers"]
    assert len(audit) == 1
    assert (audit[0].partner_id, audit[0].key_id, audit[0].cert_fingerprint, audit[0].result) == (  # type: ignore[attr-defined]
        "acme", "", pki.acme.fingerprint, "OK")
    async with mtls_gateway.runtime.database.sessionmaker() as session:
        rows = list(await session.scalars(select(PartnerClientCertRow)))
    assert [(r.partner_id, r.fingerprint, r.subject_cn) for r in rows] == [
        ("acme", pki.acme.fingerprint, "acme-gw-client")]


async def test_unregistered_certificate_is_client_cert_unknown(
    mtls_gateway: RunningService, pki: Pki, channels: list[grpc.aio.Channel]
) -> None:
    admin = tls_stubs(channels, mtls_gateway, pki, pki.operator).admin
    ref = await onboard(admin, "acme", pki.acme)
    key = await admin.CreateApiKey(gateway_admin_service_pb2.CreateApiKeyRequest(partner="partners/acme"),
                                   metadata=ADMIN)
    stranger = tls_stubs(channels, mtls_gateway, pki, pki.stranger)
    await expect_error(offers(stranger, ref), grpc.StatusCode.UNAUTHENTICATED, "CLIENT_CERT_UNKNOWN")
    # An unknown certificate is refused even alongside a valid key.
    await expect_error(offers(stranger, ref, key.api_key), grpc.StatusCode.UNAUTHENTICATED, "CLIENT_CERT_UNKNOWN")


async def test_another_partners_certificate_cannot_use_this_partners_refs(
    mtls_gateway: RunningService, pki: Pki, channels: list[grpc.aio.Channel],
    fake_campaign: tuple[FakeCampaign, str],
) -> None:
    admin = tls_stubs(channels, mtls_gateway, pki, pki.operator).admin
    acme_ref = await onboard(admin, "acme", pki.acme)
    globex_ref = await onboard(admin, "globex", pki.globex)
    globex = tls_stubs(channels, mtls_gateway, pki, pki.globex)
    await expect_error(offers(globex, acme_ref), grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND")
    fake, _ = fake_campaign
    assert fake.requests == []  # campaign never asked
    assert len((await offers(globex, globex_ref)).offers) == 2
    assert [r.context.partner_id for r in fake.requests] == ["globex"]


async def test_key_and_certificate_of_different_partners_conflict(
    mtls_gateway: RunningService, pki: Pki, channels: list[grpc.aio.Channel]
) -> None:
    admin = tls_stubs(channels, mtls_gateway, pki, pki.operator).admin
    acme_ref = await onboard(admin, "acme", pki.acme)
    await onboard(admin, "globex", pki.globex)
    acme_key = await admin.CreateApiKey(gateway_admin_service_pb2.CreateApiKeyRequest(partner="partners/acme"),
                                        metadata=ADMIN)
    globex_key = await admin.CreateApiKey(gateway_admin_service_pb2.CreateApiKeyRequest(partner="partners/globex"),
                                          metadata=ADMIN)
    acme = tls_stubs(channels, mtls_gateway, pki, pki.acme)
    await expect_error(offers(acme, acme_ref, globex_key.api_key), grpc.StatusCode.UNAUTHENTICATED,
                       "CREDENTIALS_CONFLICT")
    # A bad key next to a good certificate is the key's own error, not a pass.
    await expect_error(offers(acme, acme_ref, "lsk_nope"), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MALFORMED")
    assert len((await offers(acme, acme_ref, acme_key.api_key)).offers) == 2


async def test_required_client_auth_refuses_a_client_without_certificate(
    mtls_gateway: RunningService, pki: Pki, channels: list[grpc.aio.Channel]
) -> None:
    anonymous = tls_stubs(channels, mtls_gateway, pki, None)
    await expect_error(offers(anonymous, "p_" + "a" * 26), grpc.StatusCode.UNAVAILABLE)
    # A certificate from another CA is refused at the handshake too.
    rogue = tls_stubs(channels, mtls_gateway, pki, CertificateAuthority("rogue").issue("acme-gw-client"))
    await expect_error(offers(rogue, "p_" + "a" * 26), grpc.StatusCode.UNAVAILABLE)


async def test_admin_registration_rules(
    mtls_gateway: RunningService, pki: Pki, channels: list[grpc.aio.Channel]
) -> None:
    admin = tls_stubs(channels, mtls_gateway, pki, pki.operator).admin
    await onboard(admin, "acme", pki.acme)
    await onboard(admin, "globex", None)

    def set_cert(partner: str, pem: str, metadata: Any = ADMIN) -> Any:
        return admin.SetPartnerClientCertificate(gateway_admin_service_pb2.SetPartnerClientCertificateRequest(
            partner=partner, certificate_pem=pem), metadata=metadata)

    got = await expect_error(set_cert("partners/globex", "not a certificate"), grpc.StatusCode.INVALID_ARGUMENT,
                             "INVALID_CERTIFICATE")
    assert got.field_violations[0][0] == "certificate_pem"
    await expect_error(set_cert("partners/globex", pki.acme.cert_pem.decode()), grpc.StatusCode.ALREADY_EXISTS,
                       "CLIENT_CERT_IN_USE")
    await expect_error(set_cert("partners/nobody", pki.globex.cert_pem.decode()), grpc.StatusCode.NOT_FOUND,
                       "PARTNER_NOT_FOUND")
    await expect_error(set_cert("partners/globex", pki.globex.cert_pem.decode(), metadata=None),
                       grpc.StatusCode.UNAUTHENTICATED, "ADMIN_TOKEN_MISSING")
    # A partner's client certificate is never an admin credential.
    acme = tls_stubs(channels, mtls_gateway, pki, pki.acme)
    await expect_error(acme.admin.SetPartnerClientCertificate(
        gateway_admin_service_pb2.SetPartnerClientCertificateRequest(
            partner="partners/acme", certificate_pem=pki.stranger.cert_pem.decode())),
        grpc.StatusCode.UNAUTHENTICATED, "ADMIN_TOKEN_MISSING")

    registered = (await set_cert("partners/globex", pki.globex.cert_pem.decode())).client_certificate
    assert (registered.partner, registered.sha256_fingerprint, registered.subject_common_name) == (
        "partners/globex", pki.globex.fingerprint, "globex-gw-client")
    assert registered.create_time.seconds > 0
    # Removing acme's certificate: it no longer authenticates, and globex may not take it over silently... but may
    # once it is free.
    removed = await set_cert("partners/acme", "")
    assert not removed.HasField("client_certificate")
    acme_ref = (await admin.IssuePseudonym(gateway_admin_service_pb2.IssuePseudonymRequest(
        partner="partners/acme", customer_id=CUSTOMER), metadata=ADMIN)).customer_ref
    await expect_error(offers(acme, acme_ref), grpc.StatusCode.UNAUTHENTICATED, "CLIENT_CERT_UNKNOWN")
    async with mtls_gateway.runtime.database.sessionmaker() as session:
        rows = list(await session.scalars(select(PartnerClientCertRow)))
    assert [(r.partner_id, r.fingerprint) for r in rows] == [("globex", pki.globex.fingerprint)]


# --- server TLS without client certificates -----------------------------------------------------------------------


async def test_server_tls_without_client_auth_uses_api_keys(
    start: Any, fake_campaign: tuple[FakeCampaign, str], pki: Pki, channels: list[grpc.aio.Channel]
) -> None:
    running = await start(DEFINITION, GATEWAY_ADMIN_TOKEN="t0k", CAMPAIGN_SERVICE_ADDR=fake_campaign[1],
                          TLS_CERT_FILE=pki.env["TLS_CERT_FILE"], TLS_KEY_FILE=pki.env["TLS_KEY_FILE"])
    assert running.runtime.settings.tls is not None
    assert running.runtime.settings.tls.client_auth == "none"
    stubs = tls_stubs(channels, running, pki, None)
    ref = await onboard(stubs.admin, "acme", pki.acme)
    await expect_error(offers(stubs, ref), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    key = await stubs.admin.CreateApiKey(gateway_admin_service_pb2.CreateApiKeyRequest(partner="partners/acme"),
                                         metadata=ADMIN)
    assert len((await offers(stubs, ref, key.api_key)).offers) == 2
    # The server does not ask for a client certificate, so one offered is never seen: the key still decides.
    with_cert = tls_stubs(channels, running, pki, pki.acme)
    await expect_error(offers(with_cert, ref), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    # A plaintext client cannot talk to a TLS port.
    plain = grpc.aio.insecure_channel(running.address)
    channels.append(plain)
    await expect_error(partner_service_pb2_grpc.PartnerServiceStub(plain).GetOffers(
        partner_service_pb2.GetOffersRequest(customer_ref=ref), metadata=api(key.api_key), timeout=5),
        grpc.StatusCode.UNAVAILABLE)


# --- settings -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ({"TLS_KEY_FILE": ""}, "TLS_CERT_FILE and TLS_KEY_FILE must be set together"),
    ({"TLS_CLIENT_AUTH": "optional"}, "TLS_CLIENT_AUTH=optional is not supported"),
    ({"TLS_CLIENT_AUTH": "sometimes"}, "TLS_CLIENT_AUTH must be none or required"),
    ({"TLS_CLIENT_CA_FILE": ""}, "TLS_CLIENT_AUTH=required needs TLS_CLIENT_CA_FILE"),
    ({"TLS_CLIENT_AUTH": "none"}, "TLS_CLIENT_AUTH=none would never use it"),
    ({"TLS_CLIENT_CA_FILE": "/nonexistent/ca.pem"}, "TLS_CLIENT_CA_FILE is not a readable file"),
    ({"TLS_CERT_FILE": "", "TLS_KEY_FILE": ""}, "need TLS_CERT_FILE and TLS_KEY_FILE"),
])
def test_tls_settings_fail_fast(pki: Pki, overrides: dict[str, str], message: str) -> None:
    env = {**pki.env, **overrides}
    with pytest.raises(ConfigError, match=message):
        ServiceSettings.from_env("gateway", env=env)


def test_tls_settings_defaults(pki: Pki) -> None:
    assert ServiceSettings.from_env("gateway", env={}).tls is None
    env = {k: v for k, v in pki.env.items() if k != "TLS_CLIENT_AUTH"}
    tls = ServiceSettings.from_env("gateway", env=env).tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file, tls.client_ca_file, tls.client_auth) == (
        pki.env["TLS_CERT_FILE"], pki.env["TLS_KEY_FILE"], pki.env["TLS_CLIENT_CA_FILE"], "required")


# --- CLI: `lodestar partners cert set` (the CLI talks to a plain gateway: the admin API does not need mTLS) -------


async def cli(*argv: str) -> tuple[int, Any]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, [*argv, "--json"], out, err)
    return code, json.loads(out.getvalue())


async def test_cli_cert_set(start: Any, fake_campaign: tuple[FakeCampaign, str], pki: Pki, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    running = await start(DEFINITION, GATEWAY_ADMIN_TOKEN="t0k", CAMPAIGN_SERVICE_ADDR=fake_campaign[1])
    monkeypatch.setenv("GATEWAY_SERVICE_ADDR", running.address)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "t0k")
    cert_file = tmp_path / "acme.pem"
    cert_file.write_bytes(pki.acme.cert_pem)
    assert (await cli("partners", "create", "acme", "--display-name", "Acme"))[0] == 0
    code, body = await cli("partners", "cert", "set", "acme", "--cert", str(cert_file))
    assert code == 0
    assert body["client_certificate"]["partner"] == "partners/acme"
    assert body["client_certificate"]["sha256_fingerprint"] == pki.acme.fingerprint
    assert body["client_certificate"]["subject_common_name"] == "acme-gw-client"
    code, body = await cli("partners", "cert", "set", "acme", "--cert", str(tmp_path / "missing.pem"))
    assert code == 1 and body["error"]["reason"] == "CERT_FILE_UNREADABLE"
    (tmp_path / "junk.pem").write_text("junk")
    code, body = await cli("partners", "cert", "set", "acme", "--cert", str(tmp_path / "junk.pem"))
    assert code == 1 and body["error"]["code"] == "INVALID_ARGUMENT"
    assert body["error"]["reason"] == "INVALID_CERTIFICATE"
    code, body = await cli("partners", "cert", "set", "acme", "--remove")
    assert code == 0 and body == {"client_certificate": None}
    async with running.runtime.database.sessionmaker() as session:
        assert list(await session.scalars(select(PartnerClientCertRow))) == []


# --- CLI over TLS: LODESTAR_TLS_* -----------------------------------------------------------------------------------


async def test_cli_reaches_an_mtls_gateway_with_lodestar_tls_settings(
    mtls_gateway: RunningService, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_SERVICE_ADDR", mtls_gateway.address)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "t0k")
    # Without TLS settings the CLI speaks plaintext to a TLS port: the connection fails, nothing is created.
    code, body = await cli("partners", "create", "acme", "--display-name", "Acme")
    assert code == 1 and body["error"]["code"] == "UNAVAILABLE"

    (tmp_path / "op.pem").write_bytes(pki.operator.cert_pem)
    (tmp_path / "op.key").write_bytes(pki.operator.key_pem)
    monkeypatch.setenv("LODESTAR_TLS_CA_FILE", pki.env["TLS_CLIENT_CA_FILE"])
    monkeypatch.setenv("LODESTAR_TLS_SERVER_NAME", "localhost")
    # The server requires a client certificate: CA alone is refused by the handshake.
    code, body = await cli("partners", "create", "acme", "--display-name", "Acme")
    assert code == 1 and body["error"]["code"] == "UNAVAILABLE"

    monkeypatch.setenv("LODESTAR_TLS_CERT_FILE", str(tmp_path / "op.pem"))
    monkeypatch.setenv("LODESTAR_TLS_KEY_FILE", str(tmp_path / "op.key"))
    code, body = await cli("partners", "create", "acme", "--display-name", "Acme")
    assert code == 0, body
    code, body = await cli("partners", "list")
    assert code == 0 and [p["partner_id"] for p in body["partners"]] == ["acme"]


@pytest.mark.parametrize(("env", "reason", "names"), [
    ({"LODESTAR_TLS_CERT_FILE": "x.pem"}, "TLS_CA_MISSING", "need LODESTAR_TLS_CA_FILE"),
    ({"LODESTAR_TLS_CA_FILE": "CA", "LODESTAR_TLS_CERT_FILE": "x.pem"}, "TLS_CLIENT_PAIR_INCOMPLETE",
     "LODESTAR_TLS_CERT_FILE and LODESTAR_TLS_KEY_FILE must be set together"),
    ({"LODESTAR_TLS_CA_FILE": "/nonexistent/ca.pem"}, "TLS_FILE_UNREADABLE", "LODESTAR_TLS_CA_FILE=/nonexistent"),
])
async def test_cli_tls_misconfiguration_is_a_clear_error(
    pki: Pki, env: dict[str, str], reason: str, names: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LODESTAR_TLS_CA_FILE", "LODESTAR_TLS_CERT_FILE", "LODESTAR_TLS_KEY_FILE",
                 "LODESTAR_TLS_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, pki.env["TLS_CLIENT_CA_FILE"] if value == "CA" else value)
    monkeypatch.setenv("GATEWAY_SERVICE_ADDR", "127.0.0.1:1")
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "t0k")
    code, body = await cli("partners", "list")
    assert code == 1 and body["error"] == {"code": "INVALID_ARGUMENT", "reason": reason,
                                           "message": body["error"]["message"]}
    assert names in body["error"]["message"]
