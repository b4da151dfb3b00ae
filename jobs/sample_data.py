"""Seeded, realistic raw-event dumps for demos, tests and benchmarks.

Why: every later stage (ingest, identity, consent, features, segmentation, recommenders) needs
input that looks like what real collectors send — several shapes, messy identifiers, bad
records — and whose right answers are known. The generator simulates people, not rows, so the
behaviour downstream code is meant to find is really in the data, and it keeps the answers
(each person's persona and identifiers) out of the events: ask `ground_truth()` or
`user_profile()` instead.

The simulated shop (all derived from the seed alone, so it doesn't change with `users`):

* Catalogue: 1,200 items in 10 categories (apparel, shoes, … books), 5 brands per category,
  log-normal list prices per category, Zipf-like popularity. About 65% of items were released
  in the year before the period, the rest are released day by day across it; nobody sees an
  item before its release day.
* Sale periods: about one window per 30 days (at least one), each ~1/15 of the period long
  (at least 2 days), with a 20–50% discount on every item older than 30 days. About 8% of the
  older items are on clearance (30% off) all the time. `price` is the reduced unit price and
  `discount` the unit reduction, as GA4 recommends; UA pushes show a `coupon` instead.
* Personas (15% / 35% / 50% of people):
  - trendsetter: ~0.45 sessions a day, often in the app, 3–8 product views a session, mostly
    items released in the last 14 days, which they often buy within days of the release;
  - deal_seeker: ~10× more active on sale days than on other days (~2/3 of their sessions fall
    in sales), views and buys almost only discounted items (`discount` > 0), opens sale e-mails;
  - occasional_browser: ~1.5 sessions a month, 1–4 product views in one or two favourite
    categories with long dwell (60–300 s, `dwell_seconds`), rarely adds to cart.
* Sessions: web or app; an entry `page_view` (or `app_open`), optional `search`, product views,
  then a funnel view_item → add_to_cart (~4–35% of views, by persona) → begin_checkout (55%)
  → purchase (75%), with some `remove_from_cart` and `add_to_wishlist`.
* E-mail: a newsletter every 7 days and a campaign on each sale's first day, to people who have
  logged in and opted into marketing (70%); opens (`email_open`) and clicks (`email_click`,
  with `campaign_id` and `link_url`), a click starting a web session with `utm_campaign`.
* Identity: each person has 1–2 web cookies and maybe an app device (1–3 anonymous ids). Their
  first sessions are anonymous; from a login session on (every person logs in eventually, half
  in their first session, after its first event) events carry `user_id` beside the
  `anonymous_id`. Checkout and purchase records often carry the e-mail
  (`first.last<N>@example.com`, sometimes upper-cased or padded with spaces) and, for half the
  people, a phone (`+1 (555) 010-1234`, `555-010-1234`, `+15550101234`, … all US numbers:
  no country code means +1). Guest checkouts before the login carry the e-mail without a
  user_id, so only the e-mail stitches them.
* Consent: 10% of people have `{"personalization": false, …}`, the rest true; per-channel
  exports never carry a consent block and 3% of other sessions lack it.
* Shapes: web sessions are GA4 `dataLayer` pushes (50%), Universal-Analytics pushes (20%), flat
  events (15%) or `web_browse` export rows (15%; the export can't express checkout, removals or
  purchases, which come as flat events); app sessions start with an `app_session` export row
  (60%) and send GA4 or flat events; e-mail events are `email_open`/`email_click` exports (80%)
  or flat. Timestamps are ISO-8601 with `Z` or the person's own UTC offset, epoch seconds or
  epoch milliseconds (numbers or digit strings), as each shape's senders do.
* Every good record has a unique `event_id`. About 0.5% of good JSON lines are re-sent exactly
  (same line, in the next dump file) to exercise de-duplication. About 1% extra records are
  bad, one kind each (`BAD_KINDS`), with their own unique `event_id` where they have one.
* `write_sample` puts the flat events of every 16th person into `flat-events.parquet`
  (timestamp as epoch milliseconds, `consent` as a struct, `properties` as JSON text) and the
  rest into gzipped JSON-lines files, one person's events per file, re-sends into the next.
  With `workers` > 1 it simulates chunks of people in parallel processes; the bytes written are
  the same.
"""
from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import gzip
import json
import math
import multiprocessing
import random
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_END_DATE = dt.date(2024, 6, 30)
PERSONA_SHARES = {"trendsetter": 0.15, "deal_seeker": 0.35, "occasional_browser": 0.5}
PERSONAS = tuple(PERSONA_SHARES)
BAD_KINDS = (
    "malformed_json",
    "missing_timestamp",
    "unparseable_timestamp",
    "future_timestamp",
    "no_identifier",
    "missing_item_id",
    "negative_price",
    "negative_quantity",
    "non_numeric_price",
    "unknown_event_type",
)
SHAPES = ("flat", "ga4", "ua", "export")
BAD_RATE = 0.01
DUPLICATE_RATE = 0.005
PARQUET_FILE = "flat-events.parquet"
PARQUET_USER_EVERY = 16  # flat events of every 16th person go to the Parquet file

_PERSONA_CUM_WEIGHTS = tuple(accumulate(PERSONA_SHARES.values()))
_CATEGORIES = {  # category: (median list price, product nouns)
    "apparel": (35.0, ("T-Shirt", "Hoodie", "Jacket", "Dress", "Jeans", "Sweater")),
    "shoes": (80.0, ("Sneaker", "Boot", "Sandal", "Loafer", "Runner")),
    "accessories": (25.0, ("Cap", "Scarf", "Belt", "Backpack", "Wallet")),
    "beauty": (18.0, ("Serum", "Lipstick", "Cleanser", "Perfume", "Mask")),
    "home": (45.0, ("Lamp", "Cushion", "Rug", "Vase", "Throw")),
    "kitchen": (30.0, ("Pan", "Knife", "Kettle", "Mug Set", "Blender")),
    "electronics": (120.0, ("Headphones", "Speaker", "Charger", "Smartwatch", "Camera")),
    "sports": (40.0, ("Yoga Mat", "Dumbbell", "Racket", "Bottle", "Jersey")),
    "toys": (22.0, ("Puzzle", "Robot", "Plush", "Blocks", "Kite")),
    "books": (15.0, ("Novel", "Cookbook", "Atlas", "Biography", "Comic")),
}
_BRANDS = (
    "Acme", "Northwind", "Fabrikam", "Contoso", "Globex", "Initech", "Umbrella", "Stark",
    "Wayne", "Wonka", "Hooli", "Vandelay", "Soylent", "Tyrell", "Cyberdyne", "Aperture",
    "Oscorp", "Gringotts", "Monarch", "Sirius", "Bluth", "Dunder", "Prestige", "Massive",
    "Virtucon", "Gekko", "Pied Piper", "Nakatomi", "Zorg", "Duff", "Krusty", "Lacuna",
    "Ollivander", "Paper Street", "Rekall", "Spacely", "Strickland", "Tessier", "Vehement",
    "Wernham", "Yoyodyne", "Zenith", "Axiom", "Bright", "Cobalt", "Delta", "Ember", "Fjord",
    "Granite", "Harbor",
)
_FIRST_NAMES = (
    "ava", "ben", "chloe", "diego", "emma", "farah", "george", "hana", "ivan", "julia", "kofi",
    "lena", "mateo", "nina", "omar", "priya", "quinn", "rosa", "sam", "tara", "umar", "vera",
    "wei", "ximena", "yusuf", "zoe",
)
_LAST_NAMES = (
    "smith", "garcia", "nguyen", "mueller", "rossi", "kim", "okafor", "silva", "kowalski",
    "haddad", "tanaka", "novak", "jones", "patel", "cohen", "larsen", "dubois", "moreau",
)
_UTC_OFFSETS_MIN = (-480, -420, -300, -240, 0, 60, 120, 180, 330, 540)
# Local start hour of a session: quiet nights, an evening peak.
_LOCAL_HOUR_CUM = list(accumulate((1, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 7, 8, 7, 6, 6, 7, 8, 10, 12, 12, 10, 6, 3)))
_SEARCH_TERMS = ("sale", "new arrivals", "gift", "black", "summer", "organic", "wireless")
_UNKNOWN_EVENT_NAMES = ("hover_banner", "debug_ping", "carousel_swipe")
_BAD_TIMESTAMPS = ("yesterday", "N/A", "2024-13-45T25:61:00Z", "31/02/2024 10:00")
_CURRENCY = "USD"
_MS_PER_DAY = 86_400_000


@dataclass(frozen=True)
class _Persona:
    """How a persona behaves; rates are sessions per day."""

    rate: float
    sale_rate: float
    app_share: float
    views: tuple[int, int]
    dwell: tuple[int, int]
    search: float
    cart_target: float  # add-to-cart probability for the items this persona is after
    cart_other: float
    email_open: dict


_BEHAVIOUR = {
    "trendsetter": _Persona(0.45, 0.45, 0.6, (3, 8), (8, 40), 0.3, 0.35, 0.08,
                            {"newsletter": 0.5, "sale": 0.2}),
    "deal_seeker": _Persona(0.06, 0.6, 0.25, (2, 7), (5, 25), 0.4, 0.4, 0.02,
                            {"newsletter": 0.15, "sale": 0.7}),
    "occasional_browser": _Persona(0.05, 0.05, 0.1, (1, 4), (60, 300), 0.1, 0.04, 0.04,
                                   {"newsletter": 0.1, "sale": 0.1}),
}
_CHECKOUT_RATE = 0.55
_PURCHASE_RATE = 0.75
_REMOVE_RATE = 0.1
_WISHLIST_RATE = 0.03

_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class UserProfile:
    """One simulated person: the ground truth that the events themselves never state."""

    index: int
    user_id: str
    persona: str
    web_ids: tuple[str, ...]  # browser cookies (anonymous_id on web)
    app_id: str | None  # app install id (anonymous_id in the app)
    email: str
    phone: str | None  # digits only, E.164 without "+": "1555…"
    consent_personalization: bool
    consent_analytics: bool
    marketing_opt_in: bool
    utc_offset_minutes: int
    favourite_categories: tuple[str, ...]

    @property
    def anonymous_ids(self) -> tuple[str, ...]:
        return self.web_ids + ((self.app_id,) if self.app_id else ())


def _profile_and_rng(user_index: int, seed: int) -> tuple[UserProfile, random.Random]:
    """The person's profile and the random stream that then drives their behaviour.

    Seeding per person makes a person's data independent of how many others are generated.
    """
    rng = random.Random(f"tailor-user:{seed}:{user_index}")
    persona = PERSONAS[bisect.bisect_right(_PERSONA_CUM_WEIGHTS, rng.random())]
    behaviour = _BEHAVIOUR[persona]
    web_ids = (f"c-{rng.getrandbits(64):016x}",)
    if rng.random() < 0.3:
        web_ids += (f"c-{rng.getrandbits(64):016x}",)
    app_id = None
    if rng.random() < behaviour.app_share * 1.2:
        h = f"{rng.getrandbits(128):032x}"
        app_id = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    # Numbers derived from the index (555-010-0000 on) keep phones unique across millions of people.
    phone = None
    if rng.random() < 0.5:
        n = user_index + 100_000
        phone = f"1{555 + n // 10_000_000}{n // 10_000 % 1000:03d}{n % 10_000:04d}"
    personalization = rng.random() >= 0.10
    favourites = tuple(rng.sample(list(_CATEGORIES), rng.choice((1, 2))))
    return (
        UserProfile(
            index=user_index,
            user_id=f"u{user_index:07d}",
            persona=persona,
            web_ids=web_ids,
            app_id=app_id,
            email=f"{first}.{last}{user_index}@example.com",
            phone=phone,
            consent_personalization=personalization,
            consent_analytics=rng.random() < (0.95 if personalization else 0.5),
            marketing_opt_in=rng.random() < 0.7,
            utc_offset_minutes=rng.choice(_UTC_OFFSETS_MIN),
            favourite_categories=favourites,
        ),
        rng,
    )


def user_profile(user_index: int, seed: int = 42) -> UserProfile:
    """The ground truth about person number `user_index` (0-based) in a dump made with `seed`."""
    return _profile_and_rng(user_index, seed)[0]


def ground_truth(users: int, seed: int = 42) -> dict[str, str]:
    """user_id → persona for the people of `generate_records(users, …, seed)`."""
    profiles = (user_profile(i, seed) for i in range(users))
    return {p.user_id: p.persona for p in profiles}


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class _Shop:
    """Catalogue, calendar and sale periods: everything shared by all people of one seed."""

    def __init__(self, days: int, seed: int, end_date: dt.date):
        if days < 1:
            raise ValueError("days must be at least 1")
        self.days = days
        self.start_date = end_date - dt.timedelta(days=days - 1)
        self.start_ms = int(dt.datetime.combine(self.start_date, dt.time(), dt.timezone.utc).timestamp()) * 1000
        self.end_ms = self.start_ms + days * _MS_PER_DAY - 1
        rng = random.Random(f"tailor-shop:{seed}")
        self._build_catalogue(rng)
        self._build_calendar(rng)

    def _build_catalogue(self, rng: random.Random) -> None:
        items = []
        for c, (category, (median, nouns)) in enumerate(_CATEGORIES.items()):
            brands = _BRANDS[c * 5:(c + 1) * 5]
            for _ in range(120):
                release = rng.randrange(-365, 0) if rng.random() < 0.65 else rng.randrange(self.days)
                price = max(0.99, round(median * math.exp(rng.gauss(0, 0.5)), 2))
                brand = rng.choice(brands)
                popularity = rng.paretovariate(1.2)
                items.append([release, category, brand, f"{brand} {rng.choice(nouns)}", price, popularity])
        items.sort(key=lambda it: it[0])  # index order = release order, so availability is a prefix
        ids = rng.sample(range(10_000, 100_000), len(items))
        self.item_id = [f"SKU{i}" for i in ids]
        self.release = [it[0] for it in items]
        self.category = [it[1] for it in items]
        self.brand = [it[2] for it in items]
        self.name = [it[3] for it in items]
        self.list_price = [it[4] for it in items]
        self.clearance = [it[0] < 0 and rng.random() < 0.08 for it in items]
        rates = (0.0, 0.2, 0.3, 0.4, 0.5)  # no discount, sales, clearance
        self._prices = [{r: (round(p - round(p * r, 2), 2), round(p * r, 2)) for r in rates} for p in self.list_price]
        # Pre-encoded JSON members of each item, per shape (see _Person).
        fields = list(zip(self.item_id, self.name, self.category, self.brand))
        self.flat_item = [f',"item_id":"{i}","item_name":"{n}","category":"{c}","brand":"{b}"' for i, n, c, b in fields]
        self.ga4_item = [(f'{{"item_id":"{i}","item_name":"{n}"', f',"item_category":"{c}","item_brand":"{b}"')
                         for i, n, c, b in fields]
        self.ua_item = [(f'{{"id":"{i}","name":"{n}"', f',"category":"{c}","brand":"{b}"') for i, n, c, b in fields]
        self._ga4_lines: dict[tuple, str] = {}
        self.popular_cum = _cum(it[5] for it in items)
        self.by_category = {}
        for category in _CATEGORIES:
            idx = [i for i, c in enumerate(self.category) if c == category]
            self.by_category[category] = (idx, [self.release[i] for i in idx],
                                          _cum(items[i][5] for i in idx))
        clear = [i for i, on in enumerate(self.clearance) if on]
        self.clearance_items = (clear, _cum(items[i][5] for i in clear))

    def ga4_line(self, line: tuple) -> str:
        """A GA4 `items` entry for (item, price, discount, quantity); few distinct ones, so cached."""
        text = self._ga4_lines.get(line)
        if text is None:
            item, price, discount, quantity = line
            head, tail = self.ga4_item[item]
            off = f',"discount":{discount!r}' if discount else ""
            text = self._ga4_lines[line] = f'{head},"price":{price!r},"quantity":{quantity}{tail}{off}}}'
        return text

    def _build_calendar(self, rng: random.Random) -> None:
        windows = max(1, round(self.days / 30))
        length = min(self.days, max(2, self.days // 15))
        self.sale_rate = [0.0] * self.days
        self.sale_starts = []
        for w in range(windows):
            start = max(0, min(self.days - length, int((w + 0.5) * self.days / windows) - length // 2))
            rate = rng.choice((0.2, 0.3, 0.4, 0.5))
            self.sale_starts.append(start)
            for d in range(start, start + length):
                self.sale_rate[d] = rate
        self.day_cum = {
            name: _cum(b.sale_rate if self.sale_rate[d] else b.rate for d in range(self.days))
            for name, b in _BEHAVIOUR.items()
        }
        newsletters = [(d, "newsletter") for d in range(3, self.days, 7)]
        campaigns = sorted(newsletters + [(d, "sale") for d in self.sale_starts])
        self.campaigns = [
            (self.start_ms + d * _MS_PER_DAY + 9 * 3_600_000, kind,
             f"cmp-{(self.start_date + dt.timedelta(days=d)):%Y%m%d}-{kind}")
            for d, kind in campaigns
        ]

    def unit_price(self, item: int, day: int) -> tuple[float, float]:
        """(price paid, discount) per unit of `item` on `day`."""
        rate = 0.3 if self.clearance[item] else 0.0
        if self.sale_rate[day] and self.release[item] < day - 30:
            rate = max(rate, self.sale_rate[day])
        return self._prices[item][rate]

    def released_by(self, day: int) -> int:
        return bisect.bisect_right(self.release, day)

    def popular(self, rng: random.Random, limit: int) -> int:
        """A popularity-weighted item among the first `limit` (released) items."""
        return bisect.bisect_right(self.popular_cum, rng.random() * self.popular_cum[limit - 1])

    def pick(self, rng: random.Random, persona: str, day: int, favourites) -> tuple[int, bool]:
        """An item this persona looks at on `day`, and whether it is what they are after."""
        available = self.released_by(day)
        if persona == "trendsetter" and rng.random() < 0.7:
            lo = bisect.bisect_left(self.release, day - 14)
            if lo < available:
                # Skewed towards the newest: they want things the day they come out.
                return available - 1 - int((available - lo) * rng.random() ** 2), True
        elif persona == "deal_seeker" and rng.random() < 0.85:
            if self.sale_rate[day]:
                old = bisect.bisect_left(self.release, day - 30)
                if old:
                    return self.popular(rng, old), True
            idx, cum = self.clearance_items
            if idx:
                return idx[bisect.bisect_right(cum, rng.random() * cum[-1])], True
        elif persona == "occasional_browser":
            idx, release, cum = self.by_category[rng.choice(favourites)]
            n = bisect.bisect_right(release, day)
            if n:
                return idx[bisect.bisect_right(cum, rng.random() * cum[n - 1])], True
        return self.popular(rng, available), False


def _cum(values) -> list[float]:
    return list(accumulate(values))


@lru_cache(maxsize=4096)
def _day_str(epoch_day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=epoch_day)).isoformat()


def _iso(t_ms: int, offset_min: int) -> str:
    local = t_ms // 1000 + offset_min * 60
    day, rest = divmod(local, 86_400)
    if offset_min:
        sign, off = ("+", offset_min) if offset_min > 0 else ("-", -offset_min)
        suffix = f"{sign}{off // 60:02d}:{off % 60:02d}"
    else:
        suffix = "Z"
    return f"{_day_str(day)}T{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}{suffix}"


# Timestamps as JSON values, in the styles each kind of sender uses.
_TS_STYLES = {
    "iso_local": lambda t_ms, offset_min: f'"{_iso(t_ms, offset_min)}"',
    "iso_z": lambda t_ms, offset_min: f'"{_iso(t_ms, 0)}"',
    "ms": lambda t_ms, offset_min: str(t_ms),
    "ms_str": lambda t_ms, offset_min: f'"{t_ms}"',
    "s": lambda t_ms, offset_min: str(t_ms // 1000),
    "s_str": lambda t_ms, offset_min: f'"{t_ms // 1000}"',
}
_TS_FLAT = tuple(_TS_STYLES[k] for k in ("iso_z", "iso_local", "s", "ms", "s_str"))
_TS_GA4 = tuple(_TS_STYLES[k] for k in ("iso_local", "iso_z", "ms"))
_TS_UA = tuple(_TS_STYLES[k] for k in ("ms", "ms_str"))
_TS_EXPORT = tuple(_TS_STYLES[k] for k in ("iso_z", "s"))


def _members(props: dict) -> str:
    """JSON object members for a dict of plain strings and ints."""
    return ",".join([f'"{k}":"{v}"' if v.__class__ is str else f'"{k}":{v}' for k, v in props.items()])


def _pick(rng: random.Random, seq):
    return seq[int(rng.random() * len(seq))]


def _between(rng: random.Random, lo: int, hi: int) -> int:
    """Like rng.randint, at a fifth of the cost."""
    return lo + int(rng.random() * (hi - lo + 1))


class _Session:
    """Identifiers shared by the records of one session (or one e-mail event)."""

    __slots__ = ("user_id", "anonymous_id", "session_id", "channel", "consent")

    def __init__(self, user_id, anonymous_id, session_id, channel, consent):
        self.user_id = user_id
        self.anonymous_id = anonymous_id
        self.session_id = session_id
        self.channel = channel
        self.consent = consent  # JSON members (',"consent":{…}') or ""

    def envelope(self) -> str:
        ids = f'"user_id":"{self.user_id}",' if self.user_id else ""
        return f'{ids}"anonymous_id":"{self.anonymous_id}","session_id":"{self.session_id}","channel":"{self.channel}"'


# Canonical event → (UA push name, UA action); web_browse page types.
_UA_ACTIONS = {"view_item": ("productDetail", "detail"), "add_to_cart": ("addToCart", "add"),
               "remove_from_cart": ("removeFromCart", "remove"),
               "begin_checkout": ("checkout", "checkout"), "purchase": ("purchase", "purchase")}
_PAGE_TYPES = {"page_view": "category", "view_item": "product", "search": "search", "add_to_cart": "cart"}


class _Person:
    """Simulates one person and collects their raw records.

    Good records are assembled from pre-encoded JSON fragments: json.dumps alone took ~60% of the run
    time. That is safe because every value comes from the fixed ASCII vocabularies above or
    from numbers and hex ids, none of which need escaping (tests parse every line).
    """

    def __init__(self, shop: _Shop, user_index: int, seed: int, to_parquet: bool):
        self.shop = shop
        self.profile, self.rng = _profile_and_rng(user_index, seed)
        p = self.profile
        self.behaviour = _BEHAVIOUR[p.persona]
        self.consent = {"personalization": p.consent_personalization, "analytics": p.consent_analytics}
        self.consent_json = ',"consent":' + _ENCODE(self.consent)
        self.offset = p.utc_offset_minutes
        self.to_parquet = to_parquet
        # A bijective scramble of the index: event ids are unique but say nothing about people.
        scrambled = ((user_index ^ (seed * 0xD1B54A32D192ED03)) * 0x9E3779B97F4A7C15) % (1 << 64)
        self.id_prefix = f"{scrambled:016x}"
        self.seq = 0
        self.lines: list[str] = []
        self.resent: list[str] = []
        self.parquet_rows: list[dict] = []
        self.by_shape = dict.fromkeys(SHAPES, 0)
        self.bad = dict.fromkeys(BAD_KINDS, 0)
        self.until_resend = self._gap(DUPLICATE_RATE)
        self.until_bad = self._gap(BAD_RATE)

    def event_id(self) -> str:
        self.seq += 1
        return f"{self.id_prefix}-{self.seq:x}"

    # -- output ---------------------------------------------------------------------------
    def emit(self, line: str, shape: str, s: _Session, t_ms: int) -> None:
        """Store a good record; now and then re-send it, and now and then add a bad one."""
        self.by_shape[shape] += 1
        if self.to_parquet and shape == "flat":
            self.parquet_rows.append(json.loads(line))
        else:
            self.lines.append(line)
            self.until_resend -= 1
            if not self.until_resend:
                self.resent.append(line)
                self.until_resend = self._gap(DUPLICATE_RATE)
        self.until_bad -= 1
        if not self.until_bad:
            self.emit_bad(s, t_ms)
            self.until_bad = self._gap(BAD_RATE)

    def _gap(self, rate: float) -> int:
        """Records until the next event of probability `rate` per record (geometric): one draw, not one per record."""
        return 1 + int(math.log(1.0 - self.rng.random()) / math.log(1.0 - rate))

    def emit_bad(self, s: _Session, t_ms: int) -> None:
        """One bad record of a random kind; otherwise a valid add_to_cart, flat or GA4."""
        rng, shop = self.rng, self.shop
        kind = rng.choice(BAD_KINDS)
        item = shop.popular(rng, shop.released_by((t_ms - shop.start_ms) // _MS_PER_DAY))
        price = shop.list_price[item]
        quantity = 1
        ts = json.loads(_pick(rng, _TS_FLAT)(t_ms, self.offset))
        event = "add_to_cart"
        if kind == "missing_timestamp":
            ts = None
        elif kind == "unparseable_timestamp":
            ts = rng.choice(_BAD_TIMESTAMPS)
        elif kind == "future_timestamp":
            ts = _iso(t_ms + (2099 - 2024) * 365 * _MS_PER_DAY, self.offset)
        elif kind == "negative_price":
            price = -price
        elif kind == "negative_quantity":
            quantity = -rng.randint(1, 3)
        elif kind == "non_numeric_price":
            price = "abc"
        elif kind == "unknown_event_type":
            event = rng.choice(_UNKNOWN_EVENT_NAMES)
        ids = {} if kind == "no_identifier" else {
            "user_id": s.user_id,
            "anonymous_id": s.anonymous_id or self.profile.web_ids[0],
        }
        item_id = None if kind == "missing_item_id" else shop.item_id[item]
        if rng.random() < 0.5:
            record = {"event_id": self.event_id(), "event_type": event, "timestamp": ts, **ids,
                      "channel": "web", "item_id": item_id, "item_name": shop.name[item],
                      "category": shop.category[item], "price": price, "quantity": quantity,
                      "currency": _CURRENCY, "consent": self.consent}
        else:
            product = {"item_id": item_id, "item_name": shop.name[item], "price": price,
                       "quantity": quantity, "item_category": shop.category[item]}
            record = {"event": event, "timestamp": ts, "event_id": self.event_id(), **ids,
                      "channel": "web", "consent": self.consent,
                      "ecommerce": {"currency": _CURRENCY,
                                    "items": [{k: v for k, v in product.items() if v is not None}]}}
        line = _ENCODE({k: v for k, v in record.items() if v is not None})
        if kind == "malformed_json":
            line = line[: rng.randrange(1, len(line) - 1)]
        self.lines.append(line)
        self.bad[kind] += 1

    # -- behaviour ------------------------------------------------------------------------
    def simulate(self) -> None:
        shop, rng, p = self.shop, self.rng, self.profile
        cum = shop.day_cum[p.persona]
        first_day = int(rng.random() * shop.days * 0.6)  # people join over the period's first 60%
        base = cum[first_day - 1] if first_day else 0.0
        n = max(1, _poisson(rng, cum[-1] - base))
        starts = sorted(self._session_start(bisect.bisect_right(cum, base + rng.random() * (cum[-1] - base)))
                        for _ in range(n))
        login_index = 0
        while login_index < n - 1 and rng.random() < 0.5:
            login_index += 1
        login_ms = starts[login_index]
        sessions = [(t, None) for t in starts]
        if p.marketing_opt_in:
            sessions += self._email(login_ms)
        sessions.sort(key=lambda s: s[0])
        for t, campaign in sessions:
            self._session(t, campaign, login_ms)

    def _session_start(self, day: int) -> int:
        rng = self.rng
        hour = bisect.bisect_right(_LOCAL_HOUR_CUM, rng.random() * _LOCAL_HOUR_CUM[-1])
        second_of_day = (hour * 3600 + int(rng.random() * 3600) - self.offset * 60) % 86_400
        t = self.shop.start_ms + day * _MS_PER_DAY + second_of_day * 1000 + int(rng.random() * 1000)
        # Sessions last well under 2 hours; late ones on the last day move earlier to end in the period.
        return t if t < self.shop.end_ms - 7_200_000 else t - 14_400_000

    def _email(self, login_ms: int) -> list[tuple[int, str]]:
        """Opens and clicks of the campaigns sent after the person signed up; clicks → sessions."""
        rng, shop = self.rng, self.shop
        clicks = []
        for send_ms, kind, campaign_id in shop.campaigns:
            if send_ms < login_ms or rng.random() >= self.behaviour.email_open[kind]:
                continue
            open_ms = send_ms + int(rng.expovariate(1 / 21_600_000))
            if open_ms > shop.end_ms - 7_200_000:
                continue
            self._email_event("email_open", open_ms, campaign_id, None)
            if rng.random() < 0.35:
                click_ms = open_ms + rng.randrange(5_000, 600_000)
                link = f"https://shop.example.com/{'sale' if kind == 'sale' else 'new'}?utm_campaign={campaign_id}"
                self._email_event("email_click", click_ms, campaign_id, link)
                clicks.append((click_ms + rng.randrange(2_000, 60_000), campaign_id))
        return clicks

    def _email_event(self, event: str, t_ms: int, campaign_id: str, link: str | None) -> None:
        rng, p = self.rng, self.profile
        s = _Session(p.user_id if rng.random() < 0.8 else None, None, None, "email", self.consent_json)
        customer = f',"customer_id":"{s.user_id}"' if s.user_id else ""
        link_json = f',"link_url":"{link}"' if link else ""
        if rng.random() < 0.8:
            # ESPs that only report the send time give `sent_at` instead of the event time.
            key = "sent_at" if event == "email_open" and rng.random() < 0.3 else "ts"
            line = (f'{{"export":"{event}","event_id":"{self.event_id()}",'
                    f'"{key}":{_pick(rng, _TS_EXPORT)(t_ms, 0)},'
                    f'"recipient":"{self._email_variant()}"{customer},"campaign_id":"{campaign_id}"{link_json}}}')
            self.emit(line, "export", s, t_ms)
        else:
            user = f',"user_id":"{s.user_id}"' if s.user_id else ""
            ts = str(t_ms) if self.to_parquet else _pick(rng, _TS_FLAT)(t_ms, self.offset)
            line = (f'{{"event_id":"{self.event_id()}","event_type":"{event}","timestamp":{ts}{user},'
                    f'"channel":"email","email":"{self._email_variant()}"{self.consent_json},'
                    f'"properties":{{"campaign_id":"{campaign_id}"{link_json}}}}}')
            self.emit(line, "flat", s, t_ms)

    def _email_variant(self) -> str:
        """The e-mail as people type it: mostly as given, sometimes capitalised or padded."""
        r, email = self.rng.random(), self.profile.email
        if r < 0.85:
            return email
        if r < 0.95:
            local, domain = email.split("@")
            return f"{local.title()}@{domain.capitalize()}"
        return f" {email} "

    def _phone_variant(self) -> str:
        d = self.profile.phone
        return _pick(self.rng, (
            f"+1 ({d[1:4]}) {d[4:7]}-{d[7:]}", f"{d[1:4]}-{d[4:7]}-{d[7:]}", f"+{d}",
            f"({d[1:4]}) {d[4:7]} {d[7:]}", f"{d[1:4]}.{d[4:7]}.{d[7:]}",
        ))

    def _session(self, t_ms: int, campaign: str | None, login_ms: int) -> None:
        """Plan one session's events (funnel with drop-off), then render them in one shape."""
        rng, p, b, shop = self.rng, self.profile, self.behaviour, self.shop
        day = (t_ms - shop.start_ms) // _MS_PER_DAY
        in_app = campaign is None and p.app_id is not None and rng.random() < b.app_share
        if in_app:
            # The app's own events come through Firebase (GA4) or its back end (flat).
            device, channel = p.app_id, "app"
            shape = "ga4" if rng.random() < 0.5 else "flat"
        else:
            device = p.web_ids[1] if len(p.web_ids) > 1 and rng.random() < 0.3 else p.web_ids[0]
            channel = "web"
            r = rng.random()
            shape = "ga4" if r < 0.5 else "ua" if r < 0.7 else "flat" if r < 0.85 else "web_browse"
        consent = self.consent_json if rng.random() >= 0.03 else ""
        s = _Session(None, device, f"s{rng.getrandbits(56):014x}", channel, consent)
        lo, hi = b.dwell

        plan = []  # (event, t_ms, items [(item, price, discount, quantity)], properties)
        t = t_ms
        if in_app:
            plan.append(("app_open", t, None, None))
        else:
            path = "/" if campaign is None else "/sale" if campaign.endswith("sale") else "/new"
            props = {"page_path": path, "dwell_seconds": _between(rng, lo, hi) // 4 + 1}
            if campaign:
                props["utm_source"] = "email"
                props["utm_campaign"] = campaign
            plan.append(("page_view", t, None, props))
        t += _between(rng, 3, 30) * 1000
        if rng.random() < b.search:
            plan.append(("search", t, None, {"search_term": _pick(rng, _SEARCH_TERMS)}))
            t += _between(rng, 2, 15) * 1000
        cart = []
        browsing_categories = p.persona == "occasional_browser" and not in_app
        for _ in range(_between(rng, *b.views)):
            item, wanted = shop.pick(rng, p.persona, day, p.favourite_categories)
            price, discount = shop.unit_price(item, day)
            dwell = _between(rng, lo, hi)
            if browsing_categories:
                plan.append(("page_view", t, None, {"page_path": f"/c/{shop.category[item]}",
                                                    "dwell_seconds": dwell // 3 + 1}))
                t += (dwell // 3 + 1) * 1000
            plan.append(("view_item", t, [(item, price, discount, 1)], {"dwell_seconds": dwell}))
            t += dwell * 1000 + int(rng.random() * 1000)
            if rng.random() < (b.cart_target if wanted else b.cart_other):
                line = (item, price, discount, 1 if rng.random() < 0.9 else _between(rng, 2, 3))
                plan.append(("add_to_cart", t, [line], None))
                cart.append(line)
                t += _between(rng, 2, 20) * 1000
            elif rng.random() < _WISHLIST_RATE:
                plan.append(("add_to_wishlist", t, [(item, price, discount, 1)], None))
                t += _between(rng, 2, 10) * 1000
        if len(cart) > 1 and rng.random() < _REMOVE_RATE:
            plan.append(("remove_from_cart", t, [cart.pop(int(rng.random() * len(cart)))], None))
            t += _between(rng, 2, 20) * 1000
        if cart and rng.random() < _CHECKOUT_RATE:
            plan.append(("begin_checkout", t, cart, None))
            t += _between(rng, 30, 240) * 1000
            if rng.random() < _PURCHASE_RATE:
                plan.append(("purchase", t, cart, {"transaction_id": f"T{rng.getrandbits(40):010X}"}))

        for event, t, items, props in plan:
            # The login happens right after the first event of the login session.
            s.user_id = p.user_id if t > login_ms else None
            if event == "app_open" and rng.random() < 0.6:
                self._app_session(s, t, (plan[-1][1] - t) // 1000 + 5, len(plan))
            elif shape == "web_browse" and event in _PAGE_TYPES:
                self._web_browse(event, t, items, props, s)
            else:
                envelope = s.envelope()
                if event == "begin_checkout" or event == "purchase":
                    envelope += self._contact()
                envelope += s.consent
                if shape == "ga4":
                    self._ga4(event, t, items, props, envelope, s)
                elif shape == "ua":
                    self._ua(event, t, items, props, envelope, s)
                else:  # web_browse can't express checkout, removals or purchases: sent flat
                    self._flat(event, t, items, props, envelope, s)

    def _contact(self) -> str:
        """Checkout forms ask for an e-mail (also from guests) and sometimes a phone."""
        rng, out = self.rng, ""
        if rng.random() < 0.8:
            out += f',"email":"{self._email_variant()}"'
        if self.profile.phone and rng.random() < 0.5:
            out += f',"phone":"{self._phone_variant()}"'
        return out

    # -- shapes ---------------------------------------------------------------------------
    def _flat(self, event, t, items, props, envelope, s) -> None:
        """Flat events hold one item each: a multi-item checkout becomes one record per item."""
        shop = self.shop
        ts = str(t) if self.to_parquet else _pick(self.rng, _TS_FLAT)(t, self.offset)
        head = f'"event_type":"{event}","timestamp":{ts},{envelope}'
        tail = f',"properties":{{{_members(props)}}}}}' if props else "}"
        for item, price, discount, quantity in items or ((None, 0, 0, 0),):
            if item is None:
                body = ""
            else:
                body = f'{shop.flat_item[item]},"price":{price!r},"quantity":{quantity}'
                if event == "purchase":
                    body += f',"revenue":{round(price * quantity, 2)!r}'
                if discount:
                    body += f',"discount":{discount!r}'
                body += f',"currency":"{_CURRENCY}"'
            self.emit(f'{{"event_id":"{self.event_id()}",{head}{body}{tail}', "flat", s, t)

    def _ga4(self, event, t, items, props, envelope, s) -> None:
        shop = self.shop
        line = (f'{{"event":"{event}","timestamp":{_pick(self.rng, _TS_GA4)(t, self.offset)},'
                f'"event_id":"{self.event_id()}",{envelope}')
        transaction = ""
        if event == "purchase":
            transaction = f',"transaction_id":"{props["transaction_id"]}"'
        elif props:
            line += "," + _members(props)
        if items:
            value = sum(price * quantity for _, price, _, quantity in items)
            line += (f',"ecommerce":{{"currency":"{_CURRENCY}","value":{round(value, 2)!r}{transaction},'
                     f'"items":[{",".join(map(shop.ga4_line, items))}]}}')
        self.emit(line + "}", "ga4", s, t)

    def _ua(self, event, t, items, props, envelope, s) -> None:
        shop = self.shop
        action = _UA_ACTIONS.get(event)
        if items and action is None:  # UA has no wish-list action: the site sends it flat
            self._flat(event, t, items, props, envelope, s)
            return
        name = action[0] if action else "pageview" if event == "page_view" else event
        line = (f'{{"event":"{name}","timestamp":{_pick(self.rng, _TS_UA)(t, 0)},'
                f'"event_id":"{self.event_id()}",{envelope}')
        if action is None:
            if props:
                line += "," + _members(props)
            self.emit(line + "}", "ua", s, t)
            return
        if props and event != "purchase":
            line += "," + _members(props)
        products = []
        coupon = ',"coupon":"SALE"' if shop.sale_rate[(t - shop.start_ms) // _MS_PER_DAY] else ',"coupon":"CLEARANCE"'
        for item, price, discount, quantity in items:
            head, tail = shop.ua_item[item]
            products.append(f'{head},"price":"{price:.2f}"{tail},"quantity":{quantity}{coupon if discount else ""}}}')
        block = f'"products":[{",".join(products)}]'
        if event == "purchase":
            revenue = sum(price * quantity for _, price, _, quantity in items)
            block = (f'"actionField":{{"id":"{props["transaction_id"]}","revenue":"{revenue:.2f}",'
                     f'"tax":"{revenue * 0.08:.2f}","shipping":"4.99"}},{block}')
        elif event == "begin_checkout":
            block = f'"actionField":{{"step":1}},{block}'
        self.emit(f'{line},"ecommerce":{{"currencyCode":"{_CURRENCY}","{action[1]}":{{{block}}}}}}}', "ua", s, t)

    def _web_browse(self, event, t, items, props, s) -> None:
        page_type = _PAGE_TYPES[event]
        if event == "page_view" and props["page_path"] == "/":
            page_type = "home"
        customer = f',"customer_id":"{s.user_id}"' if s.user_id else ""
        sku = f',"sku":"{self.shop.item_id[items[0][0]]}"' if items else ""
        extra = "," + _members(props) if props else ""
        line = (f'{{"export":"web_browse","event_id":"{self.event_id()}",'
                f'"ts":{_pick(self.rng, _TS_EXPORT)(t, 0)},"cookie_id":"{s.anonymous_id}"{customer},'
                f'"session_id":"{s.session_id}","page_type":"{page_type}"{sku}{extra}}}')
        self.emit(line, "export", s, t)

    def _app_session(self, s: _Session, t: int, duration_s: int, screens: int) -> None:
        customer = f',"customer_id":"{s.user_id}"' if s.user_id else ""
        line = (f'{{"export":"app_session","event_id":"{self.event_id()}",'
                f'"started_at":{_pick(self.rng, _TS_EXPORT)(t, 0)},"device_id":"{s.anonymous_id}"'
                f'{customer},"session_id":"{s.session_id}","duration_s":{duration_s},"screens":{screens}}}')
        self.emit(line, "export", s, t)


@lru_cache(maxsize=4)
def _shop(days: int, seed: int, end_date: dt.date) -> _Shop:
    return _Shop(days, seed, end_date)


def _people(start: int, stop: int, days: int, seed: int, end_date: dt.date) -> Iterator[_Person]:
    shop = _shop(days, seed, end_date)
    for i in range(start, stop):
        person = _Person(shop, i, seed, to_parquet=i % PARQUET_USER_EVERY == PARQUET_USER_EVERY - 1)
        person.simulate()
        yield person


def generate_records(users: int, days: int, seed: int = 42,
                     end_date: dt.date = DEFAULT_END_DATE) -> Iterator[str]:
    """Every raw record of the dump as a JSON line (no newline), deterministic for `seed`.

    The same records `write_sample` writes: each person's lines, then their re-sent lines,
    then their Parquet-bound flat events as JSON.
    """
    for person in _people(0, users, days, seed, end_date):
        yield from person.lines
        yield from person.resent
        yield from map(_ENCODE, person.parquet_rows)


_PARQUET_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("event_type", pa.string()), ("timestamp", pa.int64()),
    ("user_id", pa.string()), ("anonymous_id", pa.string()), ("session_id", pa.string()),
    ("channel", pa.string()), ("email", pa.string()), ("phone", pa.string()),
    ("item_id", pa.string()), ("item_name", pa.string()), ("category", pa.string()),
    ("brand", pa.string()), ("price", pa.float64()), ("quantity", pa.int64()),
    ("revenue", pa.float64()), ("discount", pa.float64()), ("currency", pa.string()),
    ("consent", pa.struct([("personalization", pa.bool_()), ("analytics", pa.bool_())])),
    ("properties", pa.string()),
])


def _parquet_table(rows: list[dict]) -> pa.Table:
    rows = [{**r, "properties": _ENCODE(r["properties"])} if "properties" in r else r for r in rows]
    return pa.Table.from_pylist(rows, schema=_PARQUET_SCHEMA)


_CHUNK_USERS = 250  # people simulated per task: ~25k records, ~10 MB of text
_ROW_GROUP = 10_000  # Parquet rows per row group


def _simulate_chunk(job: tuple) -> dict:
    """Records and counts of people [start, stop), with each dump file's bytes in person order."""
    start, stop, days, seed, end_date, files = job
    texts = [[] for _ in range(files)]
    chunk = {"parquet_rows": [], "by_shape": dict.fromkeys(SHAPES, 0), "bad": dict.fromkeys(BAD_KINDS, 0),
             "by_persona": {name: {"users": 0, "records": 0} for name in PERSONAS}, "jsonl": 0, "duplicates": 0}
    for person in _people(start, stop, days, seed, end_date):
        i = person.profile.index
        texts[i % files] += person.lines
        texts[(i + 1) % files] += person.resent  # re-sent in the next dump file
        chunk["parquet_rows"] += person.parquet_rows
        for shape, n in person.by_shape.items():
            chunk["by_shape"][shape] += n
        for kind, n in person.bad.items():
            chunk["bad"][kind] += n
        written = len(person.lines) + len(person.resent)
        persona = chunk["by_persona"][person.profile.persona]
        persona["users"] += 1
        persona["records"] += written + len(person.parquet_rows)
        chunk["jsonl"] += written
        chunk["duplicates"] += len(person.resent)
    chunk["files"] = [("\n".join(t) + "\n").encode() if t else b"" for t in texts]
    return chunk


def write_sample(output_dir: Path, users: int, days: int, seed: int = 42,
                 end_date: dt.date = DEFAULT_END_DATE, files: int = 4, workers: int = 1) -> dict:
    """Write the dump (gzipped JSON lines + one Parquet file) and return what is in it.

    Byte-identical for the same arguments whatever `workers` is (gzip header mtime is fixed,
    chunks are written in order, row groups have a fixed size). `workers` > 1 simulates chunks
    of people in that many processes, for benchmark-sized dumps. Memory is bounded by a few
    chunks per worker.
    """
    if files < 1 or workers < 1:
        raise ValueError("files and workers must be at least 1")
    shop = _shop(days, seed, end_date)  # fails early on bad arguments
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = [f"events-{k:04d}.jsonl.gz" for k in range(files)]
    jobs = [(start, min(start + _CHUNK_USERS, users), days, seed, end_date, files)
            for start in range(0, users, _CHUNK_USERS)]
    summary = {"by_shape": dict.fromkeys(SHAPES, 0), "bad": dict.fromkeys(BAD_KINDS, 0),
               "by_persona": {name: {"users": 0, "records": 0} for name in PERSONAS}}
    jsonl = parquet = duplicates = 0
    pending: list[dict] = []
    with contextlib.ExitStack() as stack:
        # Level 1: the benchmark writes ~10M records; level 6 takes 3× the time for 25% less space.
        dumps = [stack.enter_context(gzip.GzipFile(filename=name, mode="wb", compresslevel=1, mtime=0,
                                                   fileobj=stack.enter_context(open(output_dir / name, "wb"))))
                 for name in names]
        writer = stack.enter_context(pq.ParquetWriter(output_dir / PARQUET_FILE, _PARQUET_SCHEMA))
        pool = stack.enter_context(multiprocessing.Pool(workers)) if workers > 1 else None
        for batch in range(0, len(jobs), 2 * workers):  # a few chunks in flight bound the memory
            window = jobs[batch:batch + 2 * workers]
            for chunk in pool.map(_simulate_chunk, window) if pool else map(_simulate_chunk, window):
                for dump, data in zip(dumps, chunk["files"]):
                    dump.write(data)
                pending += chunk["parquet_rows"]
                while len(pending) >= _ROW_GROUP:
                    writer.write_table(_parquet_table(pending[:_ROW_GROUP]))
                    pending = pending[_ROW_GROUP:]
                for key in ("by_shape", "bad"):
                    for name, n in chunk[key].items():
                        summary[key][name] += n
                for name, counts in chunk["by_persona"].items():
                    for key, n in counts.items():
                        summary["by_persona"][name][key] += n
                jsonl += chunk["jsonl"]
                parquet += len(chunk["parquet_rows"])
                duplicates += chunk["duplicates"]
        writer.write_table(_parquet_table(pending))
    return {
        "users": users, "days": days, "seed": seed,
        "start_date": shop.start_date.isoformat(), "end_date": end_date.isoformat(),
        "files": names + [PARQUET_FILE],
        "records": jsonl + parquet, "jsonl_records": jsonl, "parquet_records": parquet,
        "good_records": sum(summary["by_shape"].values()), "by_shape": summary["by_shape"],
        "by_persona": summary["by_persona"],
        "bad_records": sum(summary["bad"].values()), "bad": summary["bad"], "duplicates": duplicates,
    }


@lru_cache(maxsize=64)
def _records_per_user(days: int) -> float:
    sample = 400
    return sum(1 for _ in generate_records(sample, days, seed=0)) / sample


def users_for_events(target_events: int, days: int) -> int:
    """How many people give roughly `target_events` raw records over `days` days.

    Measured on a 400-person sample rather than derived, so it follows the model as it changes.
    """
    return max(1, round(target_events / _records_per_user(days)))
