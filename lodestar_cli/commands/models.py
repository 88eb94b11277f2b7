"""`lodestar import history FILE` and `lodestar models train|list|promote` (campaign's learning loop, by hand).

History CSV columns (a header row; any separator with --sep):
  customer_id, contact_time (ISO 8601), treated (true/false/1/0/yes/no), converted (same) — required;
  offer_id, campaign_ref, arm, channel (sms, email, app_push, wechat, phone, ...), responded, revenue — optional
  (--offer, --campaign-ref give defaults for the whole file); every other column becomes the record's context
  (facts known at contact time, e.g. previous contacts), used as model features.
Rows are sent in batches, each with its own request id (a retried batch is applied once); importing the same
file again changes nothing: the service skips the records it holds and counts them as already present. Bad rows
go to FILE.errors.csv with row, field and reason; good rows are imported.
"""

from __future__ import annotations

import argparse
import csv
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lodestar.campaign.v1 import campaign_service_pb2 as cpb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
from lodestar.campaign.v1 import history_pb2, model_pb2
from lodestar.common.v1 import common_pb2
from lodestar_cli.commands import group
from lodestar_cli.main import CliError, Context, enum_name, table, to_dict

BATCH = 5_000
REQUIRED = ("customer_id", "contact_time", "treated", "converted")
KNOWN = {*REQUIRED, "offer_id", "campaign_ref", "arm", "channel", "responded", "revenue"}
TRUE, FALSE = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f", ""}
KINDS = {"propensity": model_pb2.MODEL_KIND_PROPENSITY, "uplift": model_pb2.MODEL_KIND_UPLIFT}


class RowError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def _bool(row: dict[str, str], name: str) -> bool:
    text = (row.get(name) or "").strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise RowError(name, "NOT_A_BOOLEAN")


def _channel(text: str) -> int:
    if not text.strip():
        return int(common_pb2.CHANNEL_UNSPECIFIED)
    try:
        return int(common_pb2.Channel.Value("CHANNEL_" + text.strip().upper()))
    except ValueError:
        raise RowError("channel", "UNKNOWN_CHANNEL") from None


def history_record(row: dict[str, str], number: int, offer: str, campaign_ref: str) -> history_pb2.HistoryRecord:
    """One CSV row as a HistoryRecord; RowError (field, reason) when a value cannot be read."""
    try:
        when = datetime.fromisoformat((row.get("contact_time") or "").strip())
    except ValueError:
        raise RowError("contact_time", "NOT_AN_ISO_8601_TIME") from None
    record = history_pb2.HistoryRecord(
        customer_id=(row.get("customer_id") or "").strip(), campaign_ref=(row.get("campaign_ref") or campaign_ref),
        offer_id=(row.get("offer_id") or offer), arm=(row.get("arm") or ""), treated=_bool(row, "treated"),
        channel=_channel(row.get("channel") or ""),  # type: ignore[arg-type]
        responded=_bool(row, "responded") if row.get("responded") else False,
        converted=_bool(row, "converted"), row_number=number,
        context={k: v for k, v in row.items() if k not in KNOWN and k and v is not None and v != ""})
    if not record.offer_id:
        raise RowError("offer_id", "MISSING (a column or --offer)")
    revenue = (row.get("revenue") or "").strip()
    if revenue:
        try:
            record.revenue = float(revenue)
        except ValueError:
            raise RowError("revenue", "NOT_A_NUMBER") from None
    record.contact_time.FromDatetime(when if when.tzinfo else when.replace(tzinfo=UTC))
    return record


def _batches(path: Path, sep: str, offer: str, campaign_ref: str,
             bad: list[tuple[int, str, str]]) -> Iterator[tuple[int, list[history_pb2.HistoryRecord]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=sep)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise CliError("INVALID_ARGUMENT", "HISTORY_COLUMNS_MISSING",
                           f"{path}: missing column(s) {', '.join(missing)} (see `lodestar import history --help`)")
        batch: list[history_pb2.HistoryRecord] = []
        for number, row in enumerate(reader, start=1):
            try:
                batch.append(history_record(row, number, offer, campaign_ref))
            except RowError as error:
                bad.append((number, error.field, error.reason))
            if len(batch) == BATCH:
                yield number, batch
                batch = []
        if batch:
            yield number, batch


def cmd_import_history(ctx: Context) -> int:
    args = ctx.args
    path = Path(args.file)
    if not path.is_file():
        raise CliError("INVALID_ARGUMENT", "FILE_NOT_FOUND", f"{path}: no such file")
    run_id = uuid.uuid4().hex[:12]
    bad: list[tuple[int, str, str]] = []
    imported = duplicates = 0
    show = not ctx.as_json and sys.stderr.isatty()
    with path.open("rb") as handle:
        rows = max(sum(1 for _ in handle) - 1, 0)
    with ctx.channel("campaign") as channel, tqdm(total=rows, unit="row", file=ctx.err, disable=not show,
                                                  desc="history") as bar:
        stub = cpbg.CampaignServiceStub(channel)
        for index, (last_row, records) in enumerate(_batches(path, args.sep, args.offer, args.campaign_ref, bad)):
            request = cpb.ImportCampaignHistoryRequest(records=records, request_id=f"history-{run_id}-{index}")
            response = stub.ImportCampaignHistory(iter([request]), timeout=ctx.timeout)
            imported += response.imported
            duplicates += response.duplicates
            bad += [(e.row_number, e.field, e.reason) for e in response.errors]
            bar.update(last_row - bar.n)
        bar.update(max(rows - bar.n, 0))
    errors_file = Path(args.errors or f"{path}.errors.csv")
    if bad:
        with errors_file.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["row", "field", "reason"])
            writer.writerows(sorted(bad))
    data = {"imported": imported, "duplicates": duplicates, "failed": len(bad),
            "errors_file": str(errors_file) if bad else None}
    text = f"imported {imported}, already present {duplicates}, failed {len(bad)}" + (
        f" (rows with their reasons in {errors_file})" if bad else "")
    ctx.emit(data, text)
    return 0 if not bad else 1


def _version(v: model_pb2.ModelVersion) -> dict[str, Any]:
    return {"model": v.name, "model_id": v.model_id, "version": v.version,
            "kind": enum_name(model_pb2.ModelKind, v.kind, "MODEL_KIND_").lower(),
            "offer_id": v.offer_id, "status": enum_name(model_pb2.ModelStatus, v.status, "MODEL_STATUS_").lower(),
            "auc": round(v.metrics.auc, 4), "auc_std": round(v.metrics.auc_std, 4), "qini": round(v.metrics.qini, 4),
            "validation": v.metrics.validation, "training_rows": v.metrics.training_rows,
            "features": list(v.features), "algorithm": v.algorithm}


def cmd_train(ctx: Context) -> int:
    request = cpb.TrainModelRequest(kind=KINDS[ctx.args.kind], offer_id=ctx.args.offer,  # type: ignore[arg-type]
                                    folds=ctx.args.folds, request_id=ctx.args.request_id)
    with ctx.channel("campaign") as channel:
        trained = cpbg.CampaignServiceStub(channel).TrainModel(request, timeout=max(ctx.timeout, 600.0))
    data = _version(trained.model_version)
    ctx.emit(data, f"{data['model']} ({data['algorithm']}, {data['training_rows']} rows): AUC {data['auc']:.4f} "
                   f"± {data['auc_std']:.4f} by {data['validation']}"
                   + (f", Qini {data['qini']:.4f}" if data["kind"] == "uplift" else "")
                   + f"; status {data['status']} (promote it with `lodestar models promote {data['model']}`)")
    return 0


def cmd_list(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        response = cpbg.CampaignServiceStub(channel).ListModelVersions(
            cpb.ListModelVersionsRequest(model_id=ctx.args.model_id, page_size=100), timeout=ctx.timeout)
    versions = [_version(v) for v in response.model_versions]
    rows = [(v["model"], v["status"], f"{v['auc']:.4f}", v["training_rows"], v["validation"]) for v in versions]
    ctx.emit({"model_versions": versions, "next_page_token": response.next_page_token},
             table(rows, ("MODEL", "STATUS", "AUC", "ROWS", "VALIDATION")) if rows else "no model versions")
    return 0


def cmd_promote(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        response = cpbg.CampaignServiceStub(channel).PromoteModelVersion(
            cpb.PromoteModelVersionRequest(name=ctx.args.name, request_id=ctx.args.request_id), timeout=ctx.timeout)
    ctx.emit(to_dict(response), f"{ctx.args.name} is now the champion")
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    imports = group(commands, common, "import", "bulk import: customers (profile), campaign history (campaign)")
    history = imports.add_parser("history", parents=[common], help="past campaign contacts and outcomes (CSV)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    history.add_argument("file")
    history.add_argument("--sep", default=",", help="CSV separator (default ',')")
    history.add_argument("--offer", default="", help="offer id of rows without an offer_id column")
    history.add_argument("--campaign-ref", default="imported", help="campaign of rows without a campaign_ref column")
    history.add_argument("--errors", default=None, help="where bad rows go (default FILE.errors.csv)")
    history.set_defaults(handler=cmd_import_history)

    models = group(commands, common, "models", "propensity and uplift models: train, list, promote")
    train = models.add_parser("train", parents=[common], help="train a new version from the imported history")
    train.add_argument("--kind", choices=sorted(KINDS), default="propensity")
    train.add_argument("--offer", required=True)
    train.add_argument("--folds", type=int, default=5, help="cross-validation folds, 2-10 (default 5)")
    train.add_argument("--request-id", default="")
    train.set_defaults(handler=cmd_train)
    listing = models.add_parser("list", parents=[common], help="model versions with their metrics")
    listing.add_argument("--model-id", default="", help='e.g. "propensity-deposit-12m"')
    listing.set_defaults(handler=cmd_list)
    promote = models.add_parser("promote", parents=[common], help="make a version the champion Decide uses")
    promote.add_argument("name", help='"models/{model_id}/versions/{version}"')
    promote.add_argument("--request-id", default="")
    promote.set_defaults(handler=cmd_promote)
