"""The recommendation service as a client sees it: `tailor build-service`'s bento under a real
`bentoml serve` on a free loopback port, called over HTTP.

One server for the module: a champion fitted on a checkerboard (even people like even items,
odd people odd items), hand-written segments/, profiles/ and rules, a service token, and a
suppression list re-read every second.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import scipy.sparse as sp

from jobs import build_service
from jobs.config import load_config
from jobs.runtime import execute
from tests.conftest import REPO, VENV_BIN, free_port, stop, tailor

TOKEN = "test-service-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
N_PEOPLE, N_ITEMS = 40, 20
RULES = """
context_fields: [page]
rules:
  - id: banner-champions
    slot: home_banner
    priority: 100
    when: {rfm_segment: Champions}
    then: {variant: vip}
  - id: banner-gamers
    slot: home_banner
    priority: 50
    when: {rule_segments: {contains: gamer}}
    then: {variant: games_sale}
  - id: banner-home-page
    slot: home_banner
    priority: 10
    when: {context.page: home}
    then: {variant: generic_home}
  - id: minors-no-alcohol
    slot: recommendations
    priority: 1000
    when: {age: {lt: 18}}
    then: {filter_category: alcohol}
  - id: pin-promo
    slot: recommendations
    priority: 5
    when: {context.page: promo}
    then: {pin: [i01]}
"""


def category(item: int) -> str:
    return "alcohol" if item in (16, 18) else "books" if item < 10 else "games"


def write_tables(spark, root: Path) -> None:
    """events/ (for the catalogue) and the per-person tables other stages write."""
    from tests.integration.test_train_recommender import EVENT_SCHEMA, canonical

    rows = canonical([{"user": f"u{p:02d}", "item": f"i{i:02d}"} for p in range(N_PEOPLE)
                      for i in range(p % 2, N_ITEMS, 2) if i != p % N_ITEMS])
    rows = [row[:11] + (category(int(row[9][1:])),) + row[12:] for row in rows]
    spark.createDataFrame(rows, EVENT_SCHEMA).write.partitionBy("event_date").parquet(
        str(root / "events"))
    people = [f"u{p:02d}" for p in range(N_PEOPLE)]
    segments = pd.DataFrame({"person_id": people, "user_id": people,
                             "segment": ["even" if p % 2 == 0 else "odd" for p in range(N_PEOPLE)],
                             "persona": "reader", "model_version": "1"})
    (root / "segments").mkdir()
    segments.to_parquet(root / "segments" / "part-0.parquet")
    (root / "segments" / "rules").mkdir()
    pd.DataFrame({"person_id": ["u03"], "user_id": ["u03"], "rule_segment": ["gamer"],
                  "since": [pd.Timestamp("2024-01-01")]}).to_parquet(
        root / "segments" / "rules" / "part-0.parquet")
    (root / "features" / "rfm").mkdir(parents=True)
    pd.DataFrame({"person_id": ["u00", "u03"], "rfm_segment": ["Champions", "Lost"]}).to_parquet(
        root / "features" / "rfm" / "part-0.parquet")
    (root / "profiles").mkdir()
    pd.DataFrame({"person_id": ["u16", "u18"], "user_id": ["u16", "u18"], "age": [15, 40],
                  "country": ["DE", "FR"], "trait_sources": ["{}", "{}"]}).to_parquet(
        root / "profiles" / "part-0.parquet")


def publish_checkerboard_champion(config) -> None:
    """An ALS champion on the checkerboard, registered in the config's MLflow store."""
    import mlflow
    from mlflow import MlflowClient

    from training import registry, tracking
    from training.evaluation import recipe
    from training.fitted import FittedRecommender
    from training.interactions import Interactions
    from training.pyfunc_model import log_recommender
    from training.recommenders import make_recommender

    liked = [(p, i) for p in range(N_PEOPLE) for i in range(p % 2, N_ITEMS, 2) if i != p % N_ITEMS]
    matrix = sp.csr_matrix((np.ones(len(liked), dtype=np.float32), tuple(zip(*liked))),
                           shape=(N_PEOPLE, N_ITEMS))
    params = {"factors": 8, "regularization": 0.01, "iterations": 15, "random_state": 1}
    fitted = FittedRecommender(
        make_recommender("als", params).fit(matrix),
        Interactions(matrix, np.array([f"u{p:02d}" for p in range(N_PEOPLE)]),
                     np.array([f"i{i:02d}" for i in range(N_ITEMS)])),
        matrix, recipe("als", params, {"view_item": 1.0}))
    name = config.training.registry.model_name
    tracking.open_experiment(config.mlflow.tracking_uri, config.mlflow.experiment, REPO)
    try:
        with mlflow.start_run():
            info = log_recommender(fitted, k=10)
        version = registry.register(info.model_uri, name, fitted.recipe).version
        registry.make_champion(MlflowClient(), name, str(version))
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def service(spark, tmp_path_factory):
    """The built bento served on a free port; yields (base URL, config, storage root)."""
    home = tmp_path_factory.mktemp("service")
    root = home / "root"
    (home / "rules.yaml").write_text(RULES)
    config = load_config(REPO / "conf" / "test.yaml", [
        f"storage.root={root}", f"serving.bentoml_home={home}/bentoml",
        f"serving.rules_file={home}/rules.yaml", "serving.suppression_refresh_seconds=1",
        "serving.max_body_bytes=2048"],
        environ={**os.environ, "TAILOR_TEST_ROOT": str(home)})
    write_tables(spark, root)
    publish_checkerboard_champion(config)
    counts = execute("build_service", config, build_service.build, spark=spark)
    assert counts["bento"] == "tailor-service:v1" and counts["catalogue_items"] == N_ITEMS

    port = free_port()
    env = {**build_service.serve_env(config), "TAILOR_SERVICE_TOKEN": TOKEN}
    log = open(home / "serve.log", "w")
    process = subprocess.Popen(
        [str(VENV_BIN / "bentoml"), "serve", "tailor-service:latest", "--host", "127.0.0.1",
         "--port", str(port)], cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (home / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # the socket is open before the worker is
                pass
            assert time.monotonic() < deadline, "service not ready after 120 s"
            time.sleep(0.5)
        yield base, config, root
    finally:
        stop(process)
        log.close()


def post(base: str, path: str, body, headers=AUTH, **kwargs) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{base}{path}", data=data,
                         headers={"Content-Type": "application/json", **headers}, timeout=10,
                         **kwargs)


def items_of(response: requests.Response) -> list[str]:
    return [item["item_id"] for item in response.json()["items"]]


def test_known_user_gets_unseen_items_of_their_taste_with_reasons(service):
    base, _, _ = service
    response = post(base, "/recommend", {"user_id": "u04", "k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["fallback"] is False and body["model_version"] == "1"
    assert body["segment"] == "even" and body["variant"] is None
    # u04 liked every even item but i04: the withheld one comes first, nothing seen comes back
    assert items_of(response)[0] == "i04"
    seen = {f"i{i:02d}" for i in range(0, N_ITEMS, 2)} - {"i04"}
    assert not seen & set(items_of(response)) and len(body["items"]) == 3
    assert body["items"][0]["reason"].startswith("similar to i")


def test_new_user_gets_popular_items_by_segment_from_context(service):
    base, _, _ = service
    plain = post(base, "/recommend", {"user_id": "someone-new", "k": 5}).json()
    assert plain["fallback"] is True and plain["segment"] is None and len(plain["items"]) == 5
    assert {item["reason"] for item in plain["items"]} == {"popular"}
    odd = post(base, "/recommend", {"user_id": "someone-new", "k": 5,
                                   "context": {"segment": "odd"}}).json()
    assert odd["fallback"] is True
    assert all(int(i[1:]) % 2 == 1 for i in (item["item_id"] for item in odd["items"]))
    assert {item["reason"] for item in odd["items"]} == {"popular in segment odd"}


def test_excluded_items_category_filter_rule_filter_and_pins(service):
    base, _, _ = service
    first = items_of(post(base, "/recommend", {"user_id": "u05", "k": 3}))
    without = items_of(post(base, "/recommend", {"user_id": "u05", "k": 3,
                                                "exclude_items": first[:2]}))
    assert not set(first[:2]) & set(without) and len(without) == 3
    games = post(base, "/recommend", {"user_id": "u05", "k": 20, "category": "games"})
    assert games.status_code == 200 and items_of(games)
    assert all(int(i[1:]) >= 10 and int(i[1:]) not in (16, 18) for i in items_of(games))
    assert items_of(post(base, "/recommend", {"user_id": "u05", "k": 3,
                                             "category": "no-such-category"})) == []
    # u16 and u18 each withheld an alcohol item; u16 is 15, so the rule filters it
    assert items_of(post(base, "/recommend", {"user_id": "u18", "k": 3}))[0] == "i18"
    minor = items_of(post(base, "/recommend", {"user_id": "u16", "k": 20}))
    assert minor and "i16" not in minor
    pinned = post(base, "/recommend", {"user_id": "someone-new", "k": 3,
                                      "context": {"page": "promo"}}).json()
    assert pinned["items"][0] == {"item_id": "i01", "score": pinned["items"][0]["score"],
                                  "reason": "pinned by rule pin-promo"}


def test_similar_items_and_unknown_item(service):
    base, _, _ = service
    response = post(base, "/similar_items", {"item_id": "i02", "k": 4})
    assert response.status_code == 200
    similar = items_of(response)
    assert len(similar) == 4 and "i02" not in similar
    assert all(int(i[1:]) % 2 == 0 for i in similar)
    missing = post(base, "/similar_items", {"item_id": "nope"})
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"] and missing.json()["model_version"] == "1"


def test_segments(service):
    base, _, _ = service
    body = post(base, "/segment", {"user_id": "u03"}).json()
    assert body == {"user_id": "u03", "known": True, "segment": "odd", "persona": "reader",
                    "rfm_segment": "Lost", "rule_segments": ["gamer"], "model_version": "1"}
    unknown = post(base, "/segment", {"user_id": "stranger"}).json()
    assert unknown["known"] is False and unknown["segment"] is None
    assert unknown["rule_segments"] == []


def test_rule_decisions(service):
    base, _, _ = service
    vip = post(base, "/decide", {"user_id": "u00", "slot": "home_banner",
                                 "context": {"page": "home"}}).json()
    assert vip["content"] == "vip" and vip["rule"] == "banner-champions"
    assert vip["matched_rules"] == ["banner-champions", "banner-home-page"]
    assert vip["applied_rules"] == ["banner-champions"] and vip["variant"] is None
    gamer = post(base, "/decide", {"user_id": "u03", "slot": "home_banner"}).json()
    assert (gamer["content"], gamer["matched_rules"]) == ("games_sale", ["banner-gamers"])
    nothing = post(base, "/decide", {"user_id": "u07", "slot": "home_banner"}).json()
    assert nothing["content"] is None and nothing["matched_rules"] == []
    assert post(base, "/decide", {"user_id": "u07", "slot": "no-such-slot"}).json()[
        "content"] is None


def test_forgotten_person_is_suppressed_without_a_restart(service):
    from features.privacy import suppression_token

    base, config, root = service
    assert post(base, "/recommend", {"user_id": "u06"}).json()["fallback"] is False
    token = suppression_token("user_id", "u06", config.pii.effective_key())
    (root / "suppression").mkdir(exist_ok=True)
    (root / "suppression" / "forget-test.jsonl").write_text(json.dumps(
        {"token": token, "reason": "forgotten", "request_id": "forget-test",
         "at": "2024-01-01T00:00:00+00:00"}) + "\n")
    deadline = time.monotonic() + 15
    while post(base, "/recommend", {"user_id": "u06"}).json()["fallback"] is False:
        assert time.monotonic() < deadline, "still personalized 15 s after suppression"
        time.sleep(0.5)
    body = post(base, "/recommend", {"user_id": "u06"}).json()
    assert body["segment"] is None and {i["reason"] for i in body["items"]} == {"popular"}
    assert post(base, "/segment", {"user_id": "u06"}).json()["segment"] is None
    assert post(base, "/decide", {"user_id": "u06", "slot": "home_banner"}).json()[
        "matched_rules"] == []


@pytest.mark.parametrize("path, body, status", [
    ("/recommend", {}, 400),                                         # missing user_id
    ("/recommend", {"user_id": 42}, 400),                            # wrong type
    ("/recommend", {"user_id": "u01", "k": "10"}, 400),              # number as a string
    ("/recommend", {"user_id": "u01", "k": 0}, 400),                 # k out of range
    ("/recommend", {"user_id": "u01", "k": 101}, 400),
    ("/recommend", {"user_id": "u01", "k": 1.5}, 400),
    ("/recommend", {"user_id": "u01", "exclude_items": "i01"}, 400),
    ("/recommend", {"user_id": "u01", "context": {"page": {"nested": 1}}}, 400),
    ("/recommend", {"user_id": "u01", "surprise": True}, 400),       # unknown field
    ("/recommend", {"user_id": ""}, 400),
    ("/recommend", b'{"user_id": "u01"', 400),                       # malformed JSON
    ("/recommend", b"[1, 2]", 400),                                  # not an object
    ("/recommend", b"\xff\xfe", 400),                                # not UTF-8
    ("/recommend", {"user_id": "u01", "exclude_items": ["x" * 200] * 20}, 413),  # oversize
    ("/similar_items", {"item_id": None}, 400),
    ("/similar_items", {"item_id": "i01", "k": -1}, 400),
    ("/segment", {"user_id": ["u01"]}, 400),
    ("/decide", {"user_id": "u01"}, 400),                            # no slot
    ("/nowhere", {"user_id": "u01"}, 404),
])
def test_bad_input_is_a_4xx_with_a_message(service, path, body, status):
    base, _, _ = service
    response = post(base, path, body)
    assert response.status_code == status, response.text
    assert response.text and response.headers["X-Model-Version"] == "1"
    if status != 404:  # Starlette's own 404 is plain text
        assert response.json()["error"]


def test_other_bad_requests(service):
    base, _, _ = service
    assert post(base, "/recommend", {"user_id": "u01"},
                headers={**AUTH, "Content-Type": "text/plain"}).status_code == 415
    assert post(base, "/recommend", {"user_id": "u01"},
                headers={**AUTH, "Content-Type": "application/vnd.bentoml+pickle"}
                ).status_code == 415
    assert requests.get(f"{base}/recommend", headers=AUTH, timeout=10).status_code == 405
    chunked = requests.post(f"{base}/recommend", headers={**AUTH, "Content-Type": "application/json"},
                            data=iter([b'{"user_id": "', b"x" * 3000, b'"}']), timeout=10)
    assert chunked.status_code == 413


def test_token_enforced_except_on_health_and_docs_listed(service):
    base, _, _ = service
    assert post(base, "/recommend", {"user_id": "u01"}, headers={}).status_code == 401
    wrong = post(base, "/recommend", {"user_id": "u01"}, headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(f"{base}/metrics", timeout=10).status_code == 401
    assert requests.get(f"{base}/metrics", headers=AUTH, timeout=10).status_code == 200
    for health in ("/livez", "/readyz"):
        assert requests.get(f"{base}{health}", timeout=10).status_code == 200
    spec = requests.get(f"{base}/docs.json", headers=AUTH, timeout=10).json()
    assert {"/recommend", "/similar_items", "/segment", "/decide"} <= set(spec["paths"])


def test_rules_explain_cli_matches_the_service(service):
    base, config, root = service
    args = ["--conf", str(REPO / "conf" / "test.yaml"), "--set", f"storage.root={root}",
            "--set", f"serving.bentoml_home={Path(config.serving.bentoml_home)}",
            "--set", f"serving.rules_file={config.serving.rules_file}"]
    result = tailor("rules", "explain", "--user", "u00", "--slot", "home_banner",
                    "--context", '{"page": "home"}', *args,
                    env={"TAILOR_TEST_ROOT": str(Path(config.serving.bentoml_home).parent)})
    assert result.returncode == 0, result.stderr
    assert "winner: banner-champions -> content vip" in result.stdout
    assert "banner-home-page: matched, skipped: variant already set by banner-champions" in result.stdout


def test_engine_starts_without_tables_or_rules_and_refuses_a_failing_rules_file(service, tmp_path):
    """What the worker loads at start-up, in process: an empty storage root and no rules file
    still answer; no key to match the suppression list, or a rules file that fails the check,
    stops the start."""
    from bentoml._internal.models import ModelStore

    from jobs.config import ConfigError
    from serving.rules import RulesError
    from serving.service import load_engine

    _, config, _ = service
    model = ModelStore(Path(config.serving.bentoml_home) / "models").get("tailor-recommender:v1")
    bare = config.model_copy(deep=True)
    bare.storage.root = str(tmp_path / "empty-root")
    bare.serving.rules_file = str(tmp_path / "no-rules.yaml")
    engine, _ = load_engine(bare, Path(model.path), "1")
    answer = engine.recommend("u04", 3)
    assert answer["fallback"] is False and answer["segment"] is None and len(answer["items"]) == 3
    assert engine.segment("u04")["rule_segments"] == []
    assert engine.decide("u04", "home_banner")[0]["content"] is None

    keyless = bare.model_copy(deep=True)
    keyless.pii.demo_key = None
    with pytest.raises(ConfigError, match="needs TAILOR_PII_KEY"):
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("TAILOR_PII_KEY", raising=False)
            load_engine(keyless, Path(model.path), "1")

    (tmp_path / "bad.yaml").write_text("rules:\n  - {id: a, slot: s, priority: 1, when: {shoe_size: 9},"
                                       " then: {variant: x}}\n")
    bare.serving.rules_file = str(tmp_path / "bad.yaml")
    with pytest.raises(RulesError, match="unknown field 'shoe_size'"):
        load_engine(bare, Path(model.path), "1")


def test_build_without_a_champion_says_so(spark, tmp_path):
    from jobs.runtime import JobError

    # mlflow.set_tracking_uri (the module's fixture) exports MLFLOW_TRACKING_URI, which wins
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    config = load_config(REPO / "conf" / "test.yaml", [
        f"storage.root={tmp_path}/root", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"serving.bentoml_home={tmp_path}/bentoml"],
        environ={**environ, "TAILOR_TEST_ROOT": str(tmp_path)})
    with pytest.raises(JobError, match="has no champion yet: run `tailor train` first"):
        execute("build_service", config, build_service.build, spark=spark)
