"""torch's thread count: every core this process may use, unless the environment says."""

from __future__ import annotations

import os

import torch

from workbench import cpu


def test_available_cpus_respects_the_affinity_mask():
    assert 1 <= cpu.available_cpus() <= len(os.sched_getaffinity(0))


def test_the_environment_wins_over_the_core_count(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("WORKBENCH_THREADS", "1")
        assert cpu.use_available_cpus() == 1
        monkeypatch.delenv("WORKBENCH_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert cpu.use_available_cpus() == 1  # left as the user set it
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert cpu.use_available_cpus() == cpu.available_cpus()
    finally:
        torch.set_num_threads(before)


def test_a_cgroup_quota_caps_the_count(monkeypatch, tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # one and a half cores
    real_path = cpu.Path
    monkeypatch.setattr(
        cpu, "Path", lambda p: quota if p == "/sys/fs/cgroup/cpu.max" else real_path(p)
    )
    assert cpu.available_cpus() == min(2, len(os.sched_getaffinity(0)))
