"""Analyze an experiment, or check the definitions file.

    spark-submit jobs/analyze_experiment.py analyze ID [--conf conf/ENV.yaml] [--set k=v …]
    tailor experiments analyze ID [--conf …] [--set …]
    tailor experiments check [FILE] [--conf …] [--set …]

`analyze` reads consented, identity-resolved events/, takes each person's first exposure to
the experiment and their conversions within the window after it (features/experiments.py),
and computes the statistics from the per-variant counts (training/experiment_stats.py). It
logs one MLflow run (metrics per variant, the rates plot, report.json) and writes
experiments/<ID>/report.md and report.json, swapped in whole. `check` validates definitions
without Spark; the service must refuse a file that fails it.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
import math
import re
from datetime import datetime, timezone

import click

from jobs.config import TailorConfig
from jobs.runtime import JobError, JobRun, config_options, execute, report_errors
from serving.experiments import Experiment, load_configured


def metric_key(name: str) -> str:
    """MLflow metric names allow only [A-Za-z0-9_-. /:]; cell names carry `=` and `,`."""
    return re.sub(r"[^A-Za-z0-9_.\-/ :]", "_", name)


def build_report(experiment: Experiment, counts: dict[str, dict], settings, extra: dict) -> dict:
    """Statistics for the experiment's variants from {variant: {people, converted, …}}."""
    from training.experiment_stats import compare_variants, factorial_effects

    names = experiment.variant_names
    weights = experiment.weights()
    people = [counts.get(name, {}).get("people", 0) for name in names]
    converted = [counts.get(name, {}).get("converted", 0) for name in names]
    report = {"experiment_id": experiment.id, "type": experiment.type, "slot": experiment.slot,
              "conversion_event": experiment.conversion_event,
              "conversion_window_hours": experiment.window_hours(settings.conversion_window_hours),
              "start": experiment.start.isoformat(), "stop": experiment.stop.isoformat(),
              **extra,
              **compare_variants(names, people, converted, [weights[n] for n in names],
                                 experiment.control_name, confidence=settings.confidence,
                                 alpha=settings.alpha, srm_alpha=settings.srm_alpha,
                                 draws=settings.bayes_draws, seed=settings.seed)}
    for row in report["variants"]:
        row["levels"] = experiment.levels_of(row["variant"])
        row["conversions"] = counts.get(row["variant"], {}).get("conversions", 0)
        row["window_open"] = counts.get(row["variant"], {}).get("window_open", 0)
    if experiment.type == "multivariate":
        report["factorial"] = factorial_effects(
            {f.name: [level.name for level in f.levels] for f in experiment.factors},
            [experiment.levels_of(name) for name in names], people, converted,
            settings.confidence)
    return report


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _pct(value) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def report_markdown(report: dict) -> str:
    """The report for people: the variant table, the health checks and the factorial effects."""
    srm, chi = report["srm"], report["chi_square"]
    lines = [f"# Experiment {report['experiment_id']} ({report['type']})", "",
             f"Slot `{report['slot']}`, {report['start']} to {report['stop']}; conversion: "
             f"`{report['conversion_event']}` within {report['conversion_window_hours']:g} h of "
             f"the first exposure. Analyzed {report['analyzed_at']} on events up to "
             f"{report['observed_until']}.", "",
             "| variant | people | converted | rate (CI) | lift vs control (CI) | p (Holm) | "
             "P(beat control) |", "|---|---:|---:|---|---|---:|---:|"]
    for row in report["variants"]:
        rate = f"{_pct(row['rate'])} ({_pct(row['rate_low'])} – {_pct(row['rate_high'])})"
        if row["is_control"]:
            lift, p, beat = "control", "", ""
        else:
            lift = f"{_pct(row['lift'])} ({_pct(row['lift_low'])} – {_pct(row['lift_high'])})"
            p = f"{_number(row['p_value'])} ({_number(row['p_value_adjusted'])})"
            beat = _number(row["prob_beat_control"], 3)
        lines.append(f"| {row['variant']} | {row['people']} | {row['converted']} | {rate} | "
                     f"{lift} | {p} | {beat} |")
    winners = [r["variant"] for r in report["variants"] if r.get("significant") and (r.get("difference") or 0) > 0]
    lines += ["", f"Omnibus chi-square (all variants alike): p = {_number(chi['p_value'])} "
              f"(dof {chi['dof']}).",
              f"Sample-ratio check: p = {_number(srm['p_value'])} — "
              + ("**MISMATCH: assignment or exposure logging is broken; do not trust these "
                 "results.**" if srm["flagged"] else "no mismatch."),
              f"Significant winners at alpha {report['settings']['alpha']} after Holm: "
              f"{', '.join(winners) or 'none'}.",
              f"People seen in several variants (left out): {report['people_in_several_variants']}; "
              f"exposures with an undefined variant (left out): {report['unknown_variant_people']}; "
              f"people whose window is still open: {sum(r['window_open'] for r in report['variants'])}."]
    factorial = report.get("factorial")
    if factorial and factorial["estimable"]:
        lines += ["", "## Factorial effects (difference in conversion rate)", "",
                  "| effect | estimate (CI) | p | Wald p (effect overall) |", "|---|---|---:|---:|"]
        for name, factor in factorial["factors"].items():
            for level, effect in factor["levels"].items():
                lines.append(f"| {name}: {level} vs {factor['reference']} | {_pct(effect['estimate'])} "
                             f"({_pct(effect['low'])} – {_pct(effect['high'])}) | "
                             f"{_number(effect['p_value'])} | {_number(factor['wald']['p_value'])} |")
        for interaction in factorial["interactions"]:
            for label, effect in interaction["contrasts"].items():
                lines.append(f"| interaction {' × '.join(interaction['factors'])}: {label} | "
                             f"{_pct(effect['estimate'])} ({_pct(effect['low'])} – "
                             f"{_pct(effect['high'])}) | {_number(effect['p_value'])} | "
                             f"{_number(interaction['wald']['p_value'])} |")
    elif factorial:
        lines += ["", f"Factorial effects not estimable: {factorial['reason']}."]
    return "\n".join(lines) + "\n"


def rates_figure(report: dict):
    """Conversion rate per variant with its interval; the control's rate as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["variants"]
    figure, axes = plt.subplots(figsize=(8, 1.2 + 0.5 * len(rows)))
    for y, row in enumerate(rows):
        if row["people"]:
            axes.errorbar(row["rate"], y, xerr=[[row["rate"] - row["rate_low"]],
                                                [row["rate_high"] - row["rate"]]],
                          fmt="o", capsize=4, color="tab:gray" if row["is_control"] else "tab:blue")
        if row["is_control"] and row["people"]:
            axes.axvline(row["rate"], linestyle="--", color="tab:gray", linewidth=1)
    axes.set_yticks(range(len(rows)), [f"{r['variant']} (n={r['people']})" for r in rows])
    axes.invert_yaxis()
    axes.set_xlabel(f"conversion rate ({report['conversion_event']}), "
                    f"{int(100 * report['settings']['confidence'])}% interval")
    axes.set_title(f"{report['experiment_id']}" + ("  [SAMPLE-RATIO MISMATCH]" if report["srm"]["flagged"] else ""))
    figure.tight_layout()
    return figure


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def log_run(job: JobRun, report: dict) -> str:
    import mlflow

    from training import tracking

    tracking.open_experiment(job.config.mlflow.tracking_uri, job.config.mlflow.experiment, Path.cwd())
    with mlflow.start_run(run_name=f"experiment-{report['experiment_id']}-{job.run_id}") as run:
        mlflow.set_tags({"job_run_id": job.run_id, "storage_root": job.storage.root,
                         "role": "experiment_analysis", "experiment_id": report["experiment_id"],
                         "srm_flagged": str(report["srm"]["flagged"]).lower()})
        mlflow.log_params({"experiment_id": report["experiment_id"], "type": report["type"],
                           "conversion_event": report["conversion_event"],
                           "conversion_window_hours": report["conversion_window_hours"],
                           "control": report["control"], **{f"settings.{k}": v for k, v in
                                                            report["settings"].items()}})
        metrics = {"srm_p_value": report["srm"]["p_value"],
                   "chi_square_p_value": report["chi_square"]["p_value"]}
        for row in report["variants"]:
            key = metric_key(row["variant"])
            for name in ("people", "converted", "rate", "lift", "p_value", "p_value_adjusted",
                         "prob_beat_control"):
                if _finite(row.get(name)):
                    metrics[f"{name}.{key}"] = row[name]
        for name, factor in report.get("factorial", {}).get("factors", {}).items():
            for level, effect in factor["levels"].items():
                metrics[f"effect.{metric_key(name)}.{metric_key(level)}"] = effect["estimate"]
                metrics[f"effect_p_value.{metric_key(name)}.{metric_key(level)}"] = effect["p_value"]
        mlflow.log_metrics(metrics)
        tracking.log_figure(rates_figure(report), "plots/conversion_rates.png")
        mlflow.log_dict(report, "report.json")
        mlflow.log_text(report_markdown(report), "report.md")
    return run.info.run_id


def _json_safe(value):
    """NaN is not JSON: the report writes null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def find_experiment(config: TailorConfig, experiment_id: str) -> Experiment:
    """The definition to analyze, checked before Spark starts."""
    from serving.experiments import ExperimentDefinitionError

    try:
        return load_configured(config).get(experiment_id)
    except KeyError as exc:
        raise JobError(str(exc.args[0])) from None
    except ExperimentDefinitionError as exc:
        raise JobError(str(exc)) from None


def analyze(job: JobRun, experiment: Experiment) -> dict:
    """The job body: counts in Spark, statistics in memory, one MLflow run, the report files."""
    from pyspark.sql import functions as F

    from features.consent import personalization_events
    from features.experiments import person_outcomes, variant_counts
    from jobs.inputs import resolved_events

    settings = job.config.experiments
    events = resolved_events(job)
    if events is None:
        job.say("no events yet: nothing to analyze")
        return {"analyzed": False, "reason": "no events yet"}
    observed_until = events.agg(F.max("event_time").cast("double")).first()[0]
    outcomes = person_outcomes(personalization_events(events), experiment.id,
                               experiment.conversion_event,
                               experiment.window_hours(settings.conversion_window_hours),
                               observed_until)
    outcomes.persist()  # read twice: the counts and the people in several variants
    try:
        rows = [row.asDict() for row in variant_counts(outcomes).collect()]
        several = outcomes.where(F.col("variants_seen") > 1).count()
    finally:
        outcomes.unpersist()
    if not rows and not several:
        job.say(f"no exposures to {experiment.id} yet: nothing to analyze")
        return {"analyzed": False, "reason": "no exposures yet"}
    known = set(experiment.variant_names)
    counts = {row["variant"]: row for row in rows if row["variant"] in known}
    extra = {"analyzed_at": job.started_at.isoformat(timespec="seconds"),
             "observed_until": datetime.fromtimestamp(observed_until, timezone.utc).isoformat(),
             "people_in_several_variants": several,
             "unknown_variant_people": sum(r["people"] for r in rows if r["variant"] not in known)}
    report = _json_safe(build_report(experiment, counts, settings, extra))
    report["mlflow_run_id"] = log_run(job, report)
    target = job.storage.uri("experiments", experiment.id)
    job.outputs = [target]

    def write(folder: str) -> None:
        job.storage.write_text(f"{folder}/report.json", json.dumps(report, indent=2, sort_keys=True))
        job.storage.write_text(f"{folder}/report.md", report_markdown(report))

    job.storage.replace(target, write, job.run_id)
    for row in report["variants"]:
        job.say(f"{row['variant']}: {row['people']} people, rate {_pct(row['rate'])}"
                + ("" if row["is_control"] else f", lift {_pct(row['lift'])}, "
                   f"p (Holm) {_number(row['p_value_adjusted'])}"))
    if report["srm"]["flagged"]:
        job.say(f"SAMPLE-RATIO MISMATCH (p = {_number(report['srm']['p_value'])})")
    job.say(f"report: {target}/report.md")
    return {"analyzed": True, "people": sum(r["people"] for r in report["variants"]),
            "srm_flagged": report["srm"]["flagged"], "mlflow_run_id": report["mlflow_run_id"]}


@click.group("experiments")
def main() -> None:
    """A/B/n and multivariate experiments: check definitions, analyze results."""


@main.command("analyze")
@click.argument("experiment_id")
@report_errors
@config_options
def analyze_command(config: TailorConfig, experiment_id: str) -> None:
    """Per-variant rates, lifts, tests, P(beat control), SRM and factorial effects."""
    experiment = find_experiment(config, experiment_id)
    execute("analyze_experiment", config, lambda job: analyze(job, experiment))


@main.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@report_errors
@config_options
def check_command(config: TailorConfig, file: str | None) -> None:
    """Validate a definitions file (default: experiments.file); exit 1 naming every problem."""
    from serving.experiments import ExperimentDefinitionError

    try:
        book = load_configured(config, Path(file) if file else None)
    except ExperimentDefinitionError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    today = datetime.now(timezone.utc).date()
    for e in book.experiments:
        lo, hi = book.slices[e.id]
        weights = ", ".join(f"{name} {weight:.3g}" for name, weight in e.weights().items())
        state = "active" if e.active_on(today) else ("ended" if e.stop < today else "scheduled")
        click.echo(f"{e.id}: {e.type} on {e.slot}, {state} {e.start}..{e.stop}, people "
                   f"[{lo:.3g}, {hi:.3g}) of {'layer ' + e.layer if e.layer else 'all'}"
                   f"{', target ' + ', '.join(e.target) if e.target else ''}; {weights}")
    click.echo(f"ok: {len(book.experiments)} experiments")


if __name__ == "__main__":
    main()
