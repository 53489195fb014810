"""One fault-free tiny simulation per test session, read back into frames."""

from __future__ import annotations

import pytest

from tests.features.simdata import read_frames, simulate

SIM_DAYS = 130  # business days: enough for 90-day loans to mature (term + 30 days grace)


@pytest.fixture(scope="session")
def sim_world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features-sim")
    sim = simulate(folder, scale="tiny", days=SIM_DAYS, seed=11)
    frames = read_frames(folder)
    yield sim, frames
    sim.dispose()


@pytest.fixture(scope="session")
def frames(sim_world):
    return sim_world[1]


@pytest.fixture(scope="session")
def sim(sim_world):
    return sim_world[0]
