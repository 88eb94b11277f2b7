"""SegmentService through a real aio server, a real stub and a real database (SQLite, or PostgreSQL with
TEST_DATABASE_URL): preview, static/dynamic segments, audience export with resume, clustering, errors."""

import json
import logging
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import select

from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import event_service_pb2 as epb
from lodestar.profile.v1 import event_service_pb2_grpc as epbg
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar.profile.v1 import segment_service_pb2 as pb
from lodestar.profile.v1 import segment_service_pb2_grpc as pbg
from services.platform.config import ConfigError
from services.profile.app import DEFINITION
from services.profile.conditions import parse, to_proto
from services.profile.segments_db import SegmentMemberRow, SegmentRow
from tests.helpers import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
T = customer_pb2.AttributeType

# (id, region, birth_date, income, segment_tier, national_id)
PEOPLE = [
    ("c-01", "CN-31", "1990-05-01", "12000.50", "gold", "N1"),
    ("c-02", "CN-31", "1985-01-15", "3000", "silver", "N2"),
    ("c-03", "CN-11", "2000-12-31", "45000", "gold", "N3"),
    ("c-04", "CN-31", "1970-07-07", "8000", "bronze", "N4"),
    ("c-05", "PT-11", "1995-03-03", None, "silver", "N5"),
    ("c-06", "CN-31", None, "20000", "gold", "N6"),
    ("c-07", "CN-11", "1988-08-08", "15000", None, "N7"),
    ("c-08", "CN-31", "1999-09-09", "500", "bronze", "N8"),
]
ATTRIBUTES = [
    customer_pb2.AttributeDefinition(name="income", type=T.ATTRIBUTE_TYPE_DECIMAL),
    customer_pb2.AttributeDefinition(name="tier", type=T.ATTRIBUTE_TYPE_ENUM,
                                     allowed_values=["gold", "silver", "bronze"]),
    customer_pb2.AttributeDefinition(name="national_id", type=T.ATTRIBUTE_TYPE_STRING, pii=True),
    customer_pb2.AttributeDefinition(name="score", type=T.ATTRIBUTE_TYPE_DECIMAL),
    customer_pb2.AttributeDefinition(name="channel", type=T.ATTRIBUTE_TYPE_STRING),
]


class Stubs:
    def __init__(self, svc, channel):
        self.svc = svc
        self.segments = pbg.SegmentServiceStub(channel)
        self.profile = ppbg.ProfileServiceStub(channel)
        self.events = epbg.EventServiceStub(channel)


async def _load(stubs: Stubs, people=PEOPLE):
    await stubs.profile.UpsertAttributes(ppb.UpsertAttributesRequest(attributes=ATTRIBUTES))
    for cid, region, birth, income, tier, nid in people:
        customer = customer_pb2.Customer(customer_id=cid, region=region, birth_date=birth or "",
                                         full_name="Zhang Wei", email=f"{cid}@example.com")
        if income is not None:
            customer.attributes["income"].decimal_value = income
        if tier is not None:
            customer.attributes["tier"].string_value = tier
        customer.attributes["national_id"].string_value = nid
        await stubs.profile.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))


@pytest.fixture
async def stubs(start):
    svc = await start(DEFINITION)
    channel = grpc.aio.insecure_channel(svc.address)
    out = Stubs(svc, channel)
    await _load(out)
    yield out
    await channel.close()


def _hand_count(predicate):
    return sorted(p[0] for p in PEOPLE if predicate(p))


def _age(birth, today):
    b = datetime.fromisoformat(birth).date()
    return today.year - b.year - ((today.month, today.day) < (b.month, b.day))


# --- preview --------------------------------------------------------------------------------------------------

async def test_preview_counts_equal_a_hand_count(stubs):
    today = datetime.now(UTC).date()
    cases = [
        ('region = "CN-31"', lambda p: p[1] == "CN-31"),
        ('region = "CN-31" and income >= 8000', lambda p: p[1] == "CN-31" and p[3] and float(p[3]) >= 8000),
        ('tier in ("gold", "silver") or income < 1000',
         lambda p: p[4] in ("gold", "silver") or (p[3] is not None and float(p[3]) < 1000)),
        ("age between 25 and 40", lambda p: p[2] is not None and 25 <= _age(p[2], today) <= 40),
        ("income is null", lambda p: p[3] is None),
        ('not tier = "gold"', lambda p: p[4] is not None and p[4] != "gold"),
    ]
    for text, predicate in cases:
        expected = _hand_count(predicate)
        response = await stubs.segments.PreviewSegment(pb.PreviewSegmentRequest(condition_text=text, sample_size=3))
        assert response.count == len(expected), text
        assert list(response.sample_customer_ids) == expected[:3], text


async def test_preview_accepts_a_tree_and_returns_the_canonical_text(stubs):
    tree = to_proto(parse('region = "CN-11" and income > 20000'))
    response = await stubs.segments.PreviewSegment(pb.PreviewSegmentRequest(condition=tree))
    assert (response.count, list(response.sample_customer_ids)) == (1, ["c-03"])
    assert response.condition_text == 'region = "CN-11" and attr.income > 20000'


async def test_event_aggregates_and_tags_are_compiled_over_the_real_tables(stubs):
    occurred = datetime.now(UTC) - timedelta(days=3)
    ts = epb.Event().occurred_at.__class__()
    ts.FromDatetime(occurred)
    events = [epb.Event(event_id=f"e-{i}", customer_id=cid, occurred_at=ts,
                        transaction=epb.Transaction(amount=amount, currency="CNY", merchant_category="groceries",
                                                    channel="pos"))
              for i, (cid, amount) in enumerate([("c-01", "3000"), ("c-01", "2500"), ("c-02", "100")])]
    await stubs.events.IngestEvents(epb.IngestEventsRequest(events=events))
    response = await stubs.segments.PreviewSegment(
        pb.PreviewSegmentRequest(condition_text="sum(txn.amount, 30d) > 5000"))
    assert list(response.sample_customer_ids) == ["c-01"]
    response = await stubs.segments.PreviewSegment(pb.PreviewSegmentRequest(condition_text="count(txn, 30d) >= 1"))
    assert list(response.sample_customer_ids) == ["c-01", "c-02"]
    await stubs.events.ComputeTags(epb.ComputeTagsRequest(customer_ids=["c-01", "c-02"]))
    response = await stubs.segments.PreviewSegment(
        pb.PreviewSegmentRequest(condition_text='tag.value_tier = "medium"'))
    assert list(response.sample_customer_ids) == ["c-01"]


@pytest.mark.parametrize(("text", "reason", "position"), [
    ("age between 25 35", "CONDITION_SYNTAX_ERROR", "1:16"),
    ('region = "CN-31" and nope > 3', "CONDITION_UNKNOWN_ATTRIBUTE", "1:22"),
    ('national_id = "N1"', "CONDITION_PII_FORBIDDEN", "1:1"),
    ('tier = "platinum"', "CONDITION_VALUE_OUT_OF_RANGE", None),
    ("feature.bogus > 3", "CONDITION_UNKNOWN_FEATURE", "1:1"),
    ("income = true", "CONDITION_TYPE_MISMATCH", None),
])
async def test_bad_conditions_are_invalid_argument_with_their_position(stubs, text, reason, position):
    got = await expect_error(stubs.segments.PreviewSegment(pb.PreviewSegmentRequest(condition_text=text)),
                             INVALID, reason)
    assert got.field_violations[0][0] == "condition"
    if position is not None:
        assert got.metadata["position"] == position
    assert "N1" not in got.message  # no value of a personal-data attribute in the error


async def test_missing_or_double_condition(stubs):
    await expect_error(stubs.segments.PreviewSegment(pb.PreviewSegmentRequest()), INVALID, "REQUIRED_FIELD_MISSING")
    both = pb.PreviewSegmentRequest(condition_text='region = "CN-31"', condition=to_proto(parse('region = "X"')))
    await expect_error(stubs.segments.PreviewSegment(both), INVALID, "CONDITION_AMBIGUOUS")
    await expect_error(stubs.segments.PreviewSegment(
        pb.PreviewSegmentRequest(condition_text='region = "CN-31"', sample_size=101)), INVALID, "OUT_OF_RANGE")


def test_pii_in_segments_cannot_be_turned_on_since_pii_is_encrypted_at_rest():
    # An encrypted value cannot be matched in SQL: the setting is refused at start-up, never a silent empty match.
    with pytest.raises(ConfigError, match="PROFILE_ALLOW_PII_IN_SEGMENTS=true is no longer possible"):
        DEFINITION.settings_from_env({"PROFILE_ALLOW_PII_IN_SEGMENTS": "true"})
    assert DEFINITION.settings_from_env({"PROFILE_ALLOW_PII_IN_SEGMENTS": "false"}) is not None


# --- segments -------------------------------------------------------------------------------------------------

def _create(segment_id, kind, text, request_id=""):
    return pb.CreateSegmentRequest(segment=pb.Segment(segment_id=segment_id, kind=kind, condition_text=text,
                                                      display_name="Shanghai"), request_id=request_id)


async def _members(svc, segment_id):
    async with svc.runtime.database.sessionmaker() as session:
        return sorted(await session.scalars(
            select(SegmentMemberRow.customer_id).where(SegmentMemberRow.segment_id == segment_id)))


async def _export_ids(stubs, segment_id, **kw):
    ids = []
    async for batch in stubs.segments.ExportAudience(pb.ExportAudienceRequest(segment=f"segments/{segment_id}",
                                                                              **kw)):
        ids += list(batch.customer_ids)
    return ids


async def test_static_keeps_its_snapshot_and_dynamic_follows_the_data(stubs):
    text = 'region = "CN-31"'
    static = (await stubs.segments.CreateSegment(_create("sh-static", pb.SEGMENT_KIND_STATIC, text))).segment
    dynamic = (await stubs.segments.CreateSegment(_create("sh-dynamic", pb.SEGMENT_KIND_DYNAMIC, text))).segment
    shanghai = _hand_count(lambda p: p[1] == "CN-31")
    assert (static.member_count, static.name, static.kind) == (5, "segments/sh-static", pb.SEGMENT_KIND_STATIC)
    assert static.HasField("snapshot_time") and static.condition.HasField("comparison")
    assert (dynamic.member_count, dynamic.HasField("snapshot_time")) == (0, False)
    assert await _members(stubs.svc, "sh-static") == shanghai
    assert await _members(stubs.svc, "sh-dynamic") == []

    # c-07 moves to Shanghai, c-01 leaves
    for cid, region in (("c-07", "CN-31"), ("c-01", "CN-11")):
        await stubs.profile.UpdateCustomer(ppb.UpdateCustomerRequest(
            customer=customer_pb2.Customer(name=f"customers/{cid}", region=region),
            update_mask=field_mask_pb2.FieldMask(paths=["region"])))
    moved = sorted((set(shanghai) - {"c-01"}) | {"c-07"})
    assert await _export_ids(stubs, "sh-static") == shanghai
    assert await _export_ids(stubs, "sh-dynamic") == moved

    refreshed = (await stubs.segments.RefreshSegment(pb.RefreshSegmentRequest(name="segments/sh-static"))).segment
    assert refreshed.member_count == len(moved)
    assert refreshed.snapshot_time.ToDatetime() > static.snapshot_time.ToDatetime()
    assert await _export_ids(stubs, "sh-static") == moved
    await expect_error(stubs.segments.RefreshSegment(pb.RefreshSegmentRequest(name="segments/sh-dynamic")),
                       grpc.StatusCode.FAILED_PRECONDITION, "SEGMENT_NOT_STATIC")


async def test_create_is_idempotent_and_checks_its_input(stubs):
    request = _create("s-1", pb.SEGMENT_KIND_STATIC, 'tier = "gold"', request_id="req-1")
    first = await stubs.segments.CreateSegment(request)
    assert await stubs.segments.CreateSegment(request) == first
    await expect_error(stubs.segments.CreateSegment(_create("s-2", pb.SEGMENT_KIND_STATIC, 'tier = "silver"',
                                                            request_id="req-1")), INVALID, "REQUEST_ID_REUSED")
    await expect_error(stubs.segments.CreateSegment(_create("s-1", pb.SEGMENT_KIND_DYNAMIC, 'tier = "gold"')),
                       grpc.StatusCode.ALREADY_EXISTS, "SEGMENT_ALREADY_EXISTS")
    got = await expect_error(stubs.segments.CreateSegment(_create("s-3", pb.SEGMENT_KIND_DYNAMIC, "tier = ")),
                             INVALID, "CONDITION_SYNTAX_ERROR")
    assert got.metadata["position"] == "1:8"
    await expect_error(stubs.segments.CreateSegment(_create("s-4", 0, 'tier = "gold"')), INVALID,
                       "REQUIRED_FIELD_MISSING")
    await expect_error(stubs.segments.CreateSegment(_create("bad id", pb.SEGMENT_KIND_DYNAMIC, 'tier = "gold"')),
                       INVALID, "INVALID_ID")
    async with stubs.svc.runtime.database.sessionmaker() as session:
        assert sorted(await session.scalars(select(SegmentRow.segment_id))) == ["s-1"]
    assert await _members(stubs.svc, "s-1") == ["c-01", "c-03", "c-06"]


async def test_get_list_delete(stubs):
    for i in range(5):
        await stubs.segments.CreateSegment(_create(f"seg-{i}", pb.SEGMENT_KIND_STATIC, 'region = "CN-11"'))
    got = await stubs.segments.GetSegment(pb.GetSegmentRequest(name="segments/seg-3"))
    assert (got.segment.segment_id, got.segment.member_count) == ("seg-3", 2)
    names, token = [], ""
    while True:
        page = await stubs.segments.ListSegments(pb.ListSegmentsRequest(page_size=2, page_token=token))
        names += [s.segment_id for s in page.segments]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"seg-{i}" for i in range(5)]
    await expect_error(stubs.segments.ListSegments(pb.ListSegmentsRequest(page_token="garbage")), INVALID,
                       "INVALID_PAGE_TOKEN")
    await stubs.segments.DeleteSegment(pb.DeleteSegmentRequest(name="segments/seg-3", request_id="d-1"))
    await stubs.segments.DeleteSegment(pb.DeleteSegmentRequest(name="segments/seg-3", request_id="d-1"))  # replay
    await expect_error(stubs.segments.GetSegment(pb.GetSegmentRequest(name="segments/seg-3")),
                       grpc.StatusCode.NOT_FOUND, "SEGMENT_NOT_FOUND")
    await expect_error(stubs.segments.DeleteSegment(pb.DeleteSegmentRequest(name="segments/seg-3")),
                       grpc.StatusCode.NOT_FOUND, "SEGMENT_NOT_FOUND")
    assert await _members(stubs.svc, "seg-3") == []
    await expect_error(stubs.segments.GetSegment(pb.GetSegmentRequest(name="seg-1")), INVALID, "INVALID_NAME")


# --- export ---------------------------------------------------------------------------------------------------

async def test_export_batches_are_complete_ordered_typed_and_resumable(stubs):
    await stubs.segments.CreateSegment(_create("all", pb.SEGMENT_KIND_DYNAMIC, 'region != "XX"'))
    request = pb.ExportAudienceRequest(segment="segments/all", fields=["region", "income", "attr.tier"],
                                       batch_size=3)
    batches = [b async for b in stubs.segments.ExportAudience(request)]
    assert [len(b.customer_ids) for b in batches] == [3, 3, 2]
    assert [b.batch_number for b in batches] == [1, 2, 3]
    ids = [c for b in batches for c in b.customer_ids]
    assert ids == sorted(p[0] for p in PEOPLE)
    first = batches[0]
    region, income, tier = first.columns
    assert (region.field, region.type, list(region.string_values)) == (
        "region", pb.AUDIENCE_VALUE_TYPE_STRING, ["CN-31", "CN-31", "CN-11"])
    assert (income.type, list(income.number_values), list(income.present)) == (
        pb.AUDIENCE_VALUE_TYPE_NUMBER, [12000.5, 3000.0, 45000.0], [True, True, True])
    assert list(tier.string_values) == ["gold", "silver", "gold"]
    last_income = batches[2].columns[1]  # c-07 has no tier, c-08 income 500
    assert list(batches[1].columns[1].present) == [True, False, True]  # c-05 has no income
    assert list(last_income.number_values) == [15000.0, 500.0]
    assert list(batches[2].columns[2].present) == [False, True]

    # an interrupted export continues after the last batch it received, at the same as_of
    resumed = [b async for b in stubs.segments.ExportAudience(
        pb.ExportAudienceRequest(segment="segments/all", fields=["region", "income", "attr.tier"], batch_size=3,
                                 resume_token=batches[0].resume_token))]
    assert [list(b.customer_ids) for b in resumed] == [list(b.customer_ids) for b in batches[1:]]
    assert [b.batch_number for b in resumed] == [2, 3]
    assert resumed[0].as_of == first.as_of
    other_fields = pb.ExportAudienceRequest(segment="segments/all", fields=["region"],
                                            resume_token=batches[0].resume_token)
    await expect_error(_drain(stubs.segments.ExportAudience(other_fields)), INVALID, "INVALID_RESUME_TOKEN")


async def _drain(call):
    async for _ in call:
        pass


@pytest.mark.parametrize(("fields", "reason"), [
    (["national_id"], "FIELD_PII_FORBIDDEN"),
    (["email"], "FIELD_PII_FORBIDDEN"),
    (["nope"], "UNKNOWN_FIELD"),
    (["feature.bogus"], "UNKNOWN_FIELD"),
    (["region", "region"], "DUPLICATE_FIELD"),
])
async def test_export_refuses_bad_fields(stubs, fields, reason):
    await stubs.segments.CreateSegment(_create("all", pb.SEGMENT_KIND_DYNAMIC, 'region != "XX"'))
    got = await expect_error(_drain(stubs.segments.ExportAudience(
        pb.ExportAudienceRequest(segment="segments/all", fields=fields))), INVALID, reason)
    assert got.field_violations[0][0] == f"fields[{len(fields) - 1}]"


async def test_export_of_an_unknown_segment_is_not_found(stubs):
    await expect_error(_drain(stubs.segments.ExportAudience(pb.ExportAudienceRequest(segment="segments/nope"))),
                       grpc.StatusCode.NOT_FOUND, "SEGMENT_NOT_FOUND")


async def test_no_customer_id_or_pii_in_spans_or_logs(stubs, span_exporter, caplog):
    caplog.set_level(logging.DEBUG)
    span_exporter.clear()
    await stubs.segments.PreviewSegment(pb.PreviewSegmentRequest(condition_text='region = "CN-31"'))
    await stubs.segments.CreateSegment(_create("sh", pb.SEGMENT_KIND_STATIC, 'region = "CN-31"'))
    await _export_ids(stubs, "sh", fields=["income"])
    await expect_error(stubs.segments.PreviewSegment(pb.PreviewSegmentRequest(condition_text='national_id = "N3"')),
                       INVALID, "CONDITION_PII_FORBIDDEN")
    spans = span_exporter.get_finished_spans()
    server = [s for s in spans if s.name.startswith("/lodestar.profile.v1.SegmentService/")]
    assert {s.name.rsplit("/", 1)[1] for s in server} >= {"PreviewSegment", "CreateSegment", "ExportAudience"}
    text = json.dumps([[s.name, dict(s.attributes or {}), s.status.description, [e.name for e in s.events],
                        [dict(e.attributes or {}) for e in s.events]] for s in spans], default=str)
    text += "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    for cid, *_rest, nid in PEOPLE:
        assert f'"{cid}"' not in text and cid not in text
        assert f'"{nid}"' not in text
    assert "example.com" not in text and "Zhang" not in text


# --- clustering -----------------------------------------------------------------------------------------------

def _clustered_people(per_cluster=40, seed=3):
    rng = np.random.default_rng(seed)
    groups = [(3000, 20, "app"), (25000, 80, "branch"), (9000, 50, "web")]
    out = []
    for g, (income, score, channel) in enumerate(groups):
        for i in range(per_cluster):
            out.append((f"k{g}-{i:03d}", f"{rng.normal(income, income * 0.12):.2f}",
                        f"{rng.normal(score, 6):.1f}", channel if rng.random() < 0.95 else "phone"))
    return out


async def test_clustering_finds_the_known_structure_and_saves_segments(start):
    svc = await start(DEFINITION)
    async with grpc.aio.insecure_channel(svc.address) as channel:
        stubs = Stubs(svc, channel)
        await stubs.profile.UpsertAttributes(ppb.UpsertAttributesRequest(attributes=ATTRIBUTES))
        people = _clustered_people()
        for cid, income, score, chan in people:
            customer = customer_pb2.Customer(customer_id=cid, region="CN-31")
            customer.attributes["income"].decimal_value = income
            customer.attributes["score"].decimal_value = score
            customer.attributes["channel"].string_value = chan
            await stubs.profile.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
        request = pb.ClusterCustomersRequest(fields=["income", "score", "channel"], save_segment_prefix="persona",
                                             request_id="cl-1")
        response = await stubs.segments.ClusterCustomers(request)
        assert response.k == 3 and response.sample_size == len(people)
        assert response.silhouette == max(response.silhouette_by_k.values())
        assert sorted(response.silhouette_by_k) == list(range(2, 11))
        by_size = sorted(c.size for c in response.clusters)
        assert by_size == [40, 40, 40]
        top_channels = set()
        for cluster in response.clusters:
            centre = {c.field: c for c in cluster.centre}
            top_channels.add(centre["channel"].top_value)
            assert len(cluster.traits) == 3
            assert {t.field for t in cluster.traits} <= {"income", "score", "channel"}
            members = await _members(svc, cluster.segment.removeprefix("segments/"))
            group = {m.split("-")[0] for m in members}
            assert len(members) == 40 and len(group) == 1  # one true group per cluster
            expected_income = {"k0": 3000, "k1": 25000, "k2": 9000}[group.pop()]
            assert abs(centre["income"].mean - expected_income) < expected_income * 0.1
        assert top_channels == {"app", "branch", "web"}
        rich = max(response.clusters, key=lambda c: {x.field: x for x in c.centre}["income"].mean)
        income_trait = next(t for t in rich.traits if t.field == "income")
        assert income_trait.z_score > 1
        assert await stubs.segments.ClusterCustomers(request) == response  # replayed
        fixed = await stubs.segments.ClusterCustomers(pb.ClusterCustomersRequest(fields=["income"], k=2))
        assert fixed.k == 2 and not fixed.silhouette_by_k and not fixed.clusters[0].segment
        await expect_error(stubs.segments.ClusterCustomers(pb.ClusterCustomersRequest(fields=["income"], k=11)),
                           INVALID, "OUT_OF_RANGE")
        await expect_error(stubs.segments.ClusterCustomers(pb.ClusterCustomersRequest(fields=["national_id"])),
                           INVALID, "FIELD_PII_FORBIDDEN")
        await expect_error(stubs.segments.ClusterCustomers(pb.ClusterCustomersRequest()), INVALID,
                           "REQUIRED_FIELD_MISSING")
