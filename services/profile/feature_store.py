"""The feature store: each customer's features (services/profile/features.py, the same definitions and the same
batch executor) materialised as rows of `customer_features`, so that `feature.*` conditions compile to SQL (a
correlated lookup by the table's primary key) and audiences can export features without recomputing them.

Refreshed by the tag job (services/profile/tag_job.py), chunk by chunk, at the job's as_of: a condition over
features reads them as of the last refresh, while the in-memory evaluator (real-time decisions) computes them at
its own as_of. tests/property/test_segments_feature_store.py proves both select the same customers when the
store is fresh. Only features present for a customer are stored (recency_days and tenure_days may be absent):
an absent feature is NULL on both sides.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform.db import insert_rows
from services.profile.db import CustomerFeatureRow
from services.profile.features import AGGREGATES, FeatureSet

INSERT_CHUNK = 5000
# Fixed names (ungrouped aggregates, and those _finish adds).
_FIXED = tuple(sorted({a.name for a in AGGREGATES if a.by is None} | {"tenure_days", "recency_days",
                                                                       "products_held_count"}))
_GROUP_KEY = "[a-z0-9][a-z0-9_]{0,63}"
# Grouped names ("spend_category_{key}_365d", "response_{key}_count_365d") and "product_{name}".
_PATTERN = re.compile("^(?:" + "|".join(
    [re.escape(name) for name in _FIXED]
    + [re.escape(a.name).replace(re.escape("{key}"), _GROUP_KEY) for a in AGGREGATES if a.by is not None]
    + [f"product_{_GROUP_KEY}"]
) + ")$")
MAX_NAME = 128


class FeatureNames(Collection[str]):
    """What a condition may name as `feature.<name>`: the fixed names, and any group key of a grouped feature
    (categories, channels, products are open sets). Iterating yields the fixed names only."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and len(name) <= MAX_NAME and _PATTERN.match(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(_FIXED)

    def __len__(self) -> int:
        return len(_FIXED)


FEATURE_NAMES = FeatureNames()


def feature_rows(features: Mapping[str, FeatureSet], as_of: datetime) -> list[dict[str, object]]:
    return [
        {"customer_id": customer_id, "name": name, "value": float(value), "as_of": as_of}
        for customer_id, feature_set in features.items()
        for name, value in feature_set.values.items()
        if len(name) <= MAX_NAME
    ]


async def replace_features(session: AsyncSession, customer_ids: Sequence[str], features: Mapping[str, FeatureSet],
                           as_of: datetime) -> int:
    """Replaces the stored features of these customers (in the caller's transaction); rows written."""
    for start in range(0, len(customer_ids), 1000):
        chunk = list(customer_ids[start:start + 1000])
        await session.execute(delete(CustomerFeatureRow).where(CustomerFeatureRow.customer_id.in_(chunk)))
    rows = feature_rows(features, as_of)
    await insert_rows(session, CustomerFeatureRow.__table__, rows, chunk=INSERT_CHUNK)  # type: ignore[arg-type]
    return len(rows)
