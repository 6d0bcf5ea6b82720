"""The package layout DESIGN fixes: one import name, arrows only downward, no import cycles,
and a caller's working directory that cannot shadow the recorder's processes."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: package -> the project packages it may import (DESIGN "Layers, arrows only downward").
ALLOWED: dict[str, set[str]] = {
    "formats": set(),
    "shm": set(),
    "protocol": set(),
    "worker": {"shm", "protocol", "formats"},
    "controller": {"shm", "protocol", "formats"},
    "ingest": {"shm", "protocol", "formats"},
    "service": {"controller", "ingest", "shm", "protocol", "formats"},
    "sim": {"service", "controller", "ingest", "shm", "protocol", "formats"},
    "cli": {"sim", "service", "controller", "ingest", "worker", "shm", "protocol", "formats"},
    "": {"controller"},  # wholecall/__init__.py: the IVR's names, resolved lazily
}


def _package_dirs() -> dict[str, str]:
    """wholecall.<package> -> its source folder, as pyproject maps them."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: os.path.join(ROOT, folder) for name, folder in mapping.items()}


def _modules() -> dict[str, str]:
    """Every module of the installed distribution: dotted name -> file."""
    out = {}
    for pkg, folder in _package_dirs().items():
        for fn in os.listdir(folder):
            if fn.endswith(".py"):
                out[pkg if fn == "__init__.py" else f"{pkg}.{fn[:-3]}"] = os.path.join(folder, fn)
    return out


def _runtime_imports(name: str, path: str, known: set[str]) -> set[str]:
    """Project modules `name` imports when it runs (function-level imports included,
    `if TYPE_CHECKING:` blocks excluded: they never execute)."""
    tree = ast.parse(open(path).read(), path)
    is_pkg = path.endswith("__init__.py")
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                if (m := resolve(a.name)) is not None:
                    found.add(m)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([mod] if mod else []))
            for a in node.names:
                if (m := resolve(f"{mod}.{a.name}")) is not None:
                    found.add(m)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _runtime_imports(name, path, set(mods)) for name, path in mods.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_arrows_only_go_down():
    wrong = []
    for mod, deps in _graph().items():
        for dep in deps:
            src, dst = _layer(mod), _layer(dep)
            if src != dst and dst not in ALLOWED[src]:
                wrong.append(f"{mod} -> {dep}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [node, dep]) if dep in stack else f"{node} -> {dep}")
            elif dep not in state:
                walk(dep, stack + [node])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            walk(mod, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_controller_loads_no_cli_or_harness_code():
    out = subprocess.run(
        [sys.executable, "-P", "-c", "import sys, wholecall.controller as c; print(sorted(m for m in sys.modules "
         "if m == 'argparse' or m.startswith(('wholecall.sim', 'wholecall.cli', 'wholecall.worker', 'wholecall.service'))))"],
        capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]", out.stdout


def test_modules_named_like_ours_in_the_callers_directory_change_nothing(tmp_path):
    """A `worker.py` in the application's directory once replaced the recorder's worker."""
    app = tmp_path / "app"
    app.mkdir()
    for name in ("worker", "controller", "shm", "protocol", "formats", "cli", "sim"):
        (app / f"{name}.py").write_text("raise SystemExit('the caller\\'s module was imported')\n")
        (app / name).mkdir()
        (app / name / "__main__.py").write_text("raise SystemExit('the caller\\'s package was run')\n")
    script = textwrap.dedent(f"""
        import numpy as np
        from wholecall import Controller
        with Controller(workers=1, max_channels=4, recordings_dir={str(tmp_path / 'rec')!r}) as ctl:
            ch = ctl.incoming_call(); ch.answer()
            assert ch.WholeCallRecorder.start("a.wav", file_format="s16bit")
            ch.inbound.write(np.arange(1600, dtype=np.int16))
            ch.hang_up()
            print(ch.WholeCallRecorder.cause().name, ch.WholeCallRecorder.last_result.samples)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=app, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["HANGUP", "1600"]


def test_the_distribution_installs_one_top_level_name(tmp_path):
    """`pip install .` puts only `wholecall` (and its dist-info) into site-packages."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    ROOT], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("wholecall-*.whl")
    top = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"wholecall"}, top
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    installed = {n for n in os.listdir(site) if not n.startswith(("_", ".")) and n != "bin"}  # bin: --target's scripts
    assert {n for n in installed if not n.endswith(".dist-info")} == {"wholecall"}, installed
    assert (site / "wholecall" / "py.typed").exists() and (site / "wholecall" / "worker" / "__main__.py").exists()
