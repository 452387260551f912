"""The operator's settings: SKILLCOACH_OPERATOR_* environment variables, read once at start.
Cluster access itself is kopf's usual: the in-cluster service account, else KUBECONFIG or
~/.kube/config."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ConfigError", "OperatorConfig", "load_config"]

PREFIX = "SKILLCOACH_OPERATOR_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")
# A DNS-1123 label: what a namespace name may be.
NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class ConfigError(ValueError):
    """A setting is missing or invalid: the message names the variable."""


DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"
DEFAULT_RESYNC_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    namespace: str  # the one namespace watched: its PoolPolicies and Deployments
    liveness: str = DEFAULT_LIVENESS  # kopf's liveness endpoint
    resync_seconds: float = DEFAULT_RESYNC_SECONDS  # the drift-repairing timer of each policy
    log_level: str = "info"
    log_format: str = "json"
    instance: str = "skillcoach-operator"  # reported in Events (the pod's name)


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(PREFIX + name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{PREFIX}{name}={raw!r} must be between {low:g} and {high:g}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(PREFIX + name, "").strip().lower() or default
    if value not in allowed:
        raise ConfigError(f"{PREFIX}{name}={value!r} must be one of {', '.join(allowed)}")
    return value


def load_config(env: Mapping[str, str] | None = None) -> OperatorConfig:
    env = os.environ if env is None else env
    namespace = env.get(PREFIX + "NAMESPACE", "").strip()
    if not namespace:
        raise ConfigError(
            f"{PREFIX}NAMESPACE is required: the namespace whose PoolPolicies to serve"
        )
    if not NAMESPACE_RE.fullmatch(namespace):
        raise ConfigError(f"{PREFIX}NAMESPACE={namespace!r} is not a namespace name")
    liveness = env.get(PREFIX + "LIVENESS", "").strip() or DEFAULT_LIVENESS
    if not liveness.startswith("http://"):
        raise ConfigError(f"{PREFIX}LIVENESS={liveness!r} must be an http:// URL")
    return OperatorConfig(
        namespace=namespace,
        liveness=liveness,
        resync_seconds=_float(env, "RESYNC_SECONDS", DEFAULT_RESYNC_SECONDS, 0.5, 3600),
        log_level=_choice(env, "LOG_LEVEL", "info", LOG_LEVELS),
        log_format=_choice(env, "LOG_FORMAT", "json", LOG_FORMATS),
        instance=env.get("HOSTNAME", "").strip() or socket.gethostname() or "skillcoach-operator",
    )
