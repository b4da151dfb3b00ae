"""The sample dump is what ingest, identity, consent and segmentation tests are built on, so these
tests check it against docs/input-shapes.md with a small independent reader, and check that
the behaviour each persona is documented to have is really in the data."""
import collections
import datetime as dt
import gzip
import json
import re
import statistics

import pyarrow.parquet as pq
import pytest

from jobs import sample_data as sd

USERS, DAYS, SEED = 500, 60, 7
END = dt.date(2024, 6, 30)
START_S = int(dt.datetime(2024, 5, 2, tzinfo=dt.timezone.utc).timestamp())
END_S = int(dt.datetime(2024, 7, 1, tzinfo=dt.timezone.utc).timestamp())
NOW_S = dt.datetime.now(dt.timezone.utc).timestamp()

# The event names the generator may send, mapped as conf/base.yaml's ingest.event_aliases do.
KNOWN = {
    "page_view", "view_item", "add_to_cart", "remove_from_cart", "add_to_wishlist",
    "begin_checkout", "purchase", "search", "email_open", "email_click", "app_open",
}
ALIASES = {"pageview": "page_view", "productdetail": "view_item", "addtocart": "add_to_cart",
           "removefromcart": "remove_from_cart", "checkout": "begin_checkout"}
ITEM_EVENTS = {"view_item", "add_to_cart", "remove_from_cart", "add_to_wishlist", "purchase"}
UA_ACTIONS = {"detail": "view_item", "add": "add_to_cart", "remove": "remove_from_cart",
              "checkout": "begin_checkout", "purchase": "purchase"}
PAGE_TYPES = {"product": "view_item", "search": "search", "cart": "add_to_cart"}


def parse_time(value):
    """Epoch seconds from the shapes' timestamp forms, or None if unparseable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
        n = float(value)
        return n / 1000 if n > 1e11 else n
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed.timestamp() if parsed.tzinfo else None


def read(rec):
    """A record's shape, event type, timestamp, identifiers and items [(id, price, quantity, discount)]."""
    if "export" in rec:
        kind = rec["export"]
        event = {"web_browse": PAGE_TYPES.get(rec.get("page_type"), "page_view"),
                 "app_session": "app_open"}.get(kind, kind)
        ts = rec.get("ts", rec.get("started_at", rec.get("sent_at")))
        ids = {"user_id": rec.get("customer_id"), "anonymous_id": rec.get("cookie_id") or rec.get("device_id"),
               "email": rec.get("recipient")}
        items = [(rec.get("sku"), 0, 1, None)] if event in ITEM_EVENTS else []
        return "export", event, ts, ids, items
    ids = {k: rec.get(k) for k in ("user_id", "anonymous_id", "email", "phone")}
    ecommerce = rec.get("ecommerce") or {}
    action = next((a for a in UA_ACTIONS if a in ecommerce), None)
    if action:
        items = [(p.get("id"), p.get("price"), p.get("quantity"), None) for p in ecommerce[action]["products"]]
        return "ua", UA_ACTIONS[action], rec.get("timestamp"), ids, items
    if "event" in rec:
        event = ALIASES.get(rec["event"].lower(), rec["event"])
        items = [(i.get("item_id"), i.get("price"), i.get("quantity"), i.get("discount"))
                 for i in ecommerce.get("items", [])]
        return "ga4", event, rec.get("timestamp"), ids, items
    items = [(rec.get("item_id"), rec.get("price"), rec.get("quantity"), rec.get("discount"))]
    return "flat", rec["event_type"], rec.get("timestamp"), ids, items if rec["event_type"] in ITEM_EVENTS else []


def defect(line):
    """The docs' rejection reason for a raw line, or None if ingest must accept it."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return "malformed_json"
    _, event, ts, ids, items = read(rec)
    if ts is None:
        return "missing_timestamp"
    seconds = parse_time(ts)
    if seconds is None:
        return "unparseable_timestamp"
    if seconds > NOW_S:
        return "future_timestamp"
    if not any(ids.values()):
        return "no_identifier"
    if event not in KNOWN:
        return "unknown_event_type"
    for item_id, price, quantity, _ in items:
        if not item_id:
            return "missing_item_id"
        try:
            price = float(price)
        except ValueError:
            return "non_numeric_price"
        if price < 0:
            return "negative_price"
        if quantity < 0:
            return "negative_quantity"
    return None


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    out = tmp_path_factory.mktemp("dump")
    summary = sd.write_sample(out, USERS, DAYS, seed=SEED, end_date=END)
    lines = []
    for name in summary["files"][:-1]:
        with gzip.open(out / name, "rt") as f:
            lines += f.read().splitlines()
    parquet = pq.read_table(out / sd.PARQUET_FILE).to_pylist()
    return summary, lines, parquet, out


@pytest.fixture(scope="module")
def good(dump):
    """Every accepted record once (re-sends dropped), Parquet rows included, as (record, shape)."""
    _, lines, parquet, _ = dump
    seen, out = set(), []
    for line in lines:
        if defect(line) is None and line not in seen:
            seen.add(line)
            rec = json.loads(line)
            out.append((rec, read(rec)[0]))
    for row in parquet:
        row = {k: v for k, v in row.items() if v is not None}
        row["properties"] = json.loads(row.get("properties", "{}"))
        out.append((row, "flat"))
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    runs = [sd.write_sample(tmp_path / name, 60, 20, seed=seed) for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    assert runs[0] == runs[1]
    for name in runs[0]["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    first_file = "events-0000.jsonl.gz"
    assert (tmp_path / "a" / first_file).read_bytes() != (tmp_path / "c" / first_file).read_bytes()
    assert list(sd.generate_records(60, 20, seed=1)) == list(sd.generate_records(60, 20, seed=1))


def event_id(line):
    return None if defect(line) == "malformed_json" else json.loads(line).get("event_id")


def test_parallel_workers_write_the_same_bytes(tmp_path):
    one = sd.write_sample(tmp_path / "one", 600, 10, seed=5)  # 3 chunks of people
    two = sd.write_sample(tmp_path / "two", 600, 10, seed=5, workers=2)
    assert one == two
    for name in one["files"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_generate_records_yields_what_write_sample_writes(dump):
    summary, lines, parquet, _ = dump
    generated = list(sd.generate_records(USERS, DAYS, seed=SEED, end_date=END))
    assert len(generated) == summary["records"] == len(lines) + len(parquet)
    in_parquet = {row["event_id"] for row in parquet}
    as_json_lines = [g for g in generated if event_id(g) not in in_parquet]
    assert collections.Counter(as_json_lines) == collections.Counter(lines)


def test_summary_adds_up(dump):
    summary, lines, parquet, _ = dump
    assert summary["records"] == summary["good_records"] + summary["bad_records"] + summary["duplicates"]
    assert summary["jsonl_records"] == len(lines) and summary["parquet_records"] == len(parquet)
    assert sum(p["records"] for p in summary["by_persona"].values()) == summary["records"]
    assert sum(p["users"] for p in summary["by_persona"].values()) == USERS


def test_bad_records_are_one_percent_of_every_documented_kind(dump):
    summary, lines, _, _ = dump
    found = collections.Counter(filter(None, map(defect, lines)))
    assert found == collections.Counter(summary["bad"])
    assert set(found) == set(sd.BAD_KINDS)
    assert 0.007 < sum(found.values()) / summary["records"] < 0.013


def test_every_record_has_its_own_event_id(dump):
    _, lines, parquet, _ = dump
    ids = [event_id(line) for line in set(lines) if defect(line) != "malformed_json"]
    ids += [row["event_id"] for row in parquet]
    assert None not in ids and len(set(ids)) == len(ids)


def test_duplicates_are_exact_resends_counted_in_summary(dump):
    summary, lines, _, _ = dump
    counts = collections.Counter(lines)
    assert max(counts.values()) == 2
    resent = [l for l, n in counts.items() if n == 2]
    assert len(resent) == summary["duplicates"] > 0
    assert all(defect(l) is None for l in resent)
    assert 0.003 < summary["duplicates"] / summary["records"] < 0.007


def test_good_records_have_unique_id_identifier_and_time_in_period(good, dump):
    summary, *_ = dump
    assert len(good) == summary["good_records"]
    assert len({rec["event_id"] for rec, _ in good}) == len(good)
    for rec, _ in good:
        _, _, ts, ids, _ = read(rec)
        assert any(ids.values())
        assert START_S <= parse_time(ts) < END_S


def test_all_shapes_exports_actions_and_time_formats_present(good, dump):
    summary, *_ = dump
    assert all(summary["by_shape"][s] > 0 for s in sd.SHAPES)
    read_shapes = collections.Counter(shape for _, shape in good)
    # A UA site's plain `pageview`/`search` pushes look like GA4 ones: only the total can match.
    assert read_shapes["ga4"] + read_shapes["ua"] == summary["by_shape"]["ga4"] + summary["by_shape"]["ua"]
    assert (read_shapes["flat"], read_shapes["export"]) == (summary["by_shape"]["flat"], summary["by_shape"]["export"])
    exports = {rec["export"] for rec, shape in good if shape == "export"}
    assert exports == {"web_browse", "app_session", "email_open", "email_click"}
    ua = [rec for rec, shape in good if shape == "ua"]
    actions = {a for rec in ua for a in rec.get("ecommerce", {}) if a != "currencyCode"}
    assert actions == set(UA_ACTIONS)
    assert all("actionField" in rec["ecommerce"]["purchase"] for rec in ua if "purchase" in rec.get("ecommerce", {}))
    forms = set()
    for t in (read(rec)[2] for rec, _ in good):
        if isinstance(t, int):
            forms.add("ms" if t > 1e11 else "s")
        elif t.isdigit():
            forms.add("ms_str" if len(t) > 10 else "s_str")
        else:
            forms.add("iso_z" if t.endswith("Z") else "iso_offset" if re.search(r"[+-]\d\d:\d\d$", t) else t)
    assert forms == {"ms", "s", "ms_str", "s_str", "iso_z", "iso_offset"}
    assert {"web", "app", "email"} <= {rec.get("channel") for rec, _ in good}


def test_parquet_file_follows_the_flat_shape(dump):
    _, _, _, out = dump
    table = pq.read_table(out / sd.PARQUET_FILE)
    assert table.num_rows > 0
    assert str(table.schema.field("timestamp").type) == "int64"
    assert str(table.schema.field("consent").type) == "struct<personalization: bool, analytics: bool>"
    props = [p for p in table.column("properties").to_pylist() if p]
    assert props and all(isinstance(json.loads(p), dict) for p in props)


def test_ground_truth_personas_mix_and_stay_out_of_the_data(dump):
    truth = sd.ground_truth(USERS, SEED)
    assert len(truth) == USERS
    share = collections.Counter(truth.values())
    assert 0.10 < share["trendsetter"] / USERS < 0.20
    assert 0.28 < share["deal_seeker"] / USERS < 0.42
    assert 0.43 < share["occasional_browser"] / USERS < 0.57
    summary, lines, *_ = dump
    assert {p: v["users"] for p, v in summary["by_persona"].items()} == dict(share)
    assert not any(p in line for line in lines for p in sd.PERSONAS)
    assert sd.user_profile(3, SEED).persona == truth[sd.user_profile(3, SEED).user_id]


def _per_user(good, event_types):
    """Item-event rows [(user_id, day, item_id, discount)] of logged-in users."""
    rows = []
    for rec, _ in good:
        _, event, ts, ids, items = read(rec)
        if event in event_types and ids["user_id"]:
            day = int(parse_time(ts) // 86400)
            rows += [(ids["user_id"], day, item, discount) for item, _, _, discount in items]
    return rows


def test_personas_behave_as_documented(good):
    truth = sd.ground_truth(USERS, SEED)
    first_seen = {}
    for _, day, item, _ in _per_user(good, {"view_item"}):
        first_seen[item] = min(day, first_seen.get(item, day))
    by_persona = collections.defaultdict(list)
    for user, day, item, discount in _per_user(good, {"purchase"}):
        by_persona[truth[user]].append((day - first_seen[item], discount))
    # Trendsetters buy items within days of their first appearance; deal seekers buy discounted.
    trend_age = statistics.median(age for age, _ in by_persona["trendsetter"])
    assert trend_age <= 7 < statistics.median(age for age, _ in by_persona["deal_seeker"])
    deal = [d for _, d in by_persona["deal_seeker"]]
    assert sum(1 for d in deal if d) / len(deal) > 0.6  # UA pushes carry a coupon, not a discount
    assert sum(1 for _, d in by_persona["trendsetter"] if d) / len(by_persona["trendsetter"]) < 0.4
    # Occasional browsers: long dwell on one or two categories.
    dwell = collections.defaultdict(list)
    categories = collections.defaultdict(set)
    for rec, shape in good:
        _, event, _, ids, _ = read(rec)
        if event != "view_item" or not ids["user_id"]:
            continue
        props = rec.get("properties", {}) if shape == "flat" else rec
        if "dwell_seconds" in props:
            dwell[truth[ids["user_id"]]].append(props["dwell_seconds"])
        if shape == "flat":
            categories[ids["user_id"]].add(rec["category"])
        elif shape == "ga4":
            categories[ids["user_id"]].add(rec["ecommerce"]["items"][0]["item_category"])
    browsing = statistics.median(dwell["occasional_browser"])
    assert browsing >= 60 and browsing > 3 * statistics.median(dwell["trendsetter"])
    browsers = [u for u, p in truth.items() if p == "occasional_browser" and u in categories]
    assert browsers and all(len(categories[u]) <= 2 for u in browsers)


def test_deal_seekers_are_active_mainly_in_sales(good):
    truth = sd.ground_truth(USERS, SEED)
    days = collections.defaultdict(collections.Counter)
    for rec, _ in good:
        _, event, ts, ids, _ = read(rec)
        if event in ("page_view", "app_open") and ids["user_id"]:
            days[truth[ids["user_id"]]][int(parse_time(ts) // 86400)] += 1
    deal, browse = days["deal_seeker"], days["occasional_browser"]
    busiest = sorted(deal, key=deal.get, reverse=True)[: DAYS // 5]  # ~the sale days
    assert sum(deal[d] for d in busiest) / sum(deal.values()) > 0.5
    assert sum(browse[d] for d in busiest) / sum(browse.values()) < 0.4


def test_about_ten_percent_do_not_consent(good):
    profiles = [sd.user_profile(i, SEED) for i in range(USERS)]
    assert 0.06 < sum(not p.consent_personalization for p in profiles) / USERS < 0.14
    truth = {p.user_id: p.consent_personalization for p in profiles}
    with_block = [(rec["consent"], read(rec)[3]["user_id"]) for rec, _ in good if rec.get("consent")]
    assert all(c["personalization"] == truth[u] for c, u in with_block if u)
    assert any(not rec.get("consent") for rec, _ in good)  # some omit the block


def test_identities_can_be_stitched(good):
    first = {}
    emails, phones = set(), set()
    for rec, _ in sorted(good, key=lambda g: parse_time(read(g[0])[2])):
        _, _, _, ids, _ = read(rec)
        if ids["anonymous_id"]:
            first.setdefault(ids["anonymous_id"], ids)
        if ids.get("email"):
            emails.add(ids["email"])
        if ids.get("phone"):
            phones.add(ids["phone"])
    profiles = [sd.user_profile(i, SEED) for i in range(USERS)]
    assert all(1 <= len(p.anonymous_ids) <= 3 for p in profiles)
    primary = [first[p.web_ids[0]] for p in profiles if p.web_ids[0] in first]
    assert sum(1 for ids in primary if not ids["user_id"]) / len(primary) > 0.3  # anonymous first
    logged_in = [ids for ids in first.values() if ids["user_id"]]
    assert logged_in and all(ids["anonymous_id"] for ids in logged_in)
    assert all(re.fullmatch(r"\s*[A-Za-z]+\.[A-Za-z]+\d+@[Ee]xample\.com\s*", e) for e in emails)
    assert any(e != e.strip().lower() for e in emails)
    assert {"+9 (999) 999-9999", "999-999-9999", "+99999999999"} <= {re.sub(r"\d", "9", p) for p in phones}
    digits = {re.sub(r"\D", "", p)[-10:] for p in phones}
    assert digits <= {p.phone[1:] for p in profiles if p.phone}


def test_users_for_events_hits_the_target_roughly():
    users = sd.users_for_events(20_000, 30)
    produced = sum(1 for _ in sd.generate_records(users, 30, seed=11))
    assert 0.75 < produced / 20_000 < 1.25


def test_rejects_nonsense_arguments(tmp_path):
    with pytest.raises(ValueError, match="days"):
        list(sd.generate_records(1, 0))
    with pytest.raises(ValueError, match="files"):
        sd.write_sample(tmp_path, 1, 1, files=0)
    with pytest.raises(ValueError, match="workers"):
        sd.write_sample(tmp_path, 1, 1, workers=0)
    assert sd.write_sample(tmp_path, 0, 5)["records"] == 0
