"""The documentation, checked against the code so that it cannot drift.

- ``docs/architecture.md`` quotes the import-linter contract of ``pyproject.toml``
  verbatim, its layers diagram names the contract's layers in order, and its two tables
  (the subpackages, every module) equal what :func:`subpackage_table` and
  :func:`module_table` compute from the tree;
- every layer the contract names exists, and every subpackage and module directly under
  ``kd_tune/`` is in the contract;
- ``lint-imports`` passes (the contract holds);
- ``mkdocs build --strict`` passes (no broken link, no page missing from ``nav``);
- the README is at most 300 lines and opens with its two commands;
- every ``kd_tune.``/``analysis.`` name and every repository path the pages mention exists.

The generated parts are written again with ``python tests/test_docs.py --write``.
Nothing here imports kd-tune: modules are read with :mod:`ast`, so the checks take seconds.
"""
from __future__ import annotations

import ast
import difflib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PYPROJECT = ROOT / "pyproject.toml"
README = ROOT / "README.md"
WRITE = "python tests/test_docs.py --write"
DOCUMENTED = ("kd_tune", "analysis")  # the packages whose modules the module table lists

INSTALL_AND_RUN = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python sweeps/tau_grid.py"
)
INSTALL_AND_TEST = (
    'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest'
)
README_MAX_LINES = 300


# ---------------------------------------------------------------------------- the contract


def importlinter_config() -> dict:
    """``[tool.importlinter]`` of pyproject.toml, parsed."""
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]


def layers() -> list[str]:
    """The ``layers`` list of the contract with id ``layers``, top layer first."""
    contracts = [c for c in importlinter_config()["contracts"] if c.get("id") == "layers"]
    assert len(contracts) == 1, "pyproject.toml must hold one import-linter contract with id = \"layers\""
    return contracts[0]["layers"]


def layer_items() -> list[str]:
    """Every package or module the layers name, top first (siblings split at ``|``)."""
    return [item.strip() for layer in layers() for item in layer.split("|")]


def contract_text() -> str:
    """The ``[tool.importlinter]`` section of pyproject.toml as written (its tables, no
    comments of the section after it)."""
    lines = PYPROJECT.read_text(encoding="utf-8").splitlines()
    start = lines.index("[tool.importlinter]")
    end = start + 1
    while end < len(lines) and not (lines[end].startswith("[") and "tool.importlinter" not in lines[end]):
        end += 1
    section = lines[start:end]
    while section and (not section[-1].strip() or section[-1].lstrip().startswith("#")):
        section.pop()
    return "\n".join(section)


# ---------------------------------------------------------------------------- the tree


def module_files(package: str) -> Iterator[tuple[str, Path]]:
    """(dotted name, file) of every module of ``package`` (a folder under the root), sorted."""
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def module_path(dotted: str) -> Path | None:
    """The file of module or package ``dotted`` in this tree, or None."""
    base = ROOT.joinpath(*dotted.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def layer_of(dotted: str, items: list[str]) -> str | None:
    """The contract item that holds module ``dotted`` (the longest that is it or its parent)."""
    holders = [item for item in items if dotted == item or dotted.startswith(item + ".")]
    return max(holders, key=len) if holders else None


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def rst_to_markdown(text: str) -> str:
    """Sphinx roles and double backticks as Markdown code spans."""
    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        return f"`{target.split('.')[-1]}`" if target.startswith("~") else f"`{target}`"

    text = re.sub(r":[a-z]+:`([^`]+)`", role, text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def first_sentence(paragraph: str) -> str:
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", paragraph, maxsplit=1)
    return sentences[0]


def docstring_paragraphs(path: Path) -> list[str]:
    doc = ast.get_docstring(parse(path)) or ""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc) if p.strip()]


def summary(path: Path) -> str:
    """The first sentence of a module's docstring, as Markdown for a table cell."""
    paragraphs = docstring_paragraphs(path)
    if not paragraphs:
        return "(no docstring)"
    return cell(first_sentence(rst_to_markdown(paragraphs[0])))


def may_import(path: Path) -> str:
    """The ``May import:`` paragraph of a package's docstring, or a dash."""
    for paragraph in docstring_paragraphs(path):
        if paragraph.startswith("May import:"):
            return cell(rst_to_markdown(paragraph[len("May import:"):].strip()))
    return "—"


def cell(text: str) -> str:
    """``text`` fit for a table cell: ``|`` escaped outside code spans (MkDocs keeps it
    inside one, where an escape would show)."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(part if part.startswith("`") else part.replace("|", "\\|") for part in parts)


def imported_modules(dotted: str, path: Path) -> set[str]:
    """Every module ``dotted`` imports, functions included, relative imports resolved;
    ``from X import Y`` counts as ``X.Y`` where that is a module, else as ``X``."""
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                child = f"{source}.{alias.name}"
                found.add(child if module_path(child) else source)
    return found


# ---------------------------------------------------------------------------- generated parts


def subpackage_table() -> str:
    """One row per item of the layers contract, top layer first: what it owns and may
    import (its docstring) and the layers its modules import today."""
    items = layer_items()
    order = {item: i for i, item in enumerate(items)}
    rows = ["| layer (1 = top) | package or module | owns | may import (its docstring) | imports (from the code) |",
            "|---|---|---|---|---|"]
    for number, layer in enumerate(layers(), start=1):
        for item in (part.strip() for part in layer.split("|")):
            path = module_path(item)
            if path is None:
                members = []
            elif path.name == "__init__.py":
                members = list(module_files(item.replace(".", "/")))
            else:
                members = [(item, path)]
            imports = {layer_of(m, items) for dotted, file in members for m in imported_modules(dotted, file)}
            imports = {m for m in imports if m is not None and m != item}
            listed = ", ".join(f"`{m}`" for m in sorted(imports, key=order.__getitem__)) or "—"
            owns = summary(path) if path else "(missing)"
            rows.append(f"| {number} | `{item}` | {owns} | {may_import(path) if path else '—'} | {listed} |")
    return "\n".join(rows)


def module_table() -> str:
    """Every module under kd_tune/ and analysis/: its layer and the first sentence of its docstring."""
    items = layer_items()
    rows = ["| module | layer | what it is (the first sentence of its docstring) |", "|---|---|---|"]
    for package in DOCUMENTED:
        for dotted, path in module_files(package):
            rows.append(f"| `{dotted}` | `{layer_of(dotted, items) or package}` | {summary(path)} |")
    return "\n".join(rows)


def contract_block() -> str:
    return f"```toml\n{contract_text()}\n```"


GENERATED = {"contract": contract_block, "subpackages": subpackage_table, "modules": module_table}
MARKER = re.compile(r"(<!-- (?P<name>\w+):start[^>]*-->\n)(?P<body>.*?)(<!-- (?P=name):end -->)", re.S)


def page_blocks(text: str) -> dict[str, str]:
    return {m.group("name"): m.group("body").strip("\n") for m in MARKER.finditer(text)}


def write_generated() -> None:
    """Write the generated parts of docs/architecture.md from the code."""
    text = ARCHITECTURE.read_text(encoding="utf-8")

    def fill(match: re.Match[str]) -> str:
        make = GENERATED.get(match.group("name"))
        return match.group(0) if make is None else f"{match.group(1)}{make()}\n{match.group(4)}"

    ARCHITECTURE.write_text(MARKER.sub(fill, text), encoding="utf-8")


def out_of_date(what: str, page: str, code: str) -> str:
    diff = "\n".join(list(difflib.unified_diff(page.splitlines(), code.splitlines(), "docs/architecture.md",
                                               "from the code", lineterm=""))[:40])
    return (f"docs/architecture.md: the {what} differs from the code. Run `{WRITE}` from the "
            f"repository root and commit the page.\n{diff}")


# ---------------------------------------------------------------------------- (a) the contract on the page


def test_page_quotes_the_contract_verbatim():
    quoted = page_blocks(ARCHITECTURE.read_text(encoding="utf-8")).get("contract")
    assert quoted is not None, "docs/architecture.md has no <!-- contract:start --> ... <!-- contract:end --> block"
    fenced = re.fullmatch(r"```toml\n(.*)\n```", quoted, re.S)
    assert fenced, "the contract block of docs/architecture.md must be one ```toml fenced block"
    page_config = tomllib.loads(fenced.group(1))["tool"]["importlinter"]
    page_layers = next(c["layers"] for c in page_config["contracts"] if c.get("id") == "layers")
    assert page_layers == layers(), out_of_date("quoted layers", "\n".join(page_layers), "\n".join(layers()))
    assert fenced.group(1) == contract_text(), out_of_date("quoted contract", fenced.group(1), contract_text())


def test_layers_diagram_names_the_contract_layers_in_order():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("\n## The layers\n", 1)[1].split("\n## ", 1)[0]
    diagram = re.search(r"```\n(.*?)\n```", section, re.S)
    assert diagram, "docs/architecture.md, 'The layers': no diagram (a plain ``` block)"
    drawn = [re.split(r"\s{2,}", line.strip())[0] for line in diagram.group(1).splitlines()
             if line.strip() and line.strip() not in ("↓", "|", "v")]
    assert drawn == layers(), (
        "the layers diagram of docs/architecture.md must name the contract's layers, top first, one a line "
        "(the layer as pyproject.toml spells it, then two spaces and a note):\n"
        f" drawn:    {drawn}\n contract: {layers()}")


# ---------------------------------------------------------------------------- (b) the contract and the tree


def test_every_layer_exists_and_every_subpackage_is_in_the_contract():
    config = importlinter_config()
    for root in config["root_packages"]:
        assert (ROOT / root / "__init__.py").is_file(), f"root package {root!r} of the contract has no __init__.py"
    items = layer_items()
    missing = [item for item in items if module_path(item) is None]
    assert not missing, f"layers the contract names that are no package (folder with __init__.py) or module: {missing}"
    # A folder of modules without __init__.py is a namespace package: import-linter cannot see it.
    namespace = sorted(str(d.relative_to(ROOT)) for d in (ROOT / "kd_tune").rglob("*")
                       if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
                       and not (d / "__init__.py").is_file())
    assert not namespace, (
        f"folders of kd_tune modules without an __init__.py (is it ignored by .gitignore?): {namespace}")
    children = sorted({path.stem if path.is_file() else path.name for path in (ROOT / "kd_tune").iterdir()
                       if (path.is_file() and path.suffix == ".py" and path.stem not in ("__init__", "__main__"))
                       or (path / "__init__.py").is_file()})
    forgotten = [child for child in children if f"kd_tune.{child}" not in items]
    assert not forgotten, (
        f"kd_tune's {forgotten} are in no layer of the import-linter contract in pyproject.toml: add each to "
        f"the layer it belongs to, then run `{WRITE}`")


# ---------------------------------------------------------------------------- (c) the generated tables


@pytest.mark.parametrize("name", ["subpackages", "modules"])
def test_generated_table_equals_the_code(name):
    page = page_blocks(ARCHITECTURE.read_text(encoding="utf-8")).get(name)
    assert page is not None, f"docs/architecture.md has no <!-- {name}:start --> ... <!-- {name}:end --> block"
    assert page == GENERATED[name](), out_of_date(f"{name} table", page, GENERATED[name]())


# ---------------------------------------------------------------------------- (d) lint-imports


def tool(name: str) -> str:
    """A console script of this environment (next to the Python running the tests), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; it is in the test extra: pip install -e \".[test]\"")
    return found


def this_tree_first() -> dict[str, str]:
    """The environment with this checkout first on the import path (an editable install of
    another checkout must not be what is checked)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_lint_imports_passes():
    done = subprocess.run([tool("lint-imports"), "--no-cache"], cwd=ROOT, env=this_tree_first(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"lint-imports exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


# ---------------------------------------------------------------------------- (e) mkdocs build --strict


def test_mkdocs_builds_strictly(tmp_path):
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is not installed; it is in the test extra: pip install -e \".[test]\"")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=this_tree_first(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


# ---------------------------------------------------------------------------- (f) the README


def fenced_blocks(text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)]


def test_readme_is_the_front_door():
    text = README.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"
    blocks = fenced_blocks(text)
    assert blocks[:2] == [INSTALL_AND_RUN, INSTALL_AND_TEST], (
        "README.md must open with its two commands, as its first two code blocks:\n"
        f"  {INSTALL_AND_RUN}\n  {INSTALL_AND_TEST}\nfound:\n  " + "\n  ".join(blocks[:2]))


def table_after(text: str, heading: str) -> str:
    """The first Markdown table after the line ``heading``."""
    lines = text.split(f"\n{heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return "\n".join(table)


def test_readme_default_table_is_the_one_in_the_docs():
    heading = "`python sweeps/tau_grid.py`"
    readme = table_after(README.read_text(encoding="utf-8"), f"### {heading}")
    docs = table_after((ROOT / "docs" / "default-results.md").read_text(encoding="utf-8"), f"## {heading}")
    assert readme and readme == docs, (
        "README.md and docs/default-results.md show the default tau_grid table: they must show the same one "
        f"(update both)\nREADME.md:\n{readme}\ndocs/default-results.md:\n{docs}")


# ---------------------------------------------------------------------------- names and paths in the pages


DOC_FILES = [README, ROOT / "analysis" / "README.md", ROOT / "sweeps" / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]
DOTTED = re.compile(r"(?<![\w./-])(?:kd_tune|analysis)(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(r"(?<![\w./~-])(?:kd_tune|analysis|sweeps|benchmarks|tests|docs)/[\w./-]*")
EXAMPLES = {"sweeps/my_sweep.py"}  # paths the pages tell the reader to create
FROM_IMPORT = re.compile(r"^\s*from ((?:kd_tune|analysis)[\w.]*) import ([\w, ]+)$", re.M)


def defined_names(path: Path) -> dict[str, ast.AST]:
    """Top-level names of a module: definitions, assignments, imports."""
    names: dict[str, ast.AST] = {}
    for node in parse(path).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update(((a.asname or a.name).split(".")[0], node) for a in node.names)
    return names


def resolves(dotted: str) -> bool:
    """``dotted`` is a module of this tree, a name defined in one, or an attribute of a class in one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        path = module_path(".".join(parts[:cut]))
        if path is not None:
            rest = parts[cut:]
            break
    else:
        return False
    if not rest:
        return True
    if len(rest) > 2 or rest[0] not in (names := defined_names(path)):
        return False
    if len(rest) == 1:
        return True
    owner = names[rest[0]]
    return isinstance(owner, ast.ClassDef) and any(
        getattr(node, "name", None) == rest[1]
        or (isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == rest[1])
        for node in owner.body)


def string_literals() -> set[str]:
    """Dotted strings the code spells (MLflow tag names such as ``kd_tune.role``)."""
    found: set[str] = set()
    for package in DOCUMENTED:
        for _, path in module_files(package):
            found.update(node.value for node in ast.walk(parse(path))
                         if isinstance(node, ast.Constant) and isinstance(node.value, str)
                         and DOTTED.fullmatch(node.value))
    return found


def test_names_and_paths_in_the_pages_exist():
    literals = string_literals()
    problems = []
    for page in DOC_FILES:
        text = page.read_text(encoding="utf-8")
        where = page.relative_to(ROOT)
        for name in sorted(set(DOTTED.findall(text))):
            if name not in literals and not resolves(name):
                problems.append(f"{where}: `{name}` is no module, name or tag in the code")
        for module, names in FROM_IMPORT.findall(text):
            for name in (n.strip() for n in names.split(",")):
                if not resolves(f"{module}.{name}"):
                    problems.append(f"{where}: `from {module} import {name}` does not resolve")
        for path in sorted(set(PATH.findall(text))):
            placeholder = re.search(r"[A-Z]{2,}", path)  # benchmarks/NAME.py
            if not placeholder and path not in EXAMPLES and not (ROOT / path.rstrip(".")).exists():
                problems.append(f"{where}: path `{path}` does not exist")
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_generated()
        print(f"wrote the generated parts of {ARCHITECTURE.relative_to(ROOT)}")
    else:
        sys.exit(f"usage: {WRITE}   (writes the generated parts of docs/architecture.md from the code)")
