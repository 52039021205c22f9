"""Shared test fixtures.

- Under ``CI`` (the CI machine sets CI=true) hypothesis runs derandomized, so a CI run is reproducible.
- ``tests/`` is on ``sys.path`` so that test modules import their helpers (``analysis_cohort``) by name.
- ``simulated(**kwargs)``: a simulated experiment (``bat_analysis.simulate.simulate_experiment``) in a temporary
  folder, written once per test session for each set of parameters. The folder is shared: a test that damages
  files copies them first.
- ``experiment``: the simulated experiment of the requesting test module, whose parameters are the module's
  ``SIMULATION`` mapping (the keyword arguments of ``simulate_experiment``), for example::

      SIMULATION = {"n_patients": 1, "n_events": 6000, "seed": 8, "n_concentrations": 4}

- ``stored_run``: a ``bat run`` of the module's ``experiment`` without reports (one worker), made once per module;
  ``run_copy``: a fresh copy of it for a test that changes the folder.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# CI runs the property tests with a fixed seed (a CI verdict must not depend on the draw); elsewhere hypothesis
# draws new examples every run, and a failure it finds is reported with the example to reproduce it.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # pytest's default import mode does this too; be explicit for the others
    sys.path.insert(0, str(TESTS_DIR))


def _key(kwargs: dict[str, Any]) -> str:
    return repr(sorted(kwargs.items()))


@pytest.fixture(scope="session")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """A factory: ``simulated(**simulate_experiment_kwargs)`` → ``SimulatedExperiment``, cached per parameters."""
    cache: dict[str, Any] = {}

    def make(**kwargs: Any) -> Any:
        key = _key(kwargs)
        if key not in cache:
            from bat_analysis.simulate import simulate_experiment

            cache[key] = simulate_experiment(tmp_path_factory.mktemp("simulated"), **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="module")
def experiment(request: pytest.FixtureRequest, simulated: Callable[..., Any]) -> Any:
    """The simulated experiment described by the requesting module's ``SIMULATION`` mapping."""
    params = getattr(request.module, "SIMULATION", None)
    if not isinstance(params, dict):
        raise pytest.UsageError(f"{request.module.__name__} uses the 'experiment' fixture but defines no "
                                "SIMULATION mapping (the keyword arguments of simulate_experiment)")
    return simulated(**params)


@pytest.fixture(scope="module")
def stored_run(experiment: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The results folder of a run of the module's experiment (no reports), shared by the module's tests."""
    from bat_analysis.pipeline import RunOptions, run

    out = tmp_path_factory.mktemp("stored_run")
    run(RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=out, workers=1, quiet=True,
                   reports=False))
    return out


@pytest.fixture
def run_copy(stored_run: Path, tmp_path: Path) -> Path:
    """A copy of ``stored_run`` that the test may change."""
    dest = tmp_path / "out"
    shutil.copytree(stored_run, dest)
    return dest
