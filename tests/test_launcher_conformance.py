"""Hydra's own launcher conformance suites (hydra.test_utils.launcher_common_tests), the ones Hydra's
joblib, submitit and Ray launchers pass, run against the `parallel` launcher."""

from __future__ import annotations

import pytest
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

# each case starts the launcher's worker processes; the integration cases also run Hydra apps as scripts
pytestmark = pytest.mark.e2e
# the suites compose Hydra's own test configs, not conf/: the launcher's schema from the ConfigStore
LAUNCHER = "runner_parallel"


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
