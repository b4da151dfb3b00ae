"""Persona names for segments, from their profiles: a documented rule table, then a fallback.

A segment's profile is its mean z-score per feature (how many standard deviations its people
sit above or below the overall mean). Rules are tried in this order; the first whose every
condition holds names the segment (a rule whose features are not all in the profile is skipped):

| persona | conditions (mean z-score) | reads as |
| --- | --- | --- |
| Trendsetters | new_arrival_purchase_share ≥ +0.5 and days_active ≥ +0.25 | frequent, early on new arrivals |
| Deal Seekers | discounted_purchase_share ≥ +0.5 | a high share of purchases on sale or with a coupon |
| Occasional Browsers | days_active ≤ −0.25 and mean_session_seconds ≥ +0.25 and category_concentration ≥ +0.25 | rare visits, long dwell on few categories |
| Champions | frequency ≥ +0.75 and monetary_total ≥ +0.75 and recency_days ≤ −0.25 | buy often, spend much, bought lately |
| Lapsed Customers | recency_days ≥ +0.75 | long since their last purchase |
| Email Responders | email_click_rate ≥ +0.75 | click campaign e-mails far more than most |
| Window Shoppers | events ≥ +0.5 and view_to_purchase_rate ≤ −0.5 | browse a lot, rarely buy |

A segment no rule fits is named by its two strongest traits (largest |z| of at least 0.25,
ties by feature name), e.g. "High sale share, low activity", or "Average profile" without any. When a name is already taken by a larger segment,
the smaller one gets its traits in brackets: "Deal Seekers (high spend, high frequency)". Noise
(DBSCAN's -1) is "Unassigned". Names depend only on the profile, so re-running on the same
data gives the same names.
"""
from __future__ import annotations

import pandas as pd

NOISE_NAME = "Unassigned"
MIN_TRAIT_Z = 0.25  # a fallback name only mentions traits at least this far from the mean

# (persona, ((feature, ">=" | "<=", z threshold), ...)) — the table in the docstring and README.
PERSONA_RULES: tuple[tuple[str, tuple[tuple[str, str, float], ...]], ...] = (
    ("Trendsetters", (("new_arrival_purchase_share", ">=", 0.5), ("days_active", ">=", 0.25))),
    ("Deal Seekers", (("discounted_purchase_share", ">=", 0.5),)),
    ("Occasional Browsers", (("days_active", "<=", -0.25), ("mean_session_seconds", ">=", 0.25),
                             ("category_concentration", ">=", 0.25))),
    ("Champions", (("frequency", ">=", 0.75), ("monetary_total", ">=", 0.75),
                   ("recency_days", "<=", -0.25))),
    ("Lapsed Customers", (("recency_days", ">=", 0.75),)),
    ("Email Responders", (("email_click_rate", ">=", 0.75),)),
    ("Window Shoppers", (("events", ">=", 0.5), ("view_to_purchase_rate", "<=", -0.5))),
)

# Words for the fallback names; other features use their column name.
TRAIT_WORDS = {
    "recency_days": "recency (days since purchase)", "frequency": "frequency",
    "monetary_total": "spend", "monetary_avg": "basket value", "events": "activity",
    "days_active": "active days", "recency_weighted_events": "recent activity",
    "sessions": "sessions", "mean_session_seconds": "dwell time",
    "view_to_cart_rate": "view-to-cart rate", "cart_to_purchase_rate": "cart-to-purchase rate",
    "view_to_purchase_rate": "conversion", "discounted_purchase_share": "sale share",
    "new_arrival_purchase_share": "new-arrival share", "email_open_rate": "e-mail opens",
    "email_click_rate": "e-mail clicks", "devices": "devices",
    "category_concentration": "category focus", "age": "age", "urban": "urban share",
}


def _holds(z: pd.Series, feature: str, op: str, threshold: float) -> bool:
    return op == ">=" and z[feature] >= threshold or op == "<=" and z[feature] <= threshold


def rule_persona(z: pd.Series) -> str | None:
    """The first persona of PERSONA_RULES whose conditions all hold for this profile."""
    for persona, conditions in PERSONA_RULES:
        if all(f in z.index and pd.notna(z[f]) for f, _, _ in conditions) and all(
                _holds(z, *condition) for condition in conditions):
            return persona
    return None


def trait_name(z: pd.Series, traits: int = 2) -> str:
    """The segment's strongest traits (|z| ≥ 0.25) in words: "High sale share, low activity"."""
    z = z.dropna()
    strongest = sorted((f for f in z.index if abs(z[f]) >= MIN_TRAIT_Z), key=lambda f: (-abs(z[f]), f))[:traits]
    words = [f"{'high' if z[f] >= 0 else 'low'} {TRAIT_WORDS.get(f, f.replace('_', ' '))}"
             for f in strongest]
    return ", ".join(words).capitalize() if words else "Average profile"


def name_segments(z_profile: pd.DataFrame) -> dict[int, str]:
    """segment -> persona for a segment × feature z-score table (segments in label order:
    the larger segment keeps a contested name)."""
    names: dict[int, str] = {}
    for segment in sorted(int(s) for s in z_profile.index):
        if segment < 0:
            names[segment] = NOISE_NAME
            continue
        z = z_profile.loc[segment]
        name = rule_persona(z) or trait_name(z)
        if name in names.values():
            name = f"{name} ({trait_name(z).lower()})"
        names[segment] = name
    return names
