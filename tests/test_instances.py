"""Server instance rows: heartbeat, reaping silent instances and dead predecessors, retirement."""

import os
from datetime import timedelta

import pytest
from django.utils import timezone

from sessions_app import instances
from sessions_app.models import LiveSession, ServerInstance
from sessions_app.process import process_state

from .servers import dead_pid

pytestmark = pytest.mark.django_db(transaction=True)

HOST = process_state().identity.host  # this machine: where predecessors are looked for


def test_heartbeat_refreshes_this_instance(fresh_process):
    boot_id = instances.instance_register_sync()
    old = timezone.now() - timedelta(minutes=5)
    ServerInstance.objects.filter(pk=boot_id).update(heartbeat_at=old)
    assert instances.instance_heartbeat_sync() is True
    assert ServerInstance.objects.get(pk=boot_id).heartbeat_at > old


def test_heartbeat_registers_again_after_being_reaped(fresh_process):
    boot_id = instances.instance_register_sync()
    ServerInstance.objects.all().delete()
    assert instances.instance_heartbeat_sync() is False
    assert ServerInstance.objects.filter(pk=boot_id).exists()


def test_reap_removes_silent_instances_and_their_sessions_and_returns_the_count(fresh_process, instance_with_sessions):
    silent, _ = instance_with_sessions(sessions=3, age=60)
    fresh, _ = instance_with_sessions(sessions=2, age=0)
    assert instances.sessions_reap_sync(timeout=30) == 3
    assert list(ServerInstance.objects.values_list("pk", flat=True)) == [fresh.pk]
    assert not LiveSession.objects.filter(instance_id=silent.pk).exists()
    assert LiveSession.objects.filter(instance=fresh).count() == 2


def test_reap_defaults_to_the_instance_timeout_setting(fresh_process, settings, instance_with_sessions):
    settings.WSS_INSTANCE_TIMEOUT_SECONDS = 100
    instance_with_sessions(sessions=1, age=60)
    assert instances.sessions_reap_sync() == 0
    settings.WSS_INSTANCE_TIMEOUT_SECONDS = 50
    assert instances.sessions_reap_sync() == 1


def test_reap_goes_by_the_timeout_it_is_given(fresh_process, instance_with_sessions):
    instance_with_sessions(sessions=1, age=60)  # beyond the default timeout, within the one given
    assert instances.sessions_reap_sync(timeout=100) == 0
    assert instances.sessions_reap_sync(timeout=50) == 1


def test_reap_with_nothing_dead_removes_nothing(fresh_process, instance_with_sessions):
    instance_with_sessions(sessions=2, age=1)
    assert instances.sessions_reap_sync(timeout=30) == 0
    assert LiveSession.objects.count() == 2


def test_predecessors_on_this_host_whose_pid_is_gone_are_reaped_at_once(fresh_process, instance_with_sessions):
    gone, _ = instance_with_sessions(sessions=4, host=HOST, pid=dead_pid())
    assert instances.instance_predecessors_reap_sync() == 4
    assert not ServerInstance.objects.filter(pk=gone.pk).exists()


def test_a_predecessor_holding_this_very_pid_is_reaped(fresh_process, instance_with_sessions):
    instance_with_sessions(sessions=1, host=HOST, pid=os.getpid())
    assert instances.instance_predecessors_reap_sync() == 1


def test_predecessor_reap_spares_running_pids_other_hosts_and_itself(fresh_process, instance_with_sessions):
    instances.instance_register_sync()
    running, _ = instance_with_sessions(sessions=1, host=HOST, pid=os.getppid())
    other_host, _ = instance_with_sessions(sessions=1, host="elsewhere", pid=dead_pid())
    assert instances.instance_predecessors_reap_sync() == 0
    assert set(ServerInstance.objects.values_list("pk", flat=True)) == {
        process_state().identity.boot_id,
        running.pk,
        other_host.pk,
    }


def test_retire_removes_this_instance_with_its_sessions_and_leaves_others(fresh_process, instance_with_sessions):
    instances.instance_register_sync()
    LiveSession.objects.create(workspace_dir="/tmp", channel_name="x", instance_id=process_state().identity.boot_id)
    other, _ = instance_with_sessions(sessions=1)
    assert instances.instance_retire_sync() == 1
    assert list(ServerInstance.objects.values_list("pk", flat=True)) == [other.pk]
