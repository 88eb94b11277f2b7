"""Batch selection: N customers x 5 offers from segment to outbox through the launch pipeline (LaunchService on
a real SQLite database: plan, partitions, score, screen, assign, allocate, outbox), against a same-run
straight-line pandas + scikit-learn-free numpy script doing the same selection in one process (score with the
same heuristic, filter the same risk rule, hash-assign, greedy allocate).

    .venv/bin/python -m bench.batch_selection [--scale small|full]     # 50,000 | 1,000,000 customers

Profile's export and risk's ScreenBatch are in-process fakes (their own benchmarks measure them), so this
measures the campaign side: partitioning, claims, scoring, assignment, allocation and the outbox writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import append_section, command_line, scale_parser
from lodestar.common.v1 import common_pb2 as c
from services.campaign.clients import AudienceBatch
from services.campaign.db import CampaignUnitOfWork
from services.campaign.domain import APPROVED, Arm, Campaign, Offer
from services.campaign.launch import LaunchService, heuristic_probabilities
from services.platform.db import Database
from services.platform.migrations import upgrade

MIGRATIONS = Path(__file__).resolve().parents[1] / "services/campaign/migrations"
OFFERS = [Offer(f"o{j}", f"Offer {j}", t, c.PRODUCT_RISK_LEVEL_R1, v, k) for j, (t, v, k) in enumerate([
    (c.PRODUCT_TYPE_DEPOSIT, 80.0, 0.5), (c.PRODUCT_TYPE_SAVINGS_BOND, 120.0, 0.5), (c.PRODUCT_TYPE_WEALTH, 300.0, 1.0),
    (c.PRODUCT_TYPE_CONSUMER_LOAN, 150.0, 0.8), (c.PRODUCT_TYPE_INSTALMENT, 90.0, 0.4)])]


def audience(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame({"customer_id": [f"b{i:08d}" for i in range(n)],
                         "income": rng.lognormal(8.5, 0.8, n).round(0),
                         "risk_tolerance": rng.choice(["C1", "C2", "C3", "C4", "C5"], n),
                         "in_collections": rng.random(n) < 0.03})


class Audience:
    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.ids = frame["customer_id"].to_numpy()

    async def export_audience(self, segment: str, fields: Sequence[str], *, batch_size: int = 5000,
                              as_of: datetime | None = None, resume_token: str = ""):  # type: ignore[no-untyped-def]
        start = int(np.searchsorted(self.ids, resume_token, side="right")) if resume_token else 0
        for s in range(start, len(self.ids), batch_size):
            part = self.frame.iloc[s:s + batch_size]
            columns = {f: (part[f.removeprefix("attr.")].tolist() if f.removeprefix("attr.") in part else
                           [None] * len(part)) for f in fields}
            yield AudienceBatch(part["customer_id"].tolist(), columns, str(part["customer_id"].iloc[-1]),
                                as_of or datetime.now(UTC))


class Risk:
    """Credit offers are denied to customers in collections (the rule the baseline applies too)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.collections = set(frame.loc[frame["in_collections"], "customer_id"])

    async def screen_batch(self, offers, channel, contact_time, items):  # type: ignore[no-untyped-def]
        credit = {o.offer_id for o in offers if o.product_type in (c.PRODUCT_TYPE_CONSUMER_LOAN,
                                                                   c.PRODUCT_TYPE_INSTALMENT)}
        return {i.customer_id: {o.offer_id: "DENY" if o.offer_id in credit and i.customer_id in self.collections
                                else "ALLOW" for o in offers} for i in items}


def budget_for(n: int) -> float:
    return 0.2 * n


async def pipeline(frame: pd.DataFrame, workdir: Path) -> tuple[float, int]:
    url = f"sqlite+aiosqlite:///{workdir / 'campaign.db'}"
    upgrade(url, str(MIGRATIONS))
    database = Database.from_url(url)
    async with CampaignUnitOfWork(database) as uow:
        for offer in OFFERS:
            await uow.offers.add(offer)
        await uow.campaigns.add(Campaign("bench", state=APPROVED, segment="segments/all",
                                         offer_ids=[o.offer_id for o in OFFERS], channels=[c.CHANNEL_SMS],
                                         budget=budget_for(len(frame)), control_share=0.1,
                                         arms=[Arm("a", 0.9, "x")], created_by="m"))
        await uow.commit()
    service = LaunchService(lambda: CampaignUnitOfWork(database), Audience(frame), Risk(frame), worker_id="bench",
                            partition_size=10_000)
    started = time.perf_counter()
    launched = await service.launch("bench", "bench", None)
    await service.run_until_idle()
    elapsed = time.perf_counter() - started
    view = await service.get(launched.launch_id)
    await database.dispose()
    return elapsed, view.outbox_messages


def baseline(frame: pd.DataFrame) -> tuple[float, int]:
    started = time.perf_counter()
    n = len(frame)
    income = frame["income"].to_numpy(float)
    tolerance = frame["risk_tolerance"].str[1].astype(float).to_numpy()
    p = np.column_stack([heuristic_probabilities(o, income, tolerance) for o in OFFERS])
    values = p * np.array([o.conversion_value for o in OFFERS]) - np.array([o.contact_cost for o in OFFERS])
    credit = np.array([o.product_type in (c.PRODUCT_TYPE_CONSUMER_LOAN, c.PRODUCT_TYPE_INSTALMENT) for o in OFFERS])
    values[np.outer(frame["in_collections"].to_numpy(), credit)] = np.nan
    u = np.array([int.from_bytes(hashlib.sha256(f"bench:{cid}".encode()).digest()[:8], "big")
                  for cid in frame["customer_id"]], dtype=float) / 2.0 ** 64
    treated = u >= 0.1
    best = np.nanargmax(np.where(np.isnan(values), -np.inf, values), axis=1)
    value = values[np.arange(n), best]
    cost = np.array([o.contact_cost for o in OFFERS])[best]
    picks = pd.DataFrame({"customer_id": frame["customer_id"], "offer": best, "value": value, "cost": cost})
    picks = picks[treated & (value > 0)].sort_values("value", ascending=False)
    picks = picks[picks["cost"].cumsum() <= budget_for(n)]
    outbox = picks.assign(delivery_key="bench:" + picks["customer_id"])
    return time.perf_counter() - started, len(outbox)


def main(argv: list[str] | None = None) -> int:
    args = scale_parser(__doc__.splitlines()[0]).parse_args(argv)
    n = 1_000_000 if args.scale == "full" else 50_000
    frame = audience(n)
    runs, base = [], []
    for _ in range(1 if args.scale == "full" else 3):
        with tempfile.TemporaryDirectory() as tmp:
            elapsed, sent = asyncio.run(pipeline(frame, Path(tmp)))
        runs.append(elapsed)
        b_elapsed, b_sent = baseline(frame)
        base.append(b_elapsed)
    platform_s, baseline_s = statistics.median(runs), statistics.median(base)
    ratio = (n / platform_s) / (n / baseline_s)
    lines = [f"- customers: {n:,} x {len(OFFERS)} offers; outbox rows: platform {sent:,}, baseline {b_sent:,}",
             f"- platform pipeline (plan, partitions, score, screen, assign, allocate, outbox), median: "
             f"{platform_s:.2f} s ({n / platform_s:,.0f} customers/s)",
             f"- straight-line script (numpy/pandas, one process), median: {baseline_s:.2f} s "
             f"({n / baseline_s:,.0f} customers/s)",
             f"- throughput ratio platform / baseline: {ratio:.3f}"]
    print("\n".join(lines))
    append_section(f"Batch selection ({args.scale})", command_line(argv, "bench.batch_selection"), lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
