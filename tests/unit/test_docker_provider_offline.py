"""The Docker provider without an engine: how a container listing becomes a replica, and the example
config. (Against the real engine: tests/e2e/test_docker_provider.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import REPO
from tierscale.config import load_config_text
from tierscale.config.revision import template_revision
from tierscale.providers import make_provider
from tierscale.providers.base import TierUnavailable
from tierscale.providers.docker import (
    LABEL_GROUP,
    LABEL_HOST,
    LABEL_REPLICA,
    LABEL_REVISION,
    DockerData,
    DockerProvider,
)
from tierscale.providers.docker_image import DEMO_IMAGE


def test_stuck_created_container_becomes_failed() -> None:
    p = DockerProvider("g", DEMO_IMAGE, revision="r1")
    row = {
        "Id": "abc",
        "Labels": {LABEL_GROUP: "g", LABEL_REPLICA: "r-1", "io.tierscale.created": str(time.time() - 3600)},
        "State": "created",
        "Ports": [],
    }
    r = p._replica(row)
    assert r is not None and r.state == "failed" and r.address is None
    row["Labels"]["io.tierscale.created"] = str(time.time())  # type: ignore[index]
    assert p._replica(row).state == "provisioning"  # type: ignore[union-attr]
    row["Labels"] = {LABEL_GROUP: "g"}
    assert p._replica(row) is None


def test_listing_reads_revision_host_and_tier_data_back_from_the_labels() -> None:
    p = DockerProvider("g", DEMO_IMAGE, revision="current")
    labels = {LABEL_GROUP: "g", LABEL_REPLICA: "r-1", "io.tierscale.cpus": "0.5"}
    row = {"Id": "c0ffee", "Names": ["/tierscale-g-r-1"], "Image": DEMO_IMAGE, "State": "running"}
    row["Ports"] = [{"PrivatePort": 8080, "Type": "tcp", "PublicPort": 32768, "IP": "::1"}]
    old = p._replica({**row, "Labels": labels})  # made before revisions: no such labels
    assert old is not None and (old.revision, old.host, old.ref) == ("", "", "c0ffee")
    assert old.address == "[::1]:32768"
    assert old.tier_data == DockerData("tierscale-g-r-1", DEMO_IMAGE, "running", 0.5)
    new = p._replica({**row, "Labels": {**labels, LABEL_REVISION: "abc", LABEL_HOST: "tcp://e:2375"}})
    assert new is not None and (new.revision, new.host) == ("abc", "tcp://e:2375")


def test_an_engine_socket_that_does_not_exist_is_tier_unavailable(tmp_path: Path) -> None:
    p = DockerProvider("g", DEMO_IMAGE, host=f"unix://{tmp_path}/no-docker.sock", revision="r1")
    with pytest.raises(TierUnavailable, match=r"unreachable at unix://.*no-docker\.sock \(no such file"):
        p.list()
    p.close()


def test_example_config_builds_a_docker_provider() -> None:
    path = REPO / "examples" / "docker.yaml"
    cfg = load_config_text(path.read_text(), str(path))
    p = make_provider(cfg.groups[0], Path("/nonexistent"))
    assert isinstance(p, DockerProvider)
    assert (p.image, p.port, p.cpus, p.memory) == (DEMO_IMAGE, 8080, 0.5, 128 * 1024**2)
    assert p.revision == template_revision(cfg.groups[0].template) and len(p.revision) == 12
    p.close()
