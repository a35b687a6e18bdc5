"""OpenStack provider against a real Nova/Glance/Keystone (openstack-lite, fake compute driver): real
servers through the real APIs. (The pure server → replica rules are in tests/unit/test_openstack_rules.py.)
"""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers.openstack_testcloud import (
    FAKE_DRIVER,
    CloudUnderTest,
    cloud_under_test,
    ensure_compute_driver,
    huge_flavor,
    member_project,
    sweep_session_servers,
)
from tierscale.config import load_config_text
from tierscale.config.revision import template_revision
from tierscale.providers import (
    Capability,
    CreateRejected,
    Listing,
    ProviderError,
    Replica,
    TemplateError,
    TierUnavailable,
    make_provider,
)
from tierscale.providers.openstack import OpenstackData, OpenstackProvider

# openstacksdk announces its own future API changes on every call; they are not ours to act on.
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

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
    group = group_config(tc, name, **kw)
    p = make_provider(group, Path("/nonexistent"))
    assert isinstance(p, OpenstackProvider)
    assert p.revision == template_revision(group.template)
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
        assert Capability.CONSOLE in p.capabilities
        r = p.create("r-1")
        assert r.state == "running" and r.address is None  # networks: none → nothing to route to
        (server,) = cloud.servers(group=name)
        assert server.name == f"{name}-r-1"
        assert server.metadata["tierscale_group"] == name and server.metadata["tierscale_replica"] == "r-1"
        assert server.metadata["tierscale_revision"] == p.revision == r.revision
        assert server.status == "ACTIVE" and server.id == r.ref
        # The admin test cloud shows the compute host; other clouds' replicas carry the cloud's name.
        assert r.host and r.host in (server.compute_host, cloud.name)
        assert isinstance(r.tier_data, OpenstackData) and r.tier_data.name == server.name
        assert base64.b64decode(server.user_data).decode() == "#cloud-config\n"
        # A provider built afresh (a restarted controller, here from a changed template: another revision)
        # finds the same replica from Nova alone, with the revision it was made from.
        fresh = provider_for(cloud, name, template_extra=', user_data: "#cloud-config\n# v2\n"')
        assert fresh.revision != p.revision
        listed_all = fresh.list()
        assert isinstance(listed_all, Listing) and not listed_all.unreachable
        (listed,) = listed_all
        assert (listed.id, listed.ref, listed.state) == ("r-1", server.id, "running")
        assert (listed.revision, listed.host) == (p.revision, r.host)
        assert listed.created_at == pytest.approx(r.created_at, abs=0.01)
        assert cloud.marker in p.console_output(listed)
        # CPU needs two diagnostics samples; the admin test cloud allows diagnostics.
        p.stats([listed])
        time.sleep(0.5)
        st = p.stats([listed])["r-1"]
        assert st.cpu_percent is not None and st.cpu_percent >= 0 and st.cpu_allotment_milli == 1000
        p.delete(listed, 5.0)
        assert cloud.servers(group=name) == [] and p.list() == []
        # Already gone: deleting it again, or by its id alone, is not an error.
        p.delete(listed, 5.0)
        p.delete(Replica("r-1", name, None, "running", 0.0), 5.0)
    finally:
        cloud.cleanup_group(name)
        p.close()


def test_a_server_from_before_revisions_lists_with_an_empty_revision(cloud: CloudUnderTest) -> None:
    name = cloud.group_name("legacy")
    image = cloud.conn.image.find_image(cloud.image, ignore_missing=False)
    flavor = cloud.conn.compute.find_flavor(cloud.flavor, ignore_missing=False)
    md = {"tierscale_group": name, "tierscale_replica": "r-old"}  # the marks of an older tierscale
    server = cloud.conn.compute.create_server(
        name=f"{name}-r-old", image_id=image.id, flavor_id=flavor.id, networks="none", metadata=md
    )
    p = provider_for(cloud, name)
    try:
        cloud.conn.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"], interval=0.5)
        (old,) = p.list()
        assert (old.id, old.ref, old.revision) == ("r-old", server.id, "")
        p.delete(old, 5.0)
        assert cloud.servers(group=name) == []
    finally:
        cloud.delete_servers([server])
        p.close()


def test_an_unreachable_cloud_is_tier_unavailable(tmp_path: Path, monkeypatch) -> None:
    # A cloud whose Keystone is a closed loopback port: nothing answers.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    auth = {
        "auth_url": f"http://127.0.0.1:{port}/v3",
        "username": "u",
        "password": "p",
        "project_name": "p",
        "user_domain_name": "Default",
        "project_domain_name": "Default",
    }
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump({"clouds": {"dead": {"auth": auth, "identity_api_version": 3}}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    text = (
        "groups:\n  - name: dead\n    tier: openstack\n    max: 1\n"
        "    template: {cloud: dead, image: i, flavor: f, networks: none}\n    balancer: {type: none}\n"
    )
    p = make_provider(load_config_text(text, "t.yaml").groups[0], tmp_path)
    for call in (p.list, lambda: p.create("r-1")):
        with pytest.raises(TierUnavailable, match="cannot reach cloud 'dead'"):
            call()
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
    with pytest.raises(TemplateError, match=r"template.image: image 'no-such-image' not found in cloud"):
        p.create("r-1")
    p = provider_for(cloud, name)
    p.t = p.t.model_copy(update={"flavor": "no-such-flavor"})
    with pytest.raises(TemplateError, match=r"template.flavor: flavor 'no-such-flavor' not found"):
        p.create("r-1")
    p = provider_for(cloud, name)
    p.t = p.t.model_copy(update={"network": "no-such-network", "networks": None})
    with pytest.raises(TemplateError, match=r"template.network: network 'no-such-network' not found"):
        p.create("r-1")
    assert cloud.servers(group=name) == []


def test_bad_cloud_name_fails_at_start_with_one_line(cloud: CloudUnderTest, tmp_path: Path) -> None:
    name = cloud.group_name("badcloud")
    with pytest.raises(TemplateError, match=r"template.cloud: cloud 'no-such-cloud' is not in clouds.yaml"):
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
        with pytest.raises(CreateRejected) as err:
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
            with pytest.raises(TierUnavailable, match=r"authentication failed for cloud 'member-wrong'"):
                call()
        ok = provider_for(cloud, name, cloud=member.cloud, metrics="    metrics: [{type: cpu, target: 50}]")
        first = ok.create("r-1")
        # Told from Nova's HTTP status (403 to a create), not from its words; the words are Nova's own.
        quota = r"create server .*: Quota exceeded for instances.*\(HTTP 403\)"
        with pytest.raises(CreateRejected, match=quota):
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
