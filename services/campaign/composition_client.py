"""The composition of an audience and of the whole customer base by age band, gender and region tier, from
profile (fairness_gate.py's CompositionSource, and the report's fairness tables).

- The audience: ExportAudience of the segment with `age_band` (computed by profile from the birth date, which
  itself never leaves profile), `attr.gender` and `tag.region_tier`; a value absent is the group "unknown".
  A field profile refuses (not registered, personal data) drops its dimension.
- The base: one PreviewSegment count per group (`age >= 25 and age < 35`, `gender = "F"`,
  `tag.region_tier = "tier-1"`, ...), over the groups known in advance (profile's age bands, the region tiers,
  the gender attribute's allowed values in the registry) and every group seen in the audience, so a group the
  audience leaves out entirely still shows, with rate 0.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2

from lodestar.profile.v1 import profile_service_pb2, segment_service_pb2
from services.campaign.clients import ProfileClient, SegmentClient
from services.campaign.fairness_gate import Composition
from services.platform.db import utcnow
from services.platform.errors import InvalidArgument
from services.profile.tags import AGE_BANDS, UNKNOWN

# dimension -> the exported field
FIELDS = {"age_band": "age_band", "gender": "attr.gender", "region_tier": "tag.region_tier"}
REGION_TIERS = ("tier-1", "tier-2", "tier-3", "county", "rural")


def age_band_condition(band: str) -> str:
    if band == UNKNOWN:
        return "age is null"
    lower = 0
    for limit, name in AGE_BANDS:
        if name == band:
            return f"age >= {lower} and age < {limit}" if lower else f"age < {limit}"
        lower = limit
    return f"age >= {AGE_BANDS[-1][0]}"  # "65+"


def group_condition(dimension: str, group: str) -> str:
    if dimension == "age_band":
        return age_band_condition(group)
    name = "gender" if dimension == "gender" else "tag.region_tier"
    if group == UNKNOWN:  # the tag stores "unknown" itself; the attribute is just absent
        return f'{name} is null' if dimension == "gender" else f'{name} is null or {name} = "{UNKNOWN}"'
    return f"{name} = {json.dumps(group)}"


def known_groups(dimension: str) -> list[str]:
    if dimension == "age_band":
        return [band for _, band in AGE_BANDS] + ["65+", UNKNOWN]
    if dimension == "region_tier":
        return [*REGION_TIERS, UNKNOWN]
    return [UNKNOWN]


class ProfileComposition:
    def __init__(self, segments: SegmentClient, profile: ProfileClient) -> None:
        self.segments = segments
        self.profile = profile

    async def members(self, segment: str, as_of: datetime | None = None
                      ) -> tuple[list[str], dict[str, list[str]]]:
        """Every member of the segment and, per measurable dimension, its group (in member order)."""
        fields = list(FIELDS.values())
        for _attempt in range(len(fields) + 1):
            ids: list[str] = []
            columns: dict[str, list[Any]] = {f: [] for f in fields}
            try:
                async for batch in self.segments.export_audience(segment, fields, batch_size=10_000, as_of=as_of):
                    ids.extend(batch.customer_ids)
                    for f in fields:
                        columns[f].extend(batch.columns.get(f) or [None] * len(batch.customer_ids))
                break
            except InvalidArgument as error:
                bad = {v.field for v in error.violations if v.field.startswith("fields[")}
                kept = [f for i, f in enumerate(fields) if f"fields[{i}]" not in bad]
                if not bad or kept == fields:
                    raise
                fields = kept
        groups = {dim: [str(v) if v not in (None, "") else UNKNOWN for v in columns[field]]
                  for dim, field in FIELDS.items() if field in fields}
        return ids, groups

    async def _count(self, condition: str, as_of: datetime) -> int:
        when = timestamp_pb2.Timestamp()
        when.FromDatetime(as_of)
        request = segment_service_pb2.PreviewSegmentRequest(condition_text=condition, as_of=when, sample_size=1)
        response = await self.segments.call(self.segments.stub.PreviewSegment, request, timeout=30.0)
        return int(response.count)

    async def _gender_values(self) -> list[str]:
        token = ""  # nosec B105 - an empty page token, not a password
        while True:
            request = profile_service_pb2.ListAttributesRequest(page_size=1000, page_token=token)
            page = await self.profile.call(self.profile.stub.ListAttributes, request)
            for attribute in page.attributes:
                if attribute.name == "gender":
                    return list(attribute.allowed_values)
            token = page.next_page_token
            if not token:
                return []

    async def composition(self, segment: str) -> list[Composition]:
        as_of = utcnow()
        _, groups = await self.members(segment, as_of)
        out = []
        for dimension, values in groups.items():
            audience = Counter(values)
            names: Sequence[str] = known_groups(dimension)
            if dimension == "gender":
                names = [*await self._gender_values(), *names]
            wanted = list(dict.fromkeys([*names, *sorted(audience)]))
            counts = {g: (audience.get(g, 0), await self._count(group_condition(dimension, g), as_of))
                      for g in wanted}
            out.append(Composition(dimension, counts))
        return out
