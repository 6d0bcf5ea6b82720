"""`procenv.raise_threads`: every thread of the process, not only the one that asks (Linux
keeps a nice value per thread, and `setpriority(PRIO_PROCESS, 0)` changes the caller's)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import os, threading
from wholecall.controller.procenv import raise_threads
started, done = threading.Event(), threading.Event()
t = threading.Thread(target=lambda: (started.set(), done.wait()))
t.start(); started.wait()
n = raise_threads(3)
nices = sorted(int(open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()[16])
               for tid in os.listdir("/proc/self/task"))
later = []
u = threading.Thread(target=lambda: later.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
u.start(); u.join(); done.set(); t.join()
print(n, nices, later)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="raising priority needs CAP_SYS_NICE")
def test_every_thread_is_raised_and_new_ones_inherit_it():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    n, rest = out.split(maxsplit=1)
    nices, later = rest.rsplit("[", 1)
    nices = [int(x) for x in nices.strip(" []\n").split(",")]
    assert int(n) == len(nices) >= 2  # the main thread, ours, and any a library started (BLAS)
    assert set(nices) == {-3}
    assert later.strip() == "-3]"  # a thread made afterwards inherits its creator's
