"""The recommendation service as a client sees it: `tailor build-service`'s bento under a real
`bentoml serve` on a free loopback port, called over HTTP.

One server for the module: a champion fitted on a checkerboard (even people like even items,
odd people odd items), hand-written segments/, profiles/, catalogue/, rules and experiments, a
service token, and a suppression list re-read every second. The experiment tests restart it
once (a second `bentoml serve`), which is also what flushes its exposures to storage.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import scipy.sparse as sp

from jobs import build_service
from jobs.config import load_config
from jobs.runtime import execute
from serving.experiments import load_experiments
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
  - id: bestsellers-page
    slot: recommendations
    priority: 6
    when: {context.page: bestsellers}
    then: {rank: popularity}
  - id: hero-bold
    slot: hero
    priority: 10
    when: {variant: bold}
    then: {variant: bold_hero}
  - id: shelf-sale-first
    slot: recommendations
    priority: 20
    when: {variant_levels: {contains: ranking=sale}}
    then: {boost: {on_sale: true, factor: 100}}
"""
#: The service's own experiments (the shipped file's dates run out): an A/B test on half of
#: everyone, and a 2x2 test for Champions only whose salt puts u00 in the ranking=sale cell.
EXPERIMENTS = """
experiments:
  - id: hero-test
    type: abn
    slot: hero
    salt: hero-test
    traffic: 0.5
    start: 2020-01-01
    stop: 2099-12-31
    conversion_event: purchase
    conversion_window_hours: 24
    control: plain
    variants:
      - {name: plain, weight: 0.5}
      - {name: bold, weight: 0.5}
  - id: shelf-test
    type: multivariate
    slot: recommendations
    salt: shelf-test-2
    target: [Champions]
    start: 2020-01-01
    stop: 2099-12-31
    conversion_event: add_to_cart
    factors:
      - name: ranking
        levels: [{name: model, weight: 0.5}, {name: sale, weight: 0.5}]
      - name: layout
        levels: [{name: grid, weight: 0.5}, {name: row, weight: 0.5}]
"""
NEW_ARRIVAL = "i90"  # in the catalogue only: released two days ago, nobody has touched it


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
                  "age_band": ["0-17", "35-44"], "gender": ["f", None], "city": ["Berlin", None],
                  "region": [None, None], "country": ["DE", "FR"], "urban": [True, None],
                  "device_type": ["mobile", None], "os": ["ios", None], "locale": ["de-DE", None],
                  "signup_date": [pd.Timestamp("2024-03-01").date(), None],
                  "marketing_opt_in": [False, None], "occupation": ["student", None],
                  "trait_sources": ["{}", "{}"]}).to_parquet(root / "profiles" / "part-0.parquet")
    # the catalogue job's table: i05 also in `classics` and out of stock, i07 on sale, and a
    # new arrival nobody has touched yet
    items = [f"i{i:02d}" for i in range(N_ITEMS)]
    (root / "catalogue").mkdir()
    pd.DataFrame({
        "item_id": items + [NEW_ARRIVAL],
        "category": [category(i) for i in range(N_ITEMS)] + ["books"],
        "categories": [[category(i), *(["classics"] if i == 5 else [])] for i in range(N_ITEMS)]
        + [["books"]],
        "brand": "acme", "price": 10.0,
        "sale_price": [5.0 if i == 7 else None for i in range(N_ITEMS)] + [None],
        "release_date": [None] * N_ITEMS + [(pd.Timestamp.now() - pd.Timedelta(days=2)).date()],
        "in_stock": [False if i == 5 else None for i in range(N_ITEMS)] + [True],
        "first_seen": [pd.Timestamp("2024-01-01", tz="UTC")] * N_ITEMS + [pd.NaT],
        "source": ["events"] * N_ITEMS + ["feed:test"],
    }).to_parquet(root / "catalogue" / "part-0.parquet", coerce_timestamps="us")  # Spark reads it


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


@dataclass
class Service:
    """The running service: its URL changes when the test restarts it."""

    base: str
    config: object
    root: Path
    home: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        port = free_port()
        env = {**build_service.serve_env(self.config), "TAILOR_SERVICE_TOKEN": TOKEN}
        with open(self.home / "serve.log", "a") as log:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "bentoml"), "serve", "tailor-service:latest", "--host",
                 "127.0.0.1", "--port", str(port)],
                cwd=self.home, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, (self.home / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:  # the socket is open before the worker is
                pass
            assert time.monotonic() < deadline, "service not ready after 120 s"
            time.sleep(0.5)

    def stop(self) -> None:
        stop(self.process)


@pytest.fixture(scope="module")
def service(spark, tmp_path_factory):
    """The built bento served on a free port; exposures are written only at shutdown (batches
    larger and older than any test makes)."""
    home = tmp_path_factory.mktemp("service")
    root = home / "root"
    (home / "rules.yaml").write_text(RULES)
    (home / "experiments.yaml").write_text(EXPERIMENTS)
    config = load_config(REPO / "conf" / "test.yaml", [
        f"storage.root={root}", f"serving.bentoml_home={home}/bentoml",
        f"serving.rules_file={home}/rules.yaml", "serving.suppression_refresh_seconds=1",
        "serving.max_body_bytes=2048", f"experiments.file={home}/experiments.yaml",
        "experiments.exposure_batch_size=1000", "experiments.exposure_max_age_seconds=3600"],
        environ={**os.environ, "TAILOR_TEST_ROOT": str(home)})
    write_tables(spark, root)
    publish_checkerboard_champion(config)
    counts = execute("build_service", config, build_service.build, spark=spark)
    assert counts["bento"] == "tailor-service:v1" and counts["catalogue_items"] == N_ITEMS + 1

    running = Service("", config, root, home)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def post(base: str, path: str, body, headers=AUTH, **kwargs) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{base}{path}", data=data,
                         headers={"Content-Type": "application/json", **headers}, timeout=10,
                         **kwargs)


def items_of(response: requests.Response) -> list[str]:
    return [item["item_id"] for item in response.json()["items"]]


def test_known_user_gets_unseen_items_of_their_taste_with_reasons(service):
    base = service.base
    response = post(base, "/recommend", {"user_id": "u04", "k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["fallback"] is False and body["model_version"] == "1"
    # shelf-test is for Champions: u04 is not targeted, so gets its control cell, unenrolled
    assert body["segment"] == "even"
    assert (body["variant"], body["experiment_id"], body["enrolled"]) == (
        "ranking=model,layout=grid", "shelf-test", False)
    # u04 liked every even item but i04: the withheld one comes first, nothing seen comes back
    assert items_of(response)[0] == "i04"
    seen = {f"i{i:02d}" for i in range(0, N_ITEMS, 2)} - {"i04"}
    assert not seen & set(items_of(response)) and len(body["items"]) == 3
    assert body["items"][0]["reason"].startswith("similar to i")
    # the last place goes to the catalogue's new arrival in u04's favourite category
    assert body["items"][-1]["item_id"] == NEW_ARRIVAL
    assert body["items"][-1]["reason"] == "new arrival in books"


def test_new_user_gets_popular_items_by_segment_from_context(service):
    base = service.base
    plain = post(base, "/recommend", {"user_id": "someone-new", "k": 5}).json()
    assert plain["fallback"] is True and plain["segment"] is None and len(plain["items"]) == 5
    assert {item["reason"] for item in plain["items"]} == {"popular"}
    odd = post(base, "/recommend", {"user_id": "someone-new", "k": 5,
                                   "context": {"segment": "odd"}}).json()
    assert odd["fallback"] is True
    assert all(int(i[1:]) % 2 == 1 for i in (item["item_id"] for item in odd["items"]))
    assert {item["reason"] for item in odd["items"]} == {"popular in segment odd"}


def test_excluded_items_category_filter_rule_filter_and_pins(service):
    base = service.base
    first = items_of(post(base, "/recommend", {"user_id": "u05", "k": 3}))
    without = items_of(post(base, "/recommend", {"user_id": "u05", "k": 3,
                                                "exclude_items": first[:2]}))
    assert not set(first[:2]) & set(without) and len(without) == 3
    games = post(base, "/recommend", {"user_id": "u05", "k": 20, "category": "games"})
    assert games.status_code == 200 and items_of(games)
    assert all(int(i[1:]) >= 10 and int(i[1:]) not in (16, 18) for i in items_of(games))
    assert items_of(post(base, "/recommend", {"user_id": "u05", "k": 3,
                                             "category": "no-such-category"})) == []
    # categories and stock come from the catalogue: i05 is also a classic, and out of stock
    assert items_of(post(base, "/recommend", {"user_id": "u05", "category": "classics"})) == ["i05"]
    assert items_of(post(base, "/recommend", {"user_id": "u05", "k": 3}))[0] == "i05"
    in_stock = items_of(post(base, "/recommend", {"user_id": "u05", "k": 20, "in_stock_only": True}))
    assert in_stock and "i05" not in in_stock
    assert post(base, "/recommend", {"user_id": "u05", "in_stock_only": "yes"}).status_code == 400
    # u16 and u18 each withheld an alcohol item; u16 is 15, so the rule filters it
    assert items_of(post(base, "/recommend", {"user_id": "u18", "k": 3}))[0] == "i18"
    minor = items_of(post(base, "/recommend", {"user_id": "u16", "k": 20}))
    assert minor and "i16" not in minor
    pinned = post(base, "/recommend", {"user_id": "someone-new", "k": 3,
                                      "context": {"page": "promo"}}).json()
    assert pinned["items"][0] == {"item_id": "i01", "score": pinned["items"][0]["score"],
                                  "reason": "pinned by rule pin-promo"}


RECOMMEND_MIX = [{"user_id": f"u{p:02d}", "k": 4} for p in range(12)] + [
    {"user_id": "someone-new", "k": 3, "context": {"segment": "odd"}},
    {"user_id": "u05", "k": 3, "exclude_items": ["i03", "i05"]},
    {"user_id": "u06", "k": 3, "category": "games"},
    {"user_id": "u08", "k": 3, "context": {"page": "promo"}}]


def same_answers(got: list[dict], expected: list[dict]) -> bool:
    """Equal but for the last digit of float32 scores (one product or several differ there)."""
    def scores(answers):
        return [item["score"] for answer in answers for item in answer.get("items", [])]

    def rest(answers):
        return [{**answer, "items": [{**item, "score": None} for item in answer.get("items", [])]}
                for answer in answers]

    return rest(got) == rest(expected) and scores(got) == pytest.approx(scores(expected), abs=2e-6)


def test_requests_arriving_together_are_answered_as_if_alone(service):
    """/recommend requests in flight together are scored in one batch (serving/batching.py);
    each still gets its own answer, and a bad one among them only its own 400."""
    base = service.base
    bodies = [*RECOMMEND_MIX, {"user_id": "u07", "k": 0}]
    alone = [post(base, "/recommend", body) for body in bodies]
    assert [r.status_code for r in alone] == [200] * len(RECOMMEND_MIX) + [400]
    with ThreadPoolExecutor(len(bodies)) as pool:
        for _ in range(3):
            together = list(pool.map(lambda body: post(base, "/recommend", body), bodies))
            assert [r.status_code for r in together] == [r.status_code for r in alone]
            assert same_answers([r.json() for r in together], [r.json() for r in alone])
    metrics = requests.get(f"{base}/metrics", headers=AUTH, timeout=10).text
    calls = float(re.search(r"^tailor_recommend_batch_size_count (\S+)$", metrics, re.M)[1])
    answered = float(re.search(r"^tailor_recommend_batch_size_sum (\S+)$", metrics, re.M)[1])
    assert 1 <= calls <= answered  # how well they coalesced depends on the machine's timing


def test_engine_answers_a_batch_as_it_answers_each(service, tmp_path):
    """recommend_many, what the service calls, against recommend one at a time, in process."""
    from bentoml._internal.models import ModelStore

    from serving.engine import RecommendQuery
    from serving.service import load_engine

    model = ModelStore(Path(service.config.serving.bentoml_home) / "models").get(
        "tailor-recommender:v1")
    engine, _ = load_engine(service.config, Path(model.path), "1")
    queries = [RecommendQuery(body["user_id"], body["k"], tuple(body.get("exclude_items", ())),
                              body.get("category"), body.get("context", {}))
               for body in RECOMMEND_MIX]
    one_by_one = [engine.recommend(q.user_id, q.k, q.exclude_items, q.category, q.context)
                  for q in queries]
    assert same_answers(engine.recommend_many(queries), one_by_one)
    assert engine.recommend_many([]) == []


def test_a_rule_can_rank_by_popularity_instead_of_the_model(service):
    """What an experiment arm "model=popularity" needs (conf/rules.yaml gives it one): a known
    person gets their segment's popular items, still none they have seen, and no fallback."""
    body = post(service.base, "/recommend", {"user_id": "u04", "k": 3,
                                             "context": {"page": "bestsellers"}}).json()
    assert body["fallback"] is False and body["segment"] == "even"
    assert [item["item_id"] for item in body["items"]] == ["i04"]  # the only even one unseen
    assert body["items"][0]["reason"] == "popular in segment even; ranked by rule bestsellers-page"
    model = post(service.base, "/recommend", {"user_id": "u04", "k": 3}).json()
    assert model["items"][0]["reason"].startswith("similar to i")


def test_similar_items_and_unknown_item(service):
    base = service.base
    response = post(base, "/similar_items", {"item_id": "i02", "k": 4})
    assert response.status_code == 200
    similar = items_of(response)
    assert len(similar) == 4 and "i02" not in similar
    assert all(int(i[1:]) % 2 == 0 for i in similar)
    missing = post(base, "/similar_items", {"item_id": "nope"})
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"] and missing.json()["model_version"] == "1"


def test_segments(service):
    base = service.base
    body = post(base, "/segment", {"user_id": "u03"}).json()
    assert body == {"user_id": "u03", "known": True, "segment": "odd", "persona": "reader",
                    "rfm_segment": "Lost", "rule_segments": ["gamer"], "traits": {},
                    "model_version": "1"}
    unknown = post(base, "/segment", {"user_id": "stranger"}).json()
    assert unknown["known"] is False and unknown["segment"] is None
    assert unknown["rule_segments"] == [] and unknown["traits"] == {}
    # profile traits as profiles/ has them, custom ones included; the exact age is not shown
    assert post(base, "/segment", {"user_id": "u16"}).json()["traits"] == {
        "age_band": "0-17", "gender": "f", "city": "Berlin", "region": None, "country": "DE",
        "urban": True, "device_type": "mobile", "os": "ios", "locale": "de-DE",
        "signup_date": "2024-03-01", "marketing_opt_in": False, "occupation": "student"}


def test_rule_decisions(service):
    base = service.base
    vip = post(base, "/decide", {"user_id": "u00", "slot": "home_banner",
                                 "context": {"page": "home"}}).json()
    assert vip["content"] == "vip" and vip["rule"] == "banner-champions"
    assert vip["matched_rules"] == ["banner-champions", "banner-home-page"]
    assert vip["applied_rules"] == ["banner-champions"]
    assert (vip["variant"], vip["experiment_id"], vip["enrolled"]) == (None, None, False)
    gamer = post(base, "/decide", {"user_id": "u03", "slot": "home_banner"}).json()
    assert (gamer["content"], gamer["matched_rules"]) == ("games_sale", ["banner-gamers"])
    nothing = post(base, "/decide", {"user_id": "u07", "slot": "home_banner"}).json()
    assert nothing["content"] is None and nothing["matched_rules"] == []
    assert post(base, "/decide", {"user_id": "u07", "slot": "no-such-slot"}).json()[
        "content"] is None


def test_experiment_arms_are_answered_and_drive_the_rules(service):
    base = service.base
    book = load_experiments(service.home / "experiments.yaml", {"Champions"})
    # u00 is a Champion, in shelf-test's ranking=sale cell, whose rule boosts on-sale items
    assert book.variant_for(book.get("shelf-test"), "u00") == "ranking=sale,layout=grid"
    shelf = post(base, "/recommend", {"user_id": "u00", "k": 3}).json()
    assert (shelf["variant"], shelf["experiment_id"], shelf["enrolled"]) == (
        "ranking=sale,layout=grid", "shelf-test", True)
    assert shelf["items"][0]["item_id"] == "i07"  # the one unseen item on sale
    assert shelf["items"][0]["reason"].endswith("; boosted by rule shelf-sale-first")
    assert not any("boosted" in item["reason"] for item in post(
        base, "/recommend", {"user_id": "u04", "k": N_ITEMS}).json()["items"])

    # hero-test holds half of everyone: inside, the hashed variant; outside, the control
    hero = book.get("hero-test")
    inside = outside = 0
    for user in [f"u{p:02d}" for p in range(N_PEOPLE)]:
        answer = post(base, "/decide", {"user_id": user, "slot": "hero"}).json()
        if book.traffic_position(hero, user) < 0.5:
            inside += 1
            assert (answer["variant"], answer["enrolled"]) == (book.variant_for(hero, user), True)
        else:
            outside += 1
            assert (answer["variant"], answer["enrolled"]) == ("plain", False)
        assert answer["content"] == ("bold_hero" if answer["variant"] == "bold" else None)
        assert answer["experiment_id"] == "hero-test"
    assert inside and outside


def test_consent_decides_enrolment(service):
    """Known people have consented (only consented data reaches the tables); someone new is
    enrolled only when the caller says they consent; a caller's `false` wins over the tables."""
    base = service.base
    book = load_experiments(service.home / "experiments.yaml", {"Champions"})
    hero = book.get("hero-test")
    newcomer = next(f"new-{n}" for n in range(100) if book.traffic_position(hero, f"new-{n}") < 0.5)

    def arm(user, **context):
        answer = post(base, "/decide", {"user_id": user, "slot": "hero", "context": context})
        assert answer.status_code == 200, answer.text
        return answer.json()["variant"], answer.json()["enrolled"]

    assert arm(newcomer) == ("plain", False)
    assert arm(newcomer, consent_personalization=True) == (book.variant_for(hero, newcomer), True)
    assert arm("u03") == ("bold", True)
    assert arm("u03", consent_personalization=False) == ("plain", False)
    declined = post(base, "/recommend", {"user_id": "u03", "context": {
        "consent_personalization": False}}).json()
    assert declined["fallback"] is True and declined["segment"] is None
    assert post(base, "/decide", {"user_id": "u03", "slot": "hero", "context": {
        "consent_personalization": "yes"}}).status_code == 400


def test_forgotten_person_is_suppressed_without_a_restart(service):
    from features.privacy import suppression_token

    base, config, root = service.base, service.config, service.root
    assert post(base, "/recommend", {"user_id": "u06"}).json()["fallback"] is False
    # u07 is in hero-test's half of people (variant bold) until forgotten
    enrolled = post(base, "/decide", {"user_id": "u07", "slot": "hero"}).json()
    assert (enrolled["variant"], enrolled["enrolled"], enrolled["content"]) == ("bold", True, "bold_hero")
    (root / "suppression").mkdir(exist_ok=True)
    (root / "suppression" / "forget-test.jsonl").write_text("".join(json.dumps(
        {"token": suppression_token("user_id", user, config.pii.effective_key()),
         "reason": "forgotten", "request_id": "forget-test",
         "at": "2024-01-01T00:00:00+00:00"}) + "\n" for user in ("u06", "u07")))
    deadline = time.monotonic() + 15
    while post(base, "/recommend", {"user_id": "u06"}).json()["fallback"] is False:
        assert time.monotonic() < deadline, "still personalized 15 s after suppression"
        time.sleep(0.5)
    body = post(base, "/recommend", {"user_id": "u06"}).json()
    assert body["segment"] is None and {i["reason"] for i in body["items"]} == {"popular"}
    assert post(base, "/segment", {"user_id": "u06"}).json()["segment"] is None
    assert post(base, "/decide", {"user_id": "u06", "slot": "home_banner"}).json()[
        "matched_rules"] == []
    # forgotten: the default (the control), not enrolled, even when the caller says consented
    forgotten = post(base, "/decide", {"user_id": "u07", "slot": "hero",
                                       "context": {"consent_personalization": True}}).json()
    assert (forgotten["variant"], forgotten["enrolled"], forgotten["content"]) == (
        "plain", False, None)


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
    base = service.base
    response = post(base, path, body)
    assert response.status_code == status, response.text
    assert response.text and response.headers["X-Model-Version"] == "1"
    if status != 404:  # Starlette's own 404 is plain text
        assert response.json()["error"]


def test_other_bad_requests(service):
    base = service.base
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
    base = service.base
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
    base, config, root = service.base, service.config, service.root
    args = ["--conf", str(REPO / "conf" / "test.yaml"), "--set", f"storage.root={root}",
            "--set", f"serving.bentoml_home={Path(config.serving.bentoml_home)}",
            "--set", f"serving.rules_file={config.serving.rules_file}",
            "--set", f"experiments.file={config.experiments.file}"]
    env = {"TAILOR_TEST_ROOT": str(service.home)}
    result = tailor("rules", "explain", "--user", "u00", "--slot", "home_banner",
                    "--context", '{"page": "home"}', *args, env=env)
    assert result.returncode == 0, result.stderr
    assert "experiment: none active on slot home_banner (variant null)" in result.stdout
    assert "winner: banner-champions -> content vip" in result.stdout
    assert "banner-home-page: matched, skipped: variant already set by banner-champions" in result.stdout
    hero = tailor("rules", "explain", "--user", "u03", "--slot", "hero", *args, env=env)
    assert hero.returncode == 0, hero.stderr
    assert "experiment hero-test: variant bold (enrolled)" in hero.stdout
    assert "winner: hero-bold -> content bold_hero" in hero.stdout
    assert post(base, "/decide", {"user_id": "u03", "slot": "hero"}).json()["content"] == "bold_hero"
    outside = tailor("rules", "explain", "--user", "u00", "--slot", "hero", *args, env=env)
    assert "experiment hero-test: variant plain (the control; not enrolled: outside traffic)" in outside.stdout


def test_engine_starts_without_tables_or_rules_and_refuses_failing_files(service, tmp_path):
    """What the worker loads at start-up, in process: an empty storage root and no rules file
    still answer; no key to match the suppression list, or a rules or experiments file that
    fails its check, stops the start."""
    from bentoml._internal.models import ModelStore

    from jobs.config import ConfigError
    from serving.experiments import ExperimentDefinitionError
    from serving.rules import RulesError
    from serving.service import load_engine

    config = service.config
    model = ModelStore(Path(config.serving.bentoml_home) / "models").get("tailor-recommender:v1")
    bare = config.model_copy(deep=True)
    bare.storage.root = str(tmp_path / "empty-root")
    bare.serving.rules_file = str(tmp_path / "no-rules.yaml")
    engine, _ = load_engine(bare, Path(model.path), "1")
    answer = engine.recommend("u04", 3)
    assert answer["fallback"] is False and answer["segment"] is None and len(answer["items"]) == 3
    assert engine.segment("u04")["rule_segments"] == []
    assert engine.decide("u04", "home_banner")["content"] is None

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

    bare.serving.rules_file = str(tmp_path / "no-rules.yaml")
    (tmp_path / "experiments.yaml").write_text(EXPERIMENTS.replace("[Champions]", "[Whales]"))
    bare.experiments.file = str(tmp_path / "experiments.yaml")
    with pytest.raises(ExperimentDefinitionError,
                       match="shelf-test.target: unknown segment or persona Whales"):
        load_engine(bare, Path(model.path), "1")


def test_similar_items_never_answer_a_nan_score(service, tmp_path, monkeypatch):
    """A model can give NaN similarities (an item's zero vector); JSON can't carry them."""
    from bentoml._internal.models import ModelStore

    from serving.service import load_engine

    config = service.config.model_copy(deep=True)
    config.storage.root = str(tmp_path / "empty-root")
    model = ModelStore(Path(config.serving.bentoml_home) / "models").get("tailor-recommender:v1")
    engine, _ = load_engine(config, Path(model.path), "1")
    monkeypatch.setattr(engine.fitted.recommender, "similar_items",
                        lambda items, k: (np.array([[3, 5]]), np.array([[np.nan, 0.5]])))
    assert engine.similar_items("i01", 2)["items"] == [{"item_id": "i05", "score": 0.5}]


def exposure_records(root: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((root / "raw" / "exposures").rglob("*.jsonl"))
            for line in path.read_text().splitlines()]


STABLE_PEOPLE = [f"visitor-{n:03d}" for n in range(40)]


def test_assignment_is_stable_across_a_restart_and_exposures_are_flushed_at_shutdown(service):
    """Two `bentoml serve` processes one after the other give every person the same arm; the
    first one's exposures reach storage when it stops (its batches never filled)."""
    def arms() -> dict[str, tuple]:
        answers = {user: post(service.base, "/decide", {
            "user_id": user, "slot": "hero", "context": {"consent_personalization": True}}).json()
            for user in STABLE_PEOPLE}
        return {user: (a["variant"], a["enrolled"]) for user, a in answers.items()}

    before = arms()
    assert {enrolled for _, enrolled in before.values()} == {True, False}
    assert exposure_records(service.root) == []  # buffered: nothing written while running
    service.stop()
    service.start()
    assert arms() == before

    records = exposure_records(service.root)
    served = sorted((user, variant) for user, (variant, enrolled) in before.items() if enrolled)
    assert sorted((r["user_id"], r["properties"]["variant"]) for r in records
                  if r["user_id"] in STABLE_PEOPLE) == served
    sample = next(r for r in records if r["user_id"] in STABLE_PEOPLE)
    assert sample["event_type"] == "exposure" and sample["consent"] == {"personalization": True}
    assert sample["properties"]["experiment_id"] == "hero-test"
    assert sample["properties"]["slot"] == "hero"
    assert sample["properties"]["person_id"] == sample["user_id"]  # no identity/ here


def test_exposures_from_the_service_are_ingested_and_analyzed(service, spark):
    """The restart's exposures through the ingest job and the analysis: every bold visitor buys
    an hour after being exposed, nobody else does."""
    from jobs import analyze_experiment, ingest_events

    config, root = service.config, service.root
    records = [r for r in exposure_records(root)
               if r["properties"]["experiment_id"] == "hero-test"]
    first = {}
    for record in records:
        first.setdefault(record["user_id"], record)
    people = {variant: {user for user, r in first.items() if r["properties"]["variant"] == variant}
              for variant in ("plain", "bold")}
    assert people["plain"] and people["bold"]
    purchases = root / "raw" / "conversions" / "purchases.jsonl"
    purchases.parent.mkdir(parents=True)
    purchases.write_text("".join(json.dumps({
        "event_id": f"buy-{user}", "event_type": "purchase", "user_id": user, "item_id": "i01",
        "price": 10, "consent": {"personalization": True, "analytics": True},
        "timestamp": (datetime.fromisoformat(first[user]["timestamp"])
                      + timedelta(seconds=1)).isoformat()}) + "\n" for user in people["bold"]))
    execute("ingest_events", config, lambda job: ingest_events.ingest(job, str(root / "raw")),
            spark=spark)
    experiment = analyze_experiment.find_experiment(config, "hero-test")
    summary = execute("analyze_experiment", config,
                      lambda job: analyze_experiment.analyze(job, experiment), spark=spark)
    assert summary["analyzed"] is True and summary["people"] == len(first)
    report = json.loads((root / "experiments" / "hero-test" / "report.json").read_text())
    rows = {row["variant"]: row for row in report["variants"]}
    assert rows["plain"]["people"] == len(people["plain"]) and rows["plain"]["converted"] == 0
    assert rows["bold"]["people"] == rows["bold"]["converted"] == len(people["bold"])


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
