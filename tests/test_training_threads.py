"""mp_hub.training.cpu_thread_hint: a hint exactly when a CPU process computes on fewer threads than its share of
the cores (`accelerate launch` gives a CPU process one thread unless told otherwise)."""

import pytest
import torch

from mp_hub.errors import ConfigError
from mp_hub.training import cpu_thread_hint
from mp_hub.training.threads import usable_cores

CPU = torch.device("cpu")


@pytest.fixture
def threads():
    """Set torch's intra-op threads for one test, and put them back after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_one_thread_of_many_cores_gets_a_hint_naming_the_launch_flag(threads):
    threads(1)
    hint = cpu_thread_hint(CPU, local_processes=1, cores=8)
    assert hint is not None and "1 CPU thread(s) while 8 cores" in hint
    assert "--num_cpu_threads_per_process 8" in hint


def test_no_hint_when_the_threads_fill_the_process_share(threads):
    threads(2)
    assert cpu_thread_hint(CPU, local_processes=1, cores=2) is None
    assert cpu_thread_hint(CPU, local_processes=2, cores=4) is None  # two processes of two threads on four cores
    threads(1)
    assert cpu_thread_hint(CPU, local_processes=2, cores=2) is None  # the meta-training layout: 2 × 1 thread
    assert "2 cores are free" in cpu_thread_hint(CPU, local_processes=2, cores=4)


def test_the_local_processes_default_to_torchruns_local_world_size(threads, monkeypatch):
    threads(1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cpu_thread_hint(CPU, cores=4) is None
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert cpu_thread_hint(CPU, cores=4) is not None
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="LOCAL_WORLD_SIZE must be a whole number of processes, got 'two'"):
        cpu_thread_hint(CPU, cores=4)


def test_no_hint_off_the_cpu(threads):
    threads(1)
    assert cpu_thread_hint(torch.device("cuda"), local_processes=1, cores=64) is None


def test_usable_cores_counts_at_least_one():
    assert usable_cores() >= 1
