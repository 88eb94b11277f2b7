"""gRPC handlers of CampaignReportService: reports and targeting justifications (campaign_report.py)."""

from __future__ import annotations

import grpc

from lodestar.campaign.v1 import campaign_report_pb2 as pb
from lodestar.campaign.v1 import campaign_report_pb2_grpc as pbg
from services.campaign.campaign_report import CampaignReports
from services.platform import timestamps
from services.platform.errors import InvalidArgument
from services.platform.idempotency import key_for
from services.platform.validation import check_id, parse_name

JUSTIFICATION_LENGTH = (10, 2000)


class ReportHandlers(pbg.CampaignReportServiceServicer):
    def __init__(self, reports: CampaignReports) -> None:
        self.reports = reports

    async def GetCampaignReport(self, request: pb.GetCampaignReportRequest,
                                context: grpc.aio.ServicerContext) -> pb.GetCampaignReportResponse:
        campaign_id = parse_name(request.campaign, "campaigns", "campaign")
        report = await self.reports.build(campaign_id)
        return pb.GetCampaignReportResponse(campaign=request.campaign, report_json=report.to_json(),
                                            html=report.to_html() if request.include_html else "")

    async def RecordTargetingJustification(self, request: pb.RecordTargetingJustificationRequest,
                                           context: grpc.aio.ServicerContext
                                           ) -> pb.RecordTargetingJustificationResponse:
        campaign_id = parse_name(request.campaign, "campaigns", "campaign")
        actor = check_id(request.actor, "actor")
        text = request.justification.strip()
        low, high = JUSTIFICATION_LENGTH
        if not low <= len(text) <= high:
            raise InvalidArgument.field("justification", f"must be {low} to {high} characters",
                                        reason="INVALID_JUSTIFICATION")
        view = await self.reports.record_justification(campaign_id, text, actor,
                                                       key_for("RecordTargetingJustification", request))
        return pb.RecordTargetingJustificationResponse(justification=pb.TargetingJustification(
            campaign=f"campaigns/{view.campaign_id}", justification=view.justification, actor=view.actor,
            record_time=timestamps.to_timestamp(view.record_time)))
