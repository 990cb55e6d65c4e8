"""The package as pip sees it: metadata, extras, and what a plain install runs on.

The metadata is read from the installed distribution (what ``pip install``
built from pyproject.toml), so these tests fail if the build backend drops
or rewrites a field.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DIST = "switchboard-runtime"

# What only the extras bring: a plain install must run a node without any of them.
EXTRA_ONLY = (
    "matplotlib",
    "pykka",
    "rich",
    "pytest",
    "hypothesis",
    "ruff",
    "mypy",
    "telegram",
    "discord",
    "textual",
    "picows",
    "uvloop",
)


def _names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name.lower() for r in requirements}


def test_license_is_a_pep639_expression_and_the_package_is_never_uploaded() -> None:
    meta = metadata(DIST)
    assert meta["Metadata-Version"] >= "2.4"
    assert meta["License-Expression"] == "LicenseRef-Proprietary"
    assert not meta.get("License"), "the deprecated License field is still written"
    classifiers = meta.get_all("Classifier") or []
    assert "Private :: Do Not Upload" in classifiers
    # PEP 639: a licence expression and licence classifiers are exclusive.
    assert not [c for c in classifiers if c.startswith("License ::")]


def test_requires_python_agrees_with_classifiers_tools_and_this_interpreter() -> None:
    meta = metadata(DIST)
    spec = SpecifierSet(meta["Requires-Python"])
    assert spec == SpecifierSet(PYPROJECT["project"]["requires-python"])
    versions = sorted(
        tuple(int(part) for part in m.group(1).split("."))
        for c in meta.get_all("Classifier") or []
        if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))
    )
    assert versions, "no Python version classifiers"
    lowest = ".".join(map(str, versions[0]))
    # The lowest version named is the lowest allowed, and the one below is refused.
    assert spec.contains(lowest) and not spec.contains(f"3.{versions[0][1] - 1}")
    assert all(spec.contains(".".join(map(str, v))) for v in versions)
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + lowest.replace(".", "")
    assert PYPROJECT["tool"]["mypy"]["python_version"] == lowest
    assert spec.contains(".".join(map(str, sys.version_info[:3])))


def test_test_extra_includes_bench_and_dev_tools_are_their_own_extra() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    test = [Requirement(r) for r in extras["test"]]
    assert any(r.name == DIST and r.extras == {"bench"} for r in test)
    # Nothing of [bench] is repeated in [test]: it comes in through the self-reference.
    assert not _names(extras["bench"]) & {r.name.lower() for r in test if r.name != DIST}
    dev = [Requirement(r) for r in extras["dev"]]
    assert any(r.name == DIST and r.extras == {"test"} for r in dev)
    assert {"ruff", "mypy"} <= {r.name for r in dev}
    assert not {"ruff", "mypy"} & _names(extras["test"])
    core = _names(PYPROJECT["project"]["dependencies"])
    assert not core & {name.replace("telegram", "python-telegram-bot") for name in EXTRA_ONLY}


def test_readme_quick_start_installs_no_extra() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", quick, re.S)[0].splitlines()
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -e .",
        ".venv/bin/switchboard run config/local.toml",
    ]
    tests = readme.split("## Run the tests", 1)[1].split("\n## ", 1)[0]
    ci_lines = {
        line.strip().replace(" --quiet", "")
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    }
    # .ci/run runs the README's set-up, test command and contributor checks.
    for block in re.findall(r"```sh\n(.*?)```", tests, re.S):
        for line in block.splitlines():
            for command in line.split(" && "):
                assert command in ci_lines or f"{command} || checks_failed=1" in ci_lines, command


def test_a_node_runs_without_any_extra_installed() -> None:
    # The check and run paths, imported with every extra-only package made unimportable.
    blocked = ", ".join(repr(name) for name in EXTRA_ONLY)
    script = f"""
import sys
for name in ({blocked}):
    sys.modules[name] = None  # import raises ImportError
import runtime.cli, runtime.run, runtime.node, runtime.ops.app, runtime.telemetry
from runtime.cli import main
sys.exit(main(["check", "config/local.toml"]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "config/local.toml: ok" in result.stdout
