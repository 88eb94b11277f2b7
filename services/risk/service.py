"""The risk service's use cases. Owns the transactions; raises domain errors; imports no grpc."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime

from services.platform.db import utcnow
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.masking import customer_token
from services.risk import rules
from services.risk.db import IdempotencyKey as IdempotencyKeyRow
from services.risk.db import RiskUnitOfWork
from services.risk.domain import (
    Channel,
    ConsentPage,
    ConsentRecord,
    HistoryPosition,
    QuietHours,
    ScreeningRequest,
    ScreeningResult,
    Verdict,
    consent_from_json,
    consent_to_json,
)

log = logging.getLogger("lodestar.risk")

CONSENT_CODEC = Codec(encode=consent_to_json, decode=consent_from_json)


class RiskService:
    def __init__(self, uow_factory: Callable[[], RiskUnitOfWork], *,
                 quiet_hours: QuietHours = rules.DEFAULT_QUIET_HOURS,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.uow_factory = uow_factory
        self.quiet_hours = quiet_hours
        self.clock = clock

    async def screen(self, request: ScreeningRequest) -> ScreeningResult:
        """Applies the rules and writes the audit row, in one transaction (at most one consent query)."""
        async with self.uow_factory() as uow:
            consents = {}
            key = rules.required_consent(request.channel)
            if key is not None:
                latest = await uow.consents.latest(request.customer_id, *key)
                if latest is not None:
                    consents[key] = latest
            result = rules.screen(request, consents, self.quiet_hours)
            uow.decisions.add(request, result)
            await uow.commit()
        log.info(
            "screened",
            extra={
                "customer_token": customer_token(request.customer_id),
                "channel": request.channel.value,
                "policy_version": result.policy_version,
                "offers": len(result.verdicts),
                "denied": sum(v.verdict == Verdict.DENY for v in result.verdicts),
                "held": sum(v.verdict == Verdict.HOLD for v in result.verdicts),
            },
        )
        return result

    async def record_consent(self, consent: ConsentRecord, key: IdempotencyKey | None) -> ConsentRecord:
        async def record(uow: RiskUnitOfWork) -> ConsentRecord:
            return await uow.consents.add(dataclasses.replace(consent, record_time=self.clock()))

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, CONSENT_CODEC, record)

    async def list_consent_history(
        self, customer_id: str, *, channel: Channel | None, after: HistoryPosition | None, page_size: int
    ) -> ConsentPage:
        async with self.uow_factory() as uow:
            records = await uow.consents.history(
                customer_id, channel=channel, after=after, limit=page_size + 1
            )
        more = len(records) > page_size
        records = records[:page_size]
        last = records[-1] if more and records else None
        position = None
        if last is not None:
            assert last.record_time is not None and last.record_id is not None
            position = HistoryPosition(last.record_time, last.record_id)
        return ConsentPage(records, position)
