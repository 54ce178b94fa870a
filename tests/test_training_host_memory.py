"""mp_hub.training.keep_freed_memory: glibc's malloc keeps what a training step frees, so the next step takes no
page faults; and where the user's GLIBC_TUNABLES or another C library rule, nothing is changed."""

import platform
import subprocess
import sys
import textwrap

import pytest

from mp_hub.training import host_memory, keep_freed_memory

GLIBC = platform.libc_ver()[0] == "glibc"

# Page faults over five forward-backward passes of a small conv net at batch 32 (activations of 2 MiB each), in a
# fresh process (the setting is process-wide), before and after the call.
FAULTS = textwrap.dedent("""
    import resource
    import torch
    from mp_hub.training import keep_freed_memory
    torch.set_num_threads(1)
    net = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                                                    torch.nn.ReLU()) for _ in range(4)])
    x = torch.randn(32, 16, 32, 32)

    def faults():
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            net(x).sum().backward()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    faults()
    before = faults()
    took = keep_freed_memory()
    faults()
    print(took, before, faults())
""")


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's; elsewhere keep_freed_memory changes nothing")
def test_freed_activations_are_reused_without_page_faults():
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}  # no GLIBC_TUNABLES of the caller's
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    took, before, after = out.stdout.split()
    assert took == "True"
    assert int(before) > 2000, "glibc's defaults should page-fault freed activations in again"
    assert int(after) * 4 < int(before), (before, after)


def test_the_users_malloc_tunables_stand(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: pytest.fail("mallopt must not be called"))
    assert keep_freed_memory() is False


def test_another_c_library_is_left_alone(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("musl", "1.2"))
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: pytest.fail("mallopt must not be called"))
    assert keep_freed_memory() is False


def test_a_refused_setting_is_reported_not_hidden(monkeypatch, caplog):
    class Libc:
        @staticmethod
        def mallopt(param, value):
            return 0

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: Libc())
    assert keep_freed_memory() is False
    assert "refused" in caplog.text
