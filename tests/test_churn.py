"""The soak (`wholecall stress --churn`): a short real run passes, and its flatness verdict can fail."""

import json
import subprocess
import sys

from wholecall.sim.churn import ChurnConfig, Soak


def test_a_short_soak_replaces_calls_checks_every_file_and_ends_with_nothing_held(tmp_path):
    out = tmp_path / "churn"
    p = subprocess.run([sys.executable, "-P", "-m", "wholecall.cli", "stress", "--churn", "--channels", "24",
                        "--seconds", "8", "--call-seconds", "1", "2.5", "--sample-s", "0.5", "--spot-every", "8",
                        "--workers", "2", "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=180)
    rep = json.loads((out / "churn-report.json").read_text())
    assert p.returncode == 0, (p.stdout, p.stderr, rep["failures"])
    run, files = rep["run"], rep["files"]
    assert run["calls"] > 2 * 24  # every call was replaced at least once
    assert run["ended"] == run["calls"] == files["verified"] and files["invalid"] == 0
    assert set(run["causes"]) == {"ABORTED", "HANGUP"} and run["wrong_cause"] == 0
    assert rep["loss"] == {"overruns": 0, "lost_samples": 0, "short_samples": 0}
    assert files["spot_checked"] >= 5 and files["spot_failed"] == 0
    assert rep["resources"]["idle"]["slots_used"] == 0
    assert rep["resources"]["steady_samples"] >= 4 and not rep["resources"]["failures"]


def _sample(t, anon, fds=40):
    return {"t": t, "slots_used": 0, "controller_anon": anon, "controller_fds": fds, "controller_threads": 10,
            "workers_anon": [anon], "workers_fds": [fds], "workers_threads": [5], "loadgens_anon": [1]}


def test_the_flatness_verdict_catches_a_slow_leak_and_a_held_descriptor():
    soak = Soak(ChurnConfig(channels=10, seconds=100, call_max_s=5, start_rate=10))
    steady = [_sample(t, 100 << 20) for t in range(10, 101, 10)]
    soak.samples = steady
    assert soak._flatness(steady[0], steady[-1])["failures"] == []
    soak.samples = [_sample(t, (100 << 20) + t * (200 << 10)) for t in range(10, 101, 10)]  # +200 KiB/s
    assert any("controller_anon grew" in f for f in soak._flatness(steady[0], soak.samples[-1])["failures"])
    soak.samples = [_sample(t, 100 << 20, fds=40 + t) for t in range(10, 101, 10)]
    end = dict(soak.samples[-1], slots_used=2)
    why = soak._flatness(steady[0], end)["failures"]
    assert any("controller_fds grew" in f for f in why)
    assert any("2 ring slots still in use" in f for f in why)
    assert any("descriptors after the run" in f for f in why)


def test_the_verdict_judges_live_objects_and_calls_left_to_the_cycle_collector():
    """Resident memory can rise with nothing leaking (the allocator's high-water mark); these
    two figures move only with objects: one that piles up fails, and so do calls that are
    reference cycles (what the first 30-minute soak found), while a flat run passes."""
    soak = Soak(ChurnConfig(channels=10, seconds=100, call_max_s=5, start_rate=10))

    def run(objects, cycles_per_call):
        soak.samples = [dict(_sample(t, 100 << 20), ended=40 * t, controller_objects=objects(t),
                             cycle_garbage=int(cycles_per_call * 40 * t)) for t in range(10, 101, 10)]
        return soak._flatness(soak.samples[0], soak.samples[-1])

    flat = run(lambda t: 200_000 + (t % 20) * 50, 0.05)
    assert flat["failures"] == [] and flat["figures"]["cycle_garbage_per_call"]["per_call"] == 0.05
    grown = run(lambda t: 200_000 + 30 * 40 * t, 0.0)  # 30 objects kept per call
    assert any("controller_objects grew" in f for f in grown["failures"])
    cyclic = run(lambda t: 200_000, 44.0)
    assert any("reference cycles" in f for f in cyclic["failures"])
