"""Each package's ``__all__`` is exactly its public face (anyio's test_all_attributes)."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = ["actors", "supervisors", "providers", "runtime", "runtime.console"]


@pytest.mark.parametrize("package", PACKAGES)
def test_all_lists_exactly_the_public_names(package: str) -> None:
    module = importlib.import_module(package)
    declared = list(module.__all__)
    assert len(declared) == len(set(declared)), f"{package}.__all__ has duplicates"
    missing = [name for name in declared if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names what it does not export: {missing}"
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(declared), (
        f"{package}: exported but not in __all__: {sorted(public - set(declared))}; "
        f"in __all__ but not exported: {sorted(set(declared) - public)}"
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_have_docstrings(package: str) -> None:
    module = importlib.import_module(package)
    undocumented = [
        name
        for name in module.__all__
        if isinstance(getattr(module, name), type | types.FunctionType)
        and not (getattr(module, name).__doc__ or "").strip()
    ]
    assert not undocumented, f"{package}: public names without a docstring: {undocumented}"


def test_error_trees_have_one_root_each() -> None:
    import actors
    import runtime
    import supervisors

    for package, root in (
        (actors, actors.ActorError),
        (supervisors, supervisors.SupervisorError),
        (runtime, runtime.NodeError),
    ):
        errors = [
            getattr(package, name)
            for name in package.__all__
            if isinstance(getattr(package, name), type)
            and issubclass(getattr(package, name), BaseException)
        ]
        assert errors and all(issubclass(e, root) for e in errors), package.__name__
