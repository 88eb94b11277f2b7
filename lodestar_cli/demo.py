"""A deterministic synthetic demo bank, loaded through the services' public RPCs.

Everything is generated from a seeded `random.Random`, so two runs produce the same customers, offers and
consents. Loading is idempotent: each mutating request carries a request id derived from its data, and
ALREADY_EXISTS counts as done, so `lodestar demo load` can be run again safely. Only the demo partner's API
key is new on every run (keys are shown once and stored only as hashes).

The data is synthetic: names are made up, e-mail addresses use the reserved example.com/.org/.net domains.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

import grpc
from google.protobuf.message import Message

from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc, offer_pb2
from lodestar.common.v1 import common_pb2
from lodestar.gateway.v1 import gateway_admin_service_pb2, gateway_admin_service_pb2_grpc
from lodestar.profile.v1 import customer_pb2, profile_service_pb2, profile_service_pb2_grpc
from lodestar.risk.v1 import risk_service_pb2, risk_service_pb2_grpc, screening_pb2

DEMO_SEED = 20240601
DEMO_CUSTOMER_COUNT = 200
DEMO_CUSTOMER_ID = "demo-0001"
DEMO_PARTNER_ID = "demo-shop"
DEMO_PARTNER_NAME = "Demo Shop"
DEMO_PARTNER_SCOPES = ("offers:read", "leads:write", "leads:read", "conversions:write", "engagement:write")
CONSENT_SOURCE = "demo"
CONSENT_ACTOR = "demo-loader"
# The reference day birth dates are drawn against; fixed so the data does not change from day to day.
REFERENCE_DATE = date(2025, 1, 1)
RPC_TIMEOUT_SECONDS = 10.0

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RegionProfile:
    code: str
    time_zone: str
    phone_prefix: str
    phone_digits: int
    weight: int
    given: tuple[str, ...]
    family: tuple[str, ...]


_CN_GIVEN = (
    "Wei",
    "Fang",
    "Min",
    "Jing",
    "Lei",
    "Yan",
    "Jun",
    "Hui",
    "Xin",
    "Tao",
    "Ying",
    "Hao",
    "Lin",
    "Qiang",
)
_CN_FAMILY = ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu", "Xu", "Sun", "Ma")
_HK_GIVEN = ("Ka Wai", "Wing Yan", "Chi Ming", "Hoi Ling", "Siu Fung", "Man Kit", "Wai Lun", "Pui Shan")
_HK_FAMILY = ("Chan", "Wong", "Leung", "Lam", "Cheung", "Ho", "Ng", "Tsang", "Lau")
_PT_GIVEN = ("Ana", "João", "Maria", "Pedro", "Inês", "Tiago", "Beatriz", "Rui", "Sofia", "Miguel")
_PT_FAMILY = ("Silva", "Santos", "Ferreira", "Pereira", "Oliveira", "Costa", "Rodrigues", "Martins", "Sousa")

REGIONS: tuple[RegionProfile, ...] = (
    RegionProfile("CN-31", "Asia/Shanghai", "+86139", 8, 30, _CN_GIVEN, _CN_FAMILY),  # Shanghai
    RegionProfile("CN-11", "Asia/Shanghai", "+86138", 8, 25, _CN_GIVEN, _CN_FAMILY),  # Beijing
    RegionProfile("CN-44", "Asia/Shanghai", "+86137", 8, 20, _CN_GIVEN, _CN_FAMILY),  # Guangdong
    RegionProfile("HK", "Asia/Hong_Kong", "+8529", 7, 15, _HK_GIVEN, _HK_FAMILY),
    RegionProfile("PT-11", "Europe/Lisbon", "+35191", 7, 10, _PT_GIVEN, _PT_FAMILY),  # Lisbon
)
SEGMENTS = ("mass", "mass_affluent", "affluent", "young_professional", "student", "retiree", "small_business")
EMAIL_DOMAINS = ("example.com", "example.org", "example.net")

CHANNEL_NAMES: dict[str, common_pb2.Channel.ValueType] = {
    "sms": common_pb2.CHANNEL_SMS,
    "email": common_pb2.CHANNEL_EMAIL,
    "app_push": common_pb2.CHANNEL_APP_PUSH,
    "wechat": common_pb2.CHANNEL_WECHAT,
    "phone": common_pb2.CHANNEL_PHONE,
    "in_app": common_pb2.CHANNEL_IN_APP,
    "partner": common_pb2.CHANNEL_PARTNER,
}
PURPOSE_NAMES: dict[str, screening_pb2.ConsentPurpose.ValueType] = {
    "marketing": screening_pb2.CONSENT_PURPOSE_MARKETING,
    "partner_sharing": screening_pb2.CONSENT_PURPOSE_PARTNER_SHARING,
    "profiling": screening_pb2.CONSENT_PURPOSE_PROFILING,
}


@dataclass(frozen=True)
class DemoCustomer:
    customer_id: str
    full_name: str
    email: str
    phone: str
    birth_date: str
    region: str
    time_zone: str
    income: str  # monthly, decimal text
    risk_tolerance: str  # "C1".."C5"
    in_collections: bool
    vulnerable: bool
    segment: str

    def age_on(self, day: date) -> int:
        born = date.fromisoformat(self.birth_date)
        return day.year - born.year - ((day.month, day.day) < (born.month, born.day))

    def to_proto(self) -> customer_pb2.Customer:
        message = customer_pb2.Customer(
            customer_id=self.customer_id,
            full_name=self.full_name,
            email=self.email,
            phone=self.phone,
            birth_date=self.birth_date,
            region=self.region,
            time_zone=self.time_zone,
        )
        message.attributes["income"].decimal_value = self.income
        message.attributes["risk_tolerance"].string_value = self.risk_tolerance
        message.attributes["in_collections"].bool_value = self.in_collections
        message.attributes["vulnerable"].bool_value = self.vulnerable
        message.attributes["segment"].string_value = self.segment
        return message


@dataclass(frozen=True)
class DemoConsent:
    customer_id: str
    channel: str  # key of CHANNEL_NAMES
    purpose: str  # key of PURPOSE_NAMES

    def to_proto(self) -> screening_pb2.ConsentRecord:
        return screening_pb2.ConsentRecord(
            customer_id=self.customer_id,
            channel=CHANNEL_NAMES[self.channel],
            purpose=PURPOSE_NAMES[self.purpose],
            action=screening_pb2.CONSENT_ACTION_GRANT,
            source=CONSENT_SOURCE,
            actor=CONSENT_ACTOR,
        )


@dataclass
class DemoInfo:
    api_key: str
    customer_ref: str
    customers: int
    offers: int
    consents: int = 0
    partner_id: str = DEMO_PARTNER_ID
    customer_id: str = DEMO_CUSTOMER_ID
    created: dict[str, int] = field(default_factory=dict)


# -- the data ----------------------------------------------------------------------------------------------


def _ascii_slug(text: str) -> str:
    table = str.maketrans("ãáàâçéêíóôõúü", "aaaaceeiooouu")
    return "".join(c for c in text.lower().translate(table) if c.isalnum())


def _birth_date(rng: random.Random, min_age: int, max_age: int) -> str:
    start = REFERENCE_DATE.replace(year=REFERENCE_DATE.year - max_age - 1) + timedelta(days=1)
    end = REFERENCE_DATE.replace(year=REFERENCE_DATE.year - min_age)
    return (start + timedelta(days=rng.randrange((end - start).days))).isoformat()


def _make_customer(rng: random.Random, number: int) -> DemoCustomer:
    customer_id = f"demo-{number:04d}"
    region = rng.choices(REGIONS, weights=[r.weight for r in REGIONS])[0]
    given, family = rng.choice(region.given), rng.choice(region.family)
    full_name = f"{family} {given}" if region.code != "PT-11" else f"{given} {family}"
    email = f"{_ascii_slug(given)}.{_ascii_slug(family)}.{number:04d}@{rng.choice(EMAIL_DOMAINS)}"
    phone = region.phone_prefix + "".join(str(rng.randrange(10)) for _ in range(region.phone_digits))
    roll = rng.random()
    if roll < 0.04:
        birth_date = _birth_date(rng, 14, 17)  # a few minors, to exercise the under-age rule
        segment = "student"
    elif roll < 0.16:
        birth_date = _birth_date(rng, 65, 85)
        segment = "retiree"
    else:
        birth_date = _birth_date(rng, 18, 64)
        segment = rng.choice([s for s in SEGMENTS if s not in ("student", "retiree")])
    income = (
        Decimal(rng.randrange(3_000, 60_000, 50))
        if segment not in ("student",)
        else Decimal(rng.randrange(0, 3_000, 50))
    )
    if segment == "affluent":
        income *= 3
    time_zone = "" if rng.random() < 0.06 else region.time_zone  # a few unknown, for risk's inference
    return DemoCustomer(
        customer_id=customer_id,
        full_name=full_name,
        email=email,
        phone=phone,
        birth_date=birth_date,
        region=region.code,
        time_zone=time_zone,
        income=f"{income:.2f}",
        risk_tolerance=f"C{rng.choices((1, 2, 3, 4, 5), weights=(20, 30, 25, 15, 10))[0]}",
        in_collections=rng.random() < 0.05,
        vulnerable=rng.random() < (0.3 if segment == "retiree" else 0.03),
        segment=segment,
    )


def demo_customers(seed: int = DEMO_SEED, count: int = DEMO_CUSTOMER_COUNT) -> list[DemoCustomer]:
    """`demo-0001`..: the same list for the same seed. demo-0001 is an adult C4 customer in good standing."""
    rng = random.Random(seed)  # noqa: S311  # nosec B311 - synthetic data, not security
    customers = [_make_customer(rng, number) for number in range(1, count + 1)]
    if customers:
        first = customers[0]
        customers[0] = DemoCustomer(
            customer_id=DEMO_CUSTOMER_ID,
            full_name=first.full_name,
            email=first.email,
            phone="+8613900000001",
            birth_date="1988-06-15",
            region="CN-31",
            time_zone="Asia/Shanghai",
            income="28500.00",
            risk_tolerance="C4",
            in_collections=False,
            vulnerable=False,
            segment="young_professional",
        )
    return customers


def demo_consents(customers: Sequence[DemoCustomer], seed: int = DEMO_SEED) -> list[DemoConsent]:
    """Most customers grant marketing on SMS, e-mail and app push and partner sharing on the partner
    channel (each with some probability); demo-0001 grants every purpose on every channel."""
    rng = random.Random(seed + 1)  # noqa: S311  # nosec B311 - synthetic data, not security
    consents: list[DemoConsent] = []
    for customer in customers:
        if customer.customer_id == DEMO_CUSTOMER_ID:
            consents += [
                DemoConsent(customer.customer_id, channel, purpose)
                for purpose in PURPOSE_NAMES
                for channel in CHANNEL_NAMES
            ]
            continue
        for channel, probability in (("sms", 0.85), ("email", 0.8), ("app_push", 0.75)):
            if rng.random() < probability:
                consents.append(DemoConsent(customer.customer_id, channel, "marketing"))
        if rng.random() < 0.7:
            consents.append(DemoConsent(customer.customer_id, "partner", "partner_sharing"))
            consents.append(DemoConsent(customer.customer_id, "partner", "marketing"))
    return consents


def _disclosures(**texts: str) -> list[common_pb2.Disclosure]:
    return [common_pb2.Disclosure(kind=kind, text=text) for kind, text in texts.items()]


def demo_offers() -> list[offer_pb2.Offer]:
    """The catalog: one product of each kind, with value, contact cost and required disclosures."""
    R = common_pb2
    return [
        offer_pb2.Offer(
            offer_id="card-everyday-rewards",
            title="Everyday Rewards credit card",
            product_type=R.PRODUCT_TYPE_CREDIT_CARD,
            risk_level=R.PRODUCT_RISK_LEVEL_R2,
            conversion_value=420.0,
            contact_cost=1.5,
            disclosures=_disclosures(
                apr="Representative APR 18.25% variable.",
                fees="Annual fee 200, waived in the first year; late payment fee 50.",
            ),
        ),
        offer_pb2.Offer(
            offer_id="loan-flexi-personal",
            title="Flexi personal loan",
            product_type=R.PRODUCT_TYPE_CONSUMER_LOAN,
            risk_level=R.PRODUCT_RISK_LEVEL_R3,
            conversion_value=900.0,
            contact_cost=2.0,
            disclosures=_disclosures(
                apr="Representative APR 9.9% fixed, terms 12 to 60 months.",
                fees="Arrangement fee 1% of the amount; early repayment fee up to 1% of the amount repaid.",
            ),
        ),
        offer_pb2.Offer(
            offer_id="instalment-checkout-12m",
            title="Pay in 12 monthly instalments at checkout",
            product_type=R.PRODUCT_TYPE_INSTALMENT,
            risk_level=R.PRODUCT_RISK_LEVEL_R2,
            conversion_value=160.0,
            contact_cost=0.2,
            disclosures=_disclosures(
                apr="APR 0% for 12 months when every instalment is paid on time, then 15.9%.",
                fees="Late instalment fee 25.",
            ),
        ),
        offer_pb2.Offer(
            offer_id="deposit-12m-fixed",
            title="12-month fixed-term deposit",
            product_type=R.PRODUCT_TYPE_DEPOSIT,
            risk_level=R.PRODUCT_RISK_LEVEL_R1,
            conversion_value=120.0,
            contact_cost=0.5,
            disclosures=_disclosures(
                fees="No account fee; early withdrawal forfeits the interest accrued.",
                risk_statement="Deposits are protected by the deposit insurance scheme up to its limit.",
            ),
        ),
        offer_pb2.Offer(
            offer_id="wealth-balanced-fund",
            title="Balanced multi-asset fund",
            product_type=R.PRODUCT_TYPE_WEALTH,
            risk_level=R.PRODUCT_RISK_LEVEL_R4,
            conversion_value=650.0,
            contact_cost=3.0,
            disclosures=_disclosures(
                fees="Management fee 1.2% a year; subscription fee up to 1.5%.",
                risk_statement="The value of investments can fall as well as rise; you may get back less "
                "than you invest. Past performance is not a reliable indicator of future results.",
            ),
        ),
        offer_pb2.Offer(
            offer_id="bond-savings-3y",
            title="3-year savings bond",
            product_type=R.PRODUCT_TYPE_SAVINGS_BOND,
            risk_level=R.PRODUCT_RISK_LEVEL_R1,
            conversion_value=90.0,
            contact_cost=0.5,
            disclosures=_disclosures(
                fees="No fees; the bond cannot be redeemed before maturity.",
                risk_statement="Issued by the government; interest is fixed for the full term.",
            ),
        ),
        offer_pb2.Offer(
            offer_id="wealth-growth-equity",
            title="Global growth equity fund",
            product_type=R.PRODUCT_TYPE_WEALTH,
            risk_level=R.PRODUCT_RISK_LEVEL_R5,
            conversion_value=800.0,
            contact_cost=3.0,
            disclosures=_disclosures(
                fees="Management fee 1.8% a year; subscription fee up to 1.5%.",
                risk_statement="High risk: equity markets are volatile and you may lose a substantial "
                "part of the amount invested.",
            ),
        ),
    ]


# -- loading -----------------------------------------------------------------------------------------------


def request_id(kind: str, key: str, message: Message) -> str:
    """A request id derived from the data: the same payload always gets the same id."""
    digest = hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()[:12]
    return f"demo:{kind}:{key}:{digest}"[:128]


def _already_exists(error: grpc.RpcError) -> bool:
    return isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.ALREADY_EXISTS


def _admin_metadata(admin_token: str) -> tuple[tuple[str, str], ...]:
    return (("x-admin-token", admin_token),)


def is_empty(profile_addr: str, timeout: float = RPC_TIMEOUT_SECONDS) -> bool:
    """True when the profile service holds no customer at all."""
    with grpc.insecure_channel(profile_addr) as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        response = stub.ListCustomers(profile_service_pb2.ListCustomersRequest(page_size=1), timeout=timeout)
    return not response.customers


def _run(
    items: Iterable[tuple[str, Callable[[], object]]], total: int, stage: str, progress: Progress | None
) -> int:
    """Runs each call; ALREADY_EXISTS counts as done. Returns how many were newly created or replayed."""
    done = 0
    for index, (_, call) in enumerate(items, start=1):
        try:
            call()
            done += 1
        except grpc.RpcError as error:
            if not _already_exists(error):
                raise
        if progress is not None:
            progress(stage, index, total)
    return done


def issue_demo_access(
    addresses: Mapping[str, str], admin_token: str, timeout: float = RPC_TIMEOUT_SECONDS
) -> tuple[str, str]:
    """Ensures the demo partner exists, issues it a fresh API key and returns (api_key, customer_ref of
    demo-0001)."""
    metadata = _admin_metadata(admin_token)
    with grpc.insecure_channel(addresses["gateway"]) as channel:
        admin = gateway_admin_service_pb2_grpc.GatewayAdminServiceStub(channel)
        partner = gateway_admin_service_pb2.Partner(
            partner_id=DEMO_PARTNER_ID, display_name=DEMO_PARTNER_NAME
        )
        create = gateway_admin_service_pb2.CreatePartnerRequest(partner=partner)
        create.request_id = request_id("partner", DEMO_PARTNER_ID, create)
        try:
            admin.CreatePartner(create, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            if not _already_exists(error):
                raise
        partner_name = f"partners/{DEMO_PARTNER_ID}"
        # A new partner may do nothing until granted; both calls replace the whole set, so repeating is safe.
        admin.SetPartnerScopes(gateway_admin_service_pb2.SetPartnerScopesRequest(
            partner=partner_name, scopes=list(DEMO_PARTNER_SCOPES)), timeout=timeout, metadata=metadata)
        admin.SetPartnerOffers(gateway_admin_service_pb2.SetPartnerOffersRequest(
            partner=partner_name, offer_ids=["*"]), timeout=timeout, metadata=metadata)
        key = admin.CreateApiKey(
            gateway_admin_service_pb2.CreateApiKeyRequest(partner=partner_name),
            timeout=timeout,
            metadata=metadata,
        )
        ref = admin.IssuePseudonym(
            gateway_admin_service_pb2.IssuePseudonymRequest(
                partner=partner_name, customer_id=DEMO_CUSTOMER_ID
            ),
            timeout=timeout,
            metadata=metadata,
        )
    return key.api_key, ref.customer_ref


def load_demo(
    addresses: Mapping[str, str],
    admin_token: str,
    progress: Progress | None = None,
    *,
    seed: int = DEMO_SEED,
    count: int = DEMO_CUSTOMER_COUNT,
    timeout: float = RPC_TIMEOUT_SECONDS,
) -> DemoInfo:
    """Loads the demo bank through the public RPCs. Safe to run again: nothing is duplicated."""
    customers = demo_customers(seed, count)
    offers = demo_offers()
    consents = demo_consents(customers, seed)
    created: dict[str, int] = {}

    with grpc.insecure_channel(addresses["profile"]) as channel:
        profile = profile_service_pb2_grpc.ProfileServiceStub(channel)

        def customer_call(customer: DemoCustomer) -> Callable[[], object]:
            request = profile_service_pb2.CreateCustomerRequest(customer=customer.to_proto())
            request.request_id = request_id("customer", customer.customer_id, request)
            return lambda: profile.CreateCustomer(request, timeout=timeout)

        created["customers"] = _run(
            ((c.customer_id, customer_call(c)) for c in customers), len(customers), "customers", progress
        )

    with grpc.insecure_channel(addresses["campaign"]) as channel:
        campaign = campaign_service_pb2_grpc.CampaignServiceStub(channel)

        def offer_call(offer: offer_pb2.Offer) -> Callable[[], object]:
            request = campaign_service_pb2.CreateOfferRequest(offer=offer)
            request.request_id = request_id("offer", offer.offer_id, request)
            return lambda: campaign.CreateOffer(request, timeout=timeout)

        created["offers"] = _run(
            ((o.offer_id, offer_call(o)) for o in offers), len(offers), "offers", progress
        )

    with grpc.insecure_channel(addresses["risk"]) as channel:
        risk = risk_service_pb2_grpc.RiskServiceStub(channel)

        def consent_call(consent: DemoConsent) -> Callable[[], object]:
            request = risk_service_pb2.RecordConsentRequest(consent=consent.to_proto())
            request.request_id = request_id(
                "consent", f"{consent.customer_id}:{consent.channel}:{consent.purpose}", request
            )
            return lambda: risk.RecordConsent(request, timeout=timeout)

        created["consents"] = _run(
            ((c.customer_id, consent_call(c)) for c in consents), len(consents), "consents", progress
        )

    api_key, customer_ref = issue_demo_access(addresses, admin_token, timeout)
    if progress is not None:
        progress("partner", 1, 1)
    return DemoInfo(
        api_key=api_key,
        customer_ref=customer_ref,
        customers=len(customers),
        offers=len(offers),
        consents=len(consents),
        created=created,
    )
