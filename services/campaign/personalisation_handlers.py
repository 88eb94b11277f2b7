"""gRPC handlers of RecommendationService and PricingService: validate, map proto <-> domain, call
personalisation.py. No SQL here."""

from __future__ import annotations

import math

import grpc

from lodestar.campaign.v1 import (
    model_pb2,
    offer_pb2,
    recommendation_service_pb2,
    recommendation_service_pb2_grpc,
)
from services.campaign import modeling, pricing
from services.campaign.personalisation import ChurnModelInfo, PersonalisationService
from services.platform import timestamps
from services.platform.errors import InvalidArgument
from services.platform.idempotency import key_for
from services.platform.validation import check_id, parse_name

pb = recommendation_service_pb2
MAX_K = 20
DEFAULT_K = 3
MAX_SCORE_IDS = 1000


def metrics_to_proto(m: modeling.Metrics) -> model_pb2.ModelMetrics:
    return model_pb2.ModelMetrics(
        auc=m.auc, auc_std=m.auc_std, folds=m.folds, lift_by_decile=m.lift_by_decile,
        calibration=[model_pb2.CalibrationBin(mean_predicted=p, observed_rate=o, count=n) for p, o, n in m.calibration],
        qini=m.qini, training_rows=m.training_rows, positive_rate=m.positive_rate, validation=m.validation)


def churn_model_to_proto(info: ChurnModelInfo) -> pb.TrainChurnModelResponse:
    return pb.TrainChurnModelResponse(
        name=f"churnModels/{info.version}", version=info.version, features=info.features,
        metrics=metrics_to_proto(info.metrics), cutoff_time=timestamps.to_timestamp(info.cutoff_time),
        horizon_days=info.horizon_days, create_time=timestamps.to_timestamp(info.create_time))


def band_to_proto(band: pricing.PriceBand) -> offer_pb2.PriceBand:
    return offer_pb2.PriceBand(rate_min=band.rate_min, rate_max=band.rate_max, rate_step=band.rate_step,
                               fee_waiver_allowed=band.fee_waiver_allowed, fee_amount=band.fee_amount)


def band_from_proto(message: offer_pb2.PriceBand) -> pricing.PriceBand:
    return pricing.validate_band(pricing.PriceBand(message.rate_min, message.rate_max, message.rate_step,
                                                   message.fee_waiver_allowed, message.fee_amount))


def _fraction(value: float, field: str, default: float, upper: float = 1.0, inclusive: bool = False) -> float:
    if value == 0:
        return default
    if not math.isfinite(value) or not 0 < value < upper + (1e-12 if inclusive else 0):
        raise InvalidArgument.field(field, f"must be in (0, {upper}{']' if inclusive else ')'}", reason="OUT_OF_RANGE")
    return value


def parse_churn_model(name: str) -> int | None:
    if not name:
        return None
    prefix, _, version = name.partition("/")
    if prefix != "churnModels" or not version.isdigit() or not 0 < int(version) < 2**31:
        raise InvalidArgument.field("model", "must be churnModels/{version}", reason="INVALID_NAME")
    return int(version)


class RecommendationHandlers(recommendation_service_pb2_grpc.RecommendationServiceServicer):
    def __init__(self, service: PersonalisationService) -> None:
        self.service = service

    async def RecommendProducts(self, request: pb.RecommendProductsRequest,
                                context: grpc.aio.ServicerContext) -> pb.RecommendProductsResponse:
        check_id(request.customer_id, "customer_id")
        if request.k < 0 or request.k > MAX_K:
            raise InvalidArgument.field("k", f"must be 1 to {MAX_K} (0 means {DEFAULT_K})", reason="OUT_OF_RANGE")
        result = await self.service.recommend(request.customer_id, request.k or DEFAULT_K)
        return pb.RecommendProductsResponse(
            customer_id=result.customer_id, recommender_version=f"recommenders/{result.version}",
            recommendations=[pb.ProductRecommendation(
                product=r.product, score=r.score, rank=rank, cf_score=r.cf_score,
                rules=[pb.AssociationRule(antecedent=list(x.antecedent), consequent=x.consequent, support=x.support,
                                          confidence=x.confidence, lift=x.lift) for x in r.rules],
                similar_items=[pb.SimilarItem(item=i, similarity=s) for i, s in r.similar_items],
            ) for rank, r in enumerate(result.items, start=1)])

    async def TrainRecommender(self, request: pb.TrainRecommenderRequest,
                               context: grpc.aio.ServicerContext) -> pb.TrainRecommenderResponse:
        key = key_for("TrainRecommender", request)
        info = await self.service.train_recommender(
            min_support=_fraction(request.min_support, "min_support", 0.01),
            min_confidence=_fraction(request.min_confidence, "min_confidence", 0.1),
            test_fraction=_fraction(request.test_fraction, "test_fraction", 0.2, 0.5, inclusive=True), key=key)
        m = info.metrics
        return pb.TrainRecommenderResponse(
            name=f"recommenders/{info.version}", version=info.version, create_time=timestamps.to_timestamp(
                info.create_time), metrics=pb.RecommenderMetrics(
                k=m.k, hit_rate=m.hit_rate, popularity_hit_rate=m.popularity_hit_rate,
                training_customers=m.training_customers, test_customers=m.test_customers, rules=m.rules,
                validation=m.validation))

    async def TrainChurnModel(self, request: pb.TrainChurnModelRequest,
                              context: grpc.aio.ServicerContext) -> pb.TrainChurnModelResponse:
        cutoff = timestamps.from_field(request, "cutoff_time")
        if cutoff is None:
            raise InvalidArgument.field("cutoff_time", "is required", reason="REQUIRED_FIELD_MISSING")
        if request.horizon_days and not 7 <= request.horizon_days <= 365:
            raise InvalidArgument.field("horizon_days", "must be 7 to 365 (0 means 90)", reason="OUT_OF_RANGE")
        if request.folds and not 2 <= request.folds <= 10:
            raise InvalidArgument.field("folds", "must be between 2 and 10 (0 means 5)", reason="OUT_OF_RANGE")
        info = await self.service.train_churn(cutoff=cutoff, horizon_days=request.horizon_days or 90,
                                              folds=request.folds or 5, key=key_for("TrainChurnModel", request))
        return churn_model_to_proto(info)

    async def ScoreChurn(self, request: pb.ScoreChurnRequest,
                         context: grpc.aio.ServicerContext) -> pb.ScoreChurnResponse:
        if len(request.customer_ids) > MAX_SCORE_IDS:
            raise InvalidArgument.field("customer_ids", f"at most {MAX_SCORE_IDS} (empty = everyone)",
                                        reason="TOO_MANY_ITEMS")
        for i, customer_id in enumerate(request.customer_ids):
            check_id(customer_id, f"customer_ids[{i}]")
        result = await self.service.score_churn(list(request.customer_ids), parse_churn_model(request.model),
                                                request.write_tags)
        return pb.ScoreChurnResponse(
            model=f"churnModels/{result.version}", tags_written=result.tags_written,
            low=result.counts["low"], medium=result.counts["medium"], high=result.counts["high"],
            scores=[pb.ChurnScore(customer_id=c, probability=p, risk=t) for c, p, t in result.scores])


class PricingHandlers(recommendation_service_pb2_grpc.PricingServiceServicer):
    def __init__(self, service: PersonalisationService) -> None:
        self.service = service

    async def SetPriceBand(self, request: pb.SetPriceBandRequest,
                           context: grpc.aio.ServicerContext) -> pb.SetPriceBandResponse:
        offer_id = parse_name(request.offer, "offers", "offer")
        if not request.HasField("band"):
            raise InvalidArgument.field("band", "is required", reason="REQUIRED_FIELD_MISSING")
        band = band_from_proto(request.band)
        saved = await self.service.set_price_band(offer_id, band, key_for("SetPriceBand", request))
        return pb.SetPriceBandResponse(offer=request.offer, band=band_to_proto(saved))

    async def GetPriceBand(self, request: pb.GetPriceBandRequest,
                           context: grpc.aio.ServicerContext) -> pb.GetPriceBandResponse:
        offer_id = parse_name(request.offer, "offers", "offer")
        band, responses = await self.service.get_price_band(offer_id)
        return pb.GetPriceBandResponse(offer=request.offer, band=band_to_proto(band), segments=[
            _segment(r) for _, r in sorted(responses.items())])

    async def FitPriceResponse(self, request: pb.FitPriceResponseRequest,
                               context: grpc.aio.ServicerContext) -> pb.FitPriceResponseResponse:
        offer_id = parse_name(request.offer, "offers", "offer")
        fitted = await self.service.fit_price_response(offer_id, key_for("FitPriceResponse", request))
        return pb.FitPriceResponseResponse(offer=request.offer,
                                           segments=[_segment(r) for _, r in sorted(fitted.items())])


def _segment(r: pricing.PriceResponse) -> pb.PriceResponseSegment:
    return pb.PriceResponseSegment(segment=r.segment, intercept=r.intercept, slope=r.slope,
                                   fee_coefficient=r.fee_coefficient, contacts=r.contacts)
