"""`python -m wholecall.service.healthcheck [URL]`: exit 0 when /healthz answers 200.

For a container's HEALTHCHECK and an exec probe: the slim image has no curl, and the
interpreter is there anyway. It asks the operations port (`--ops-listen`), which needs
no token; `--token-file` covers an API port that does.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wholecall.service.healthcheck")
    p.add_argument("url", nargs="?", default="http://127.0.0.1:9090/healthz")
    p.add_argument("--token-file", help="file holding the API's bearer token")
    p.add_argument("--timeout", type=float, default=3.0)
    a = p.parse_args(argv)
    req = urllib.request.Request(a.url)
    if a.token_file:
        with open(a.token_file) as f:
            req.add_header("Authorization", f"Bearer {f.read().strip()}")
    try:
        with urllib.request.urlopen(req, timeout=a.timeout) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError as e:
        print(f"healthcheck: {a.url}: {e}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: {a.url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
