"""Experiment definitions and assignment: validation messages, determinism, uniformity,
traffic, layers, eligibility; the exposure writer's batches and raw format."""
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import yaml
from scipy import stats

from serving.exposures import ExposureWriter, RootSink
from serving.experiments import (Assignment, ExperimentDefinitionError, build_book,
                                 known_segment_names, load_experiments, rule_segment_ids)

REPO = Path(__file__).resolve().parents[2]
KNOWN = known_segment_names(["Champions", "At Risk"], ["cart_abandoners"], ["Deal Seekers"])
EVENT_TYPES = ["purchase", "add_to_cart", "email_click", "exposure"]
NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
IDS = [f"person-{i}" for i in range(100_000)]


def abn(**changes) -> dict:
    definition = {"id": "banner", "type": "abn", "slot": "home_banner", "salt": "banner-v1",
                  "start": "2026-11-01", "stop": "2026-12-31", "conversion_event": "purchase",
                  "variants": [{"name": "control", "weight": 0.5}, {"name": "sale", "weight": 0.3},
                               {"name": "new", "weight": 0.2}]}
    return {**definition, **changes}


def mvt(**changes) -> dict:
    definition = {"id": "reco", "type": "multivariate", "slot": "recommendations", "salt": "reco-v1",
                  "start": "2026-11-01", "stop": "2026-12-31", "conversion_event": "add_to_cart",
                  "factors": [{"name": "model", "levels": [{"name": "als", "weight": 0.5},
                                                           {"name": "pop", "weight": 0.5}]},
                              {"name": "layout", "levels": [{"name": "grid", "weight": 0.75},
                                                            {"name": "row", "weight": 0.25}]}]}
    return {**definition, **changes}


def book(*experiments, layers=None):
    return build_book({"layers": layers or {}, "experiments": list(experiments)}, KNOWN, EVENT_TYPES)


def problems(*experiments, layers=None) -> list[str]:
    with pytest.raises(ExperimentDefinitionError) as caught:
        book(*experiments, layers=layers)
    return caught.value.problems


def test_the_shipped_definitions_are_valid():
    from features.rfm import SEGMENTS

    rfm = {name for row in SEGMENTS.values() for name in row}
    loaded = load_experiments(REPO / "conf" / "experiments.yaml", rfm, EVENT_TYPES)
    assert {e.type for e in loaded.experiments} == {"abn", "multivariate"}


def test_the_shipped_rules_test_real_arms_of_the_shipped_experiments():
    """A rule on `variant` names an arm of an experiment on its own slot (a typo would never fire)."""
    from serving.rules import load_rules

    loaded = load_experiments(REPO / "conf" / "experiments.yaml", KNOWN | {
        "Cannot Lose Them", "Hibernating", "About to Sleep"}, EVENT_TYPES)
    arms = {(e.slot, name) for e in loaded.experiments for name in e.variant_names}
    tested = {(r.rule.slot, r.rule.when["variant"]) for r in load_rules(REPO / "conf" / "rules.yaml").rules
              if "variant" in r.rule.when}
    assert tested and tested <= arms


@pytest.mark.parametrize("definitions, expected", [
    ([abn(variants=[{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.4}])],
     "experiments.banner: variants: weights sum to 0.9, not 1"),
    ([mvt(factors=[{"name": "model", "levels": [{"name": "als", "weight": 0.7},
                                                {"name": "pop", "weight": 0.7}]},
                   {"name": "layout", "levels": [{"name": "g", "weight": 1.0},
                                                 {"name": "r", "weight": 0.0}]}])],
     "factor model levels: weights sum to 1.4, not 1"),
    ([abn(target=["Champions", "Whales"])], "experiments.banner.target: unknown segment or persona Whales"),
    ([abn(conversion_event="purchased")], "experiments.banner.conversion_event: unknown event type purchased"),
    ([abn(), abn(id="banner-2", salt="other")],
     "experiments banner and banner-2 overlap on slot home_banner from 2026-11-01 to 2026-12-31 "
     "without a shared layer"),
    ([abn(layer="hero")], "experiments.banner.layer: layer hero is not declared"),
    ([abn(start="2026-12-31", stop="2026-12-01")], "stop 2026-12-01 is before start 2026-12-31"),
    ([abn(control="treatment")], "control 'treatment' is not one of the variants"),
    ([abn(), abn()], "experiment id banner is defined more than once"),
    ([abn(colour="red")], "experiments.banner.colour: unknown key"),
    ([abn(traffic=1.5)], "experiments.banner.traffic: Input should be less than or equal to 1"),
    ([abn(variants=[{"name": "only", "weight": 1.0}])], "needs at least 2 variants"),
    ([mvt(factors=[])], "needs at least 2 factors"),
    ([abn(salt="")], "experiments.banner.salt"),
])
def test_invalid_definitions_are_refused_naming_the_problem(definitions, expected):
    found = problems(*definitions)
    assert any(expected in problem for problem in found), found


def test_a_layer_that_is_over_allocated_is_refused_and_one_that_fits_is_split():
    layers = {"hero": {"salt": "hero-layer"}}
    found = problems(abn(layer="hero", traffic=0.6), abn(id="b2", layer="hero", traffic=0.5),
                     layers=layers)
    assert any("layer hero: no free 0.5 of traffic left for b2 beside banner" in p for p in found)
    # Disjoint dates free the slice again; a later experiment takes the lowest free slice.
    fits = book(abn(layer="hero", traffic=0.6), abn(id="b2", layer="hero", traffic=0.4),
                abn(id="b3", layer="hero", traffic=0.6, start="2027-01-01", stop="2027-01-31"),
                layers=layers)
    assert fits.slices == {"banner": (0.0, 0.6), "b2": (0.6, 1.0), "b3": (0.0, 0.6)}


def test_a_file_error_names_the_file(tmp_path):
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump({"experiments": [abn(target=["Whales"])]}))
    with pytest.raises(ExperimentDefinitionError, match=f"^{path}: .*Whales"):
        load_experiments(path, KNOWN, EVENT_TYPES)
    with pytest.raises(ExperimentDefinitionError, match="does not exist"):
        load_experiments(tmp_path / "missing.yaml", KNOWN)


def variants_of(loaded, experiment_id, ids):
    experiment = loaded.get(experiment_id)
    return [loaded.variant_for(experiment, person) for person in ids]


def test_assignment_is_the_same_in_two_fresh_processes(tmp_path):
    """A new interpreter (its own hash seed) reloading the file gives every person the same
    variant: assignment depends on the salt and the person only."""
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump({"experiments": [abn(), mvt()]}, sort_keys=False))
    script = ("import json, sys; from serving.experiments import load_experiments; "
              "b = load_experiments(sys.argv[1], set()); "
              "print(json.dumps([[b.variant_for(e, f'person-{i}') for e in b.experiments] "
              "for i in range(2000)]))")
    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", script, str(path)], env=env,
                             capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out))
    here = load_experiments(path, set())
    expected = [[here.variant_for(e, f"person-{i}") for e in here.experiments] for i in range(2000)]
    assert runs[0] == runs[1] == expected
    assert len({tuple(row) for row in expected}) > 6  # not a constant


def test_variants_are_uniform_over_100k_ids():
    """Chi-square goodness of fit of 100k assignments against the weights: with a good hash
    the p-value is uniform, so p > 0.001 fails a correct hash once in a thousand salts."""
    loaded = book(abn(), mvt())
    for experiment_id in ("banner", "reco"):
        experiment = loaded.get(experiment_id)
        weights = experiment.weights()
        seen = variants_of(loaded, experiment_id, IDS)
        observed = [seen.count(name) for name in weights]
        expected = [w * len(IDS) for w in weights.values()]
        assert stats.chisquare(observed, expected).pvalue > 0.001, (experiment_id, observed)
    # The traffic position is uniform too: 20 equal bins.
    positions = [loaded.traffic_position(loaded.get("banner"), person) for person in IDS]
    bins = np.histogram(positions, bins=20, range=(0, 1))[0]
    assert stats.chisquare(bins).pvalue > 0.001


def test_traffic_allocation_enrolls_its_share_and_factors_are_independent():
    loaded = book(abn(traffic=0.2), mvt())
    banner = [loaded.assign_one(loaded.get("banner"), p, segments=(), consented=True,
                                suppressed=()) for p in IDS]
    enrolled = sum(a.enrolled for a in banner)
    # Binomial(100k, 0.2): sd 126; 4 sd either side.
    assert abs(enrolled - 20_000) < 4 * 126
    assert {a.reason for a in banner} == {"enrolled", "outside_traffic"}
    assert all(a.variant == "control" for a in banner if not a.enrolled)
    # The variant draw is independent of the traffic draw: enrolled people still split 5:3:2.
    shares = np.array([sum(a.variant == v for a in banner if a.enrolled) for v in ("control", "sale", "new")])
    assert stats.chisquare(shares, np.array([0.5, 0.3, 0.2]) * enrolled).pvalue > 0.001
    # Factor levels are drawn independently: contingency of model × layout shows no association.
    cells = variants_of(loaded, "reco", IDS[:20_000])
    table = np.array([[cells.count(f"model={m},layout={l}") for l in ("grid", "row")] for m in ("als", "pop")])
    assert stats.chi2_contingency(table).pvalue > 0.001


def test_a_layer_never_puts_one_person_in_two_of_its_experiments():
    loaded = book(abn(layer="hero", traffic=0.3), abn(id="b2", salt="b2", layer="hero", traffic=0.5),
                  layers={"hero": {"salt": "hero-layer"}})
    both, counts = 0, {"banner": 0, "b2": 0}
    for person in IDS[:20_000]:
        enrolled = [a.experiment_id for a in loaded.assign(person, now=NOW, slot="home_banner",
                                                           consented=True) if a.enrolled]
        both += len(enrolled) > 1
        for experiment_id in enrolled:
            counts[experiment_id] += 1
    assert both == 0
    assert abs(counts["banner"] - 6_000) < 4 * 65 and abs(counts["b2"] - 10_000) < 4 * 71


def test_forgotten_unconsenting_untargeted_and_inactive_people_are_not_enrolled():
    loaded = book(abn(target=["Champions", "Deal Seekers"]), mvt(stop="2026-11-30"))
    person = next(p for p in IDS if loaded.assign(p, now=NOW, segments={"Champions"},
                                                  consented=True)[0].enrolled)

    def reason(**kwargs):
        (assignment,) = loaded.assign(person, now=NOW, **{"consented": True, "segments": {"Champions"},
                                                          **kwargs})
        return assignment

    assert reason().enrolled and reason().reason == "enrolled"
    assert reason(suppressed={person}).reason == "forgotten"
    assert reason(consented=False).reason == "not_consented"
    assert reason(segments={"At Risk"}).reason == "not_targeted"
    assert reason(segments={"Deal Seekers"}).enrolled  # a persona counts as a target too
    assert all(not a.enrolled and a.variant == "control"
               for a in [reason(suppressed={person}), reason(consented=False)])
    # The multivariate test ended on 2026-11-30 (inclusive): active then, gone the day after.
    assert [a.experiment_id for a in loaded.assign(person, now=datetime(2026, 11, 30, 23, 59, tzinfo=timezone.utc),
                                                   consented=True)] == ["banner", "reco"]
    assert loaded.assign(person, now=NOW, slot="recommendations", consented=True) == []
    (cell,) = loaded.assign(person, now=datetime(2026, 11, 15, tzinfo=timezone.utc),
                            slot="recommendations", consented=True)
    assert set(cell.levels) == {"model", "layout"} and cell.variant.startswith("model=")


def test_rule_ids_are_read_from_either_segments_file_shape(tmp_path):
    listed = tmp_path / "listed.yaml"
    listed.write_text("rules:\n  - id: cart_abandoners\n    when: x\n  - id: big_spenders\n")
    keyed = tmp_path / "keyed.yaml"
    keyed.write_text("rules:\n  lapsed_champions: {}\n")
    assert rule_segment_ids(listed) == {"cart_abandoners", "big_spenders"}
    assert rule_segment_ids(keyed) == {"lapsed_champions"}
    assert rule_segment_ids(tmp_path / "none.yaml") == set()


class FakeClock:
    def __init__(self):
        self.now = NOW.timestamp()

    def __call__(self):
        return self.now


def enrolled(variant="sale", experiment_id="banner"):
    return Assignment(experiment_id, "home_banner", variant, True, "enrolled")


def read_batches(root: Path) -> list[list[dict]]:
    files = sorted((root / "raw" / "exposures").rglob("*.jsonl"))
    return [[json.loads(line) for line in f.read_text().splitlines()] for f in files]


def test_exposure_writer_batches_by_size_and_by_age_and_flushes_on_close(tmp_path):
    clock = FakeClock()
    writer = ExposureWriter(RootSink(pafs.LocalFileSystem(), str(tmp_path)), batch_size=3,
                            max_age_seconds=60, clock=clock, background=False)
    for i in range(7):
        assert writer.record(enrolled(), person_id=f"p{i}", user_id=f"u{i}")
    assert not writer.record(Assignment("banner", "home_banner", "control", False,
                                        "outside_traffic"), person_id="px")
    assert [len(batch) for batch in read_batches(tmp_path)] == [3, 3] and writer.pending() == 1
    clock.now += 59
    writer.flush_if_due()
    assert writer.pending() == 1
    clock.now += 1
    writer.flush_if_due()
    assert writer.pending() == 0 and len(read_batches(tmp_path)) == 3
    writer.record(enrolled("new"), person_id="p9", user_id="u9",
                  at=datetime(2026, 12, 1, 8, 30, tzinfo=timezone.utc), anonymous_id="a9")
    writer.close()
    batches = read_batches(tmp_path)
    assert [len(b) for b in batches] == [3, 3, 1, 1]
    last = batches[-1][0]
    assert last == {"event_id": last["event_id"], "event_type": "exposure",
                    "timestamp": "2026-12-01T08:30:00.000+00:00", "user_id": "u9",
                    "anonymous_id": "a9", "consent": {"personalization": True},
                    "properties": {"experiment_id": "banner", "variant": "new",
                                   "slot": "home_banner", "person_id": "p9"}}
    assert len({r["event_id"] for b in batches for r in b}) == 8
    assert all(p.parent.name == "date=2026-12-01" for p in (tmp_path / "raw").rglob("*.jsonl"))
    assert not [p for p in (tmp_path / "raw").rglob("*") if p.name.startswith(".")]
    with pytest.raises(RuntimeError, match="closed"):
        writer.record(enrolled(), person_id="late")


def test_exposure_writer_background_thread_writes_full_and_old_batches(tmp_path):
    import time

    def settled(writer):
        deadline = time.monotonic() + 10  # well below the 30 s age limit of the first writer
        while writer.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        return writer.pending() == 0

    by_size = ExposureWriter(RootSink(pafs.LocalFileSystem(), str(tmp_path / "size")),
                             batch_size=2, max_age_seconds=30)
    by_age = ExposureWriter(RootSink(pafs.LocalFileSystem(), str(tmp_path / "age")),
                            batch_size=100, max_age_seconds=0.3)
    try:
        for i in range(2):
            by_size.record(enrolled(), person_id=f"p{i}", user_id=f"u{i}")
        by_age.record(enrolled(), person_id="p9", user_id="u9")
        assert settled(by_size) and settled(by_age)
        assert [len(b) for b in read_batches(tmp_path / "size")] == [2]
        assert [len(b) for b in read_batches(tmp_path / "age")] == [1]
    finally:
        by_size.close()
        by_age.close()


def test_a_failed_write_keeps_the_batch_and_close_raises(tmp_path):
    class Flaky(RootSink):
        fail = True

        def write(self, records, now):
            if self.fail:
                raise OSError("disk full")
            return super().write(records, now)

    sink = Flaky(pafs.LocalFileSystem(), str(tmp_path))
    writer = ExposureWriter(sink, batch_size=2, background=False)
    writer.record(enrolled(), person_id="p1")
    writer.record(enrolled(), person_id="p2")  # full batch: the write fails, records kept
    assert writer.pending() == 2
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    sink.fail = False
    writer.flush(raise_errors=True)
    assert [len(b) for b in read_batches(tmp_path)] == [2]


def test_known_names_come_from_rfm_rule_ids_and_personas_in_segments(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.config import load_config
    from serving.experiments import discover_segment_names, load_configured

    root = tmp_path / "storage"
    (root / "segments" / "rules").mkdir(parents=True)
    pq.write_table(pa.table({"person_id": ["a", "b", "c"], "persona": ["Deal Seekers", "Trendsetters", None]}),
                   root / "segments" / "part-0.parquet")
    pq.write_table(pa.table({"person_id": ["a"], "rule_segment": ["not a persona"]}),
                   root / "segments" / "rules" / "part-0.parquet")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "segments.yaml").write_text("rules:\n  - id: cart_abandoners\n")
    config = load_config(REPO / "conf" / "test.yaml",
                         [f"storage.root={root}", f"segmentation.rules_file={conf / 'segments.yaml'}"],
                         environ={"TAILOR_TEST_ROOT": str(tmp_path)})
    names = discover_segment_names(config)
    assert {"Champions", "Lost", "cart_abandoners", "Deal Seekers", "Trendsetters"} <= names
    assert "not a persona" not in names and None not in names
    # Without segments/ (before segmentation has run) the RFM names still load the shipped file.
    bare = load_config(REPO / "conf" / "test.yaml", [f"storage.root={tmp_path}/empty"],
                       environ={"TAILOR_TEST_ROOT": str(tmp_path)})
    assert len(load_configured(bare).experiments) == 2
