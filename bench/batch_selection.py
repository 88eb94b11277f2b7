"""Batch selection: N customers x 5 offers from segment to outbox through the launch pipeline, against a same-run
straight-line pandas script doing the same selection in one process.

    .venv/bin/python -m bench.batch_selection [--scale small|full]     # 50,000 | 1,000,000 customers

The platform: LaunchService on a real SQLite database — plan, partitions claimed through the database, export,
score, ScreenBatch, hash assignment, decision records (every member's verdicts, probabilities, feature snapshot
and its sha256, compressed per partition), allocation under the budget, the outbox. Profile's export and risk's
ScreenBatch are in-process fakes (their own benchmarks measure them: bench.segments, bench.screen_batch), so
this measures the campaign side.

The baseline: what an analyst would write in one pandas script — score every customer for every offer, drop
credit offers for customers in collections (the rule the fake risk applies), hash-assign control, pick each
customer's best positive offer, sort by value per unit cost, keep what the budget pays for, and write the outbox
rows into SQLite with one executemany. It writes no decision records, claims nothing and cannot resume.

Two variants, each against its own baseline:
- champion models: each offer has a LightGBM propensity champion (trained once, before the clock starts, with
  modeling.train on synthetic history); the platform scores through the model registry's path, the script calls
  the same boosters' predict on a pandas frame it builds itself;
- heuristic: no champion, the vectorised heuristic scorer on both sides (the least work per customer, so the
  platform's fixed costs weigh most).

Targets (issue 5): 1,000,000 x 5 within 60 s, and at least half the script's throughput.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.report import append_section, command_line, markdown_table, scale_parser
from lodestar.common.v1 import common_pb2 as c
from services.campaign import modeling
from services.campaign.app import DEFAULT_LAUNCH_CONCURRENCY
from services.campaign.clients import VERDICT_CODES, AudienceBatch, ScreenedBatch, ScreeningSubjects
from services.campaign.db import CampaignUnitOfWork
from services.campaign.domain import APPROVED, Arm, Campaign, Offer
from services.campaign.launch import LaunchService, heuristic_probabilities
from services.platform.db import Database
from services.platform.migrations import upgrade

MIGRATIONS = Path(__file__).resolve().parents[1] / "services/campaign/migrations"
OFFERS = [Offer(f"o{j}", f"Offer {j}", t, c.PRODUCT_RISK_LEVEL_R1, v, k) for j, (t, v, k) in enumerate([
    (c.PRODUCT_TYPE_DEPOSIT, 80.0, 0.5), (c.PRODUCT_TYPE_SAVINGS_BOND, 120.0, 0.5), (c.PRODUCT_TYPE_WEALTH, 300.0, 1.0),
    (c.PRODUCT_TYPE_CONSUMER_LOAN, 150.0, 0.8), (c.PRODUCT_TYPE_INSTALMENT, 90.0, 0.4)])]
CREDIT = (c.PRODUCT_TYPE_CONSUMER_LOAN, c.PRODUCT_TYPE_INSTALMENT)
CONTROL_SHARE = 0.1
REGIONS = ["CN-11", "CN-31", "CN-44", "CN-51", "CN-61"]


def audience(n: int, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ages = rng.integers(18, 80, n).astype(float)
    ages[rng.random(n) < 0.05] = np.nan  # profile knows no birth date for some
    return pd.DataFrame({"customer_id": [f"b{i:08d}" for i in range(n)],
                         "income": rng.lognormal(8.5, 0.8, n).round(0),
                         "risk_tolerance": rng.choice(["C1", "C2", "C3", "C4", "C5"], n),
                         "in_collections": rng.random(n) < 0.03,
                         "region": rng.choice(REGIONS, n), "time_zone": "Asia/Shanghai", "age": ages})


def budget_for(n: int) -> float:
    return 0.2 * n


# --- the fakes of profile's export and risk's ScreenBatch -------------------------------------------------------


class Audience:
    def __init__(self, frame: pd.DataFrame) -> None:
        # As profile exports it: an unknown age is absent (None), not NaN.
        self.frame = frame.assign(age=frame["age"].astype(object).where(frame["age"].notna(), None))
        self.ids = frame["customer_id"].to_numpy()

    async def export_audience(self, segment: str, fields: Sequence[str], *, batch_size: int = 5000,
                              as_of: datetime | None = None, resume_token: str = ""):  # type: ignore[no-untyped-def]
        start = int(np.searchsorted(self.ids, resume_token, side="right")) if resume_token else 0
        for s in range(start, len(self.ids), batch_size):
            part = self.frame.iloc[s:s + batch_size]
            columns = {f: part[f.removeprefix("attr.")].tolist() if f.removeprefix("attr.") in part
                       else [None] * len(part) for f in fields}
            yield AudienceBatch(part["customer_id"].tolist(), columns, str(part["customer_id"].iloc[-1]),
                                as_of or datetime.now(UTC))


class Risk:
    """Credit offers are denied (IN_COLLECTIONS) to customers in collections: the rule the baseline applies."""

    async def screen_subjects(self, offers: Sequence[Offer], channel: int, contact_time: datetime,
                              subjects: ScreeningSubjects) -> ScreenedBatch:
        collections = np.array(subjects.column("in_collections"), dtype=bool)
        credit = np.array([o.product_type in CREDIT for o in offers])
        denied = np.outer(collections, credit)
        verdicts = np.where(denied, VERDICT_CODES["DENY"], VERDICT_CODES["ALLOW"]).astype(np.int8)
        return ScreenedBatch(verdicts, denied.astype(np.int32), ["", "IN_COLLECTIONS"], "bench-policy")


class Champions:
    def __init__(self, models: dict[str, modeling.TrainedModel]) -> None:
        self.models = models

    async def champion(self, offer_id: str, kind: str = "propensity") -> tuple[modeling.TrainedModel, str] | None:
        model = self.models.get(offer_id) if kind == "propensity" else None
        return (model, f"models/propensity-{offer_id}/versions/1") if model is not None else None


def train_champions(seed: int = 11, rows: int = 20_000) -> dict[str, modeling.TrainedModel]:
    """A LightGBM propensity model per offer, from synthetic history whose outcomes follow the heuristic with
    a region effect (so the models have something to learn)."""
    frame = audience(rows, seed)
    when = datetime(2026, 6, 1, 10, tzinfo=UTC)
    income = frame["income"].to_numpy(float)
    tolerance = frame["risk_tolerance"].str[1].astype(float).to_numpy()
    rng = np.random.default_rng(seed)
    models = {}
    for offer in OFFERS:
        p = heuristic_probabilities(offer, income, tolerance, frame["age"].to_numpy(float))
        p = np.clip(p * np.where(frame["region"] == "CN-31", 1.5, 1.0) * 4, 0, 0.9)
        converted = rng.random(rows) < p
        examples = [modeling.Example({"income": inc, "risk_tolerance": tol}, None if age != age else
                                     (when - timedelta(days=int(age * 365.25 + 182))).date(), region, when, {},
                                     True, bool(y))
                    for inc, tol, age, region, y in zip(frame["income"], frame["risk_tolerance"], frame["age"],
                                                        frame["region"], converted, strict=True)]
        models[offer.offer_id] = modeling.train(examples, "propensity", folds=2)
    return models


# --- the platform -----------------------------------------------------------------------------------------------


async def pipeline(frame: pd.DataFrame, workdir: Path, champions: Champions | None) -> tuple[float, int]:
    url = f"sqlite+aiosqlite:///{workdir / 'campaign.db'}"
    upgrade(url, str(MIGRATIONS))
    database = Database.from_url(url)
    async with CampaignUnitOfWork(database) as uow:
        for offer in OFFERS:
            await uow.offers.add(offer)
        await uow.campaigns.add(Campaign("bench", state=APPROVED, segment="segments/all",
                                         offer_ids=[o.offer_id for o in OFFERS], channels=[c.CHANNEL_SMS],
                                         budget=budget_for(len(frame)), control_share=CONTROL_SHARE,
                                         arms=[Arm("a", 1 - CONTROL_SHARE, "x")], created_by="m"))
        await uow.commit()
    service = LaunchService(lambda: CampaignUnitOfWork(database), Audience(frame), Risk(), champions,
                            worker_id="bench", partition_size=10_000, concurrency=DEFAULT_LAUNCH_CONCURRENCY)
    started = time.perf_counter()
    launched = await service.launch("bench", "bench", None)
    await service.run_until_idle()
    elapsed = time.perf_counter() - started
    view = await service.get(launched.launch_id)
    await database.dispose()
    return elapsed, view.outbox_messages


# --- the straight-line script -----------------------------------------------------------------------------------


def script_frame(frame: pd.DataFrame, spec: modeling.FeatureSpec, when: datetime) -> pd.DataFrame:
    """The model's input, built the way a script would: its columns by hand from the audience frame."""
    age = frame["age"].to_numpy(float)
    today = when.date()
    source = {"attr.income": frame["income"].to_numpy(float), "attr.risk_tolerance": frame["risk_tolerance"],
              "age": age, "region": frame["region"], "contact.month": str(today.month), "contact.day": today.day,
              "contact.weekday": str(today.weekday())}
    data: dict[str, Any] = {}
    for name in spec.numeric:
        data[name] = np.broadcast_to(np.asarray(source.get(name, np.nan), dtype=float), len(frame))
    for name, levels in spec.categorical.items():
        values = pd.Series(np.broadcast_to(np.asarray(source.get(name), dtype=object), len(frame)))
        data[name] = pd.Categorical(values.where(values.isin(levels), None), categories=levels)  # unseen: missing
    return pd.DataFrame(data, columns=spec.columns)


def baseline(frame: pd.DataFrame, workdir: Path, models: dict[str, modeling.TrainedModel] | None
             ) -> tuple[float, int]:
    database = sqlite3.connect(workdir / "script.db")
    database.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, delivery_key TEXT UNIQUE, customer_id TEXT, "
                     "offer_id TEXT, channel INTEGER, arm_id TEXT, expected_value REAL, probability REAL, "
                     "state TEXT, create_time TEXT)")
    started = time.perf_counter()
    n = len(frame)
    when = datetime.now(UTC)
    if models:
        p = np.column_stack([models[o.offer_id].score(script_frame(frame, models[o.offer_id].spec, when),
                                                      threads=os.cpu_count() or 1) for o in OFFERS])
    else:
        income = frame["income"].to_numpy(float)
        tolerance = frame["risk_tolerance"].str[1].astype(float).to_numpy()
        p = np.column_stack([heuristic_probabilities(o, income, tolerance, frame["age"].to_numpy(float))
                             for o in OFFERS])
    p = np.clip(p, 0.0, 1.0)
    values = p * np.array([o.conversion_value for o in OFFERS]) - np.array([o.contact_cost for o in OFFERS])
    credit = np.array([o.product_type in CREDIT for o in OFFERS])
    values[np.outer(frame["in_collections"].to_numpy(), credit)] = -np.inf
    u = np.array([int.from_bytes(hashlib.sha256(f"bench:{cid}".encode()).digest()[:8], "big")
                  for cid in frame["customer_id"]], dtype=float) / 2.0 ** 64
    treated = u >= CONTROL_SHARE
    best = np.argmax(values, axis=1)
    value = values[np.arange(n), best]
    cost = np.array([o.contact_cost for o in OFFERS])[best]
    picks = pd.DataFrame({"customer_id": frame["customer_id"], "offer": best, "value": value, "cost": cost,
                          "probability": p[np.arange(n), best]})
    picks = picks[treated & (value > 0)]
    picks = picks.iloc[np.argsort(-(picks["value"] / picks["cost"]).to_numpy(), kind="stable")]
    picks = picks[picks["cost"].cumsum() <= budget_for(n)]
    offer_ids = np.array([o.offer_id for o in OFFERS], dtype=object)[picks["offer"].to_numpy()]
    stamp = when.isoformat()
    database.executemany(
        "INSERT INTO outbox (delivery_key, customer_id, offer_id, channel, arm_id, expected_value, probability, "
        "state, create_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        zip(("bench:" + picks["customer_id"]).tolist(), picks["customer_id"].tolist(), offer_ids.tolist(),
            [c.CHANNEL_SMS] * len(picks), ["a"] * len(picks), picks["value"].tolist(),
            picks["probability"].tolist(), ["PENDING"] * len(picks), [stamp] * len(picks), strict=True))
    database.commit()
    elapsed = time.perf_counter() - started
    database.close()
    return elapsed, len(picks)


def measure(frame: pd.DataFrame, models: dict[str, modeling.TrainedModel] | None, runs: int
            ) -> tuple[float, float, int, int]:
    platform_runs, script_runs = [], []
    sent = script_sent = 0
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            elapsed, sent = asyncio.run(pipeline(frame, Path(tmp), Champions(models) if models else None))
            platform_runs.append(elapsed)
            b_elapsed, script_sent = baseline(frame, Path(tmp), models)
            script_runs.append(b_elapsed)
    return statistics.median(platform_runs), statistics.median(script_runs), sent, script_sent


def main(argv: list[str] | None = None) -> int:
    args = scale_parser(__doc__.splitlines()[0]).parse_args(argv)
    n = 1_000_000 if args.scale == "full" else 50_000
    runs = 3
    frame = audience(n)
    print(f"training {len(OFFERS)} champion models on synthetic history ...", flush=True)
    models = train_champions()
    table = []
    ratios = {}
    for label, variant in (("champion models (LightGBM)", models), ("heuristic scorer", None)):
        print(f"{label}: {n:,} customers x {len(OFFERS)} offers ...", flush=True)
        platform_s, script_s, sent, script_sent = measure(frame, variant, runs)
        ratios[label] = (platform_s, (n / platform_s) / (n / script_s))
        table.append([label, f"{platform_s:.2f} s ({n / platform_s:,.0f}/s)", f"{sent:,}",
                      f"{script_s:.2f} s ({n / script_s:,.0f}/s)", f"{script_sent:,}", f"{ratios[label][1]:.2f}"])
    lines = [f"- customers: {n:,} x {len(OFFERS)} offers, one channel, budget {budget_for(n):,.0f}, "
             f"control {CONTROL_SHARE:.0%}; medians of {runs} run(s)", "",
             *markdown_table(["variant", "platform (segment to outbox)", "outbox rows", "pandas script",
                              "script rows", "throughput ratio platform / script"], table), "",
             "- the platform also writes every member's decision record and can resume after a crash; the script "
             "writes only the outbox (its greedy stops at the first customer the budget cannot pay for, the "
             "platform's skips to cheaper ones, hence a few more rows)"]
    if args.scale == "full":  # issue 5's targets: 1,000,000 x 5 within 60 s, at least half the script's rate
        lines += [f"- targets (within 60 s, ratio >= 0.5), {label}: "
                  f"{'met' if seconds <= 60 and r >= 0.5 else 'NOT met'} ({seconds:.1f} s, {r:.2f})"
                  for label, (seconds, r) in ratios.items()]
    print("\n".join(lines))
    append_section(f"Batch selection ({args.scale})", command_line(argv, "bench.batch_selection"), lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
