"""TagService through a real aio server, a real stub and a real database (SQLite, or PostgreSQL with
TEST_DATABASE_URL): external tags (SetCustomerTags), rule tag definitions, the batch tag job (chunks, progress,
resumption), and what segments and exports see of them (tags, features, age)."""

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from opentelemetry.trace import SpanKind
from sqlalchemy import func, select

from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import event_service_pb2 as epb
from lodestar.profile.v1 import event_service_pb2_grpc as epbg
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar.profile.v1 import segment_service_pb2 as spb
from lodestar.profile.v1 import segment_service_pb2_grpc as spbg
from lodestar.profile.v1 import tag_service_pb2 as pb
from lodestar.profile.v1 import tag_service_pb2_grpc as pbg
from services.profile.app import DEFINITION
from services.profile.db import CustomerFeatureRow, CustomerTagValueRow, TagJobRow
from services.profile.events_db import CustomerTagRow
from tests.helpers import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
T = customer_pb2.AttributeType
AS_OF = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)  # for ages (events are recorded now: jobs run at now)
NOW = datetime.now(UTC)
# (id, birth_date, income)
PEOPLE = [("c-01", "1990-05-01", "12000"), ("c-02", "1985-07-01", "3000"), ("c-03", "2000-06-30", "45000"),
          ("c-04", "1970-07-07", "8000"), ("c-05", "", "60000"), ("c-06", "2008-07-01", "100"),
          ("c-07", "1960-01-01", "25000")]
SPEND = {"c-01": 700, "c-03": 60_000, "c-04": 6000}  # debit spend in the last 90 days


class Stubs:
    def __init__(self, svc, channel):
        self.svc = svc
        self.tags = pbg.TagServiceStub(channel)
        self.segments = spbg.SegmentServiceStub(channel)
        self.profile = ppbg.ProfileServiceStub(channel)
        self.events = epbg.EventServiceStub(channel)


async def _load(stubs):
    await stubs.profile.UpsertAttributes(ppb.UpsertAttributesRequest(attributes=[
        customer_pb2.AttributeDefinition(name="income", type=T.ATTRIBUTE_TYPE_DECIMAL),
        customer_pb2.AttributeDefinition(name="national_id", type=T.ATTRIBUTE_TYPE_STRING, pii=True),
    ]))
    for cid, birth, income in PEOPLE:
        customer = customer_pb2.Customer(customer_id=cid, region="CN-31", birth_date=birth, full_name="Li Na")
        customer.attributes["income"].decimal_value = income
        customer.attributes["national_id"].string_value = f"N{cid}"
        await stubs.profile.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
    events = []
    for cid, amount in SPEND.items():
        for i in range(2):
            event = epb.Event(event_id=f"{cid}-e{i}", customer_id=cid,
                              transaction=epb.Transaction(amount=str(amount / 2), currency="CNY",
                                                          merchant_category="travel", channel="online"))
            event.occurred_at.FromDatetime(NOW - timedelta(days=10, hours=i))
            events.append(event)
    await stubs.events.IngestEvents(epb.IngestEventsRequest(events=events))


@pytest.fixture
async def stubs(start):
    svc = await start(DEFINITION)
    async with grpc.aio.insecure_channel(svc.address) as channel:
        out = Stubs(svc, channel)
        await _load(out)
        yield out


async def _rows(svc, model, *where):
    async with svc.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(model).where(*where)))


def _set(items, source="campaign", request_id=""):
    return pb.SetCustomerTagsRequest(
        items=[pb.CustomerTagValues(customer_id=c, tags=t) for c, t in items], source=source, request_id=request_id)


async def _preview(stubs, text):
    response = await stubs.segments.PreviewSegment(spb.PreviewSegmentRequest(condition_text=text, sample_size=100))
    return response.count, sorted(response.sample_customer_ids)


# -- external tags --------------------------------------------------------------------------------------------


async def test_set_customer_tags_writes_replaces_and_is_seen_by_segments(stubs):
    first = await stubs.tags.SetCustomerTags(_set([("c-01", {"churn_risk": "high"}),
                                                   ("c-02", {"churn_risk": "low", "nps_band": "promoter"})],
                                                  request_id="set-1"))
    assert (first.customers, first.tags) == (2, 3)
    rows = await _rows(stubs.svc, CustomerTagValueRow)
    assert sorted((r.customer_id, r.name, r.value, r.kind, r.source) for r in rows) == [
        ("c-01", "churn_risk", "high", "external", "campaign"), ("c-02", "churn_risk", "low", "external", "campaign"),
        ("c-02", "nps_band", "promoter", "external", "campaign")]
    # a retry replays; the same id with another payload is refused
    assert await stubs.tags.SetCustomerTags(_set([("c-01", {"churn_risk": "high"}),
                                                  ("c-02", {"churn_risk": "low", "nps_band": "promoter"})],
                                                 request_id="set-1")) == first
    await expect_error(stubs.tags.SetCustomerTags(_set([("c-01", {"churn_risk": "low"})], request_id="set-1")),
                       INVALID, "REQUEST_ID_REUSED")
    # a new value replaces the old one; other tags of the customer stay
    await stubs.tags.SetCustomerTags(_set([("c-02", {"churn_risk": "high"})], source="churn_model"))
    rows = await _rows(stubs.svc, CustomerTagValueRow, CustomerTagValueRow.customer_id == "c-02")
    assert sorted((r.name, r.value, r.source) for r in rows) == [("churn_risk", "high", "churn_model"),
                                                                 ("nps_band", "promoter", "campaign")]
    # GetTags shows them beside the built-in tags, with their kind and source
    got = await stubs.events.GetTags(epb.GetTagsRequest(customer_id="c-02"))
    external = [(t.name, t.value, t.source) for t in got.tags if t.source.startswith("external:")]
    assert external == [("churn_risk", "high", "external:churn_model"), ("nps_band", "promoter", "external:campaign")]
    assert await _preview(stubs, 'tag.churn_risk = "high"') == (2, ["c-01", "c-02"])
    assert await _preview(stubs, 'tag.nps_band = "promoter" and not tag.churn_risk = "low"') == (1, ["c-02"])
    # and an export of a segment carries it
    await stubs.segments.CreateSegment(spb.CreateSegmentRequest(segment=spb.Segment(
        segment_id="churners", kind=spb.SEGMENT_KIND_DYNAMIC, condition_text='tag.churn_risk = "high"')))
    batches = [b async for b in stubs.segments.ExportAudience(spb.ExportAudienceRequest(
        segment="segments/churners", fields=["tag.churn_risk", "tag.nps_band"]))]
    assert list(batches[0].customer_ids) == ["c-01", "c-02"]
    assert list(batches[0].columns[0].string_values) == ["high", "high"]
    assert list(batches[0].columns[1].present) == [False, True]


async def test_set_customer_tags_bad_input_writes_nothing(stubs):
    got = await expect_error(stubs.tags.SetCustomerTags(_set([("c-01", {"lifecycle_stage": "new"}),
                                                              ("c-02", {"Bad-Name": "x"}),
                                                              ("c-03", {"ok_tag": ""})])), INVALID,
                             "INVALID_ARGUMENT")
    assert [f for f, _ in got.field_violations] == ["items[0].tags[lifecycle_stage]", "items[1].tags[Bad-Name]",
                                                    "items[2].tags[ok_tag]"]
    got = await expect_error(stubs.tags.SetCustomerTags(_set([("c-01", {"a": "1"}), ("c-01", {"b": "2"})],
                                                             source="")), INVALID, "INVALID_ARGUMENT")
    assert {f for f, _ in got.field_violations} == {"source", "items[1].customer_id"}
    await expect_error(stubs.tags.SetCustomerTags(pb.SetCustomerTagsRequest(source="campaign")), INVALID)
    got = await expect_error(stubs.tags.SetCustomerTags(_set([("c-01", {"churn_risk": "high"}),
                                                              ("nobody", {"churn_risk": "high"})])),
                             grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND")
    assert "nobody" not in got.message and got.metadata["field"] == "items[1].customer_id"
    # a rule tag's name cannot be set from outside
    await stubs.tags.CreateTagDefinition(pb.CreateTagDefinitionRequest(definition=pb.TagDefinition(
        definition_id="big", tag="big_spender", condition_text="sum(txn.amount, 90d) > 5000", value="yes")))
    got = await expect_error(stubs.tags.SetCustomerTags(_set([("c-01", {"big_spender": "no"})])), INVALID,
                             "TAG_NAME_RESERVED")
    assert got.field_violations[0][0] == "items[0].tags[big_spender]"
    assert await _rows(stubs.svc, CustomerTagValueRow) == []


# -- rule tag definitions -----------------------------------------------------------------------------------


def _definition(definition_id, tag, text, value, request_id=""):
    return pb.CreateTagDefinitionRequest(definition=pb.TagDefinition(
        definition_id=definition_id, tag=tag, condition_text=text, value=value), request_id=request_id)


async def test_definitions_create_list_delete_and_bad_input(stubs):
    created = (await stubs.tags.CreateTagDefinition(_definition(
        "d-1", "spend_band", "sum(txn.amount,90d)>5000", "high", request_id="r-1"))).definition
    assert (created.name, created.condition_text, created.value) == (
        "tagDefinitions/d-1", "sum(txn.amount, 90d) > 5000", "high")
    assert created.HasField("create_time")
    assert (await stubs.tags.CreateTagDefinition(_definition(
        "d-1", "spend_band", "sum(txn.amount,90d)>5000", "high", request_id="r-1"))).definition == created
    await expect_error(stubs.tags.CreateTagDefinition(_definition("d-1", "spend_band", "income > 1", "x")),
                       grpc.StatusCode.ALREADY_EXISTS, "TAG_DEFINITION_ALREADY_EXISTS")
    got = await expect_error(stubs.tags.CreateTagDefinition(_definition("d-2", "x", "income >", "y")), INVALID,
                             "CONDITION_SYNTAX_ERROR")
    assert got.metadata["position"] == "1:9"
    await expect_error(stubs.tags.CreateTagDefinition(_definition("d-2", "x", 'national_id = "N1"', "y")),
                       INVALID, "CONDITION_PII_FORBIDDEN")
    await expect_error(stubs.tags.CreateTagDefinition(_definition("d-2", "x", "nope > 1", "y")), INVALID,
                       "CONDITION_UNKNOWN_ATTRIBUTE")
    await expect_error(stubs.tags.CreateTagDefinition(_definition("d-2", "x", "feature.bogus > 1", "y")), INVALID,
                       "CONDITION_UNKNOWN_FEATURE")
    got = await expect_error(stubs.tags.CreateTagDefinition(_definition("d 2", "value_tier", "income > 1", "")),
                             INVALID, "INVALID_ARGUMENT")
    assert [f for f, _ in got.field_violations] == ["definition.definition_id", "definition.tag",
                                                    "definition.value"]
    await stubs.tags.SetCustomerTags(_set([("c-01", {"churn_risk": "high"})]))
    await expect_error(stubs.tags.CreateTagDefinition(_definition("d-3", "churn_risk", "income > 1", "high")),
                       INVALID, "TAG_NAME_RESERVED")
    await stubs.tags.CreateTagDefinition(_definition("d-0", "spend_band", "sum(txn.amount, 90d) > 0", "some"))
    first = await stubs.tags.ListTagDefinitions(pb.ListTagDefinitionsRequest(page_size=1))
    assert [d.definition_id for d in first.definitions] == ["d-0"] and first.next_page_token
    second = await stubs.tags.ListTagDefinitions(pb.ListTagDefinitionsRequest(page_size=1,
                                                                              page_token=first.next_page_token))
    assert [d.definition_id for d in second.definitions] == ["d-1"] and not second.next_page_token
    await stubs.tags.DeleteTagDefinition(pb.DeleteTagDefinitionRequest(name="tagDefinitions/d-0"))
    await expect_error(stubs.tags.DeleteTagDefinition(pb.DeleteTagDefinitionRequest(name="tagDefinitions/d-0")),
                       grpc.StatusCode.NOT_FOUND, "TAG_DEFINITION_NOT_FOUND")
    listed = await stubs.tags.ListTagDefinitions(pb.ListTagDefinitionsRequest())
    assert [d.definition_id for d in listed.definitions] == ["d-1"]


# -- the tag job --------------------------------------------------------------------------------------------


async def _wait(stubs, name):
    for _ in range(200):
        job = (await stubs.tags.GetTagJob(pb.GetTagJobRequest(name=name))).job
        if job.state != pb.TAG_JOB_STATE_RUNNING:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError("the tag job did not finish")


async def test_tag_job_computes_features_builtin_and_rule_tags_in_chunks(stubs, caplog):
    caplog.set_level(logging.INFO)
    for definition_id, text, value in (("a-high", "sum(txn.amount, 90d) > 5000", "high"),
                                       ("b-low", "sum(txn.amount, 90d) > 0", "low"),
                                       ("c-none", "income < 1000", "tiny")):
        await stubs.tags.CreateTagDefinition(_definition(definition_id, "spend_band", text, value))
    await stubs.tags.CreateTagDefinition(_definition("adult-rich", "rich_adult", 'age >= 18 and income >= 20000'
                                                     ' and tag.income_tier in ("upper_middle", "high")', "yes"))
    # chunks of 3 (the RPC accepts 100 to 10,000: the job is created through the service, run through the RPC)
    await stubs.svc.runtime.components["tags"].start_job("job-1", None, 3)
    started = (await stubs.tags.RunTagJob(pb.RunTagJobRequest(job_id="job-1"))).job
    assert (started.name, started.total_customers, started.chunk_size) == ("tagJobs/job-1", 7, 3)
    # a small job is finished when RunTagJob returns
    job = (await stubs.tags.GetTagJob(pb.GetTagJobRequest(name="tagJobs/job-1"))).job
    assert job == started
    assert (job.state, job.processed_customers, job.chunks_done, job.error) == (
        pb.TAG_JOB_STATE_SUCCEEDED, 7, 3, "")
    # built-in tags of every customer, at the job's as_of
    builtin = await _rows(stubs.svc, CustomerTagRow, CustomerTagRow.name == "value_tier")
    assert {r.customer_id: r.value for r in builtin} == {
        "c-01": "low", "c-02": "none", "c-03": "high", "c-04": "medium", "c-05": "none", "c-06": "none",
        "c-07": "none"}
    assert {r.as_of for r in builtin} == {started.as_of.ToDatetime(tzinfo=UTC)}
    # rule tags: the first matching definition by id wins
    rules = await _rows(stubs.svc, CustomerTagValueRow, CustomerTagValueRow.kind == "rule")
    assert sorted((r.customer_id, r.name, r.value, r.source) for r in rules) == [
        ("c-01", "spend_band", "low", "b-low"), ("c-03", "rich_adult", "yes", "adult-rich"),
        ("c-03", "spend_band", "high", "a-high"), ("c-04", "spend_band", "high", "a-high"),
        ("c-06", "spend_band", "tiny", "c-none"),
        ("c-07", "rich_adult", "yes", "adult-rich")]
    # features are materialised: feature.* conditions compile to SQL
    features = await _rows(stubs.svc, CustomerFeatureRow, CustomerFeatureRow.name == "monetary_90d")
    assert {r.customer_id: r.value for r in features} == {
        "c-01": 700.0, "c-02": 0.0, "c-03": 60000.0, "c-04": 6000.0, "c-05": 0.0, "c-06": 0.0, "c-07": 0.0}
    assert await _preview(stubs, "feature.monetary_90d > 1000") == (2, ["c-03", "c-04"])
    assert await _preview(stubs, "feature.spend_category_travel_90d between 500 and 6000") == (2, ["c-01", "c-04"])
    assert await _preview(stubs, 'tag.spend_band = "high" or tag.rich_adult = "yes"') == (
        3, ["c-03", "c-04", "c-07"])
    # a finished job is returned as it is; rerunning under a new id replaces the rule tags (no duplicates)
    again = (await stubs.tags.RunTagJob(pb.RunTagJobRequest(job_id="job-1"))).job
    assert again.state == pb.TAG_JOB_STATE_SUCCEEDED and again.chunks_done == 3
    await stubs.tags.DeleteTagDefinition(pb.DeleteTagDefinitionRequest(name="tagDefinitions/a-high"))
    rerun = pb.RunTagJobRequest(job_id="job-2", chunk_size=100)
    await stubs.tags.RunTagJob(rerun)
    assert (await _wait(stubs, "tagJobs/job-2")).processed_customers == 7
    rules = await _rows(stubs.svc, CustomerTagValueRow, CustomerTagValueRow.name == "spend_band")
    assert sorted((r.customer_id, r.value) for r in rules) == [
        ("c-01", "low"), ("c-03", "low"), ("c-04", "low"), ("c-06", "tiny")]
    for record in caplog.records:
        message = record.getMessage()
        assert "c-0" not in message and "N c-" not in message


async def test_tag_job_resumes_after_its_last_committed_chunk(stubs):
    tags = stubs.svc.runtime.components["tags"]
    await tags.start_job("job-r", AS_OF, 2)
    partial = await tags.run_job("job-r", max_chunks=2)
    assert (partial.state, partial.processed_customers, partial.chunks_done) == ("running", 4, 2)
    async with stubs.svc.runtime.database.sessionmaker() as session:
        assert (await session.get(TagJobRow, "job-r")).cursor == "c-04"
        assert await session.scalar(select(func.count(func.distinct(CustomerTagRow.customer_id)))) == 4
    # "the process died": RunTagJob with the same id resumes from c-05, with the job's as_of and chunk size
    job = (await stubs.tags.RunTagJob(pb.RunTagJobRequest(job_id="job-r", chunk_size=500))).job
    assert (job.state, job.processed_customers, job.chunks_done) == (pb.TAG_JOB_STATE_SUCCEEDED, 7, 4)
    assert (job.as_of.ToDatetime(tzinfo=UTC), job.chunk_size) == (AS_OF, 2)
    async with stubs.svc.runtime.database.sessionmaker() as session:
        assert await session.scalar(select(func.count(func.distinct(CustomerTagRow.customer_id)))) == 7


async def test_tag_job_errors(stubs):
    await expect_error(stubs.tags.GetTagJob(pb.GetTagJobRequest(name="tagJobs/none")), grpc.StatusCode.NOT_FOUND,
                       "TAG_JOB_NOT_FOUND")
    await expect_error(stubs.tags.GetTagJob(pb.GetTagJobRequest(name="jobs/x")), INVALID, "INVALID_NAME")
    await expect_error(stubs.tags.RunTagJob(pb.RunTagJobRequest(chunk_size=10_001)), INVALID, "OUT_OF_RANGE")
    await expect_error(stubs.tags.RunTagJob(pb.RunTagJobRequest(chunk_size=99)), INVALID, "OUT_OF_RANGE")
    await expect_error(stubs.tags.RunTagJob(pb.RunTagJobRequest(chunk_size=-1)), INVALID, "OUT_OF_RANGE")
    future = pb.RunTagJobRequest()
    future.as_of.FromDatetime(datetime.now(UTC) + timedelta(days=1))
    await expect_error(stubs.tags.RunTagJob(future), INVALID, "AS_OF_IN_FUTURE")
    async with stubs.svc.runtime.database.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(TagJobRow)) == 0


# -- exports: age, age_band, features -------------------------------------------------------------------------


async def test_export_computes_age_and_age_band_at_as_of_and_refuses_birth_date(stubs):
    await stubs.segments.CreateSegment(spb.CreateSegmentRequest(segment=spb.Segment(
        segment_id="all", kind=spb.SEGMENT_KIND_DYNAMIC, condition_text='region = "CN-31"')))
    request = spb.ExportAudienceRequest(segment="segments/all", fields=["age", "age_band", "income"])
    request.as_of.FromDatetime(AS_OF)
    batches = [b async for b in stubs.segments.ExportAudience(request)]
    batch = batches[0]
    assert list(batch.customer_ids) == [p[0] for p in PEOPLE]
    age, band = batch.columns[0], batch.columns[1]
    assert (age.field, age.type, band.type) == ("age", spb.AUDIENCE_VALUE_TYPE_NUMBER, spb.AUDIENCE_VALUE_TYPE_STRING)
    # c-03 turns 26 on as_of; c-02 is 40 until 1 July; c-06 is 17 until 1 July; c-05 has no birth date
    assert list(age.number_values) == [36, 40, 26, 55, 0, 17, 66]
    assert list(age.present) == [True, True, True, True, False, True, True]
    assert list(band.string_values) == ["35-44", "35-44", "25-34", "55-64", "unknown", "minor", "65+"]
    await expect_error(stubs.segments.ExportAudience(spb.ExportAudienceRequest(
        segment="segments/all", fields=["birth_date"])).read(), INVALID, "FIELD_PII_FORBIDDEN")
    await expect_error(stubs.segments.ExportAudience(spb.ExportAudienceRequest(
        segment="segments/all", fields=["feature.bogus"])).read(), INVALID, "UNKNOWN_FIELD")


async def _export(stubs, segment, fields, as_of=None):
    request = spb.ExportAudienceRequest(segment=segment, fields=fields)
    if as_of is not None:
        request.as_of.FromDatetime(as_of)
    (batch,) = [b async for b in stubs.segments.ExportAudience(request)]
    return list(batch.customer_ids), {c.field: (list(c.number_values), list(c.present)) for c in batch.columns}


async def test_export_computes_features_at_its_as_of_not_from_the_store(stubs):
    tags = stubs.svc.runtime.components["tags"]
    await tags.start_job("job-f", None, 100)
    await tags.run_job("job-f")  # the store: as of now, before the event below
    await stubs.segments.CreateSegment(spb.CreateSegmentRequest(segment=spb.Segment(
        segment_id="spenders", kind=spb.SEGMENT_KIND_DYNAMIC, condition_text="feature.monetary_90d > 0")))
    before = datetime.now(UTC)
    late = epb.Event(event_id="c-01-late", customer_id="c-01", transaction=epb.Transaction(
        amount="300", currency="CNY", merchant_category="groceries", channel="pos"))
    late.occurred_at.FromDatetime(NOW - timedelta(days=1))
    await stubs.events.IngestEvents(epb.IngestEventsRequest(events=[late]))
    fields = ["feature.monetary_90d", "feature.recency_days", "feature.spend_category_groceries_90d"]
    # now: the event after the store's refresh counts (the store still says 700 for c-01)
    ids, columns = await _export(stubs, "segments/spenders", fields)
    assert ids == ["c-01", "c-03", "c-04"]
    assert columns["feature.monetary_90d"] == ([1000.0, 60000.0, 6000.0], [True] * 3)
    assert columns["feature.recency_days"] == ([1.0, 10.0, 10.0], [True] * 3)
    assert columns["feature.spend_category_groceries_90d"] == ([300.0, 0.0, 0.0], [True, False, False])
    stored = await _rows(stubs.svc, CustomerFeatureRow, CustomerFeatureRow.customer_id == "c-01",
                         CustomerFeatureRow.name == "monetary_90d")
    assert [r.value for r in stored] == [700.0]
    # as of before the late event was recorded: not counted, although it had happened by then
    _, columns = await _export(stubs, "segments/spenders", fields, as_of=before)
    assert columns["feature.monetary_90d"][0] == [700.0, 60000.0, 6000.0]
    assert columns["feature.spend_category_groceries_90d"][1] == [False] * 3
    # as of before any spend: monetary 0, recency absent (membership is the store's, as of its refresh)
    _, columns = await _export(stubs, "segments/spenders", fields, as_of=NOW - timedelta(days=11))
    assert columns["feature.monetary_90d"] == ([0.0] * 3, [True] * 3)
    assert columns["feature.recency_days"][1] == [False] * 3
    future = spb.ExportAudienceRequest(segment="segments/spenders", fields=fields)
    future.as_of.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    got = await expect_error(stubs.segments.ExportAudience(future).read(), INVALID, "AS_OF_IN_FUTURE")
    assert got.field_violations[0][0] == "as_of"


async def test_spans_external_tags_under_the_rpc_and_job_chunks_linked_to_it(stubs, span_exporter):
    tags = stubs.svc.runtime.components["tags"]
    tags.sync_seconds = 0  # everything in the background, as for a large job
    await tags.start_job("job-s", None, 4)
    span_exporter.clear()
    await stubs.tags.SetCustomerTags(_set([("c-01", {"churn_risk": "high"})]))
    started = (await stubs.tags.RunTagJob(pb.RunTagJobRequest(job_id="job-s"))).job
    assert (started.state, started.processed_customers) == (pb.TAG_JOB_STATE_RUNNING, 0)
    await _wait(stubs, "tagJobs/job-s")
    spans = span_exporter.get_finished_spans()
    by_name = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    set_server = next(s for s in server if s.name.endswith("SetCustomerTags"))
    run_server = next(s for s in server if s.name.endswith("RunTagJob"))
    (work,) = by_name["TagsService.set_customer_tags"]
    assert work.parent.span_id == set_server.context.span_id
    assert work.attributes["lodestar.tags.customers"] == 1
    chunks = by_name["TagJob.chunk"]
    assert [c.attributes["lodestar.tag_job.chunk"] for c in chunks] == [1, 2]  # 4 + 3 customers (the last is short)
    for chunk in chunks:
        assert chunk.parent is None and chunk.attributes["lodestar.tag_job.id"] == "job-s"
        assert [link.context.span_id for link in chunk.links] == [run_server.context.span_id]
    for span in spans:
        assert not any("c-0" in str(v) for v in span.attributes.values())


async def test_clustering_on_stored_features(stubs):
    tags = stubs.svc.runtime.components["tags"]
    await tags.start_job("job-c", None, 100)
    await tags.run_job("job-c")
    response = await stubs.segments.ClusterCustomers(spb.ClusterCustomersRequest(
        fields=["feature.monetary_90d"], k=2, save_segment_prefix="spend", request_id="cl-1"))
    assert sorted(c.size for c in response.clusters) == [1, 6]
    big = next(c for c in response.clusters if c.size == 1)
    assert [(x.field, x.mean) for x in big.centre] == [("feature.monetary_90d", 60000.0)]
    members = [b async for b in stubs.segments.ExportAudience(spb.ExportAudienceRequest(segment=big.segment))]
    assert list(members[0].customer_ids) == ["c-03"]
    await expect_error(stubs.segments.ClusterCustomers(spb.ClusterCustomersRequest(fields=["age"], k=2)), INVALID,
                       "FIELD_NOT_CLUSTERABLE")
