"""Layered configuration: conf/base.yaml + an environment file + `--set` overrides + env vars.

Validation happens here, before any Spark session starts, so a typo in a key or a wrong type
stops a job with one line naming the key instead of a stack trace ten minutes into a run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from datetime import date
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"


def checkout_path(path: str | Path) -> Path:
    """A configured file path: absolute as given, else relative to the checkout (not the cwd),
    so jobs find conf/ files wherever cron or spark-submit starts them."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path
DEFAULT_ENV_FILE = CONF_DIR / "local.yaml"

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A configuration problem, phrased as the one line a user sees."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class S3Config(_Strict):
    endpoint: str | None = None
    region: str = "us-east-1"
    path_style_access: bool = False
    ssl_enabled: bool = True
    encryption_algorithm: str | None = Field(default=None, pattern="^(SSE-S3|SSE-KMS)$")


class StorageConfig(_Strict):
    root: str
    s3: S3Config = S3Config()


class SparkConfig(_Strict):
    master: str = "local[2]"
    app_name: str = "tailor"
    s3a_jars_dir: str | None = ".spark-jars"
    conf: dict[str, str] = {}


class MlflowConfig(_Strict):
    tracking_uri: str
    experiment: str = "tailor"


class PiiConfig(_Strict):
    demo_key: str | None = None
    default_phone_country_code: str = Field(default="1", pattern=r"^\d{1,3}$")
    # Filled from TAILOR_PII_KEY by load_config; a file cannot set it (it is not a field).
    _env_key: str | None = PrivateAttr(default=None)

    def effective_key(self) -> str:
        """The HMAC key: the environment's, else a conf's explicit demo key, else refuse."""
        if self._env_key:
            return self._env_key
        if self.demo_key:
            return self.demo_key
        raise ConfigError(
            "pii: no PII hash key: set TAILOR_PII_KEY in the environment "
            "(or pii.demo_key in a non-production conf)")


class ConsentConfig(_Strict):
    default_personalization: bool = False
    default_analytics: bool = False


class IngestConfig(_Strict):
    max_future_skew_minutes: int = Field(default=5, ge=0)
    event_aliases: dict[str, str] = {}
    event_types: list[str]
    item_event_types: list[str]


class SampleConfig(_Strict):
    users: int = Field(default=2000, gt=0)
    days: int = Field(default=90, gt=0)
    seed: int = 42


class SplitConfig(_Strict):
    method: Literal["per_user", "time"] = "per_user"
    ratio: float = Field(default=0.75, gt=0, lt=1)
    seed: int = 42
    test_days: float = Field(default=14.0, gt=0)


class WeightingChoice(_Strict):
    weighting: Literal["none", "bm25", "tfidf"] = "none"
    binarize: bool = False


class TuningConfig(_Strict):
    enabled: bool = False
    n_trials: int = Field(default=10, gt=0)
    method: Literal["random", "grid"] = "random"
    # Models competing in the search (empty: training.model only) and confidence weightings
    # tried with each (empty: training.weighting / training.binarize only).
    models: list[str] = []
    weightings: list[WeightingChoice] = []
    # Search space per model name: {param: [values]} or {param: {uniform|log_uniform: [lo, hi]}}.
    space: dict[str, dict[str, list | dict[str, list[float]]]] = {}


class RegistryConfig(_Strict):
    model_name: str = "tailor-recommender"
    promotion_margin: float = Field(default=0.0, ge=0)


class TrainingConfig(_Strict):
    model: str = "als"
    # Parameters per model name, so switching `model` needs no other change.
    params: dict[str, dict[str, Any]] = {}
    baselines: list[str] = ["popularity"]
    k: int = Field(default=10, gt=0)
    similar_items_k: int = Field(default=10, gt=0)
    as_of: date | None = None
    weights: dict[str, float | Literal["rating"]] = {}
    half_life_days: float | None = Field(default=None, gt=0)
    weighting: Literal["none", "bm25", "tfidf"] = "none"
    bm25: dict[str, float] = {"K1": 1.2, "B": 0.75}
    binarize: bool = False
    split: SplitConfig = SplitConfig()
    tuning: TuningConfig = TuningConfig()
    registry: RegistryConfig = RegistryConfig()


class FeaturesConfig(_Strict):
    as_of: date | None = None
    half_life_days: float = Field(default=30.0, gt=0)
    new_arrival_days: int = Field(default=14, ge=0)
    top_categories: int = Field(default=10, gt=0)
    channels: list[str] = ["web", "app", "email"]
    device_types: list[str] = ["desktop", "mobile", "tablet", "ios", "android"]
    embedding_dims: int = Field(default=16, gt=0)
    seed: int = 42


class StitchingConfig(_Strict):
    enabled: bool = False
    fingerprint_property: str = "device_fingerprint"
    network_property: str = "network"
    window_minutes: int = Field(default=30, gt=0)
    min_confidence: float = Field(default=0.75, gt=0, le=1)


class IdentityConfig(_Strict):
    max_links: int = Field(default=20, gt=0)
    max_rounds: int = Field(default=64, gt=0)
    stitching: StitchingConfig = StitchingConfig()


class RetentionConfig(_Strict):
    days: int | None = Field(default=None, gt=0)


class ExperimentsConfig(_Strict):
    file: str = "conf/experiments.yaml"  # relative to the checkout
    conversion_window_hours: float = Field(default=168.0, gt=0)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    srm_alpha: float = Field(default=0.001, gt=0, lt=1)
    bayes_draws: int = Field(default=100_000, gt=0)
    seed: int = 42
    exposure_batch_size: int = Field(default=500, gt=0)
    exposure_max_age_seconds: float = Field(default=60.0, gt=0)


class SegmentationConfig(_Strict):
    methods: list[Literal["kmeans", "dbscan", "ward"]] = ["kmeans", "dbscan", "ward"]
    k_min: int = Field(default=2, ge=2)
    k_max: int = Field(default=8, ge=2)
    silhouette_sample: int = Field(default=5000, gt=1)
    dbscan_min_samples: int = Field(default=10, ge=2)
    max_sample: int = Field(default=20000, gt=1)
    micro_clusters: int = Field(default=200, gt=1)
    spark_min_people: int = Field(default=1_000_000, gt=0)
    spark_leaves: int = Field(default=16, ge=2)
    max_noise_share: float = Field(default=0.2, ge=0, le=1)
    features: list[str] = []
    log_features: list[str] = []
    zero_fill_features: list[str] = []
    profile_traits: list[str] = []
    use_embeddings: bool = True
    embedding_weight: float = Field(default=1.0, ge=0)
    seed: int = 42
    as_of: date | None = None
    rules_file: str = "conf/segments.yaml"
    model_name: str = "tailor-segmenter"


class ServingConfig(_Strict):
    bentoml_home: str = "./var/bentoml"
    bento_name: str = "tailor-service"
    model_name: str = "tailor-recommender"
    host: str = "127.0.0.1"
    port: int = Field(default=3000, gt=0, lt=65536)
    rules_file: str = "conf/rules.yaml"
    suppression_refresh_seconds: float = Field(default=30.0, gt=0)
    max_body_bytes: int = Field(default=65536, gt=0)
    token_env: str = "TAILOR_SERVICE_TOKEN"
    default_k: int = Field(default=10, ge=1, le=100)


TraitType = Literal["string", "int", "double", "boolean", "date"]


class FeedConfig(_Strict):
    """A column-mapped input file kind, recognised by its file name."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    match: str  # file-name glob, e.g. "users*.csv"
    columns: dict[str, str]  # Tailor name → the file's column
    constants: dict[str, str] = {}  # Tailor name → a value the file lacks
    date_format: str | None = None  # e.g. MM/dd/yyyy; ISO dates are always read
    csv_delimiter: str = ","


class CatalogueFeedConfig(FeedConfig):
    attributes: list[str] = []
    category_separator: str = "|"


class ProfilesConfig(_Strict):
    crm_exports: list[FeedConfig] = []
    custom_traits: dict[str, TraitType] = {}
    ignored_traits: list[str] = []
    postcode_urban: dict[str, bool] = {}


class CatalogueConfig(_Strict):
    feeds: list[CatalogueFeedConfig] = []
    new_arrival_days: int = Field(default=30, ge=0)
    new_arrival_slots: int = Field(default=2, ge=0)


class TailorConfig(_Strict):
    storage: StorageConfig
    features: FeaturesConfig = FeaturesConfig()
    spark: SparkConfig = SparkConfig()
    mlflow: MlflowConfig
    pii: PiiConfig = PiiConfig()
    consent: ConsentConfig = ConsentConfig()
    ingest: IngestConfig
    sample: SampleConfig = SampleConfig()
    identity: IdentityConfig = IdentityConfig()
    retention: RetentionConfig = RetentionConfig()
    training: TrainingConfig = TrainingConfig()
    experiments: ExperimentsConfig = ExperimentsConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    serving: ServingConfig = ServingConfig()
    profiles: ProfilesConfig = ProfilesConfig()
    catalogue: CatalogueConfig = CatalogueConfig()

    def digest(self) -> str:
        """A short hash of the effective settings (secrets excluded), for the audit log."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def deep_merge(base: dict, override: dict) -> dict:
    """Merge override into base recursively; scalars and lists in override replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def interpolate_env(value: Any, environ: dict[str, str], path: str = "") -> Any:
    """Replace ${VAR} / ${VAR:-default} in every string; a missing VAR without default is an error."""
    if isinstance(value, dict):
        return {k: interpolate_env(v, environ, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, environ, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{path}: environment variable {name} is not set")

    return _ENV_REF.sub(substitute, value)


def parse_override(assignment: str) -> dict:
    """Turn `a.b.c=value` into {"a": {"b": {"c": value}}}, the value read as a YAML scalar."""
    key, sep, raw_value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment}: expected key=value")
    value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    if "." in key and key.split(".")[0] == "spark" and key.split(".")[1] == "conf":
        # Spark keys contain dots themselves: spark.conf.spark.sql.x=1 sets conf["spark.sql.x"].
        return {"spark": {"conf": {key.split(".", 2)[2]: str(value)}}}
    nested: dict = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: invalid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data


def _apply_environment(raw: dict, environ: dict[str, str]) -> dict:
    """Environment variables win over files for secrets and endpoints."""
    raw = dict(raw)
    if environ.get("MLFLOW_TRACKING_URI"):
        raw = deep_merge(raw, {"mlflow": {"tracking_uri": environ["MLFLOW_TRACKING_URI"]}})
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        raw = deep_merge(raw, {"storage": {"s3": {"endpoint": endpoint}}})
    return raw


def _describe(error: dict) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    if error["type"] == "missing":
        return f"{location}: required value missing"
    return f"{location}: {error['msg']} (got {error.get('input')!r})"


def load_config(conf_file: str | Path | None = None, overrides: list[str] = (),
                environ: dict[str, str] | None = None) -> TailorConfig:
    """base.yaml + (conf_file or local.yaml) + overrides + environment, validated."""
    environ = dict(os.environ if environ is None else environ)
    raw = _read_yaml(CONF_DIR / "base.yaml")
    env_file = Path(conf_file) if conf_file else DEFAULT_ENV_FILE
    raw = deep_merge(raw, _read_yaml(env_file))
    for assignment in overrides:
        raw = deep_merge(raw, parse_override(assignment))
    raw = interpolate_env(raw, environ)
    raw = _apply_environment(raw, environ)
    try:
        config = TailorConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("config error: " + _describe(exc.errors()[0])) from None
    config.pii._env_key = environ.get("TAILOR_PII_KEY") or None
    return config
