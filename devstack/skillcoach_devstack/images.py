"""Container images of the API and the operator, built here with podman (no registry, no
daemon), and the dependency locks they install from.

- podman, runc, buildah and debootstrap come from apt-get when missing. podman runs with a
  containers.conf of the project's own (ROOT/.tools/podman/containers.conf, through the
  CONTAINERS_CONF variable; /etc is never touched): runc, cgroupfs and a file event log,
  because crun and systemd are no use on hosts with hybrid cgroups, and container ulimits no
  higher than this host's hard limits, which root cannot raise in some sandboxes.
- The base image is Debian bookworm's minimal root filesystem with python3 (debootstrap from
  the mirror apt uses), imported once as `localhost/skillcoach-base:<tag>` and reused while
  it exists. The Dockerfiles take any base with python3 and venv (`BASE_IMAGE`), so a
  registry base works as well elsewhere.
- The images are tagged `localhost/skillcoach-api:<version>` and
  `localhost/skillcoach-operator:<version>`, versions from the pyproject files. Each carries
  a label with the digest of what it was built from (the files its COPY instructions take,
  the Dockerfile, the base), and is not rebuilt while that digest holds; otherwise podman's
  layer cache keeps a rebuild after a code change to the last steps.
- `lock` regenerates requirements/*.lock (uv pip compile, hashed, for the images' Python).

`python -m skillcoach_devstack.images build|base|sizes|lock [--root ROOT]`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.packages import ensure_packages, find_binary
from skillcoach_devstack.processes import run_bounded

__all__ = [
    "API_REPOSITORY",
    "BASE_REPOSITORY",
    "IMAGE_UID",
    "LOCK_PYTHON",
    "OPERATOR_REPOSITORY",
    "PACKAGES",
    "Built",
    "Podman",
    "apt_mirror",
    "base_image_name",
    "build_images",
    "build_inputs",
    "dockerfile_instructions",
    "ensure_base",
    "ensure_podman",
    "image_names",
    "image_size",
    "inputs_digest",
    "lock",
    "lock_files",
    "project_version",
]

# (binary, Debian package providing it)
PACKAGES: tuple[tuple[str, str], ...] = (
    ("podman", "podman"),
    ("runc", "runc"),
    ("buildah", "buildah"),
    ("debootstrap", "debootstrap"),
)
SUITE = "bookworm"
# What the base holds beyond minbase: the interpreter the images' virtualenvs link to.
BASE_INCLUDE = ("python3", "python3-venv", "ca-certificates")
# Part of the base tag: raise it when the way the base is made changes, for a new base.
BASE_RECIPE = 2
BASE_REPOSITORY = "localhost/skillcoach-base"
API_REPOSITORY = "localhost/skillcoach-api"
OPERATOR_REPOSITORY = "localhost/skillcoach-operator"
# The numeric user both Dockerfiles run as (USER 10001:10001).
IMAGE_UID = 10001
# The locks are resolved for the interpreter of the images (bookworm's python3) on Linux.
LOCK_PYTHON = "3.11"
LOCK_PLATFORM = "linux"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# A label on each image: the digest of everything it was built from.
INPUTS_LABEL = "org.skillcoach.build-inputs"


@dataclass(frozen=True, slots=True)
class Podman:
    """podman with the project's containers.conf."""

    binary: str
    conf: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def run(
        self, *args: str, timeout: float, what: str | None = None, ok_codes: Sequence[int] = (0,)
    ) -> str:
        """stdout of `podman ARGS`; StackError on a timeout or an unexpected exit code."""
        result = run_bounded(
            [self.binary, *args],
            timeout=timeout,
            what=what or f"podman {' '.join(args[:3])}",
            env=self.env(),
            ok_codes=ok_codes,
        )
        return result.stdout

    def image_exists(self, name: str) -> bool:
        result = run_bounded(
            [self.binary, "image", "exists", name], timeout=60, env=self.env(), ok_codes=(0, 1)
        )
        return result.returncode == 0

    def image_id(self, name: str) -> str | None:
        if not self.image_exists(name):
            return None
        return self.run("image", "inspect", "--format", "{{.Id}}", name, timeout=60).strip()


@dataclass(frozen=True, slots=True)
class Built:
    podman: Podman
    base: str
    api: str
    operator: str
    seconds: float
    # The tags that were (re)built by this call; the others were up to date.
    rebuilt: tuple[str, ...]


def _tools(root: Path) -> Path:
    return root / ".tools" / "podman"


def containers_conf_text() -> str:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = hard if hard != resource.RLIM_INFINITY else 1048576
    return (
        "# Written by skillcoach_devstack.images; podman reads it through CONTAINERS_CONF.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n'
        "\n"
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )


def ensure_podman(root: Path) -> Podman:
    """podman and its helpers installed, and the project's containers.conf written."""
    ensure_packages(PACKAGES)
    binary = find_binary("podman")
    if binary is None:
        raise StackError("podman is not installed (apt-get install podman)")
    if os.geteuid() != 0:
        raise StackError("the images are built with podman as root (run as root)")
    conf = _tools(root) / "containers.conf"
    text = containers_conf_text()
    if not conf.is_file() or conf.read_text() != text:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(text)
    return Podman(binary=binary, conf=conf)


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian archive apt is configured with (so debootstrap reaches what apt reaches)."""
    files = sorted((sources / "sources.list.d").glob("*.sources"))
    for path in files:
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith(("#", " ")):
                    fields[key.strip().lower()] = value.strip()
            if SUITE in fields.get("suites", "").split() and "uris" in fields:
                return fields["uris"].split()[0]
    lists = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = [w for w in line.split() if not w.startswith("[") and not w.endswith("]")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    return DEFAULT_MIRROR


def base_image_name() -> str:
    # The tag names what the base holds, so a change of packages makes a new base.
    digest = hashlib.sha256(f"{SUITE} {BASE_INCLUDE} {BASE_RECIPE}".encode()).hexdigest()[:8]
    return f"{BASE_REPOSITORY}:{SUITE}-{digest}"


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target == prefix or target.startswith(prefix + "/"):
            found.append(target)
    return sorted(found, key=len, reverse=True)


def _remove_rootfs(rootfs: Path) -> None:
    # A debootstrap that failed half-way may leave /proc or /sys mounted inside its target:
    # unmount them first, so removing the tree can never reach the host's.
    for target in _mounts_under(rootfs):
        run_bounded(["umount", "-l", target], timeout=60)
    if _mounts_under(rootfs):
        raise StackError(f"{rootfs} still has mounts; not removing it")
    shutil.rmtree(rootfs, ignore_errors=True)


# What the base does without, as Debian's slim images do: the downloaded packages, apt's
# lists, manuals, translations, and documentation except the licences.
_PRUNED = ("var/cache/apt", "var/lib/apt/lists", "usr/share/man", "usr/share/info",
           "usr/share/locale", "usr/share/doc")  # fmt: skip


def _slim(rootfs: Path) -> None:
    for folder in _PRUNED:
        for path in sorted((rootfs / folder).rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_symlink() or path.is_file():
                if not (folder == "usr/share/doc" and path.name == "copyright"):
                    path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def ensure_base(podman: Podman, root: Path, *, mirror: str | None = None) -> str:
    """The debootstrap base image, made once (about a minute) and reused while it exists."""
    name = base_image_name()
    if podman.image_exists(name):
        return name
    work = _tools(root)
    work.mkdir(parents=True, exist_ok=True)
    # Not a TemporaryDirectory: its clean-up would remove the tree even with mounts left in it.
    tmp = Path(tempfile.mkdtemp(dir=work, prefix="base-"))
    rootfs, tarball = tmp / "rootfs", tmp / "rootfs.tar"
    try:
        run_bounded(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_INCLUDE)}",
             SUITE, str(rootfs), mirror or apt_mirror()],
            timeout=1200, what=f"debootstrap of {SUITE}",
        )  # fmt: skip
        _slim(rootfs)
        run_bounded(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."],
            timeout=600,
            what="tar of the base root filesystem",
        )
    finally:
        _remove_rootfs(rootfs)
    try:
        podman.run("import", str(tarball), name, timeout=600, what="podman import of the base")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Earlier bases are of no more use (one still in use by an image stays).
    listed = podman.run("images", "--format", "{{.Repository}}:{{.Tag}}",
                        "--filter", f"reference={BASE_REPOSITORY}", timeout=60)  # fmt: skip
    for old in sorted(set(listed.split()) - {name}):
        podman.run("rmi", old, timeout=120, ok_codes=(0, 1, 2, 125))
    return name


def project_version(pyproject: Path) -> str:
    version: str = tomllib.loads(pyproject.read_text())["project"]["version"]
    return version


def dockerfile_instructions(dockerfile: Path) -> list[list[str]]:
    """The Dockerfile's instructions as word lists (continuations joined, comments dropped)."""
    instructions: list[list[str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, rest = text.partition(" ")
        rest = rest.strip()
        words = rest.split()
        if rest.startswith("["):
            with contextlib.suppress(json.JSONDecodeError):
                words = [str(word) for word in json.loads(rest)]
        instructions.append([keyword.upper(), *words])
    return instructions


def build_inputs(root: Path, dockerfile: Path) -> list[Path]:
    """Every file of the build context that the Dockerfile's COPY/ADD instructions take, with
    the Dockerfile and .dockerignore themselves, sorted."""
    files = {dockerfile.resolve()}
    if (root / ".dockerignore").is_file():
        files.add((root / ".dockerignore").resolve())
    for words in dockerfile_instructions(dockerfile):
        if words[0] not in ("COPY", "ADD"):
            continue
        args = words[1:]
        if any(a.startswith("--from") for a in args):
            continue
        sources = [a for a in args if not a.startswith("--")][:-1]
        for source in sources:
            for path in root.glob(source.rstrip("/")):
                candidates = path.rglob("*") if path.is_dir() else [path]
                for candidate in candidates:
                    if candidate.is_file() and not _ignored(candidate):
                        files.add(candidate.resolve())
    return sorted(files)


def _ignored(path: Path) -> bool:
    """What .dockerignore keeps out of the context wherever it lies."""
    return path.suffix == ".pyc" or any(
        part == "__pycache__" or part.endswith(".egg-info") for part in path.parts
    )


def inputs_digest(root: Path, dockerfile: Path, build_args: Sequence[str]) -> str:
    digest = hashlib.sha256("\0".join(build_args).encode())
    for path in build_inputs(root, dockerfile):
        digest.update(str(path.relative_to(root.resolve())).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _label(podman: Podman, name: str, key: str) -> str | None:
    if not podman.image_exists(name):
        return None
    value = podman.run(
        "image", "inspect", "--format", f'{{{{index .Labels "{key}"}}}}', name, timeout=60
    ).strip()
    return value or None


def _build(
    podman: Podman, root: Path, *, dockerfile: Path, tag: str, base: str, timeout: float
) -> bool:
    """Build tag unless it was built from the same inputs; True if it was (re)built."""
    build_args = [f"BASE_IMAGE={base}"]
    mounts: list[str] = []
    if HOST_CA_BUNDLE.is_file():
        # Where outgoing TLS is intercepted, pip inside the build needs the host's CAs: they
        # are mounted into the RUN steps only and never stored in a layer.
        mounts = ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        build_args.append(f"PIP_CERT={HOST_CA_BUNDLE}")
    digest = inputs_digest(root, dockerfile, [base, *build_args])
    # podman 4.3 never reuses a `COPY --from` layer, so an unchanged image is not rebuilt at all.
    if _label(podman, tag, INPUTS_LABEL) == digest:
        return False
    previous = podman.image_id(tag)
    args = ["build", "--network", "host", "--format", "docker", "--layers", *mounts,
            "--label", f"{INPUTS_LABEL}={digest}",
            "--file", str(dockerfile), "--tag", tag]  # fmt: skip
    for arg in build_args:
        args += ["--build-arg", arg]
    podman.run(*args, str(root), timeout=timeout, what=f"podman build of {tag}")
    current = podman.image_id(tag)
    if previous is not None and previous != current:
        # The replaced image would stay behind untagged; a container still using it keeps it.
        podman.run("rmi", previous, timeout=120, ok_codes=(0, 1, 2, 125))
    return True


def image_names(root: Path) -> tuple[str, str]:
    """The tags of the API and the operator image, versions from their pyproject files."""
    api = project_version(root / "pyproject.toml")
    operator = project_version(root / "operator" / "pyproject.toml")
    return f"{API_REPOSITORY}:{api}", f"{OPERATOR_REPOSITORY}:{operator}"


def build_images(root: Path, *, timeout: float = 1800.0) -> Built:
    """podman ready, the base there, both images built (unless built from the same inputs)."""
    started = time.monotonic()
    podman = ensure_podman(root)
    base = ensure_base(podman, root)
    api, operator = image_names(root)
    rebuilt = tuple(
        tag
        for dockerfile, tag in (
            (root / "Dockerfile", api),
            (root / "operator" / "Dockerfile", operator),
        )
        if _build(podman, root, dockerfile=dockerfile, tag=tag, base=base, timeout=timeout)
    )
    return Built(podman, base, api, operator, time.monotonic() - started, rebuilt)


def image_size(podman: Podman, name: str) -> int:
    """The image's size in bytes, as podman reports it (all layers, uncompressed)."""
    return int(podman.run("image", "inspect", "--format", "{{.Size}}", name, timeout=60).strip())


# -- locks


def lock_files(root: Path) -> dict[str, Path]:
    folder = root / "requirements"
    return {
        "service": folder / "service.lock",
        "operator": folder / "operator.lock",
        "build": folder / "build.lock",
    }


def _build_requirements(root: Path) -> list[str]:
    """What the images need to build the two wheels: both build-system requirements, and pip
    itself, so the build runs the same pip whatever the base brings."""
    wanted = ["pip"]
    for pyproject in (root / "pyproject.toml", root / "operator" / "pyproject.toml"):
        for requirement in tomllib.loads(pyproject.read_text())["build-system"]["requires"]:
            if requirement not in wanted:
                wanted.append(requirement)
    return wanted


def lock(root: Path, *, timeout: float = 600.0) -> list[Path]:
    """Regenerate requirements/*.lock from the pyproject files: every package pinned, with the
    hashes of every file of that release (`pip install --require-hashes` in the images)."""
    uv = Path(sys.executable).with_name("uv")
    if not uv.is_file():
        found = find_binary("uv")
        if found is None:
            raise StackError("uv is not installed (it comes with the dev install: make venv)")
        uv = Path(found)
    files = lock_files(root)
    files["service"].parent.mkdir(parents=True, exist_ok=True)
    common = ["pip", "compile", "--quiet", "--generate-hashes", "--no-strip-extras",
              "--python-version", LOCK_PYTHON, "--python-platform", LOCK_PLATFORM,
              "--custom-compile-command", "make lock"]  # fmt: skip
    inputs = {
        "service": root / "pyproject.toml",
        "operator": root / "operator" / "pyproject.toml",
    }
    with tempfile.TemporaryDirectory() as tmp:
        build_in = Path(tmp) / "build-requirements.txt"
        build_in.write_text("\n".join(_build_requirements(root)) + "\n")
        inputs["build"] = build_in
        for key, source in inputs.items():
            # The build lock's input is a temporary file: naming it in the lock would only
            # add a path that changes with every run.
            annotate = ["--no-annotate"] if key == "build" else []
            run_bounded(
                [str(uv), *common, *annotate, str(source), "--output-file", str(files[key])],
                timeout=timeout,
                cwd=root,
                what=f"uv pip compile of {files[key].name}",
            )
    return list(files.values())


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skillcoach_devstack.images")
    parser.add_argument("command", choices=["build", "base", "sizes", "lock"])
    parser.add_argument("--root", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    try:
        if args.command == "lock":
            for path in lock(root):
                print(f"images: wrote {path.relative_to(root)}")
            return 0
        if args.command == "base":
            podman = ensure_podman(root)
            print(f"images: base {ensure_base(podman, root)}")
            return 0
        if args.command == "build":
            built = build_images(root)
            podman = built.podman
            fresh = ", ".join(built.rebuilt) or "none (all up to date)"
            print(f"images: ready in {built.seconds:.0f}s; built: {fresh}")
        else:
            podman = ensure_podman(root)
        names = [base_image_name(), *image_names(root)]
        for name in names:
            size = _mb(image_size(podman, name)) if podman.image_exists(name) else "(not built)"
            print(f"images: {name} {size}")
        print(f"images: CONTAINERS_CONF={podman.conf} podman ... to use them by hand")
    except StackError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
