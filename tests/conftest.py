"""Shared fixtures: real PS processes on loopback, stopped after each test even when it fails."""

from __future__ import annotations

import pytest

from seraphim.scheduler.local_cluster import LocalCluster, PSProcessSpec


@pytest.fixture
def cluster_factory(tmp_path):
    """Start LocalClusters on demand; every one started is stopped at teardown."""
    started: list[LocalCluster] = []

    def make(name: str = "cluster", **spec) -> LocalCluster:
        cluster = LocalCluster(tmp_path / name, PSProcessSpec(**spec))
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()


@pytest.fixture
def two_ps(cluster_factory):
    return cluster_factory(num_ps=2, num_workers=1, ram_mb=8, page_kb=64)
