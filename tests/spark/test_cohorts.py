"""Monthly retention cohorts on a hand-made event set, and the heatmap drawn from them."""
from datetime import date, datetime, timezone

import matplotlib.pyplot as plt
import pytest

from features.cohorts import COHORT_COLUMNS, cohort_retention, retention_heatmap
from features.consent import analytics_events
from features.identity import with_person_id

AS_OF = date(2024, 3, 31)
# (user_id, anonymous_id, event day, analytics consent)
EVENTS = [
    ("cat", None, "2024-01-05", True), ("cat", None, "2024-01-20", True),  # Jan, then March
    ("cat", None, "2024-03-02", True),
    (None, "bob", "2024-02-01", True), (None, "bob", "2024-03-31", True),  # the as-of day counts
    (None, "bob", "2024-04-01", True),  # after the as-of day: ignored
    ("fay", None, "2024-02-14", True),  # February only
    ("ann", None, "2024-03-09", True),
    ("eve", None, "2024-01-09", False), ("eve", None, "2024-02-09", False),  # no analytics consent
    (None, None, "2024-01-01", True),  # nobody's
]
# (cohort month, months since): (cohort size, active people, retention rate)
EXPECTED = {
    (date(2024, 1, 1), 0): (1, 1, 1.0), (date(2024, 1, 1), 1): (1, 0, 0.0),
    (date(2024, 1, 1), 2): (1, 1, 1.0),
    (date(2024, 2, 1), 0): (2, 2, 1.0), (date(2024, 2, 1), 1): (2, 1, 0.5),
    (date(2024, 3, 1), 0): (1, 1, 1.0),
}


@pytest.fixture(scope="module")
def table(spark):
    rows = [(f"e{i}", "page_view", user, anon,
             datetime.fromisoformat(day).replace(hour=12, tzinfo=timezone.utc), True, consent)
            for i, (user, anon, day, consent) in enumerate(EVENTS)]
    events = spark.createDataFrame(rows, "event_id string, event_type string, user_id string, "
                                         "anonymous_id string, event_time timestamp, "
                                         "consent_personalization boolean, consent_analytics boolean")
    return cohort_retention(analytics_events(with_person_id(events)), AS_OF).toPandas()


def test_every_cohort_month_pair_up_to_the_as_of_month(table):
    assert list(table.columns) == COHORT_COLUMNS
    got = {(r.cohort_month, r.months_since): (r.cohort_size, r.active_people, r.retention_rate)
           for r in table.itertuples()}
    assert got == EXPECTED


def test_heatmap_has_one_row_per_cohort_and_a_column_per_month(table):
    figure = retention_heatmap(table)
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == [
        "2024-01 (n=1)", "2024-02 (n=2)", "2024-03 (n=1)"]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["0", "1", "2"]
    assert len(axes.texts) == len(EXPECTED)  # one annotation per cell that exists
    plt.close(figure)
