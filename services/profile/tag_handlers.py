"""gRPC handlers of TagService: validate, map proto <-> domain, call the service layer. No SQL here."""

from __future__ import annotations

import grpc

from lodestar.profile.v1 import tag_service_pb2 as pb
from lodestar.profile.v1 import tag_service_pb2_grpc as pbg
from services.platform import pagination, timestamps
from services.platform.errors import InvalidArgument
from services.platform.idempotency import key_for
from services.platform.validation import ID_PATTERN, ID_RULE, Violations, check_id, parse_name
from services.profile.tag_job import (
    DEFAULT_CHUNK,
    FAILED,
    MAX_CHUNK,
    MAX_ITEMS,
    MIN_CHUNK,
    RUNNING,
    SUCCEEDED,
    Definition,
    Job,
    TagsService,
)
from services.profile.tag_rules import SOURCE, check_definition, check_tag_name, check_tag_value

_STATES = {RUNNING: pb.TAG_JOB_STATE_RUNNING, SUCCEEDED: pb.TAG_JOB_STATE_SUCCEEDED,
           FAILED: pb.TAG_JOB_STATE_FAILED}
_ts = timestamps.to_timestamp


def definition_to_proto(d: Definition) -> pb.TagDefinition:
    return pb.TagDefinition(name=f"tagDefinitions/{d.definition_id}", definition_id=d.definition_id, tag=d.tag,
                            condition_text=d.condition_text, value=d.value, description=d.description,
                            create_time=_ts(d.create_time))


def job_to_proto(job: Job) -> pb.TagJob:
    return pb.TagJob(name=f"tagJobs/{job.job_id}", job_id=job.job_id, state=_STATES[job.state],
                     as_of=_ts(job.as_of), chunk_size=job.chunk_size, total_customers=job.total_customers,
                     processed_customers=job.processed_customers, chunks_done=job.chunks_done, error=job.error,
                     create_time=_ts(job.create_time), update_time=_ts(job.update_time))


def check_items(request: pb.SetCustomerTagsRequest) -> list[tuple[str, dict[str, str]]]:
    """Every problem of the items and source, in one INVALID_ARGUMENT (values are never echoed)."""
    violations = Violations()
    if not request.items:
        violations.add("items", "give 1 to 1000 customers")
    elif len(request.items) > MAX_ITEMS:
        violations.add("items", f"at most {MAX_ITEMS} customers per request")
    if not request.source:
        violations.add("source", "is required (who computed the tags, e.g. campaign)")
    elif not SOURCE.match(request.source):
        violations.add("source", "must be lower_snake_case, at most 64 characters")
    seen: set[str] = set()
    out: list[tuple[str, dict[str, str]]] = []
    for index, item in enumerate(request.items[:MAX_ITEMS]):
        where = f"items[{index}]"
        if not item.customer_id:
            violations.add(f"{where}.customer_id", "is required")
        elif not ID_PATTERN.match(item.customer_id):
            violations.add(f"{where}.customer_id", ID_RULE)
        elif item.customer_id in seen:
            violations.add(f"{where}.customer_id", "is given twice in this request")
        seen.add(item.customer_id)
        if not item.tags:
            violations.add(f"{where}.tags", "name at least one tag")
        for name, value in sorted(item.tags.items()):
            field = f"{where}.tags[{name}]" if len(name) <= 64 and name.isprintable() else f"{where}.tags"
            check_tag_name(name, field, violations)
            check_tag_value(value, field, violations)
        out.append((item.customer_id, dict(item.tags)))
    violations.raise_if_any()
    return out


class TagHandlers(pbg.TagServiceServicer):
    def __init__(self, service: TagsService) -> None:
        self.service = service

    async def SetCustomerTags(self, request: pb.SetCustomerTagsRequest, context: grpc.aio.ServicerContext
                              ) -> pb.SetCustomerTagsResponse:
        key = key_for("SetCustomerTags", request)
        result = await self.service.set_customer_tags(check_items(request), request.source, key)
        return pb.SetCustomerTagsResponse(customers=result.customers, tags=result.tags)

    async def CreateTagDefinition(self, request: pb.CreateTagDefinitionRequest, context: grpc.aio.ServicerContext
                                  ) -> pb.CreateTagDefinitionResponse:
        key = key_for("CreateTagDefinition", request)
        d = request.definition
        check_definition(d.definition_id, d.tag, d.value, d.description)
        created = await self.service.create_definition(
            Definition(d.definition_id, d.tag, d.condition_text, d.value, d.description), key)
        return pb.CreateTagDefinitionResponse(definition=definition_to_proto(created))

    async def ListTagDefinitions(self, request: pb.ListTagDefinitionsRequest, context: grpc.aio.ServicerContext
                                 ) -> pb.ListTagDefinitionsResponse:
        size = pagination.page_size(request.page_size)
        fingerprint = pagination.query_fingerprint(list="tagDefinitions")
        position = pagination.decode_page_token(request.page_token, fingerprint)
        definitions, after = await self.service.list_definitions(
            after_id=position["after"] if position else None, page_size=size)
        token = pagination.encode_page_token({"after": after}, fingerprint) if after else ""
        return pb.ListTagDefinitionsResponse(definitions=[definition_to_proto(d) for d in definitions],
                                             next_page_token=token)

    async def DeleteTagDefinition(self, request: pb.DeleteTagDefinitionRequest, context: grpc.aio.ServicerContext
                                  ) -> pb.DeleteTagDefinitionResponse:
        key = key_for("DeleteTagDefinition", request)
        await self.service.delete_definition(parse_name(request.name, "tagDefinitions"), key)
        return pb.DeleteTagDefinitionResponse()

    async def RunTagJob(self, request: pb.RunTagJobRequest, context: grpc.aio.ServicerContext
                        ) -> pb.RunTagJobResponse:
        if request.job_id:
            check_id(request.job_id, "job_id")
        if request.chunk_size and not MIN_CHUNK <= request.chunk_size <= MAX_CHUNK:
            raise InvalidArgument.field(
                "chunk_size", f"must be 0 (default {DEFAULT_CHUNK}) or {MIN_CHUNK} to {MAX_CHUNK}",
                reason="OUT_OF_RANGE")
        job = await self.service.start_job(request.job_id, timestamps.from_field(request, "as_of"),
                                           request.chunk_size or DEFAULT_CHUNK)
        if job.state == RUNNING:  # a small job finishes here; a large one goes on in the background
            job = await self.service.run_job(job.job_id, budget_seconds=self.service.sync_seconds)
            if job.state == RUNNING:
                self.service.run_in_background(job.job_id)
        return pb.RunTagJobResponse(job=job_to_proto(job))

    async def GetTagJob(self, request: pb.GetTagJobRequest, context: grpc.aio.ServicerContext
                        ) -> pb.GetTagJobResponse:
        job = await self.service.get_job(parse_name(request.name, "tagJobs"))
        return pb.GetTagJobResponse(job=job_to_proto(job))
