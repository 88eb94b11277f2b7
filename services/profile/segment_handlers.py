"""gRPC handlers of SegmentService: validate, map proto <-> domain, call the service layer. No SQL here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import grpc

from lodestar.profile.v1 import segment_service_pb2 as pb
from lodestar.profile.v1 import segment_service_pb2_grpc as pbg
from services.platform import pagination, timestamps
from services.platform.errors import InvalidArgument
from services.platform.idempotency import key_for
from services.platform.validation import check_id, parse_name
from services.profile.clustering import ClusteringResult
from services.profile.conditions import parse, to_proto
from services.profile.segments import (
    DEFAULT_BATCH,
    DEFAULT_CLUSTER_SAMPLE,
    DEFAULT_SAMPLE,
    MAX_BATCH,
    MAX_CLUSTER_SAMPLE,
    MAX_SAMPLE,
    ConditionInput,
    ExportBatch,
    NewSegment,
    Segment,
    SegmentsService,
)

_KINDS = {pb.SEGMENT_KIND_DYNAMIC: "dynamic", pb.SEGMENT_KIND_STATIC: "static"}
_KIND_ENUM = {v: k for k, v in _KINDS.items()}
_TYPES = {"string": pb.AUDIENCE_VALUE_TYPE_STRING, "number": pb.AUDIENCE_VALUE_TYPE_NUMBER,
          "bool": pb.AUDIENCE_VALUE_TYPE_BOOL, "date": pb.AUDIENCE_VALUE_TYPE_DATE}


_ts = timestamps.to_timestamp


def _as_of(message: pb.PreviewSegmentRequest | pb.CreateSegmentRequest | pb.RefreshSegmentRequest
           | pb.ExportAudienceRequest) -> datetime | None:
    return timestamps.from_field(message, "as_of")


def _bounded(value: int, field: str, default: int, maximum: int) -> int:
    if value < 0 or value > maximum:
        raise InvalidArgument.field(field, f"must be 0 (default {default}) to {maximum}", reason="OUT_OF_RANGE")
    return value or default


def segment_to_proto(segment: Segment) -> pb.Segment:
    message = pb.Segment(
        name=f"segments/{segment.segment_id}", segment_id=segment.segment_id, display_name=segment.display_name,
        description=segment.description, kind=_KIND_ENUM.get(segment.kind, pb.SEGMENT_KIND_UNSPECIFIED),
        condition_text=segment.condition_text, member_count=segment.member_count,
        snapshot_time=_ts(segment.snapshot_time), create_time=_ts(segment.create_time),
        update_time=_ts(segment.update_time),
    )
    if segment.condition_text:
        message.condition.CopyFrom(to_proto(parse(segment.condition_text)))
    return message


def batch_to_proto(batch: ExportBatch) -> pb.ExportAudienceResponse:
    message = pb.ExportAudienceResponse(customer_ids=batch.customer_ids, resume_token=batch.resume_token,
                                        batch_number=batch.batch_number, as_of=_ts(batch.as_of))
    for column in batch.columns:
        out = message.columns.add(field=column.field, type=_TYPES[column.type])
        if column.type == "number":
            out.number_values.extend(column.values)
        elif column.type == "bool":
            out.bool_values.extend(column.values)
        else:
            out.string_values.extend(column.values)
        out.present.extend(column.present)
    return message


def clustering_to_proto(result: ClusteringResult) -> pb.ClusterCustomersResponse:
    message = pb.ClusterCustomersResponse(k=result.k, silhouette=result.silhouette, sample_size=result.sample_size)
    for k, score in result.silhouette_by_k.items():
        message.silhouette_by_k[k] = score
    for cluster in result.clusters:
        out = message.clusters.add(number=cluster.number, size=cluster.size, share=cluster.share,
                                   segment=cluster.segment)
        for centre in cluster.centre:
            out.centre.add(field=centre.field, mean=centre.mean, top_value=centre.top_value,
                           top_share=centre.top_share, numeric=centre.numeric)
        for trait in cluster.traits:
            out.traits.add(field=trait.field, value=trait.value, z_score=trait.z_score,
                           cluster_share=trait.cluster_share, overall_share=trait.overall_share,
                           description=trait.description)
    return message


def _condition(text: str, tree_message: object, has_tree: bool, field: str = "condition") -> ConditionInput:
    return ConditionInput(text=text, tree=tree_message if has_tree else None, field_name=field)  # type: ignore[arg-type]


class SegmentHandlers(pbg.SegmentServiceServicer):
    def __init__(self, service: SegmentsService) -> None:
        self.service = service

    async def PreviewSegment(self, request: pb.PreviewSegmentRequest, context: grpc.aio.ServicerContext
                             ) -> pb.PreviewSegmentResponse:
        sample_size = _bounded(request.sample_size, "sample_size", DEFAULT_SAMPLE, MAX_SAMPLE)
        preview = await self.service.preview(
            _condition(request.condition_text, request.condition, request.HasField("condition")),
            _as_of(request), sample_size)
        return pb.PreviewSegmentResponse(count=preview.count, sample_customer_ids=preview.sample,
                                         condition_text=preview.condition_text, as_of=_ts(preview.as_of))

    async def CreateSegment(self, request: pb.CreateSegmentRequest, context: grpc.aio.ServicerContext
                            ) -> pb.CreateSegmentResponse:
        key = key_for("CreateSegment", request)
        segment = request.segment
        check_id(segment.segment_id, "segment.segment_id")
        kind = _KINDS.get(segment.kind)
        if kind is None:
            raise InvalidArgument.field("segment.kind", "must be SEGMENT_KIND_DYNAMIC or SEGMENT_KIND_STATIC",
                                        reason="REQUIRED_FIELD_MISSING" if segment.kind == 0
                                        else "UNKNOWN_ENUM_VALUE")
        if len(segment.display_name) > 200 or len(segment.description) > 1000:
            raise InvalidArgument.field("segment.display_name", "at most 200 characters (description 1000)",
                                        reason="INVALID_ARGUMENT")
        new = NewSegment(
            segment.segment_id, kind,
            _condition(segment.condition_text, segment.condition, segment.HasField("condition")),
            display_name=segment.display_name, description=segment.description, as_of=_as_of(request))
        created = await self.service.create(new, key)
        return pb.CreateSegmentResponse(segment=segment_to_proto(created))

    async def GetSegment(self, request: pb.GetSegmentRequest, context: grpc.aio.ServicerContext
                         ) -> pb.GetSegmentResponse:
        segment = await self.service.get(parse_name(request.name, "segments"))
        return pb.GetSegmentResponse(segment=segment_to_proto(segment))

    async def ListSegments(self, request: pb.ListSegmentsRequest, context: grpc.aio.ServicerContext
                           ) -> pb.ListSegmentsResponse:
        size = pagination.page_size(request.page_size)
        fingerprint = pagination.query_fingerprint(list="segments")
        position = pagination.decode_page_token(request.page_token, fingerprint)
        after_id = position["after"] if position else None
        segments, after = await self.service.list_segments(after_id=after_id, page_size=size)
        token = pagination.encode_page_token({"after": after}, fingerprint) if after else ""
        return pb.ListSegmentsResponse(segments=[segment_to_proto(s) for s in segments], next_page_token=token)

    async def DeleteSegment(self, request: pb.DeleteSegmentRequest, context: grpc.aio.ServicerContext
                            ) -> pb.DeleteSegmentResponse:
        key = key_for("DeleteSegment", request)
        await self.service.delete(parse_name(request.name, "segments"), key)
        return pb.DeleteSegmentResponse()

    async def RefreshSegment(self, request: pb.RefreshSegmentRequest, context: grpc.aio.ServicerContext
                             ) -> pb.RefreshSegmentResponse:
        key = key_for("RefreshSegment", request)
        segment = await self.service.refresh(parse_name(request.name, "segments"), _as_of(request), key)
        return pb.RefreshSegmentResponse(segment=segment_to_proto(segment))

    async def ExportAudience(self, request: pb.ExportAudienceRequest, context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[pb.ExportAudienceResponse]:
        segment_id = parse_name(request.segment, "segments", "segment")
        batch_size = _bounded(request.batch_size, "batch_size", DEFAULT_BATCH, MAX_BATCH)
        async for batch in self.service.export(segment_id, list(request.fields), batch_size, _as_of(request),
                                               request.resume_token):
            yield batch_to_proto(batch)

    async def ClusterCustomers(self, request: pb.ClusterCustomersRequest, context: grpc.aio.ServicerContext
                               ) -> pb.ClusterCustomersResponse:
        key = key_for("ClusterCustomers", request)
        if request.k and not 2 <= request.k <= 10:
            raise InvalidArgument.field("k", "must be 0 (chosen from the data) or 2 to 10", reason="OUT_OF_RANGE")
        sample = _bounded(request.sample_size, "sample_size", DEFAULT_CLUSTER_SAMPLE, MAX_CLUSTER_SAMPLE)
        result = await self.service.cluster(list(request.fields), request.k or None, sample,
                                            request.save_segment_prefix, key)
        return clustering_to_proto(result)
