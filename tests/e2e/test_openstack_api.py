"""OpenStack provider against a real Nova/Glance/Keystone (openstack-lite, fake compute driver).

The first tests are pure (server → replica rules); the rest create real servers through the real APIs.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openstack_testcloud import (
    FAKE_DRIVER,
    CloudUnderTest,
    cloud_under_test,
    ensure_compute_driver,
    huge_flavor,
    member_project,
    sweep_session_servers,
)
from tierscale.config import load_config_text, validate_file
from tierscale.providers import ProviderError, make_provider
from tierscale.providers.openstack import OpenstackProvider
from tierscale.providers.openstack_servers import (
    cpu_seconds,
    created_at,
    fault_message,
    owned_by,
    parse_time,
    pick_address,
    replica_state,
)

# openstacksdk announces its own future API changes on every call; they are not ours to act on.
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

# ---- pure rules ------------------------------------------------------------------------------------


def test_ownership_needs_both_marks_of_this_group() -> None:
    assert owned_by({"tierscale_group": "web", "tierscale_replica": "r-1"}, "web") == "r-1"
    assert owned_by({"tierscale_group": "web2", "tierscale_replica": "r-1"}, "web") is None
    assert owned_by({"tierscale_group": "web"}, "web") is None
    assert owned_by({}, "web") is None
    assert owned_by(None, "web") is None


def test_state_mapping() -> None:
    assert replica_state("ACTIVE", None, 5, 300) == "running"
    assert replica_state("HARD_REBOOT", "rebooting_hard", 5, 300) == "running"
    assert replica_state("BUILD", "spawning", 5, 300) == "provisioning"
    assert replica_state("BUILD", "spawning", 301, 300) == "failed"  # its creator gave up on it
    assert replica_state("ERROR", None, 5, 300) == "failed"
    assert replica_state("SHUTOFF", None, 5, 300) == "failed"
    assert replica_state("ACTIVE", "deleting", 5, 300) is None
    assert replica_state("SOFT_DELETED", None, 5, 300) is None


def test_address_prefers_floating_then_ipv4_on_the_configured_network() -> None:
    addresses = {
        "other": [{"addr": "192.0.2.9", "version": 4, "OS-EXT-IPS:type": "fixed"}],
        "test": [
            {"addr": "2001:db8::5", "version": 6, "OS-EXT-IPS:type": "fixed"},
            {"addr": "10.0.0.5", "version": 4, "OS-EXT-IPS:type": "fixed"},
            {"addr": "203.0.113.7", "version": 4, "OS-EXT-IPS:type": "floating"},
        ],
    }
    assert pick_address(addresses, "test", 5000) == "203.0.113.7:5000"
    assert pick_address({"test": addresses["test"][:2]}, "test", 80) == "10.0.0.5:80"
    assert pick_address({"test": addresses["test"][:1]}, "test", 80) == "[2001:db8::5]:80"
    assert pick_address(addresses, "missing", 80) is None
    assert pick_address(addresses, None, 80) == "192.0.2.9:80"  # no network configured: the first one
    assert pick_address({}, None, 80) is None  # networks: none


def test_fault_time_and_cpu_parsing() -> None:
    assert (
        fault_message({"code": 500, "message": "No valid host was found. \nmore"})
        == "No valid host was found."
    )
    assert fault_message(None) == "no fault recorded by Nova"
    assert parse_time("2026-11-27T19:25:13Z") == pytest.approx(1795807513.0)
    assert created_at({"tierscale_created_at": "12.5"}, "2026-11-27T19:25:13Z", 0) == 12.5
    assert created_at({}, "2026-11-27T19:25:13Z", 0) == pytest.approx(1795807513.0)
    assert created_at({}, None, 7.0) == 7.0
    assert cpu_seconds([{"id": 0, "time": 1_500_000_000}, {"id": 1, "time": 500_000_000}]) == 2.0
    assert cpu_seconds([{"id": 0, "time": None}]) is None


# ---- against the cloud -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud():
    tc = cloud_under_test()
    ensure_compute_driver(tc, FAKE_DRIVER)
    yield tc
    sweep_session_servers()


def group_config(
    tc: CloudUnderTest, name: str, template_extra: str = "", cloud: str | None = None, metrics=""
):
    text = f"""\
groups:
  - name: {name}
    tier: openstack
    max: 3
    template: {{cloud: {cloud or tc.name}, image: {tc.image}, flavor: {tc.flavor}, networks: none
                {template_extra}}}
    health: {{type: console, console_marker: {tc.marker!r}}}
    balancer: {{type: none}}
{metrics}"""
    return load_config_text(text, "test.yaml").groups[0]


def provider_for(tc: CloudUnderTest, name: str, **kw) -> OpenstackProvider:
    p = make_provider(group_config(tc, name, **kw), Path("/nonexistent"))
    assert isinstance(p, OpenstackProvider)
    return p


def test_create_list_console_stats_delete_round_trip(cloud: CloudUnderTest) -> None:
    name = cloud.group_name("rt")
    p = provider_for(
        cloud,
        name,
        template_extra=', user_data: "#cloud-config\\n"',
        metrics="    metrics: [{type: cpu, target: 50}]",
    )
    try:
        r = p.create("r-1")
        assert r.state == "running" and r.address is None  # networks: none → nothing to route to
        (server,) = cloud.servers(group=name)
        assert server.name == f"{name}-r-1"
        assert server.metadata["tierscale_group"] == name and server.metadata["tierscale_replica"] == "r-1"
        assert server.status == "ACTIVE" and server.id == r.detail["server_id"]
        assert base64.b64decode(server.user_data).decode() == "#cloud-config\n"
        # A provider built afresh (a restarted controller) finds the same replica from Nova alone.
        fresh = provider_for(cloud, name)
        (listed,) = fresh.list()
        assert (listed.id, listed.detail["server_id"], listed.state) == ("r-1", server.id, "running")
        assert listed.created_at == pytest.approx(r.created_at, abs=0.01)
        assert cloud.marker in p.console_output(listed)
        # CPU needs two diagnostics samples; the admin test cloud allows diagnostics.
        p.stats([listed])
        time.sleep(0.5)
        st = p.stats([listed])["r-1"]
        assert st.cpu_percent is not None and st.cpu_percent >= 0 and st.cpu_allotment_milli == 1000
        p.delete(listed, 5.0)
        assert cloud.servers(group=name) == [] and p.list() == []
    finally:
        cloud.cleanup_group(name)
        p.close()


def test_servers_without_our_marks_are_never_listed(cloud: CloudUnderTest) -> None:
    name = cloud.group_name("foreign")
    image = cloud.conn.image.find_image(cloud.image, ignore_missing=False)
    flavor = cloud.conn.compute.find_flavor(cloud.flavor, ignore_missing=False)
    made = []
    try:
        for server_name, md in (
            (f"{name}-r-hand", {}),  # our naming scheme, but no marks: hand-made
            (f"{name}-r-other", {"tierscale_group": f"{name}x", "tierscale_replica": "r-other"}),
        ):
            made.append(
                cloud.conn.compute.create_server(
                    name=server_name, image_id=image.id, flavor_id=flavor.id, networks="none", metadata=md
                )
            )
        assert provider_for(cloud, name).list() == []
    finally:
        cloud.delete_servers(made)


def test_missing_image_or_flavor_is_a_clear_error_and_creates_nothing(cloud: CloudUnderTest) -> None:
    name = cloud.group_name("missing")
    p = provider_for(cloud, name, template_extra="")
    p.t = p.t.model_copy(update={"image": "no-such-image"})
    with pytest.raises(ProviderError, match=r"template.image: image 'no-such-image' not found in cloud"):
        p.create("r-1")
    p = provider_for(cloud, name)
    p.t = p.t.model_copy(update={"flavor": "no-such-flavor"})
    with pytest.raises(ProviderError, match=r"template.flavor: flavor 'no-such-flavor' not found"):
        p.create("r-1")
    p = provider_for(cloud, name)
    p.t = p.t.model_copy(update={"network": "no-such-network", "networks": None})
    with pytest.raises(ProviderError, match=r"template.network: network 'no-such-network' not found"):
        p.create("r-1")
    assert cloud.servers(group=name) == []


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "examples" / "openstack.yaml"
    assert validate_file(example) == []


def test_bad_cloud_name_fails_at_start_with_one_line(cloud: CloudUnderTest, tmp_path: Path) -> None:
    name = cloud.group_name("badcloud")
    with pytest.raises(ProviderError, match=r"template.cloud: cloud 'no-such-cloud' is not in clouds.yaml"):
        provider_for(cloud, name, cloud="no-such-cloud")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"groups:\n  - name: {name}\n    tier: openstack\n    max: 2\n"
        f"    template: {{cloud: no-such-cloud, image: {cloud.image}, flavor: {cloud.flavor},\n"
        "                networks: none}\n"
        "    balancer: {type: none}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "tierscale", "run", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert "cloud 'no-such-cloud' is not in clouds.yaml" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert cloud.servers(group=name) == []


def test_no_valid_host_is_deleted_and_reported_with_novas_fault(cloud: CloudUnderTest) -> None:
    name = cloud.group_name("novalid")
    gen = huge_flavor(cloud)
    flavor = next(gen)
    try:
        p = provider_for(cloud, name)
        p.t = p.t.model_copy(update={"flavor": flavor})
        with pytest.raises(ProviderError) as err:
            p.create("r-1")
        assert "went to ERROR: No valid host was found" in str(err.value)
        assert "deleted it" in str(err.value)
        assert cloud.servers(group=name) == []  # the ERROR server did not stay behind
    finally:
        cloud.cleanup_group(name)
        gen.close()


def test_wrong_credentials_quota_and_member_diagnostics(cloud: CloudUnderTest, monkeypatch) -> None:
    """A member of its own project with room for one server: what a non-admin tenant sees."""
    gen = member_project(cloud, instances_quota=1)
    member = next(gen)
    name = cloud.group_name("member")
    try:
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(member.clouds_file))
        wrong = provider_for(cloud, name, cloud=member.bad_password_cloud)
        for call in (wrong.list, lambda: wrong.create("r-0")):
            with pytest.raises(ProviderError, match=r"authentication failed for cloud 'member-wrong'"):
                call()
        ok = provider_for(cloud, name, cloud=member.cloud, metrics="    metrics: [{type: cpu, target: 50}]")
        first = ok.create("r-1")
        with pytest.raises(ProviderError, match=r"quota exceeded: Quota exceeded for instances"):
            ok.create("r-2")
        servers = [
            s
            for s in cloud.conn.compute.servers(details=True, all_projects=True)
            if s.project_id == member.project_id
        ]
        assert [s.name for s in servers] == [f"{name}-r-1"]  # nothing half-made by the refused create
        # Diagnostics are admin-only by default: one clear error, then no more calls for a while.
        with pytest.raises(ProviderError, match=r"admin-only on this cloud.*requests_per_replica"):
            ok.stats([first])
        calls = ok.api_calls
        assert ok.stats([first]) == {} and ok.api_calls == calls
        assert cloud.marker in ok.console_output(first)  # members may read their console
        ok.delete(first, 5.0)
        assert ok.list() == []
    finally:
        gen.close()  # deletes the member project and user
