"""The monitor's workflow metrics, read from the workflows table at scrape time (``shared.workflows.totals``):

- ``mallops_workflows_started_total{name}``: workflows that started (a step ran);
- ``mallops_workflows_succeeded_total{name}``;
- ``mallops_workflows_failed_total{name}``: each time a workflow went FAILURE (a retried one that fails again
  counts again);
- ``mallops_workflow_duration_seconds{name}``: a histogram of the succeeded ones, submission to end
  (the ``MALLOPS_RUNTIME_BUCKETS``).

``name`` is the named workflow, or ``ad_hoc``; every named workflow is present from the start (0). The
counters do not go down when the retention (cleanup_expired_data, ``MALLOPS_WORKFLOW_TTL_DAYS``) deletes old
workflows: it adds what they counted to ``workflow_totals``, which ``totals`` reads with the rows. Their
durations are kept per bucket of the buckets in force when they were deleted: after a change of buckets,
they are counted in the first new bucket at or above their old bound (+Inf and the sum stay exact).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.catalog import WORKFLOWS
from shared.workflows import AD_HOC, Totals

log = logging.getLogger("mallops.monitor")


class WorkflowCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, Totals]], buckets: Sequence[float]) -> None:
        self.read = read
        self.buckets = sorted(buckets)

    def collect(self) -> Iterator[Metric]:
        try:
            found = self.read()
        except Exception as exc:  # the database is down: the scrape still answers with the rest
            log.warning("could not read the workflows: %s", exc)
            return
        totals = {name: Totals() for name in (*WORKFLOWS, AD_HOC)} | found
        started = CounterMetricFamily("mallops_workflows_started", "Workflows that started.", labels=["name"])
        succeeded = CounterMetricFamily("mallops_workflows_succeeded", "Workflows that succeeded.", labels=["name"])
        failed = CounterMetricFamily(
            "mallops_workflows_failed", "Times a workflow failed (at a step; again after a retry).", labels=["name"]
        )
        duration = HistogramMetricFamily(
            "mallops_workflow_duration_seconds",
            "Seconds from submission to success, per workflow.",
            labels=["name"],
        )
        for name, item in sorted(totals.items()):
            started.add_metric([name], item.started)
            succeeded.add_metric([name], item.succeeded)
            failed.add_metric([name], item.failed)
            duration.add_metric([name], self._buckets(item), sum(item.durations) + item.retired_sum)
        yield from (started, succeeded, failed, duration)

    def _buckets(self, item: Totals) -> list[tuple[str, float]]:
        retired = [(_bound(key), count) for key, count in item.retired_buckets.items()]
        counts = [
            (
                str(bound),
                float(sum(1 for d in item.durations if d <= bound) + sum(n for b, n in retired if b <= bound)),
            )
            for bound in self.buckets
        ]
        return [*counts, ("+Inf", float(len(item.durations) + sum(n for _, n in retired)))]


def _bound(key: str) -> float:
    try:
        return float(key)
    except ValueError:
        return float("inf")
