"""Type-check the installed layout: mypy cannot follow setuptools' editable finder for
package-dir mappings, so this builds the `wholecall` tree from links (as a wheel would
lay it out) in a temporary directory and runs mypy on the packages named in pyproject's
[tool.wholecall-typecheck] (the public API and the layers under it)."""

import os
import subprocess
import sys
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        py = tomllib.load(f)
    mapping = py["tool"]["setuptools"]["package-dir"]
    packages = py["tool"]["wholecall-typecheck"]["packages"]
    with tempfile.TemporaryDirectory(prefix="wholecall-types-") as tmp:
        top = os.path.join(tmp, "wholecall")
        os.mkdir(top)
        for name in os.listdir(os.path.join(ROOT, mapping["wholecall"])):
            os.symlink(os.path.join(ROOT, mapping["wholecall"], name), os.path.join(top, name))
        for pkg, src in mapping.items():
            parts = pkg.split(".")
            if len(parts) == 2:  # wholecall.x -> x/ (deeper packages come with their parent)
                os.symlink(os.path.join(ROOT, src), os.path.join(top, parts[1]))
        cmd = [sys.executable, "-m", "mypy", "--config-file", os.path.join(ROOT, "pyproject.toml")]
        for p in packages:  # the facade alone as a module: "-p wholecall" would take every package
            cmd += ["-m" if p == "wholecall" else "-p", p]
        return subprocess.call(cmd, cwd=tmp, env=dict(os.environ, MYPYPATH=tmp))


if __name__ == "__main__":
    sys.exit(main())
