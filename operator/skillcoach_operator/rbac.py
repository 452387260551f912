"""Every Kubernetes API call the operator makes, as (API group, resource) -> verbs: the chart's
Role grants exactly these (tests/operator compares the rendered Role with this table, and the
requests the running operator sends with both).

- poolpolicies: kopf lists and watches them, patches its finalizer and annotations; the
  operator reads one fresh before each decision;
- poolpolicies/status: the operator's status;
- deployments: kopf lists and watches them (the HPA's changes), the operator reads the two it
  is told about; it never changes them;
- configmaps: the operator reads and patches the pool ConfigMap and PgBouncer's, and creates
  the pool ConfigMap when it is missing (creation cannot be limited to a name);
- events: what it did and why, on the PoolPolicy.
"""

from __future__ import annotations

from types import MappingProxyType

from skillcoach_operator.policy import GROUP, PLURAL

__all__ = ["NAMED_ONLY", "PERMISSIONS"]

PERMISSIONS: MappingProxyType[tuple[str, str], frozenset[str]] = MappingProxyType(
    {
        (GROUP, PLURAL): frozenset({"get", "list", "watch", "patch"}),
        (GROUP, f"{PLURAL}/status"): frozenset({"patch"}),
        ("apps", "deployments"): frozenset({"get", "list", "watch"}),
        ("", "configmaps"): frozenset({"get", "create", "patch"}),
        ("", "events"): frozenset({"create"}),
    }
)

# Verbs that touch named objects only, so a Role can restrict them to those names.
NAMED_ONLY: MappingProxyType[tuple[str, str], frozenset[str]] = MappingProxyType(
    {("", "configmaps"): frozenset({"get", "patch"})}
)
