"""kopf's settings for this operator, applied by the startup handler."""

from __future__ import annotations

import kopf

from skillcoach_operator.config import OperatorConfig

__all__ = ["apply_settings"]

PREFIX = "skillcoach.io"


def apply_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    # One replica (Recreate, with a PDB) rather than peering: nothing to elect, and no
    # cluster-wide peering resource to grant.
    settings.peering.standalone = True
    # Only the namespace it is given, only the resources that exist at start: no need to list
    # namespaces or CRDs cluster-wide.
    settings.scanning.disabled = True
    # Its own names for its marks on PoolPolicies, and handler progress in annotations, so the
    # status holds only what the CRD's schema describes.
    settings.persistence.finalizer = f"{PREFIX}/pool-operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.posting.reporting_component = "skillcoach-operator"
    settings.posting.reporting_instance = config.instance
    settings.posting.event_name_prefix = "skillcoach-operator-"
    # Timeouts: no request may hang a handler; watches are renewed well within an hour, and a
    # silent stream is replaced.
    settings.networking.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.networking.error_backoffs = (1, 2, 4)
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.inactivity_timeout = 120
    # A stop (SIGTERM) must finish within the pod's terminationGracePeriodSeconds.
    settings.process.ultimate_exiting_timeout = 20
