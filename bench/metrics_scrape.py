"""Cost of one GET /metrics of `wholecall serve` with N calls (no media), in ms per scrape.

    python bench/metrics_scrape.py --calls 500 --scrapes 50
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "service"))
from serve_helpers import Server, free_tcp_port  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--scrapes", type=int, default=50)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ops = free_tcp_port()
        srv = Server(tmp, "--ops-listen", f"127.0.0.1:{ops}", "--max-calls", str(a.calls + 8), "--log-level", "WARNING",
                     "--rtp-ports", "30000-39999")
        try:
            for i in range(a.calls):
                srv.create_call(id=f"c{i}")
            url = f"http://127.0.0.1:{ops}/metrics"
            urllib.request.urlopen(url).read()
            t0 = time.perf_counter()
            for _ in range(a.scrapes):
                body = urllib.request.urlopen(url).read()
            ms = 1000 * (time.perf_counter() - t0) / a.scrapes
            print(f"{a.calls} calls: {ms:.2f} ms per scrape ({len(body)} bytes)")
        finally:
            srv.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
