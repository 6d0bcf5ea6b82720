"""`wholecall stress` at several channel counts: the table for RESULTS-stress.md and bench/stress.png.

Each level is a separate `wholecall stress` process (fresh controller, workers, load
generator), started only once the machine is quiet: on a shared 2-core box another
user's test run would otherwise be measured as ours (each report also states the
foreign CPU share it saw). Reports land in --out; the plot shows worker CPU per
channel-second (steady state and whole run) and overruns/lost samples against the
channel count, with the --find-max result if one was run.

    python bench/plot_stress.py --levels 1000 5000 10000 --seconds 60 --find-max --baseline 100
    python bench/plot_stress.py --from-reports bench/stress-out   # re-plot saved reports
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

from wholecall.sim.stress import system_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_quiet(limit: float = 0.10, window_s: float = 3.0, max_wait_s: float = 900.0) -> float:
    """Wait until the machine's CPU is busy less than `limit` over `window_s`; returns the busy share seen."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0, _ = system_cpu()
        time.sleep(window_s)
        b1, t1, _ = system_cpu()
        share = (b1 - b0) / max(1e-6, t1 - t0)
        if share < limit or time.monotonic() > deadline:
            return share
        print(f"machine busy {100 * share:.0f} %: waiting for it to be quiet", file=sys.stderr)


def run_level(n: int, seconds: float, out: str, extra: list[str]) -> dict:
    report = os.path.join(out, f"report-{n}.json")
    cmd = [sys.executable, "-m", "wholecall.cli", "stress", "--channels", str(n), "--seconds", str(seconds),
           "--out", out, "--report", report, *extra]
    print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=False)
    with open(report) as f:
        return json.load(f)


def row(rep: dict) -> dict:
    """The figures of one report that go in the table and the plot."""
    cpu = rep.get("cpu", {})
    st = cpu.get("steady", {})
    lat = rep.get("latency_ms", {})
    files = rep.get("files", {})
    return {
        "channels": rep["config"]["channels"], "seconds": rep["config"]["seconds"], "ok": rep.get("ok"),
        "ramp": rep["config"]["start_rate"],
        "worker_us": cpu.get("worker_us_per_channel_second"), "worker_us_steady": st.get("worker_us_per_channel_second"),
        "cores": st.get("worker_core_utilisation"), "loadgen_us": cpu.get("loadgen_us_per_channel_second"),
        "controller_us": cpu.get("controller_us_per_channel_second"),
        "overruns": rep.get("overruns"), "lost": rep.get("lost_samples"),
        "start_p50": lat.get("start", {}).get("p50"), "start_p99": lat.get("start", {}).get("p99"),
        "start_load_p50": lat.get("start_at_load", {}).get("p50"), "start_load_p99": lat.get("start_at_load", {}).get("p99"),
        "stop_p50": lat.get("stop", {}).get("p50"), "stop_p99": lat.get("stop", {}).get("p99"),
        "start_rate": rep.get("run", {}).get("start_rate_achieved"),
        "verified": files.get("verified"), "expected": files.get("expected"),
        "foreign": max(cpu.get("foreign_cpu_share") or 0, st.get("foreign_cpu_share") or 0),
        "stages": cpu.get("stages"), "baseline": rep.get("baseline"), "memory": rep.get("memory"),
    }


def table(rows: list[dict]) -> str:
    head = ("| channels | s | worker µs/ch-s (steady / whole run) | worker cores busy | loadgen µs/ch-s | "
            "overruns | lost | start ms p50 / p99 (≥90 % running) | stop ms p50 / p99 | start()/s | files verified "
            "| foreign CPU |")
    lines = [head, "|" + " ---: |" * 12]
    for r in rows:
        cores = "/".join(f"{100 * c:.0f}%" for c in r["cores"]) if r["cores"] else "-"
        lines.append(
            f"| {r['channels']} | {r['seconds']:g} | {r['worker_us_steady']} / {r['worker_us']} | {cores} | "
            f"{r['loadgen_us']} | {r['overruns']} | {r['lost']} | {r['start_p50']} / {r['start_p99']} "
            f"({r['start_load_p50']} / {r['start_load_p99']}) | {r['stop_p50']} / {r['stop_p99']} | {r['start_rate']} | "
            f"{r['verified']}/{r['expected']} | {100 * r['foreign']:.0f}% |")
    return "\n".join(lines)


def plot(series: list[tuple[str, list[dict]]], path: str) -> None:
    """Left: worker CPU per channel-second; right: lost samples and the busiest worker's load; one colour per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    ax3 = ax2.twinx()
    top = 10
    for k, (label, rows) in enumerate(series):
        pts = sorted(rows, key=lambda r: r["channels"])
        if not pts:
            continue
        c = f"C{k}"
        xs = [r["channels"] for r in pts]
        ax1.plot(xs, [r["worker_us_steady"] for r in pts], "o-", color=c, label=f"workers, steady: {label}")
        ax1.plot(xs, [r["worker_us"] for r in pts], "s:", color=c, alpha=0.5, label=f"workers, whole run: {label}")
        if k == 0:
            ax1.plot(xs, [r["loadgen_us"] for r in pts], "^--", color="grey", label=f"load generator: {label}")
        lost = [r["lost"] or 0 for r in pts]
        top = max([top] + [3 * v for v in lost])
        ax2.plot(xs, lost, "o-", color=c, label=f"lost samples: {label}")
        ax3.plot(xs, [max(r["cores"]) * 100 if r["cores"] else None for r in pts], "d:", color=c, alpha=0.6,
                 label=f"busiest worker %: {label}")
    ax1.axhline(100, color="black", lw=0.8, ls="--")
    ax1.text(0.01, 104, "target 100 µs", fontsize=8, transform=ax1.get_yaxis_transform())
    ax1.set_xscale("log")
    ax1.set_ylim(0, None)
    ax1.set_xlabel("concurrent channels")
    ax1.set_ylabel("CPU µs per recorded channel-second")
    ax1.set_title("worker CPU per channel-second (2 workers on 2 cores)")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    ax3.axhline(90, color="black", lw=0.8, ls="--")
    ax3.set_ylabel("busiest worker, % of its core (dotted)")
    ax3.set_ylim(0, 110)
    ax2.set_xscale("log")
    ax2.set_yscale("symlog", linthresh=1)
    ax2.set_ylim(0, top)
    ax2.set_xlabel("concurrent channels")
    ax2.set_ylabel("lost samples (ring overruns)")
    ax2.set_title("losses and headroom")
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = ax3.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", type=int, nargs="+", default=[1000, 5000, 10000])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--find-max", action="store_true", help="also run `wholecall stress --find-max`")
    p.add_argument("--find-seconds", type=float, default=20)
    p.add_argument("--baseline", type=int, default=0, help="sox/ffmpeg calls for the baseline (largest level)")
    p.add_argument("--profile", action="store_true", help="py-spy stage split for every level")
    p.add_argument("--retries", type=int, default=3, help="re-runs of a level disturbed by foreign CPU load")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "stress-out"))
    p.add_argument("--png", default=os.path.join(ROOT, "bench", "stress.png"))
    p.add_argument("--from-reports", default=None, help="only re-plot the reports in this directory")
    p.add_argument("--find-json", action="append", default=[], metavar="PATH:LABEL",
                   help="another --find-max report to plot as its own series (repeatable)")
    a = p.parse_args()
    rows, find = [], []
    if a.from_reports:
        paths = glob.glob(os.path.join(a.from_reports, "report-*.json"))
        for path in sorted(p for p in paths if re.fullmatch(r"report-\d+\.json", os.path.basename(p))):
            with open(path) as f:
                rows.append(row(json.load(f)))
        fm = os.path.join(a.from_reports, "find-max.json")
        if os.path.exists(fm):
            with open(fm) as f:
                find = [row(lv["report"]) for lv in json.load(f)["levels"]]
    else:
        os.makedirs(a.out, exist_ok=True)
        for i, n in enumerate(sorted(a.levels)):
            extra = ["--quiet"] + (["--profile"] if a.profile else [])
            if a.baseline and i == len(a.levels) - 1:
                extra += ["--baseline", str(a.baseline)]
            for attempt in range(a.retries + 1):
                wait_quiet()
                r = row(run_level(n, a.seconds, a.out, extra))
                if r["foreign"] <= 0.10:
                    break
                print(f"{n} channels: {100 * r['foreign']:.0f} % foreign CPU during the run; running it again",
                      file=sys.stderr)
                # Keep the disturbed report next to the clean one: it shows what foreign load does.
                os.replace(os.path.join(a.out, f"report-{n}.json"),
                           os.path.join(a.out, f"report-{n}-disturbed-{attempt + 1}.json"))
            rows.append(r)
        if a.find_max:
            wait_quiet()
            rep = os.path.join(a.out, "find-max.json")
            subprocess.run([sys.executable, "-m", "wholecall.cli", "stress", "--find-max", "--seconds",
                            str(a.find_seconds), "--out", a.out, "--report", rep, "--quiet"], cwd=ROOT, check=False)
            with open(rep) as f:
                fm = json.load(f)
            find = [row(lv["report"]) for lv in fm["levels"]]
            print(f"largest sustainable: {fm['max_channels']} (first unsustainable {fm.get('first_unsustainable')})")
    rows.sort(key=lambda r: r["channels"])
    print(table(rows))
    if find:
        print("\nfind-max runs:\n" + table(sorted(find, key=lambda r: r["channels"])))
    for r in rows:
        if r["stages"]:
            print(f"\nstages at {r['channels']} channels:")
            for stage, v in r["stages"].items():
                print(f"  {stage:40s} {100 * v['share']:5.1f} %  {v['us_per_channel_second']} µs/ch-s")
        for b in r["baseline"] or []:
            print(f"baseline at {r['channels']}: {b}")
    def label(rs: list[dict], what: str) -> str:
        return f"{what} {rs[0]['seconds']:g} s, ramp {rs[0]['ramp']:g}/s" if rs else what

    series = [(label(rows, "runs"), rows), (label(find, "find-max"), find)]
    for spec in a.find_json:
        path, _, name = spec.partition(":")
        with open(path) as f:
            extra = [row(lv["report"]) for lv in json.load(f)["levels"]]
        series.append((name or label(extra, "find-max"), extra))
    plot(series, a.png)
    with open(os.path.join(os.path.dirname(a.png), "stress-results.json"), "w") as f:
        json.dump({"levels": rows, "find_max": find, "series": {name: rs for name, rs in series[2:]}}, f, indent=1)
    print(f"plot: {a.png}")


if __name__ == "__main__":
    main()
