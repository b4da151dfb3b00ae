"""The rules engine: conditions, decisions, and the checker on files with overlaps, shadowed
rules, impossible conditions and unknown fields (plus the `tailor rules check` command)."""
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from jobs.cli import main as cli
from serving.rules import RuleSet, RulesError, RulesFile, checked_rules, load_rules, parse_condition

REPO = Path(__file__).resolve().parents[2]


def ruleset(*rules: dict, **top) -> RuleSet:
    return RuleSet(RulesFile.model_validate({"rules": list(rules), **top}))


def rule(id: str, priority: int, when: dict | None = None, slot: str = "banner",
         group: str | None = None, **then) -> dict:
    return {"id": id, "slot": slot, "priority": priority, "when": when or {}, "group": group,
            "then": then or {"variant": id}}


def kinds(rules: RuleSet, profile_columns=()) -> list[tuple[str, tuple]]:
    return sorted((p.kind, p.rules) for p in rules.check(profile_columns))


@pytest.mark.parametrize("condition, value, expected", [
    ("gold", "gold", True), ("gold", "silver", False), ("gold", None, False),
    ({"in": ["a", "b"]}, "b", True), ({"not_in": ["a"]}, "a", False), ({"not_in": ["a"]}, None, True),
    ({"gte": 18, "lt": 65}, 18, True), ({"gte": 18, "lt": 65}, 65, False),
    ({"gt": 1}, "2", False), ({"lt": 1}, True, False),
    ({"contains": "vip"}, ["vip", "new"], True), ({"contains": ["vip", "x"]}, ["vip"], False),
    ("vip", ["vip", "new"], True), ({"not_in": ["vip"]}, ["vip"], False),
    ({"exists": True}, 0, True), ({"exists": False}, None, True), ({"exists": False}, "x", False),
    (True, True, True), (False, True, False), ({"exists": True}, {"nested": 1}, True),
    ("x", {"nested": 1}, False), ({"gte": 1}, float("nan"), False),
])
def test_condition_matching(condition, value, expected):
    assert parse_condition(condition).matches(value) is expected


@pytest.mark.parametrize("bad", [{"between": [1, 2]}, {"in": []}, {"in": "a"}, {"gt": "1"},
                                 {"exists": "yes"}, ["a", "b"]])
def test_bad_conditions_are_refused_with_the_rule_named(bad):
    with pytest.raises(RulesError, match="rule r:"):
        ruleset(rule("r", 1, {"persona": bad}))


def test_decide_priority_groups_and_combined_actions():
    rules = ruleset(
        rule("vip", 100, {"rfm_segment": {"in": ["Champions", "Loyal"]}}),
        rule("mobile", 50, {"context.device": "mobile"}),
        rule("boost-books", 40, {"persona": "reader"}, slot="recommendations",
             boost={"category": "books", "factor": 2.0}, group="merch"),
        rule("boost-games", 30, {"persona": "reader"}, slot="recommendations",
             boost={"category": "games", "factor": 2.0}, group="merch"),
        rule("pin", 20, slot="recommendations", pin=["i1", "i2"]),
        rule("minors", 10, {"age": {"lt": 18}}, slot="recommendations", filter_category="alcohol"),
        context_fields=["device"])
    decision = rules.decide("banner", {"rfm_segment": "Loyal", "context.device": "mobile"})
    assert (decision.variant, decision.variant_rule) == ("vip", "vip")
    assert decision.matched == ["vip", "mobile"] and decision.applied == ["vip"]
    assert "mobile: matched, skipped: variant already set by vip" in decision.why[1]
    assert rules.decide("banner", {"context.device": "mobile"}).variant == "mobile"
    assert rules.decide("banner", {}).variant is None
    assert rules.decide("nowhere", {"rfm_segment": "Loyal"}).matched == []

    merch = rules.decide("recommendations", {"persona": "reader", "age": 15})
    assert merch.applied == ["boost-books", "pin", "minors"]
    assert [r for r, _ in merch.boosts] == ["boost-books"]
    assert merch.pins == [("pin", "i1"), ("pin", "i2")]
    assert merch.filtered_categories == [("minors", "alcohol")]
    assert "boost-games: matched, skipped: boost-books already applied in group merch" in merch.why


def test_experiment_consent_and_catalogue_fields_and_actions():
    rules = ruleset(
        rule("carousel", 30, {"variant_levels": {"contains": "layout=carousel"},
                              "consent_personalization": True}, slot="recommendations",
             boost={"on_sale": True, "factor": 3.0}),
        rule("acme", 20, {"variant": "model=pop,layout=grid"}, slot="recommendations",
             boost={"brand": "acme", "factor": 2.0}),
        rule("stocked", 10, slot="recommendations", in_stock_only=True))
    assert rules.check() == []
    cell = rules.decide("recommendations", {"variant": "model=pop,layout=carousel",
                                            "variant_levels": ["model=pop", "layout=carousel"],
                                            "consent_personalization": True})
    assert cell.applied == ["carousel", "stocked"] and cell.in_stock_only
    assert cell.boosts[0][1].on_sale and cell.boosts[0][1].factor == 3.0
    other = rules.decide("recommendations", {"variant": "model=pop,layout=grid",
                                             "variant_levels": ["model=pop", "layout=grid"],
                                             "consent_personalization": False})
    assert other.applied == ["acme", "stocked"] and other.boosts[0][1].brand == "acme"
    with pytest.raises(ValueError, match="a boost needs a category, brand, on_sale"):
        ruleset(rule("r", 1, boost={"on_sale": False, "factor": 2.0}))
    with pytest.raises(ValueError, match="an action needs one of .*in_stock_only, rank"):
        ruleset(rule("r", 1, in_stock_only=False))


def test_rank_by_popularity_is_set_by_the_highest_rule_that_asks():
    rules = ruleset(
        rule("pop-arm", 30, {"variant_levels": {"contains": "model=pop"}}, slot="recommendations",
             rank="popularity"),
        rule("sale-page", 20, {"context.page": "sale"}, slot="recommendations", rank="popularity"),
        context_fields=["page"])
    both = rules.decide("recommendations", {"variant_levels": ["model=pop"], "context.page": "sale"})
    assert both.rank_rule == "pop-arm" and both.applied == ["pop-arm", "sale-page"]
    assert rules.decide("recommendations", {"variant_levels": ["model=als"]}).rank_rule is None
    with pytest.raises(ValueError, match="rank"):
        ruleset(rule("r", 1, rank="random"))


def test_people_facts_are_rule_comparable():
    """Parquet's missing values and numeric segments reach rules as None and strings."""
    import pandas as pd

    from serving.data import People, _native, segment_label

    assert _native(pd.NA) is None and _native(float("nan")) is None and _native(pd.NaT) is None
    assert [segment_label(v) for v in (3, 3.0, "odd", None, float("nan"), pd.NA)] == [
        "3", "3", "odd", None, None, None]
    people = People(facts={"p1": {"age": 30, "age_band": "25-34", "rfm_segment": "Lost"}},
                    profile_columns=["person_id", "user_id", "age", "age_band", "occupation"])
    assert people.traits(people.facts["p1"]) == {"age_band": "25-34"}


def test_checker_finds_overlaps_of_equal_priority():
    rules = ruleset(rule("a", 10, {"persona": "reader"}),
                    rule("c", 10, {"persona": "gamer"}),                       # disjoint from a
                    rule("d", 10, {"persona": "reader", "age": {"lt": 18}}),
                    rule("e", 10, {"persona": {"in": ["reader"]}, "age": {"gte": 18}}),  # not d
                    rule("f", 10, {"persona": "reader"}, slot="other"),         # another slot
                    rule("g", 9, {"persona": "reader"}, slot="other", pin=["i1"]))  # lower
    assert kinds(rules) == [("overlap", ("a", "d")), ("overlap", ("a", "e"))]
    message = rules.check()[0].message
    assert "rules a and d have equal priority 10 and can both match" in message


def test_checker_finds_shadowed_and_impossible_rules():
    rules = ruleset(
        rule("wide", 100, {"rfm_segment": {"in": ["Champions", "Loyal"]}}),
        rule("narrow", 50, {"rfm_segment": "Loyal", "country": "DE"}),   # wide always wins
        rule("other", 40, {"rfm_segment": "Lost"}),                      # not covered: fine
        rule("adults", 30, {"age": {"gte": 18}}),
        rule("seniors", 20, {"age": {"gte": 65}, "persona": {"not_in": ["x"]}}),  # adults wins
        rule("never", 10, {"age": {"gt": 30, "lt": 20}}),
        rule("catch-all", 90, slot="cta"), rule("cta-boost", 80, {"persona": "reader"}, slot="cta",
                                               boost={"items": ["i1"], "factor": 2}),
        rule("g1", 70, {"persona": {"in": ["a", "b"]}}, slot="recs", group="g", pin=["i1"]),
        rule("g2", 60, {"persona": "a"}, slot="recs", group="g", pin=["i2"]),
        rule("free", 50, {"persona": "a"}, slot="recs", pin=["i3"]))      # no group: combines
    assert kinds(rules) == [("never", ("never",)), ("shadowed", ("g2", "g1")),
                            ("shadowed", ("narrow", "wide")), ("shadowed", ("seniors", "adults"))]
    messages = {p.rules: p.message for p in rules.check()}
    assert "rule narrow can never fire: wide (priority 100 > 50) matches whenever it does" in \
        messages[("narrow", "wide")]


def test_checker_finds_unknown_fields_and_accepts_declared_ones():
    rules = ruleset(rule("a", 3, {"persona": "x", "loyalty_tier": "gold"}),
                    rule("b", 2, {"context.page": "home", "context.utm": "x"}),
                    rule("c", 1, {"favourite_colour": "red", "variant": "B"}),
                    context_fields=["page"], traits=["loyalty_tier"])
    assert kinds(rules) == [("unknown_field", ("b",)), ("unknown_field", ("c",))]
    assert "unknown field 'context.utm': declare it under context_fields" in rules.check()[0].message
    assert kinds(rules, profile_columns=["favourite_colour"]) == [("unknown_field", ("b",))]


def test_files_the_service_starts_with_or_refuses(tmp_path):
    assert checked_rules(REPO / "conf" / "rules.yaml").rules
    assert checked_rules(tmp_path / "absent.yaml").rules == []
    (tmp_path / "empty.yaml").write_text("")
    assert load_rules(tmp_path / "empty.yaml").rules == []
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rules": [rule("a", 1, {"persona": "x"}),
                                             rule("b", 1, {"nope": 1})]}))
    with pytest.raises(RulesError, match="(?s)fails the check:\n.*equal priority"):
        checked_rules(bad)
    for text, message in [("rules: [{id: a}]", "rules.0.slot: Field required"),
                          ("rules: {", "invalid YAML"),
                          ("rules: [{id: a, slot: s, priority: 1, then: {}}]", "an action needs"),
                          ("rules: [{id: a, slot: s, priority: 1, then: {variant: x}},"
                           " {id: a, slot: t, priority: 2, then: {variant: y}}]", "used twice")]:
        bad.write_text(text)
        with pytest.raises(RulesError, match=message):
            load_rules(bad)


def test_rules_check_command(tmp_path):
    runner = CliRunner()
    base = ["--conf", str(REPO / "conf" / "test.yaml"), "--set", f"storage.root={tmp_path}/root"]
    ok = runner.invoke(cli, ["rules", "check", str(REPO / "conf" / "rules.yaml"), *base])
    assert ok.exit_code == 0 and "no problems" in ok.output
    bad = tmp_path / "rules.yaml"
    bad.write_text(yaml.safe_dump({"rules": [
        rule("a", 5, {"persona": "x"}), rule("b", 5, {"persona": {"in": ["x", "y"]}}),
        rule("c", 1, {"persona": "x"}), rule("d", 0, {"colour": "red"})]}))
    result = runner.invoke(cli, ["rules", "check", str(bad), *base])
    assert result.exit_code == 1
    assert result.output.count("overlap:") == 1 and result.output.count("shadowed:") == 2
    assert "unknown_field: rule d: unknown field 'colour'" in result.output
    assert "4 problem(s)" in result.output
    missing = runner.invoke(cli, ["rules", "check", str(tmp_path / "none.yaml"), *base])
    assert missing.exit_code == 1 and "does not exist" in missing.output
