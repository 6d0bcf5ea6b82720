"""Traceability: every requirement sentence of the spec is quoted by a conformance test,
every conformance test quotes one, and (with the spec text at hand) the registry in
conformance_spec.py is exactly the spec's sentences."""

from __future__ import annotations

import ast
import glob
import os

import pytest
from conformance_spec import SPEC, leftover, normalize, spec_path, spec_sections

HERE = os.path.dirname(os.path.abspath(__file__))


def _test_docstrings() -> dict[str, str]:
    """'module::test' -> normalized docstring, for every test function of the suite."""
    out = {}
    for path in sorted(glob.glob(os.path.join(HERE, "test_conformance_*.py"))):
        if path.endswith("test_conformance_trace.py"):
            continue
        tree = ast.parse(open(path).read())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                out[f"{os.path.basename(path)}::{node.name}"] = normalize(ast.get_docstring(node) or "")
    return out


def _quote(section: str, sentence: str) -> str:
    return normalize(f'{section}: "{sentence}"')


def test_every_spec_sentence_is_quoted_by_a_test():
    """Each (section, sentence) of the registry appears, quoted, in some test's docstring."""
    docs = " ".join(_test_docstrings().values())
    missing = [f"{sec}: {s}" for sec, sentences in SPEC.items() for s in sentences if _quote(sec, s) not in docs]
    assert not missing, "sentences no test quotes:\n" + "\n".join(missing)


def test_every_test_quotes_a_spec_sentence():
    """No test without the requirement it checks."""
    quotes = [_quote(sec, s) for sec, sentences in SPEC.items() for s in sentences]
    bare = [name for name, doc in _test_docstrings().items() if not any(q in doc for q in quotes)]
    assert not bare, f"tests that quote no spec sentence: {bare}"


def test_quotes_are_exact():
    """A quote that is not in the registry (a typo, a paraphrase) would prove nothing."""
    import re

    known = {_quote(sec, s) for sec, sentences in SPEC.items() for s in sentences}
    pattern = re.compile(r'(\b[\w]+\(\)|\bUASWholeCallFileRecorder|\bCause|\bState): "([^"]+)"')
    wrong = []
    for name, doc in _test_docstrings().items():
        for m in pattern.finditer(doc):
            if _quote(m.group(1), m.group(2)) not in known:
                wrong.append(f"{name}: {m.group(0)[:90]}")
    assert not wrong, "quotes not in the registry:\n" + "\n".join(wrong)


@pytest.fixture(scope="module")
def spec_text() -> str:
    path = spec_path()
    if path is None:
        pytest.skip("spec text not found (../shared/spec/WholeCallRecorder.txt or $WHOLECALL_SPEC)")
    with open(path) as f:
        return f.read()


def test_registry_sentences_are_in_the_spec(spec_text):
    """The registry quotes the spec verbatim, each sentence in its own section."""
    sections = spec_sections(spec_text)
    wrong = []
    for sec, sentences in SPEC.items():
        body = normalize(sections.get(sec, ""))
        wrong += [f"{sec}: {s}" for s in sentences if s not in body]
    assert not wrong, "\n".join(wrong)


def test_spec_has_no_sentence_outside_the_registry(spec_text):
    """What is left of each section once the registry's sentences and the headings are
    removed is nothing: no requirement of the spec is untested."""
    left = {sec: leftover(body, SPEC.get(sec, ())) for sec, body in spec_sections(spec_text).items()}
    assert all(not v for v in left.values()), {k: v for k, v in left.items() if v}


def test_readme_table_names_real_tests():
    """The README's conformance tables point at tests that exist, and list every argument and cause."""
    import re

    readme = os.path.join(HERE, "..", "..", "README.md")
    text = open(readme).read()
    section = text.split("## Spec conformance", 1)[1].split("\n## ", 1)[0]
    names = {n.split("::")[1] for n in _test_docstrings()}
    cited = set(re.findall(r"::(test_\w+?)(?:\*|`)", section))
    prefixes = {c for c in re.findall(r"::(test_\w+)\*", section)}
    missing = [c for c in cited - prefixes if c not in names]
    missing += [p for p in prefixes if not any(n.startswith(p) for n in names)]
    assert not missing, f"README cites tests that do not exist: {missing}"
    for word in ("filename", "file_format", "rate", "seconds_timeout", "max_bytes", "milliseconds_max_silence",
                 "milliseconds_initial_silence", "dtmf_elim", "recording_mode", "cipher",
                 "ERROR", "SILENCE", "SIZE", "ABORTED", "HANGUP", "TIMEOUT", "NONE"):
        assert f"| `{word}`" in section, word
