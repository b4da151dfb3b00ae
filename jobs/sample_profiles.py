"""What the generated sample's shop and people would also send besides events: a catalogue
feed, a CRM export and Segment `identify` calls, so `make run` builds profiles/ and
catalogue/ from more than events.

Derived from the same seed as `jobs.sample_data` (its shop and `user_profile`), so the feed
matches the items in the events and the CRM matches the people. The traits themselves (age,
gender, home town) are drawn here: the event generator has no use for them.
"""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import random
from pathlib import Path

from jobs.sample_data import DEFAULT_END_DATE, _shop, user_profile

CATALOGUE_FILE, CRM_FILE, IDENTIFY_FILE = ("catalogue-feed.csv", "crm-customers.csv",
                                           "segment-identify.jsonl.gz")
# (city, region, postcode, urban): conf/local.yaml maps these ZIP prefixes to urban or not.
TOWNS = [("New York", "NY", "10001"), ("Chicago", "IL", "60601"), ("Austin", "TX", "73301"),
         ("Bozeman", "MT", "59715"), ("Bar Harbor", "ME", "04609"), ("Taos", "NM", "87571")]


def write_profile_inputs(output_dir: Path, users: int, days: int, seed: int = 42,
                         end_date: dt.date = DEFAULT_END_DATE) -> dict:
    """Write the three files into `output_dir`; returns their row counts."""
    shop = _shop(days, seed, end_date)
    output_dir = Path(output_dir)
    rng = random.Random(f"tailor-profiles:{seed}")
    with open(output_dir / CATALOGUE_FILE, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["item_id", "name", "category", "brand", "price", "sale_price",
                      "release_date", "in_stock"])
        for i, item_id in enumerate(shop.item_id):
            price = shop.list_price[i]
            sale = round(price * 0.7, 2) if shop.clearance[i] else ""
            released = shop.start_date + dt.timedelta(days=shop.release[i])
            out.writerow([item_id, shop.name[i], shop.category[i], shop.brand[i], price, sale,
                          released.isoformat(), "false" if rng.random() < 0.03 else "true"])
    identify = []
    with open(output_dir / CRM_FILE, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["customer_id", "email", "birth_date", "gender", "city", "postcode",
                      "country", "signup_date", "marketing_opt_in", "updated_at"])
        for index in range(users):
            person = user_profile(index, seed)
            city, region, postcode = rng.choice(TOWNS)
            born = dt.date(end_date.year - rng.randint(18, 79), rng.randint(1, 12), rng.randint(1, 28))
            signup = shop.start_date - dt.timedelta(days=rng.randint(0, 720))
            out.writerow([person.user_id, person.email, born.isoformat(), rng.choice("FM"), city,
                          postcode, "US", signup.isoformat(), str(person.marketing_opt_in).lower(),
                          f"{shop.start_date.isoformat()}T00:00:00Z"])
            if person.app_id:  # the app identifies the person on its install id after login
                system = rng.choice(("iOS", "Android"))
                identify.append({
                    "type": "identify", "messageId": f"identify-{person.user_id}",
                    "userId": person.user_id, "anonymousId": person.app_id,
                    "timestamp": f"{end_date.isoformat()}T12:00:00Z",
                    "traits": {"address": {"city": city, "state": region, "country": "US"}},
                    "context": {"device": {"type": "ios" if system == "iOS" else "android"},
                                "os": {"name": system}, "locale": "en-US"}})
    with gzip.GzipFile(output_dir / IDENTIFY_FILE, "wb", mtime=0) as f:
        f.write("".join(json.dumps(call) + "\n" for call in identify).encode())
    return {"items": len(shop.item_id), "customers": users, "identify_calls": len(identify)}
