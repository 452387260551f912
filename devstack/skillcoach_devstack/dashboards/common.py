"""What the three boards share: the data source and namespace variables, panel builders with
one style, and the label filter every query carries.

Every query selects `namespace="$namespace"` (the ServiceMonitor's label on Kubernetes; the
local stack's Prometheus sets namespace="local") and aggregates `by (pod)` where one line per
replica helps. Rates use Grafana's `$__rate_interval`. No panel reads a Kubernetes-only series
(kube-state-metrics, cAdvisor): the end-to-end test proves every panel against the local
stack's Prometheus, where those do not exist; the alerts cover them instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

__all__ = [
    "NS",
    "RATE",
    "Board",
    "Query",
    "api_routes",
    "new_board",
]

# The label filter of every query, and the rate window (Grafana picks it from the scrape
# interval and the zoom).
NS = 'namespace="$namespace"'
RATE = "$__rate_interval"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
PANEL_HEIGHT = 8
# The namespace variable lists the namespaces where replicas report readiness.
NAMESPACE_QUERY = "label_values(skillcoach_ready, namespace)"


def api_routes(*, shed: bool = False) -> str:
    """The label matcher of the API's routes (probes excluded); with shed, requests refused by
    admission too (route="shed")."""
    return 'route=~"/v1/.+|shed"' if shed else 'route=~"/v1/.+"'


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str = ""


class Board:
    """A dashboard under construction: panels get ids and query refIds in order."""

    def __init__(self, builder: dashboard.Dashboard) -> None:
        self.builder = builder
        self._next_id = 1

    def _id(self) -> int:
        current = self._next_id
        self._next_id += 1
        return current

    @staticmethod
    def _targets(queries: Sequence[Query]) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
        targets: list[cogbuilder.Builder[cogvariants.Dataquery]] = []
        for i, q in enumerate(queries):
            targets.append(
                prometheus.Dataquery()
                .expr(q.expr)
                .range()
                .ref_id(chr(ord("A") + i))
                .legend_format(q.legend or "__auto")
                .datasource(DATASOURCE)
            )
        return targets

    def row(self, title: str) -> Board:
        self.builder = self.builder.with_row(dashboard.Row(title).id(self._id()))
        return self

    def timeseries(
        self,
        title: str,
        description: str,
        queries: Sequence[Query],
        *,
        unit: str = "short",
        width: int = 12,
        minimum: float | None = 0,
        maximum: float | None = None,
        red_above: float | None = None,
    ) -> Board:
        panel = (
            timeseries.Panel()
            .id(self._id())
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .targets(self._targets(queries))
            .unit(unit)
            .span(width)
            .height(PANEL_HEIGHT)
            .line_width(1)
            .fill_opacity(10)
            .legend(
                common_builders.VizLegendOptions()
                .display_mode(common_models.LegendDisplayMode.LIST)
                .placement(common_models.LegendPlacement.BOTTOM)
                .show_legend(True)
            )
            .tooltip(
                common_builders.VizTooltipOptions()
                .mode(common_models.TooltipDisplayMode.MULTI)
                .sort(common_models.SortOrder.DESCENDING)
            )
        )
        if minimum is not None:
            panel = panel.min(minimum)
        if maximum is not None:
            panel = panel.max(maximum)
        if red_above is not None:
            panel = panel.thresholds(_thresholds(red_above)).thresholds_style(
                common_builders.GraphThresholdsStyleConfig().mode(
                    common_models.GraphThresholdsStyleMode.LINE
                )
            )
        self.builder = self.builder.with_panel(panel)
        return self

    def stat(
        self,
        title: str,
        description: str,
        queries: Sequence[Query],
        *,
        unit: str = "short",
        width: int = 6,
        red_above: float | None = None,
    ) -> Board:
        panel = (
            stat.Panel()
            .id(self._id())
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .targets(self._targets(queries))
            .unit(unit)
            .span(width)
            .height(PANEL_HEIGHT // 2)
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        )
        if red_above is not None:
            panel = panel.thresholds(_thresholds(red_above))
        self.builder = self.builder.with_panel(panel)
        return self


def _thresholds(red_above: float) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color="green"), Threshold(value=red_above, color="red")])
    )


def new_board(uid: str, title: str, description: str) -> Board:
    """A dashboard with the data source and namespace variables, refreshed every 30 s."""
    builder = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["skillcoach"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            dashboard.QueryVariable("namespace")
            .label("Namespace")
            .description("The namespace of the release (the local stack's is `local`)")
            .datasource(DATASOURCE)
            .query(NAMESPACE_QUERY)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
    )
    return Board(builder)
