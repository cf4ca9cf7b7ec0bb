"""The metric catalogue: every metric declared once, and everything else reads it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

import nexus_ops
from nexus_ops.metrics import catalogue as m
from nexus_ops.metrics.exposition import Exposition, SamplerCollector, UsageCollector
from nexus_ops.metrics.sampler import Reading
from nexus_ops.metrics.usage import UsageLedger
from nexus_ops.models import Counters, ServerState, ServerStatus

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(nexus_ops.__file__).parent
# A word that reads like one of our metric names (histogram series carry a suffix).
NAME = re.compile(r"\b(?:opencode|nexus)_[a-z0-9_]+\b")
SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def _declared(name: str) -> bool:
    if name in m.CATALOGUE:
        return True
    for suffix in SERIES_SUFFIXES:
        base = m.CATALOGUE.get(name.removesuffix(suffix))
        if name.endswith(suffix) and base is not None and base.kind == "histogram":
            return True
    return False


def _written(word: str, names: set[str]) -> bool:
    """``word`` names a declared metric (a counter also without its ``_total``)."""
    return _declared(word) or word + "_total" in names


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_no_metric_name_is_written_outside_the_catalogue() -> None:
    names = set(m.CATALOGUE)
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(m.__file__):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
            ):
                words = {w for w in NAME.findall(node.value) if _written(w, names)}
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: {w}" for w in sorted(words)]
    assert not found, "name these through nexus_ops.metrics.catalogue:\n" + "\n".join(found)


def test_every_entry_is_complete_and_named_like_its_type() -> None:
    for name, entry in m.CATALOGUE.items():
        assert entry.metric == name
        assert entry.help.endswith("."), name
        assert entry.name, name
        assert entry.kind in ("gauge", "counter", "histogram"), name
        assert name.endswith("_total") == (entry.kind == "counter"), name
        assert entry.unit in ("", "bytes", "seconds", "duration", "%", "count"), name


def _exposition_text() -> str:
    """What /metrics holds, from the agent's collectors with a reading of every sample."""
    status = ServerStatus(state=ServerState.RUNNING, desired="running", port=4096, healthy=True)
    counters = Counters(starts=1, restarts_by_reason={"crash": 1})
    expo = Exposition(lambda: status, lambda: counters, version="0.0.0")
    expo.observe_request("/global/health", 0.01, True)
    reading = Reading(0.0, [(entry.metric, {}, 1.0) for entry in SamplerCollector.FROM_READING])
    reading.values.append((m.DESIRED_RUNNING.metric, {}, 1.0))
    expo.registry.register(SamplerCollector(lambda: reading, lambda: (0, 0), lambda: True))
    expo.registry.register(UsageCollector(_usage_ledger().samples))
    return expo.render().decode()


def _usage_ledger() -> UsageLedger:
    """A ledger that has counted one assistant message and one tool call."""
    ledger = UsageLedger()
    info = {"id": "msg_1", "sessionID": "ses_1", "role": "assistant", "providerID": "p"}
    info.update(modelID="m", tokens={"input": 3, "output": 1}, cost=0.1)  # type: ignore[arg-type]
    ledger.feed({"type": "message.updated", "properties": {"info": info}})
    part = {"id": "prt_1", "sessionID": "ses_1", "type": "tool", "tool": "bash"}
    part["state"] = {"status": "completed"}  # type: ignore[assignment]
    ledger.feed({"type": "message.part.updated", "properties": {"part": part}})
    return ledger


def _created_of_declared(name: str) -> bool:
    """``x_created``: prometheus_client's creation time of counter or histogram ``x``."""
    base = name.removesuffix("_created")
    entry = m.CATALOGUE.get(base) or m.CATALOGUE.get(base + "_total")
    return name.endswith("_created") and entry is not None and entry.kind != "gauge"


def _families(text: str) -> dict[str, tuple[str, str, set[str]]]:
    found = {}
    for family in text_string_to_metric_families(text):
        if _created_of_declared(family.name):
            continue
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        name = family.name + ("_total" if family.type == "counter" else "")
        found[name] = (family.type, family.documentation, labels)
    return found


def assert_matches_catalogue(text: str) -> None:
    """Every family of ``text`` is declared, with the catalogue's type, help and labels;
    every exposed entry of the catalogue is in ``text``."""
    families = _families(text)
    undeclared = set(families) - set(m.CATALOGUE)
    assert not undeclared, f"on /metrics but not in the catalogue: {sorted(undeclared)}"
    missing = {e.metric for e in m.exposed()} - set(families)
    assert not missing, f"in the catalogue but not on /metrics: {sorted(missing)}"
    for name, (kind, help_text, labels) in families.items():
        entry = m.CATALOGUE[name]
        assert (kind, help_text) == (entry.kind, entry.help), name
        assert labels <= set(entry.labels), name


def test_collectors_expose_their_catalogue_entries_only() -> None:
    families = _families(_exposition_text())
    for name, (kind, help_text, _) in families.items():
        assert (kind, help_text) == (m.CATALOGUE[name].kind, m.CATALOGUE[name].help), name
    assert m.DESIRED_RUNNING.metric in families
    assert m.PROCESS_CPU_PERCENT.metric not in families  # left to rate() of the CPU seconds


def test_the_sampler_stores_catalogue_metrics_only() -> None:
    from nexus_ops.metrics.proctree import TreeStats
    from nexus_ops.metrics.sampler import agent_values, session_values, tree_values

    tree = TreeStats(
        pid=1,
        cpu_seconds_total=1.0,
        cpu_percent=2.0,
        rss_bytes=3,
        threads=4,
        open_fds=5,
        children=0,
        connections={"LISTEN": 1},
    )
    values = tree_values(tree) + agent_values(1.0, 2.0, 3.0) + session_values(2, {})
    values += _usage_ledger().samples()
    assert {name for name, _, _ in values} <= set(m.CATALOGUE)
    for name, labels, _ in values:
        assert set(labels) <= set(m.CATALOGUE[name].labels), name


def _names_in(text: str) -> set[str]:
    return set(NAME.findall(text)) - {"nexus_ops"}


def test_dashboard_and_prometheus_rules_name_catalogue_metrics_only() -> None:
    board = json.loads((ROOT / "deploy/grafana/nexus-ops-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules/nexus-ops.rules.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    named = set().union(*(_names_in(e) for e in exprs))
    assert m.SERVER_STATUS.metric in named
    unknown = {name for name in named if not _declared(name)}
    assert not unknown, f"not in nexus_ops.metrics.catalogue: {sorted(unknown)}"
    exposed = {e.metric for e in m.exposed()}
    bases = {n.removesuffix(s) for n in named for s in SERIES_SUFFIXES if n.endswith(s)}
    assert (named | bases) & set(m.CATALOGUE) <= exposed, "Prometheus only sees /metrics"


def test_docs_list_every_catalogue_metric_with_its_type_and_labels() -> None:
    text = (ROOT / "docs/metrics.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if (
            len(cells) == 4
            and cells[0].startswith("`")
            and cells[1]
            in (
                "gauge",
                "counter",
                "histogram",
            )
        ):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    expected = {
        name: (e.kind, ", ".join(f"`{label}`" for label in e.labels))
        for name, e in m.CATALOGUE.items()
    }
    assert rows == expected, "docs/metrics.md: the table of every metric is out of step"
