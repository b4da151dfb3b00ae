"""The BentoML service: the champion recommender, segments and content rules over HTTP.

    bentoml serve tailor-service:latest          # what `tailor serve` runs
    POST /recommend /similar_items /segment /decide; GET /livez /readyz /metrics; /docs.json

Configuration is Tailor's own: the validated config `tailor serve` passes as JSON in
TAILOR_CONFIG_JSON, else conf/base.yaml + conf/local.yaml; read once at import. Everything is
loaded in ``__init__``, which BentoML runs before the worker accepts connections, so /readyz
answers only when loaded: the model, the storage root's tables, the rules and the experiment
definitions (a rules or experiments file that fails its check stops the start). Exposures of
enrolled people are buffered and written by the writer's thread, and flushed on shutdown.

The API handlers are ``async``: the scoring is a few hundred microseconds of numpy, and a
sync handler would pay a hop through BentoML's one-thread pool on every request. The
/recommend requests in flight together are answered by one engine call (serving/batching.py).
"""
from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from typing import Annotated, Any, Union

import bentoml
import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from jobs.config import ConfigError, TailorConfig, checkout_path, load_config
from jobs.storage import resolve_uri
from serving.data import (CATALOGUE_FILE, CONFIG_ENV, IDENTITIES_FILE, RECOMMENDER_DIR, People,
                          Root, Suppression)
from serving import bentoml_fixes, heap
from serving.batching import Coalescer
from serving.engine import CONSENT, Engine, RecommendQuery
from serving.experiments import load_configured
from serving.exposures import ExposureWriter
from serving.rules import checked_rules
from training.fitted import FittedRecommender

HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz"})


def service_config(environ=os.environ) -> TailorConfig:
    if environ.get(CONFIG_ENV):
        return TailorConfig.model_validate(json.loads(environ[CONFIG_ENV]))
    return load_config()


CONFIG = service_config()
bentoml_fixes.install()
MODEL_TAG = getattr(bentoml.use_arguments(), "model_tag", f"{CONFIG.serving.model_name}:latest")
_state: dict[str, str] = {"model_version": ""}
BATCH_SIZES = bentoml.metrics.Histogram(
    name="tailor_recommend_batch_size", buckets=(1, 2, 4, 8, 16, 32, 64),
    documentation="/recommend requests answered by one engine call (serving/batching.py)")


# -- request and response bodies (strict: wrong types and unknown fields are 400s) -----------

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _consent_is_boolean(context: dict) -> dict:
    if context.get(CONSENT) is not None and not isinstance(context[CONSENT], bool):
        raise ValueError(f"context.{CONSENT} must be true or false")
    return context


Id = Annotated[str, Field(min_length=1, max_length=256)]
ContextValue = Union[str, int, float, bool, None]
Context = Annotated[dict[Annotated[str, Field(max_length=64)], ContextValue],
                    Field(max_length=32), AfterValidator(_consent_is_boolean)]


class RecommendRequest(_Body):
    user_id: Id
    k: int = Field(default=CONFIG.serving.default_k, ge=1, le=100)
    exclude_items: Annotated[list[Id], Field(max_length=1000)] = []
    category: Id | None = None
    in_stock_only: bool = False
    context: Context = {}


class SimilarItemsRequest(_Body):
    item_id: Id
    k: int = Field(default=CONFIG.serving.default_k, ge=1, le=100)


class SegmentRequest(_Body):
    user_id: Id


class DecideRequest(_Body):
    user_id: Id
    slot: Id
    context: Context = {}


class ScoredItem(BaseModel):
    item_id: str
    score: float
    reason: str


class RecommendResponse(BaseModel):
    user_id: str
    items: list[ScoredItem]
    fallback: bool
    segment: str | None
    variant: str | None
    experiment_id: str | None
    enrolled: bool
    model_version: str


class SimilarItem(BaseModel):
    item_id: str
    score: float


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[SimilarItem]
    model_version: str


class SegmentResponse(BaseModel):
    user_id: str
    known: bool
    segment: str | None
    persona: str | None
    rfm_segment: str | None
    rule_segments: list[str]
    traits: dict[str, ContextValue]
    model_version: str


class DecideResponse(BaseModel):
    user_id: str
    slot: str
    content: str | None
    rule: str | None
    matched_rules: list[str]
    applied_rules: list[str]
    variant: str | None
    experiment_id: str | None
    enrolled: bool
    model_version: str


def error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, "model_version": _state["model_version"], **extra},
                        status_code=status, headers=headers)


# -- the guard in front of every API: token, body size, media type ---------------------------

class Guard:
    """ASGI middleware: bearer token (when configured) on everything but health checks,
    request bodies of at most ``max_body`` bytes of JSON (buffered, so a handler never sees a
    truncated one), and the model version as an X-Model-Version header on every response,
    BentoML's own 400s included."""

    def __init__(self, app, token: str | None, max_body: int):
        self.app, self.max_body = app, max_body
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send_on):
        if scope["type"] != "http":
            return await self.app(scope, receive, send_on)

        async def send(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"x-model-version", _state["model_version"].encode())]
            await send_on(message)

        if scope["path"] in HEALTH_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.token is not None:
            given = headers.get(b"authorization", b"")
            if not (given.startswith(b"Bearer ") and hmac.compare_digest(given[7:], self.token)):
                return await _send(scope, send, error(401, "missing or wrong bearer token",
                                               headers={"WWW-Authenticate": "Bearer"}))
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        media_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip()
        if media_type.lower() != b"application/json":
            return await _send(scope, send, error(415, "send the request body as application/json"))
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return await _send(scope, send, error(400, "invalid Content-Length header"))
        if declared > self.max_body:
            return await _send(scope, send, error(413, f"request body over {self.max_body} bytes"))
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await _send(scope, send, error(413, f"request body over {self.max_body} bytes"))
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _send(scope, send, response: JSONResponse) -> None:
    await response(scope, None, send)


# -- the service ------------------------------------------------------------------------------

def load_engine(config: TailorConfig, model_dir: Path, model_version: str,
                exposures: ExposureWriter | None = None) -> tuple[Engine, Suppression]:
    """Everything a worker needs, loaded once: model, catalogue, people, rules, experiments,
    suppression. ``exposures`` records the enrolled assignments served (none: not recorded)."""
    serving = config.serving
    root = Root(resolve_uri(config.storage.root), config.storage.s3)
    identities = (pd.read_parquet(model_dir / IDENTITIES_FILE)
                  if (model_dir / IDENTITIES_FILE).exists() else None)
    people = People.load(root, identities)
    rules = checked_rules(checkout_path(serving.rules_file), people.profile_columns)
    experiments = load_configured(config)
    pii_key = os.environ.get("TAILOR_PII_KEY") or config.pii.demo_key
    if not pii_key:  # without it the suppression list can't be matched: refuse, don't ignore it
        raise ConfigError("the service needs TAILOR_PII_KEY (the forget job's key) to honour "
                          "the suppression list")
    suppression = Suppression(root, pii_key)
    suppression.refresh()
    catalogue = (pd.read_parquet(model_dir / CATALOGUE_FILE)
                 if (model_dir / CATALOGUE_FILE).exists() else None)
    fitted = FittedRecommender.load(model_dir / RECOMMENDER_DIR)
    engine = Engine(fitted, model_version, rules, people, suppression, catalogue,
                    experiments=experiments, exposures=exposures,
                    default_consent=config.consent.default_personalization,
                    arrival_days=config.catalogue.new_arrival_days,
                    arrival_slots=config.catalogue.new_arrival_slots)
    return engine, suppression


@bentoml.service(
    name="tailor-recommender",
    workers=1,
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},
)
class Recommender:
    """What should this person see? Recommendations, similar items, segments, slot content."""

    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        stored = self.model
        version = str(stored.info.metadata.get("mlflow_version", stored.tag.version))
        self.exposures = ExposureWriter.from_config(CONFIG)
        self.engine, self.suppression = load_engine(CONFIG, Path(stored.path), version,
                                                    self.exposures)
        self.suppression.start(CONFIG.serving.suppression_refresh_seconds)
        self.recommendations = Coalescer(self.engine.recommend_many,
                                         on_batch=BATCH_SIZES.observe)
        _state["model_version"] = version
        heap.settle()  # the "~100 ms p99 at concurrency 1": see serving/heap.py

    def __is_ready__(self) -> bool:
        return self.engine is not None

    @bentoml.on_shutdown
    def stop_background_work(self) -> None:
        """Stop re-reading the suppression list and write the exposures still buffered."""
        self.suppression.stop()
        self.exposures.close()

    @bentoml.api(input_spec=RecommendRequest, output_spec=RecommendResponse)
    async def recommend(self, user_id: str, k: int, exclude_items: list[str],
                        category: str | None, in_stock_only: bool,
                        context: dict[str, Any]) -> JSONResponse:
        """Top-k items for a person, with a reason each; unknown people get popular items.
        Requests that arrive together are scored together (serving/batching.py)."""
        return JSONResponse(await self.recommendations.submit(RecommendQuery(
            user_id, k, tuple(exclude_items), category, context, in_stock_only)))

    @bentoml.api(input_spec=SimilarItemsRequest, output_spec=SimilarItemsResponse)
    async def similar_items(self, item_id: str, k: int) -> JSONResponse:
        """Items most like ``item_id``; 404 when the catalogue doesn't have it."""
        answer = self.engine.similar_items(item_id, k)
        if answer is None:
            return error(404, f"unknown item {item_id!r}", item_id=item_id)
        return JSONResponse(answer)

    @bentoml.api(input_spec=SegmentRequest, output_spec=SegmentResponse)
    async def segment(self, user_id: str) -> JSONResponse:
        """Persona, segment, RFM segment, rule-based segments and profile traits of a person."""
        return JSONResponse(self.engine.segment(user_id))

    @bentoml.api(input_spec=DecideRequest, output_spec=DecideResponse)
    async def decide(self, user_id: str, slot: str, context: dict[str, Any]) -> JSONResponse:
        """The content the rules choose for a page slot, which rules matched, and the
        person's variant in the slot's experiment."""
        return JSONResponse(self.engine.decide(user_id, slot, context))


Recommender.add_asgi_middleware(
    Guard, token=os.environ.get(CONFIG.serving.token_env) or None,
    max_body=CONFIG.serving.max_body_bytes)
