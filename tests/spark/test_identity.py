"""Identity resolution: chains, stars, cross-channel merges, the shared kiosk, stability, scale;
the job's report in its audit line and a root with CRM records but no events yet."""
import json
from datetime import datetime, timedelta
from pathlib import Path

from pyspark.sql import functions as F

from features.identity import primary_user_ids, resolve_identities, with_person_id
from jobs.resolve_identities import resolve
from jobs.runtime import execute

SCHEMA = ("event_id string, event_time timestamp, user_id string, email_hash string, "
          "phone_hash string, anonymous_id string")
T0 = datetime(2024, 3, 1)


def events(spark, rows):
    """rows: (user_id, email_hash, phone_hash, anonymous_id) tuples, one event each."""
    data = [(f"e{i}", T0 + timedelta(minutes=i), *row) for i, row in enumerate(rows)]
    return spark.createDataFrame(data, SCHEMA)


def persons(result) -> dict[str, str]:
    return {f"{r.identifier_type}:{r.identifier}": r.person_id for r in result.identity.collect()}


def groups(result) -> set[frozenset]:
    by_person: dict[str, set] = {}
    for node, person in persons(result).items():
        by_person.setdefault(person, set()).add(node)
    return {frozenset(nodes) for nodes in by_person.values()}


def test_cross_channel_merge_web_app_email(spark):
    # web cookie, then login on web; app device with the same login; email click with the email
    result = resolve_identities(events(spark, [
        (None, None, None, "cookie-1"), ("u1", None, None, "cookie-1"), ("u1", None, None, "app-1"),
        ("u1", "h-ann", None, None), (None, "h-ann", "h-phone", None),
        ("u2", None, None, "cookie-2")]))
    assert groups(result) == {
        frozenset({"anonymous_id:cookie-1", "user_id:u1", "anonymous_id:app-1", "email_hash:h-ann",
                   "phone_hash:h-phone"}),
        frozenset({"user_id:u2", "anonymous_id:cookie-2"})}


def test_long_chain_converges_in_logarithmic_rounds(spark):
    n = 128  # a chain d0 - u0 - d1 - u1 - … - d127 - u127 of 256 identifiers
    rows = [(f"u{i}", None, None, f"d{i}") for i in range(n)] + \
           [(f"u{i}", None, None, f"d{i + 1}") for i in range(n - 1)]
    result = resolve_identities(events(spark, rows))
    assert len(groups(result)) == 1
    assert result.rounds <= 12  # about log2(256 nodes) + 1; plain propagation needs ~256


def test_star_merges_around_a_hub_within_the_limit(spark):
    rows = [("hub-user", None, None, f"device-{i}") for i in range(15)]
    result = resolve_identities(events(spark, rows), max_links=20)
    assert len(groups(result)) == 1


def test_shared_kiosk_does_not_merge_500_people(spark):
    rows = [(f"shopper-{i}", None, None, "kiosk") for i in range(500)]
    rows += [("shopper-1", None, None, "phone-of-1")]
    result = resolve_identities(events(spark, rows), max_links=20)
    mapping = persons(result)
    assert len({mapping[f"user_id:shopper-{i}"] for i in range(500)}) == 500
    assert mapping["anonymous_id:phone-of-1"] == mapping["user_id:shopper-1"]
    (refused,) = result.refused.collect()
    assert (refused.identifier_type, refused.identifier, refused.links) == ("anonymous_id", "kiosk", 500)
    # the kiosk's own events still belong to the shopper who logged in there
    tagged = with_person_id(events(spark, rows), result.identity)
    assert tagged.where("user_id = 'shopper-7'").first().person_id == mapping["user_id:shopper-7"]


def test_person_ids_are_stable_across_reruns_and_unrelated_growth(spark):
    base = [("u1", None, None, "c1"), ("u2", None, None, "c2")]
    first = persons(resolve_identities(events(spark, base)))
    second = persons(resolve_identities(events(spark, base + [("u3", None, None, "c3")])))
    assert {k: second[k] for k in first} == first


def test_first_and_last_seen_and_fallback_without_identity(spark):
    evs = events(spark, [("u1", None, None, "c1"), (None, None, None, "c1"), ("u1", None, None, None)])
    identity = resolve_identities(evs).identity
    row = identity.where("identifier = 'c1'").first()
    assert (row.first_seen, row.last_seen) == (T0, T0 + timedelta(minutes=1))
    fallback = {r.event_id: r.person_id for r in with_person_id(evs).collect()}
    assert fallback == {"e0": "u1", "e1": "c1", "e2": "u1"}
    resolved = {r.person_id for r in with_person_id(evs, identity).collect()}
    assert len(resolved) == 1


def test_primary_user_id_is_the_latest_login_else_anonymous(spark):
    evs = events(spark, [(None, None, None, "c1"), ("old-login", None, None, "c1"),
                         ("new-login", None, None, "c1"), (None, None, None, "c1"),
                         (None, None, None, "lonely")])
    tagged = with_person_id(evs, resolve_identities(evs).identity)
    primary = {r.user_id for r in primary_user_ids(tagged).collect()}
    assert primary == {"new-login", "lonely"}


def test_200k_identifier_graph_converges(spark):
    # 100k people, each with a user id and a device; every 10th device also chains to the next person
    people = spark.range(100_000).select(
        F.concat(F.lit("e"), F.col("id").cast("string")).alias("event_id"),
        F.lit(T0).cast("timestamp").alias("event_time"),
        F.concat(F.lit("u"), F.col("id").cast("string")).alias("user_id"),
        F.lit(None).cast("string").alias("email_hash"), F.lit(None).cast("string").alias("phone_hash"),
        F.concat(F.lit("d"), F.col("id").cast("string")).alias("anonymous_id"))
    bridges = spark.range(0, 99_999, 10).select(
        F.concat(F.lit("b"), F.col("id").cast("string")).alias("event_id"),
        F.lit(T0).cast("timestamp").alias("event_time"),
        F.concat(F.lit("u"), (F.col("id") + 1).cast("string")).alias("user_id"),
        F.lit(None).cast("string").alias("email_hash"), F.lit(None).cast("string").alias("phone_hash"),
        F.concat(F.lit("d"), F.col("id").cast("string")).alias("anonymous_id"))
    result = resolve_identities(people.unionByName(bridges))
    identity = result.identity
    assert identity.count() == 200_000
    # persons: 90k singles-of-two plus 10k merged pairs of people
    assert identity.select("person_id").distinct().count() == 90_000
    assert result.rounds <= 20


def test_probabilistic_stitching_links_only_confident_pairs(spark):
    from features.identity import probabilistic_links

    def seen(anon, minutes, fingerprint="fp-1", network="net-1"):
        return (f"s-{anon}-{minutes}", T0 + timedelta(minutes=minutes), anon,
                {"device_fingerprint": fingerprint, "network": network})

    rows = [seen(a, m) for a in ("laptop", "tablet") for m in (0, 300, 600)]  # three meetings
    rows += [seen("tablet", 1000), seen("stranger", 1010)]                      # one meeting only
    rows += [seen("neighbour", 5, network="net-2")]                             # other network
    rows += [seen("late", 900)]                                # 100 min from anyone else
    events = spark.createDataFrame(rows, "event_id string, event_time timestamp, anonymous_id string, "
                                         "properties map<string,string>")
    links = {(r.a, r.b): (r.observations, r.confidence)
             for r in probabilistic_links(events, "device_fingerprint", "network", 30, 0.75).collect()}
    assert links == {("anonymous_id:laptop", "anonymous_id:tablet"): (3, 0.875)}
    everything = probabilistic_links(events, "device_fingerprint", "network", 30, 0.1).collect()
    assert {(r.a, r.b) for r in everything} == {
        ("anonymous_id:laptop", "anonymous_id:tablet"), ("anonymous_id:stranger", "anonymous_id:tablet")}


def audit_lines(root: Path, job: str) -> list[dict]:
    return [json.loads(line) for path in sorted((root / "audit").rglob("*.jsonl"))
            for line in path.read_text().splitlines() if json.loads(line)["job"] == job]


def test_report_counts_persons_sizes_and_refused_identifiers_by_type_only(spark, make_config, tmp_path):
    rows = ([(f"u{i}", None, None, "kiosk") for i in range(25)]          # a shared kiosk device
            + [(f"u{i}", "h-placeholder", None, None) for i in range(30)]  # test@test.com
            + [("ann", None, None, "ann-phone"), ("ann", "h-ann", None, None)])
    consented = events(spark, rows).select(
        "*", F.lit("view_item").alias("event_type"),
        F.lit(True).alias("consent_personalization"), F.lit(True).alias("consent_analytics"))
    consented.write.parquet(str(tmp_path / "root" / "events"))

    counts = execute("resolve_identities", make_config(f"storage.root={tmp_path}/root"), resolve,
                     spark=spark)

    report = {key: counts[key] for key in
              ("identifiers", "persons", "component_sizes", "refused_identifiers")}
    assert report == {"identifiers": 35, "persons": 33, "component_sizes": {"1": 32, "3-5": 1},
                      "refused_identifiers": {"anonymous_id": 1, "email_hash": 1}}
    (line,) = audit_lines(tmp_path / "root", "resolve_identities")
    assert line["status"] == "succeeded" and line["counts"] == counts
    assert "kiosk" not in json.dumps(line) and "h-placeholder" not in json.dumps(line)


def test_root_with_trait_records_but_no_events(spark, make_config, tmp_path):
    root = tmp_path / "root"
    spark.createDataFrame(
        [("r1", T0, "crm-1", None, "h-1", None), ("r2", T0, "crm-2", None, None, None),
         ("r3", T0, None, None, "h-1", "+h-phone")],
        "record_id string, observed_at timestamp, user_id string, anonymous_id string, "
        "email_hash string, phone_hash string").write.parquet(str(root / "traits"))

    counts = execute("resolve_identities", make_config(f"storage.root={root}"), resolve, spark=spark)

    assert (counts["persons"], counts["identifiers"], counts["withdrawn_consent_identifiers"]) == (2, 4, 0)
    assert (root / "suppression" / "consent_withdrawn.jsonl").read_text() == ""
    (line,) = audit_lines(root, "resolve_identities")
    assert line["inputs"] == [f"file://{root}/traits"]
