"""Upgrade metrics for the agent's ``/metrics``, read from nexus.db at scrape time.

* ``opencode_upgrades_total{outcome}``: upgrades by outcome
* ``opencode_rollbacks_total``: rollbacks, automatic or by hand

>>> collector = UpgradeCollector(lambda: ({"upgraded": 2}, 1))
>>> [(m.name, [s.value for s in m.samples]) for m in collector.collect()]
[('opencode_upgrades', [2.0]), ('opencode_rollbacks', [1.0])]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from nexus_ops.metrics import catalogue as m
from nexus_ops.metrics.exposition import family

Counts = Callable[[], tuple[dict[str, int], int]]


class UpgradeCollector(Collector):
    """Collects the counts ``counts()`` gives (:meth:`UpgradeService.counts`)."""

    def __init__(self, counts: Counts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        by_outcome, rollbacks = self._counts()
        upgrades = family(m.UPGRADES)
        for outcome, count in sorted(by_outcome.items()):
            upgrades.add_metric([outcome], float(count))
        yield upgrades
        yield family(m.ROLLBACKS, float(rollbacks))


def count_values(counts: Counts) -> Iterable[tuple[str, Mapping[str, str], float]]:
    """The same counts as the alert evaluator reads samples: (metric, labels, value)."""
    by_outcome, rollbacks = counts()
    for outcome, count in sorted(by_outcome.items()):
        yield m.UPGRADES.metric, {"outcome": outcome}, float(count)
    yield m.ROLLBACKS.metric, {}, float(rollbacks)
