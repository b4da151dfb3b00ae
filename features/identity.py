"""Identity resolution: identifiers seen together are one person.

Identifiers (user_id, anonymous_id, email_hash, phone_hash) that occur in one event are edges
of a graph; each connected component is a person. Components are found distributedly by
min-label propagation with pointer jumping (each round a node takes the smallest label among
its neighbours, then the label of its label), which converges in O(log n) rounds even on long
chains, where plain propagation would need O(n).

An identifier linked to more than `max_links` others (a shared kiosk device, a placeholder
email) would merge strangers: it is refused as a bridge, stays a person of its own, and is
reported. Where identity/ has not been written yet, person_id falls back to the user_id, else
the anonymous_id (DESIGN.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

# Order of preference when one event carries several identifiers.
IDENTIFIER_COLUMNS = ["user_id", "email_hash", "phone_hash", "anonymous_id"]
IDENTITY_COLUMNS = ["identifier_type", "identifier", "person_id", "first_seen", "last_seen",
                    "refused"]


@dataclass
class IdentityResult:
    identity: DataFrame  # IDENTITY_COLUMNS, one row per identifier
    refused: DataFrame  # identifier_type, identifier, links
    rounds: int


def _node(kind: str, value: Column) -> Column:
    return F.when(value.isNotNull(), F.concat(F.lit(kind + ":"), value))


def _event_nodes(events: DataFrame) -> DataFrame:
    """(event_id, event_time, node, priority) for every identifier an event carries."""
    nodes = F.array(*[F.struct(F.lit(i).alias("priority"), _node(c, F.col(c)).alias("node"))
                      for i, c in enumerate(IDENTIFIER_COLUMNS)])
    return (events.select("event_id", "event_time", F.explode(nodes).alias("n"))
            .where(F.col("n.node").isNotNull())
            .select("event_id", "event_time", "n.node", "n.priority"))


def identifier_links(events: DataFrame) -> DataFrame:
    """Distinct undirected pairs (a, b), a < b, of identifiers seen in the same event."""
    nodes = _event_nodes(events).select("event_id", "node").distinct()
    pairs = nodes.alias("a").join(nodes.alias("b"), "event_id").where(F.col("a.node") < F.col("b.node"))
    return pairs.select(F.col("a.node").alias("a"), F.col("b.node").alias("b")).distinct()


def connected_components(nodes: DataFrame, edges: DataFrame, max_rounds: int = 64,
                         checkpoint=lambda df: df.localCheckpoint()) -> tuple[DataFrame, int]:
    """(node, label) where label is the smallest node of the node's component, and the rounds used.

    `nodes` has a `node` column, `edges` columns (a, b). Each round, every edge offers the
    smaller of its two ends' labels to both ends AND to both labels (hooking whole trees onto
    each other, as in Shiloach-Vishkin), then every node jumps to its label's label. Hooking
    the labels is what keeps the rounds logarithmic whatever order the node names happen to
    have. Each round is checkpointed (cutting the lineage) with a `changed` flag, so the
    convergence test is a scan, not another join.
    """
    labels = checkpoint(nodes.select("node").distinct().select("node", F.col("node").alias("label")))
    for round_number in range(1, max_rounds + 1):
        ends = (edges.join(labels.select(F.col("node").alias("a"), F.col("label").alias("la")), "a")
                .join(labels.select(F.col("node").alias("b"), F.col("label").alias("lb")), "b"))
        smaller = F.least("la", "lb")
        offers = ends.select(F.explode(F.array(*[
            F.struct(F.col(end).alias("node"), smaller.alias("label"))
            for end in ("a", "b", "la", "lb")])).alias("offer")).select("offer.*")
        lowered = (offers.select("node", "label", F.lit(None).cast("string").alias("old"))
                   .union(labels.select("node", "label", F.col("label").alias("old")))
                   .groupBy("node").agg(F.min("label").alias("label"), F.max("old").alias("old")))
        parent = lowered.select(F.col("node").alias("label"), F.col("label").alias("grand"))
        jumped = checkpoint(lowered.join(parent, "label", "left").select(
            "node", F.least("label", F.coalesce("grand", "label")).alias("label"), "old"))
        labels = jumped.select("node", "label")
        if jumped.where(F.col("label") != F.col("old")).limit(1).count() == 0:
            return labels, round_number
    raise RuntimeError(f"identity resolution did not converge in {max_rounds} rounds")


def person_id_of(label: Column) -> Column:
    """A stable person id: a hash of the component's smallest identifier."""
    return F.concat(F.lit("p-"), F.substring(F.sha2(label, 256), 1, 24))


def resolve_identities(events: DataFrame, max_links: int = 20, max_rounds: int = 64,
                       extra_links: DataFrame | None = None,
                       checkpoint=lambda df: df.localCheckpoint()) -> IdentityResult:
    """Connected components over identifiers seen together, refusing over-connected bridges.

    `extra_links` (a, b as node strings) adds links from elsewhere, e.g. probabilistic stitching.
    """
    seen = _event_nodes(events).groupBy("node").agg(
        F.min("event_time").alias("first_seen"), F.max("event_time").alias("last_seen"))
    links = identifier_links(events)
    if extra_links is not None:
        links = links.union(extra_links.select("a", "b")).distinct()
    degree = (links.select(F.col("a").alias("node")).union(links.select(F.col("b").alias("node")))
              .groupBy("node").agg(F.count("*").alias("links")))
    refused = checkpoint(degree.where(F.col("links") > max_links))
    kept = (links.join(refused.select(F.col("node").alias("a")), "a", "left_anti")
            .join(refused.select(F.col("node").alias("b")), "b", "left_anti"))
    labels, rounds = connected_components(seen.select("node"), kept, max_rounds, checkpoint)
    refused_nodes = refused.select("node", F.lit(True).alias("refused"))
    identity = (seen.join(labels, "node").join(refused_nodes, "node", "left").select(
        F.substring_index("node", ":", 1).alias("identifier_type"),
        F.expr("substring(node, instr(node, ':') + 1)").alias("identifier"),
        person_id_of(F.col("label")).alias("person_id"),
        "first_seen", "last_seen",
        F.coalesce("refused", F.lit(False)).alias("refused")))
    report = refused.select(F.substring_index("node", ":", 1).alias("identifier_type"),
                            F.expr("substring(node, instr(node, ':') + 1)").alias("identifier"),
                            "links")
    return IdentityResult(identity, report, rounds)


def with_person_id(events: DataFrame, identity: DataFrame | None = None) -> DataFrame:
    """Events with `person_id`: from identity/ when given, else user_id, else anonymous_id.

    With identity, an event takes the person of its first identifier (in IDENTIFIER_COLUMNS
    order) that was not refused as over-connected, else of its first identifier at all.
    """
    fallback = F.coalesce("user_id", "anonymous_id")
    if identity is None:
        return events.withColumn("person_id", fallback)
    lookup = identity.select(F.concat_ws(":", "identifier_type", "identifier").alias("node"),
                             "person_id", "refused")
    choice = (_event_nodes(events).join(lookup, "node")
              .groupBy("event_id").agg(F.min_by("person_id", F.struct("refused", "priority"))
                                       .alias("_resolved")))
    return (events.join(choice, "event_id", "left")
            .withColumn("person_id", F.coalesce("_resolved", fallback)).drop("_resolved"))


def primary_user_ids(events: DataFrame) -> DataFrame:
    """(person_id, user_id): the most recent logged-in id, else the most recent anonymous id."""
    newest_first = Window.partitionBy("person_id").orderBy(
        F.col("user_id").isNull(), F.col("event_time").desc(), F.col("event_id"))
    return (events.where(F.coalesce("user_id", "anonymous_id").isNotNull())
            .select("person_id", "event_time", "event_id", "user_id",
                    F.coalesce("user_id", "anonymous_id").alias("primary"))
            .withColumn("_rank", F.row_number().over(newest_first))
            .where(F.col("_rank") == 1)
            .select("person_id", F.col("primary").alias("user_id")))


def probabilistic_links(events: DataFrame, fingerprint_key: str, network_key: str,
                        window_minutes: int, min_confidence: float) -> DataFrame:
    """Links (a, b, confidence, observations) between anonymous ids seen with the same device
    fingerprint on the same network within `window_minutes` of each other.

    Each distinct window in which two ids meet is one observation; confidence is
    1 - 0.5^observations, so one meeting gives 0.5 and three give 0.875. Only links at or above
    `min_confidence` are returned. Off unless a deployment turns it on: a household sharing a
    router and a phone model looks the same as one person on two browsers.
    """
    window = window_minutes * 60
    seen = events.where(F.col("anonymous_id").isNotNull()).select(
        _node("anonymous_id", F.col("anonymous_id")).alias("node"),
        F.col("properties")[fingerprint_key].alias("fingerprint"),
        F.col("properties")[network_key].alias("network"),
        F.unix_timestamp("event_time").alias("t"),
    ).where(F.col("fingerprint").isNotNull() & F.col("network").isNotNull()).withColumn(
        "bucket", F.floor(F.col("t") / window))
    later = seen.select(*[F.col(c).alias(f"o_{c}") for c in seen.columns]).withColumn(
        "o_bucket", F.explode(F.array(F.col("o_bucket") - 1, F.col("o_bucket"), F.col("o_bucket") + 1)))
    meetings = seen.join(later, (seen.fingerprint == later.o_fingerprint)
                         & (seen.network == later.o_network) & (seen.bucket == later.o_bucket)
                         & (seen.node < later.o_node) & (F.abs(seen.t - later.o_t) <= window))
    links = meetings.groupBy(F.col("node").alias("a"), F.col("o_node").alias("b")).agg(
        F.countDistinct(F.least("bucket", F.floor(F.col("o_t") / window))).alias("observations"))
    return (links.withColumn("confidence", 1 - F.pow(F.lit(0.5), F.col("observations")))
            .where(F.col("confidence") >= min_confidence))
