"""Cross-sell, churn and pricing (docs/recommendations.md):

`lodestar recommend CUSTOMER [-k 3]`, `lodestar recommender train`, `lodestar churn train --cutoff T`,
`lodestar churn score [CUSTOMER ...] [--write-tags]`, `lodestar churn winback CAMPAIGN --offer O --channel sms
--actor A` (the win-back template), `lodestar pricing set-band|get-band|fit OFFER`.
Training and batch scoring run server-side and may take a while: a progress indicator (elapsed time) shows on
stderr while they run, unless --json is given or stderr is not a terminal.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from tqdm import tqdm

from lodestar.campaign.v1 import campaign_pb2, campaign_service_pb2, campaign_service_pb2_grpc, offer_pb2
from lodestar.campaign.v1 import recommendation_service_pb2 as pb
from lodestar.campaign.v1 import recommendation_service_pb2_grpc as pbg
from lodestar.common.v1 import common_pb2
from lodestar.profile.v1 import segment_service_pb2, segment_service_pb2_grpc
from lodestar_cli.main import DEFAULT_TIMEOUT_SECONDS, CliError, Context, table
from services.campaign import churn

LONG_TIMEOUT = 600.0


def _wait(ctx: Context, future: Any, what: str) -> Any:
    """The result of a long call, with an elapsed-time indicator on stderr while it runs."""
    show = not ctx.as_json and ctx.err.isatty()
    with tqdm(desc=what, total=None, file=ctx.err, disable=not show, bar_format="{desc}: {elapsed}") as bar:
        while not future.done():
            time.sleep(0.2)
            bar.update(0)
            bar.refresh()
    return future.result()


def _long_timeout(ctx: Context) -> float:
    """Training and batch scoring: LONG_TIMEOUT unless --timeout was given."""
    return LONG_TIMEOUT if ctx.timeout == DEFAULT_TIMEOUT_SECONDS else ctx.timeout


def cmd_recommend(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        response = pbg.RecommendationServiceStub(channel).RecommendProducts(
            pb.RecommendProductsRequest(customer_id=ctx.args.customer_id, k=ctx.args.k), timeout=ctx.timeout)
    items = []
    for r in response.recommendations:
        items.append({
            "rank": r.rank, "product": r.product, "score": round(r.score, 4), "cf_score": round(r.cf_score, 4),
            "rules": [{"antecedent": list(x.antecedent), "consequent": x.consequent, "support": x.support,
                       "confidence": x.confidence, "lift": x.lift} for x in r.rules],
            "similar_items": [{"item": s.item, "similarity": s.similarity} for s in r.similar_items]})
    rows = []
    for item in items:
        rule = item["rules"][0] if item["rules"] else None
        evidence = (f"{' & '.join(rule['antecedent'])} => {rule['consequent']} (conf {rule['confidence']:.2f}, "
                    f"lift {rule['lift']:.2f})" if rule else ", ".join(
                        f"{s['item']} ({s['similarity']:.2f})" for s in item["similar_items"]) or "popularity")
        rows.append((item["rank"], item["product"], f"{item['score']:.3f}", evidence))
    text = (f"recommendations ({response.recommender_version})\n\n"
            + table(rows, ("RANK", "PRODUCT", "SCORE", "EVIDENCE")))
    ctx.emit({"customer_id": response.customer_id, "recommender_version": response.recommender_version,
              "recommendations": items}, text)
    return 0


def cmd_recommender_train(ctx: Context) -> int:
    request = pb.TrainRecommenderRequest(min_support=ctx.args.min_support, min_confidence=ctx.args.min_confidence,
                                         test_fraction=ctx.args.test_fraction, request_id=ctx.args.request_id)
    with ctx.channel("campaign") as channel:
        future = pbg.RecommendationServiceStub(channel).TrainRecommender.future(request, timeout=_long_timeout(ctx))
        response = _wait(ctx, future, "training the recommender")
    m = response.metrics
    data = {"name": response.name, "metrics": {
        "k": m.k, "hit_rate": m.hit_rate, "popularity_hit_rate": m.popularity_hit_rate,
        "training_customers": m.training_customers, "test_customers": m.test_customers, "rules": m.rules,
        "validation": m.validation}}
    text = (f"{response.name}: hit-rate@{m.k} {m.hit_rate:.3f} vs popularity {m.popularity_hit_rate:.3f} "
            f"({m.test_customers} held-out customers, {m.rules} rules)")
    ctx.emit(data, text)
    return 0


def _time(text: str, option: str) -> timestamp_pb2.Timestamp:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CliError("INVALID_ARGUMENT", "INVALID_TIME", f"{option} must be an ISO 8601 time") from None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return stamp


def cmd_churn_train(ctx: Context) -> int:
    request = pb.TrainChurnModelRequest(cutoff_time=_time(ctx.args.cutoff, "--cutoff"),
                                        horizon_days=ctx.args.horizon_days, folds=ctx.args.folds,
                                        request_id=ctx.args.request_id)
    with ctx.channel("campaign") as channel:
        future = pbg.RecommendationServiceStub(channel).TrainChurnModel.future(request, timeout=_long_timeout(ctx))
        response = _wait(ctx, future, "training the churn model")
    m = response.metrics
    data = {"name": response.name, "cutoff_time": response.cutoff_time.ToJsonString(),
            "horizon_days": response.horizon_days, "features": list(response.features),
            "metrics": {"auc": m.auc, "auc_std": m.auc_std, "folds": m.folds, "training_rows": m.training_rows,
                        "positive_rate": m.positive_rate, "lift_by_decile": list(m.lift_by_decile),
                        "validation": m.validation}}
    text = (f"{response.name}: AUC {m.auc:.3f} ± {m.auc_std:.3f} ({m.validation}); {m.training_rows} customers, "
            f"{m.positive_rate:.1%} churned within {response.horizon_days} days of the cut-off")
    ctx.emit(data, text)
    return 0


def cmd_churn_score(ctx: Context) -> int:
    request = pb.ScoreChurnRequest(customer_ids=ctx.args.customer_ids, model=ctx.args.model,
                                   write_tags=ctx.args.write_tags)
    with ctx.channel("campaign") as channel:
        future = pbg.RecommendationServiceStub(channel).ScoreChurn.future(request, timeout=_long_timeout(ctx))
        response = _wait(ctx, future, "scoring churn")
    scores = [{"customer_id": s.customer_id, "probability": s.probability, "risk": s.risk} for s in response.scores]
    data = {"model": response.model, "low": response.low, "medium": response.medium, "high": response.high,
            "tags_written": response.tags_written, "scores": scores}
    summary = (f"{response.model}: {response.low} low, {response.medium} medium, {response.high} high; "
               f"{response.tags_written} churn_risk tags written")
    rows = [(s["customer_id"], f"{s['probability']:.3f}", s["risk"]) for s in scores[:50]]
    more = f"\n… and {len(scores) - 50} more (--json lists all)" if len(scores) > 50 else ""
    ctx.emit(data, summary + "\n\n" + table(rows, ("CUSTOMER", "PROBABILITY", "RISK")) + more)
    return 0


def cmd_churn_winback(ctx: Context) -> int:
    """The win-back template: the dynamic segment churn-risk-high (created unless it exists) and a DRAFT campaign
    targeting it with a randomised control group (docs/recommendations.md)."""
    channels = []
    for name in ctx.args.channel:
        try:
            channels.append(common_pb2.Channel.Value("CHANNEL_" + name.strip().upper()))
        except ValueError:
            raise CliError("INVALID_ARGUMENT", "UNKNOWN_CHANNEL", f"unknown channel {name!r}") from None
    try:
        preset = churn.winback_preset(ctx.args.campaign_id, ctx.args.offer, channels, ctx.args.control_share)
    except ValueError as error:
        raise CliError("INVALID_ARGUMENT", "INVALID_WINBACK", str(error)) from None
    segment_created = True
    with ctx.channel("profile") as channel:
        try:
            segment_service_pb2_grpc.SegmentServiceStub(channel).CreateSegment(
                segment_service_pb2.CreateSegmentRequest(segment=segment_service_pb2.Segment(
                    segment_id=preset.segment_id, display_name="High churn risk",
                    kind=segment_service_pb2.SEGMENT_KIND_DYNAMIC, condition_text=preset.condition)),
                timeout=ctx.timeout)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                raise
            segment_created = False
    campaign = campaign_pb2.Campaign(
        campaign_id=preset.campaign_id, display_name=preset.display_name, description=preset.description,
        segment=f"segments/{preset.segment_id}", offer_ids=list(preset.offer_ids), channels=list(preset.channels),  # type: ignore[arg-type]
        control_share=preset.control_share)
    with ctx.channel("campaign") as channel:
        response = campaign_service_pb2_grpc.CampaignServiceStub(channel).CreateCampaign(
            campaign_service_pb2.CreateCampaignRequest(campaign=campaign, actor=ctx.args.actor,
                                                       request_id=ctx.args.request_id), timeout=ctx.timeout)
    data = {"campaign": response.campaign.name, "segment": campaign.segment, "condition": preset.condition,
            "segment_created": segment_created, "control_share": preset.control_share,
            "offer_ids": list(preset.offer_ids)}
    ctx.emit(data, f"{response.campaign.name} (DRAFT) targets {campaign.segment} ({preset.condition}) with "
                   f"{preset.control_share:.0%} control; submit and approve it as any campaign")
    return 0


def _band_dict(band: offer_pb2.PriceBand) -> dict[str, Any]:
    return {"rate_min": band.rate_min, "rate_max": band.rate_max, "rate_step": band.rate_step,
            "fee_waiver_allowed": band.fee_waiver_allowed, "fee_amount": band.fee_amount}


def _band_text(offer: str, band: offer_pb2.PriceBand) -> str:
    return (f"{offer}: rate {band.rate_min:.4f} to {band.rate_max:.4f} step {band.rate_step:g}, fee waiver "
            f"{'allowed' if band.fee_waiver_allowed else 'not allowed'} (fee {band.fee_amount:.2f})")


def cmd_pricing_set_band(ctx: Context) -> int:
    a = ctx.args
    band = offer_pb2.PriceBand(rate_min=a.min, rate_max=a.max, rate_step=a.step, fee_waiver_allowed=a.fee_waiver,
                               fee_amount=a.fee)
    with ctx.channel("campaign") as channel:
        response = pbg.PricingServiceStub(channel).SetPriceBand(
            pb.SetPriceBandRequest(offer=f"offers/{a.offer_id}", band=band, request_id=a.request_id),
            timeout=ctx.timeout)
    ctx.emit({"offer": response.offer, "band": _band_dict(response.band)}, _band_text(response.offer, response.band))
    return 0


def _segments(segments: Any) -> tuple[list[dict[str, Any]], str]:
    data = [{"segment": s.segment, "intercept": s.intercept, "slope": s.slope,
             "fee_coefficient": s.fee_coefficient, "contacts": s.contacts} for s in segments]
    text = table([(s["segment"], f"{s['intercept']:.3f}", f"{s['slope']:.2f}", f"{s['fee_coefficient']:.3f}",
                   s["contacts"]) for s in data], ("SEGMENT", "INTERCEPT", "SLOPE", "FEE", "CONTACTS"))
    return data, text


def cmd_pricing_get_band(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        response = pbg.PricingServiceStub(channel).GetPriceBand(
            pb.GetPriceBandRequest(offer=f"offers/{ctx.args.offer_id}"), timeout=ctx.timeout)
    segments, text = _segments(response.segments)
    ctx.emit({"offer": response.offer, "band": _band_dict(response.band), "segments": segments},
             _band_text(response.offer, response.band) + ("\n\n" + text if segments else
                                                          "\nno fitted price response (default prior)"))
    return 0


def cmd_pricing_fit(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        future = pbg.PricingServiceStub(channel).FitPriceResponse.future(
            pb.FitPriceResponseRequest(offer=f"offers/{ctx.args.offer_id}", request_id=ctx.args.request_id),
            timeout=_long_timeout(ctx))
        response = _wait(ctx, future, "fitting the price response")
    segments, text = _segments(response.segments)
    ctx.emit({"offer": response.offer, "segments": segments}, text)
    return 0


def _fraction(value: str) -> float:
    number = float(value)
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError("must be in [0, 1)")
    return number


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    rec = commands.add_parser("recommend", parents=[common], help="cross-sell recommendations for one customer")
    rec.add_argument("customer_id")
    rec.add_argument("-k", type=int, default=3, help="how many (1-20, default 3)")
    rec.set_defaults(handler=cmd_recommend)

    recommender = commands.add_parser("recommender", parents=[common], help="the cross-sell recommender")
    recommender_sub = recommender.add_subparsers(dest="recommender_command", required=True, metavar="COMMAND")
    train = recommender_sub.add_parser("train", parents=[common], help="mine rules and evaluate (hit-rate@3)")
    train.add_argument("--min-support", type=_fraction, default=0.0, help="default 0.01")
    train.add_argument("--min-confidence", type=_fraction, default=0.0, help="default 0.1")
    train.add_argument("--test-fraction", type=_fraction, default=0.0, help="held-out share, default 0.2")
    train.add_argument("--request-id", default="")
    train.set_defaults(handler=cmd_recommender_train)

    churn_group = commands.add_parser("churn", parents=[common], help="churn model and churn_risk tags")
    churn_sub = churn_group.add_subparsers(dest="churn_command", required=True, metavar="COMMAND")
    ctrain = churn_sub.add_parser("train", parents=[common], help="train point-in-time at a cut-off")
    ctrain.add_argument("--cutoff", required=True, help="ISO 8601 time; cut-off + horizon must be in the past")
    ctrain.add_argument("--horizon-days", type=int, default=0, help="inactivity window, 7-365 (default 90)")
    ctrain.add_argument("--folds", type=int, default=0, help="cross-validation folds (default 5)")
    ctrain.add_argument("--request-id", default="")
    ctrain.set_defaults(handler=cmd_churn_train)
    score = churn_sub.add_parser("score", parents=[common], help="score customers (default: everyone)")
    score.add_argument("customer_ids", nargs="*")
    score.add_argument("--model", default="", help="churnModels/N (default: the latest)")
    score.add_argument("--write-tags", action="store_true", help="write churn_risk tags to profile")
    score.set_defaults(handler=cmd_churn_score)

    winback = churn_sub.add_parser("winback", parents=[common], help="create the win-back campaign (a draft)")
    winback.add_argument("campaign_id")
    winback.add_argument("--offer", action="append", required=True, help="an offer id (repeatable)")
    winback.add_argument("--channel", action="append", required=True, help="sms, email, app_push, ... (repeatable)")
    winback.add_argument("--control-share", type=float, default=churn.WINBACK_CONTROL_SHARE,
                         help="randomised control share (default 0.1)")
    winback.add_argument("--actor", required=True, help="the employee creating it (the maker)")
    winback.add_argument("--request-id", default="")
    winback.set_defaults(handler=cmd_churn_winback)

    pricing = commands.add_parser("pricing", parents=[common], help="approved price bands of offers")
    pricing_sub = pricing.add_subparsers(dest="pricing_command", required=True, metavar="COMMAND")
    setb = pricing_sub.add_parser("set-band", parents=[common], help="set an offer's approved price band")
    setb.add_argument("offer_id")
    setb.add_argument("--min", type=float, required=True, help="lowest annualised rate, e.g. 0.06")
    setb.add_argument("--max", type=float, required=True, help="highest annualised rate, e.g. 0.12")
    setb.add_argument("--step", type=float, default=0.0, help="grid step (0: only min and max)")
    setb.add_argument("--fee-waiver", action="store_true", help="a fee waiver may be offered")
    setb.add_argument("--fee", type=float, default=0.0, help="the fee forgone when waived")
    setb.add_argument("--request-id", default="")
    setb.set_defaults(handler=cmd_pricing_set_band)
    getb = pricing_sub.add_parser("get-band", parents=[common], help="an offer's band and fitted price response")
    getb.add_argument("offer_id")
    getb.set_defaults(handler=cmd_pricing_get_band)
    fit = pricing_sub.add_parser("fit", parents=[common], help="fit the price response from campaign history")
    fit.add_argument("offer_id")
    fit.add_argument("--request-id", default="")
    fit.set_defaults(handler=cmd_pricing_fit)
