"""Experiments end to end through the CLI: exposures written by the ExposureWriter (as the
service writes them) and conversions are ingested by `tailor ingest`, then
`tailor experiments analyze` joins them, logs to a real MLflow server and writes the report."""
import json
import math
import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from jobs.config import load_config
from serving.experiments import Assignment, load_experiments
from serving.exposures import ExposureWriter
from tests.conftest import REPO, tailor

pytestmark = pytest.mark.integration

T0 = datetime(2026, 10, 1, tzinfo=timezone.utc)
WINDOW = 48
DEFINITIONS = {"experiments": [
    {"id": "hero-test", "type": "abn", "slot": "home_banner", "salt": "hero-test",
     "start": "2026-09-01", "stop": "2026-10-31", "conversion_event": "purchase",
     "conversion_window_hours": WINDOW, "control": "control",
     "variants": [{"name": "control", "weight": 0.5}, {"name": "sale", "weight": 0.25},
                  {"name": "new", "weight": 0.25}]},
    {"id": "reco-test", "type": "multivariate", "slot": "recommendations", "salt": "reco-test",
     "start": "2026-09-01", "stop": "2026-10-31", "conversion_event": "add_to_cart",
     "conversion_window_hours": WINDOW,
     "factors": [{"name": "model", "levels": [{"name": "als", "weight": 0.5}, {"name": "pop", "weight": 0.5}]},
                 {"name": "layout", "levels": [{"name": "grid", "weight": 0.5}, {"name": "row", "weight": 0.5}]}]},
]}
HERO_RATES = {"control": 0.10, "sale": 0.40, "new": 0.10}


def raw_event(event_type, person, at, n, **extra):
    return {"event_id": f"{event_type}-{person}-{n}", "event_type": event_type,
            "timestamp": at.isoformat(), "user_id": person,
            "consent": {"personalization": True, "analytics": True}, **extra}


def plant(book, writer, people: int, seed: int = 7):
    """Exposures through the writer, conversions as raw records; returns (records, expected)."""
    rng = np.random.default_rng(seed)
    hero, reco = book.get("hero-test"), book.get("reco-test")
    records, expected = [], {"hero": {}, "reco": {}, "hero_several": 0}
    latest = T0

    def count(table, variant, converted, conversions, exposed_at):
        row = table.setdefault(variant, {"people": 0, "converted": 0, "conversions": 0, "open": 0})
        row["people"] += 1
        row["converted"] += int(converted)
        row["conversions"] += conversions
        row["exposed_at"] = row.get("exposed_at", []) + [exposed_at]

    for i in range(people):
        person, at = f"p{i:04d}", T0 + timedelta(minutes=10 * i)
        role = {0: "before", 1: "late", 2: "twice", 3: "both", 4: "withdrawn"}.get(i, "plain")
        for experiment in (hero, reco):
            (assignment,) = [a for a in book.assign(person, now=at, slot=experiment.slot, consented=True)]
            assert assignment.enrolled
            writer.record(assignment, person_id=person, user_id=person, at=at)
            if experiment is hero:
                writer.record(assignment, person_id=person, user_id=person, at=at + timedelta(hours=2))
        latest = max(latest, at + timedelta(hours=2))  # the repeated exposure
        variant = book.variant_for(hero, person)
        if role == "both":  # a second, different variant later: left out of the analysis
            other = next(v for v in hero.variant_names if v != variant)
            writer.record(Assignment(hero.id, hero.slot, other, True, "enrolled"), person_id=person,
                          user_id=person, at=at + timedelta(hours=3))
            expected["hero_several"] += 1
        converts = rng.random() < HERO_RATES[variant]
        times = {"before": [at - timedelta(hours=1)], "late": [at + timedelta(hours=WINDOW + 1)],
                 "twice": [at + timedelta(hours=1), at + timedelta(hours=5)]}.get(
                     role, [at + timedelta(hours=1)] if converts else [])
        for n, when in enumerate(times):
            records.append(raw_event("purchase", person, when, n, item_id="sku-1", price=10))
            latest = max(latest, when)
        if role == "withdrawn":
            records.append({**raw_event("consent_update", person, at + timedelta(hours=6), 0),
                            "consent": {"personalization": False, "analytics": False}})
        in_window = [t for t in times if at < t <= at + timedelta(hours=WINDOW)]
        if role not in ("both", "withdrawn"):
            count(expected["hero"], variant, bool(in_window), len(in_window), at)
        cell = book.variant_for(reco, person)
        carts = rng.random() < (0.4 if "model=pop" in cell else 0.1)
        if carts:
            records.append(raw_event("add_to_cart", person, at + timedelta(hours=3), 0, item_id="sku-2"))
            latest = max(latest, at + timedelta(hours=3))
        if role != "withdrawn":
            count(expected["reco"], cell, carts, int(carts), at)
    for table in (expected["hero"], expected["reco"]):
        for row in table.values():
            row["open"] = sum(t + timedelta(hours=WINDOW) > latest for t in row.pop("exposed_at"))
    return records, expected


def test_exposures_from_the_writer_are_ingested_and_analyzed(tmp_path, mlflow_server):
    definitions = tmp_path / "experiments.yaml"
    definitions.write_text(yaml.safe_dump(DEFINITIONS, sort_keys=False))
    root = tmp_path / "storage"
    env = {"TAILOR_TEST_ROOT": str(tmp_path), "MLFLOW_TRACKING_URI": mlflow_server}
    options = ["--conf", "conf/test.yaml", "--set", f"experiments.file={definitions}",
               "--set", "experiments.exposure_batch_size=250", "--set", "mlflow.experiment=exp-test"]

    checked = tailor("experiments", "check", str(definitions), *options, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "ok: 2 experiments" in checked.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"experiments": [{**DEFINITIONS["experiments"][0], "target": ["Whales"]},
                                                   {**DEFINITIONS["experiments"][1], "slot": "home_banner"}]}))
    refused = tailor("experiments", "check", str(bad), *options, env=env)
    assert refused.returncode == 1
    assert "unknown segment or persona Whales" in refused.stderr
    assert "overlap on slot home_banner" in refused.stderr
    unknown = tailor("experiments", "analyze", "nope", *options, env=env)
    assert unknown.returncode == 1 and "unknown experiment 'nope'" in unknown.stderr

    config = load_config(REPO / "conf" / "test.yaml", options[3::2], environ={**os.environ, **env})
    book = load_experiments(definitions, set())
    writer = ExposureWriter.from_config(config, background=False)
    with writer:
        records, expected = plant(book, writer, people=800)
    exposures = sorted((root / "raw" / "exposures").rglob("*.jsonl"))
    lines = sum(len(f.read_text().splitlines()) for f in exposures)
    assert lines == 800 * 3 + expected["hero_several"]
    assert len(exposures) == math.ceil(lines / 250) and len(writer.written) == len(exposures)
    other = root / "raw" / "events" / "conversions.jsonl"
    other.parent.mkdir(parents=True)
    other.write_text("".join(json.dumps(r) + "\n" for r in records))

    ingested = tailor("ingest", *options, "--input", str(root / "raw"), env=env)
    assert ingested.returncode == 0, ingested.stderr
    quarantined = list((root / "quarantine").rglob("*.parquet"))
    assert not quarantined or pd.read_parquet(root / "quarantine").empty, ingested.stdout
    events = pd.read_parquet(root / "events", columns=["event_type", "properties", "consent_personalization"])
    exposed = events[events["event_type"] == "exposure"]
    assert len(exposed) == lines and exposed["consent_personalization"].all()
    first = dict(exposed["properties"].iloc[0])
    # the service knows personalization consent only: analytics took the default, and says so
    assert first.pop("consent_defaulted") == "analytics"
    assert set(first) == {"experiment_id", "variant", "slot", "person_id"}

    for experiment_id, key in (("hero-test", "hero"), ("reco-test", "reco")):
        analyzed = tailor("experiments", "analyze", experiment_id, *options, env=env)
        assert analyzed.returncode == 0, analyzed.stderr
        folder = root / "experiments" / experiment_id
        report = json.loads((folder / "report.json").read_text())
        markdown = (folder / "report.md").read_text()
        assert f"# Experiment {experiment_id}" in markdown and "Sample-ratio check" in markdown
        seen = {row["variant"]: {"people": row["people"], "converted": row["converted"],
                                 "conversions": row["conversions"], "open": row["window_open"]}
                for row in report["variants"] if row["people"]}
        assert seen == expected[key]
        assert not report["srm"]["flagged"]
        run = MlflowClient(mlflow_server).get_run(report["mlflow_run_id"])
        assert run.data.tags["experiment_id"] == experiment_id
        artifacts = {a.path for a in MlflowClient(mlflow_server).list_artifacts(run.info.run_id)}
        assert {"report.json", "report.md", "plots"} <= artifacts
        if key == "hero":
            assert report["people_in_several_variants"] == expected["hero_several"] == 1
            sale = next(r for r in report["variants"] if r["variant"] == "sale")
            new = next(r for r in report["variants"] if r["variant"] == "new")
            assert sale["significant"] and sale["lift"] > 0 and sale["p_value_adjusted"] < 0.01
            assert not new["significant"]
            assert run.data.metrics["people.sale"] == sale["people"]
        else:
            model = report["factorial"]["factors"]["model"]["levels"]["pop"]
            layout = report["factorial"]["factors"]["layout"]["levels"]["row"]
            assert model["estimate"] > 0 and model["p_value"] < 0.01
            assert layout["p_value"] > 0.01
            assert "effect.model.pop" in run.data.metrics
