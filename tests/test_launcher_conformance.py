"""Hydra's own launcher conformance suites (hydra.test_utils.launcher_common_tests), the ones Hydra's
joblib, submitit and Ray launchers pass, run against the `parallel` launcher."""

from __future__ import annotations

import pytest
from hydra.core.singleton import Singleton
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

# each case starts the launcher's worker processes; the integration cases also run Hydra apps as scripts
pytestmark = pytest.mark.e2e
# the suites compose Hydra's own test configs, not conf/: the launcher's schema from the ConfigStore
LAUNCHER = "runner_parallel"


@pytest.fixture(autouse=True)
def fresh_hydra_version_base():
    """The suites' apps say `version_base=None` (a job runs in its own folder): start each case with the
    version base unset, as in a fresh process, not with the 1.3 an earlier test's compose left behind."""
    from hydra.version import VersionBase

    state = Singleton.get_state()
    Singleton._instances.pop(VersionBase, None)
    yield
    Singleton.set_state(state)


@pytest.mark.parametrize("launcher_name, overrides", [(LAUNCHER, [])])
class TestParallelLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides",
                         [(LAUNCHER, ["hydra/sweeper=basic", "hydra.sweeper.max_batch_size=2"])])
class TestParallelLauncherBatched(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [({}, ["-m", f"hydra/launcher={LAUNCHER}"])])
class TestParallelLauncherIntegration(IntegrationTestSuite):
    pass
