"""The real deployment tools, driven from the tests: helm (render, lint, dependencies),
kubernetes-validate (strict: an unknown kind or apiVersion fails), the prometheus-operator
models (node), checkov and hadolint. Installed by `make test` (skillcoach_devstack.tools)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from skillcoach_devstack.tools import Tools

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")
# Kinds whose schemas kubernetes-validate does not have: checked by their own models instead.
PROMETHEUS_KINDS = frozenset({"ServiceMonitor", "PodMonitor", "PrometheusRule"})
CRD_KIND = "CustomResourceDefinition"


class ToolError(AssertionError):
    """A tool refused its input: the message holds its output."""


@dataclass(frozen=True)
class Helm:
    tools: Tools
    home: Path

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.tools.helm), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            raise ToolError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    @staticmethod
    def _value_args(
        values: Sequence[Path] = (), sets: Mapping[str, str] | None = None
    ) -> list[str]:
        args: list[str] = []
        for v in values:
            args += ["--values", str(v)]
        for key, value in (sets or {}).items():
            args += ["--set", f"{key}={value}"]
        return args

    def template_text(
        self,
        chart: Path,
        *,
        values: Sequence[Path] = (),
        sets: Mapping[str, str] | None = None,
        release: str = "sc",
        namespace: str = "skillcoach",
        extra: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "template", release, str(chart), "--namespace", namespace, "--include-crds",
            *self._value_args(values, sets), *extra, check=check,
        )  # fmt: skip

    def template(self, chart: Path, **kwargs: Any) -> list[dict[str, Any]]:
        """The rendered manifests (hooks and tests included), as parsed documents."""
        return parse_manifests(self.template_text(chart, **kwargs).stdout)

    def lint(
        self, chart: Path, *, values: Sequence[Path] = (), sets: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run("lint", "--strict", str(chart), *self._value_args(values, sets))


def parse_manifests(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def crd_schemas(docs: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every version the CRDs among docs serve."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in docs:
        if doc.get("kind") != CRD_KIND or doc.get("apiVersion") != "apiextensions.k8s.io/v1":
            continue
        spec = doc["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def validate_custom_resource(doc: dict[str, Any], schema: dict[str, Any]) -> None:
    """A custom resource against its CRD's schema: OpenAPI 3.0, whose boolean
    exclusiveMinimum and friends are JSON Schema draft 4's (x-kubernetes-* are ignored)."""
    errors = sorted(
        jsonschema.Draft4Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path)
    )
    if errors:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        found = "; ".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
        raise ToolError(f"{name} does not match its CRD's schema: {found}")


def validate_kubernetes(
    docs: Iterable[dict[str, Any]], versions: Sequence[str] = KUBERNETES_VERSIONS
) -> int:
    """Validate every core/apps/... manifest strictly for each version; returns how many were
    checked. Prometheus-operator kinds are left to validate_prometheus; a custom resource whose
    CRD is among docs (the chart's crds/) is checked against that CRD's schema; anything else
    that has no schema is an error, never a silent pass."""
    docs = list(docs)
    custom = crd_schemas(docs)
    checked = 0
    for doc in docs:
        if doc.get("kind") in PROMETHEUS_KINDS:
            continue
        schema = custom.get((str(doc.get("apiVersion")), str(doc.get("kind"))))
        if schema is not None:
            validate_custom_resource(doc, schema)
            checked += 1
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
                raise ToolError(f"{name} is invalid for Kubernetes {version}: {exc}") from None
            except kubernetes_validate.SchemaNotFoundError:
                raise ToolError(
                    f"no Kubernetes {version} schema for {doc.get('apiVersion')}"
                    f" {doc.get('kind')}: an unknown kind or apiVersion"
                ) from None
        checked += 1
    return checked


# The models are an ES module: import, not require.
_MODELS_SCRIPT = """
import fs from "fs";
const m = await import("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1");
const docs = JSON.parse(fs.readFileSync(0, "utf8"));
let failed = 0;
for (const d of docs) {
  const Model = m[d.kind];
  if (!Model) { console.error(`no model for ${d.apiVersion} ${d.kind}`); failed++; continue; }
  try { new Model(d).validate(); }
  catch (e) { console.error(`${d.kind}/${d.metadata.name}: ${e.message}`); failed++; }
}
process.exit(failed ? 1 : 0);
"""


def validate_prometheus(tools: Tools, docs: Iterable[dict[str, Any]]) -> int:
    """ServiceMonitor / PrometheusRule / PodMonitor against the prometheus-operator models;
    returns how many were checked."""
    wanted = [d for d in docs if d.get("kind") in PROMETHEUS_KINDS]
    if not wanted:
        return 0
    for d in wanted:
        if d.get("apiVersion") != "monitoring.coreos.com/v1":
            raise ToolError(f"{d['kind']} has apiVersion {d.get('apiVersion')}")
    result = subprocess.run(
        ["node", "--input-type=module", "-e", _MODELS_SCRIPT],
        cwd=tools.node_dir,
        input=json.dumps(wanted),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise ToolError(f"prometheus-operator models refused:\n{result.stderr}")
    return len(wanted)


def checkov_failures(tools: Tools, directory: Path, framework: str) -> list[dict[str, Any]]:
    """checkov's failed checks for the files in `directory` (empty: all passed or skipped with
    a justification in the file)."""
    result = subprocess.run(
        [str(tools.checkov), "--directory", str(directory), "--framework", framework,
         "--output", "json", "--quiet", "--compact", "--skip-download"],
        capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise ToolError(f"checkov did not run:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    reports = json.loads(result.stdout)
    if isinstance(reports, dict):
        reports = [reports]
    failed: list[dict[str, Any]] = []
    for report in reports:
        failed += report.get("results", {}).get("failed_checks", [])
    return failed


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    """hadolint (from the dev install) on one Dockerfile, errors only failing."""
    binary = Path(sys.executable).with_name("hadolint")
    return subprocess.run(
        [str(binary), "--failure-threshold", "error", str(dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
