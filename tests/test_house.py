"""The rules that keep the house (DESIGN.md, "Layout"), checked on the package's own source.

Every ``.py`` file under ``hpcblend/`` and ``kernels/`` (installed as ``hpcblend.kernels``) is parsed
with :mod:`ast`; nothing is imported. The import graph has one edge per ``import`` or ``from ... import``
statement anywhere in a module — at the top, inside a function, under ``if`` or ``try`` — with relative
imports resolved, an edge pointing at the imported module (``from hpcblend.io import catalog`` points at
``hpcblend.io.catalog``; ``from hpcblend.io.catalog import read_table`` at ``hpcblend.io.catalog``).
Imports of other libraries are not edges. Module-level string references resolved with ``importlib``
(the work-source registry of :mod:`hpcblend.units`) are not imports and are not seen, on purpose.

The rules:

* no import cycle between hpcblend modules (the failure names the modules of each cycle);
* ``kernels/`` imports nothing of hpcblend (only its own modules, relatively);
* no run-path module (:data:`RUN_PATH`) imports :data:`OFFLINE` rooms (``hpcblend.report``,
  ``hpcblend.analysis``, ``hpcblend.simulate``), directly or transitively, even lazily. Importing
  ``a.b.c`` also runs the ``__init__`` of ``a.b``, so for this rule a module also reaches its parent
  packages — except the root ``hpcblend`` facade, whose imports all sit inside functions
  (``tests/test_facade.py`` keeps ``import hpcblend`` cheap) and so never run on an import;
* no module over :data:`MAX_MODULE_LINES` physical lines (:data:`LONG_MODULES` lists the exceptions,
  each with its reason);
* no function over :data:`MAX_FUNCTION_LINES` lines — counted from its ``def`` line to its last line,
  without its docstring — unless its docstring has a line starting with ``Long:`` followed by the
  reason it stays long, e.g. ``Long: one pass over the rows; split, it would thread 12 locals through``;
* every module has a module docstring and a literal ``__all__`` whose names the module binds;
* ``class Box`` is defined only in ``hpcblend/geometry.py`` (the one box type of the package).
* YAML is parsed only by :func:`hpcblend.io.yaml_files.load_yaml` (no ``yaml.safe_load`` elsewhere).
"""

import ast
import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"hpcblend": REPO / "hpcblend", "hpcblend.kernels": REPO / "kernels"}

#: Modules and packages a run loads (a name covers its submodules).
RUN_PATH = ("hpcblend.parallel", "hpcblend.units", "hpcblend.detect", "hpcblend.deblend", "hpcblend.measure",
            "hpcblend.diagnostics", "hpcblend.io", "hpcblend.config", "hpcblend.geometry", "hpcblend.skymap",
            "hpcblend.errors")
#: Rooms never imported by a run.
OFFLINE = ("hpcblend.report", "hpcblend.analysis", "hpcblend.simulate")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100
#: Modules allowed over MAX_MODULE_LINES: {module: reason}. Keep it short; every entry says why.
LONG_MODULES = {}
_LONG_MARKER = re.compile(r"^\s*Long:\s*\S", re.M)


class Module:
    """One parsed source file: its dotted name, path, tree, and whether it is a package ``__init__``."""

    def __init__(self, name, path, is_package):
        self.name = name
        self.path = path
        self.is_package = is_package
        self.text = path.read_text(encoding="utf-8")
        self.tree = ast.parse(self.text, filename=str(path))

    @property
    def rel(self):
        return self.path.relative_to(REPO).as_posix()


@functools.lru_cache(maxsize=None)
def modules():
    """Every module of the package: {dotted name: Module}."""
    out = {}
    for root_name, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([root_name] + parts)
            out[name] = Module(name, path, is_package)
    return out


def _known(name):
    """``name`` or its longest prefix that is a module of the package (None outside it)."""
    mods = modules()
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in mods:
            return ".".join(parts[:i])
    return None


def _imports(mod):
    """[(target module, line, relative?)] for every import statement of ``mod`` that names a package module."""
    out = []
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name)
                if target:
                    out.append((target, node.lineno, False))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in modules() else _known(base)
                if target:
                    out.append((target, node.lineno, bool(node.level)))
    return out


@functools.lru_cache(maxsize=None)
def graph():
    """The import graph: {module: {imported module: first line}} (self-imports dropped)."""
    out = {}
    for name, mod in modules().items():
        edges = {}
        for target, line, _ in _imports(mod):
            if target != name:
                edges.setdefault(target, line)
        out[name] = edges
    return out


def _strongly_connected(g):
    """Tarjan's strongly connected components of ``g`` with more than one module, each sorted."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return comps


def _cycle_in(comp, g):
    """One cycle through the first module of ``comp``: ``a --line N--> b --line M--> a`` (a imports b on line N)."""
    members = set(comp)
    start = comp[0]
    parent = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(g[v]):
            if w not in members:
                continue
            if w == start:
                path = [v]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                path = path[::-1] + [start]
                return path[0] + "".join(f" --line {g[a][b]}--> {b}" for a, b in zip(path, path[1:]))
            if w not in parent:
                parent[w] = v
                queue.append(w)
    return ""


def _in(name, rooms):
    return any(name == r or name.startswith(r + ".") for r in rooms)


def test_the_package_is_found():
    mods = modules()
    for name in ("hpcblend", "hpcblend.config", "hpcblend.geometry", "hpcblend.kernels", "hpcblend.kernels.fit"):
        assert name in mods, sorted(mods)
    edges = graph()["hpcblend.kernels.fit"]
    assert "hpcblend.kernels.convolution" in edges  # a relative import, resolved
    assert "hpcblend.config" in graph()["hpcblend"]  # an import inside a function (the facade's load_job)


def test_cycle_finder_on_a_small_graph():
    g = {"a": {"b": 3}, "b": {"c": 5}, "c": {"a": 7, "d": 1}, "d": {}, "e": {"e": 2}}
    assert _strongly_connected(g) == [["a", "b", "c"]]
    assert _cycle_in(["a", "b", "c"], g) == "a --line 3--> b --line 5--> c --line 7--> a"


def test_no_import_cycles():
    g = graph()
    comps = _strongly_connected(g)
    assert not comps, "import cycles between hpcblend modules:\n" + "\n".join(
        f"  {', '.join(c)}\n    e.g. {_cycle_in(c, g)}" for c in comps)


def test_kernels_import_nothing_of_hpcblend():
    bad = []
    for name, mod in modules().items():
        if not _in(name, ("hpcblend.kernels",)):
            continue
        for target, line, relative in _imports(mod):
            if not relative or not _in(target, ("hpcblend.kernels",)):
                bad.append(f"{mod.rel}:{line} imports {target}")
    assert not bad, "kernels/ must import nothing of hpcblend (relative imports of kernels only):\n  " + \
        "\n  ".join(bad)


def _parents(name):
    """Parent packages whose ``__init__`` an import of ``name`` runs (not the root facade)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def test_run_path_never_imports_report_analysis_or_simulate():
    g = graph()
    starts = sorted(n for n in g if _in(n, RUN_PATH))
    assert starts
    via = {n: None for n in starts}
    queue = list(starts)
    while queue:
        v = queue.pop(0)
        for w in list(g[v]) + _parents(v):
            if w not in via:
                via[w] = v
                queue.append(w)
    bad = []
    for n in sorted(via):
        if _in(n, OFFLINE) and not _in(via[n], OFFLINE):  # the first step into an offline room
            chain = [n]
            while via[chain[-1]] is not None:
                chain.append(via[chain[-1]])
            chain = chain[::-1]
            bad.append(chain[0] + "".join(f" --{'line ' + str(g[a][b]) if b in g[a] else 'parent'}--> {b}"
                                          for a, b in zip(chain, chain[1:])))
    assert not bad, "run-path modules reach offline rooms (report/, analysis/, simulate/):\n  " + "\n  ".join(bad)


def test_no_module_over_the_line_limit():
    for name, reason in LONG_MODULES.items():
        assert name in modules() and reason.strip(), f"LONG_MODULES[{name!r}]: no such module, or no reason"
    long = [f"{m.rel}: {len(m.text.splitlines())} lines" for name, m in sorted(modules().items())
            if len(m.text.splitlines()) > MAX_MODULE_LINES and name not in LONG_MODULES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them):\n  " + "\n  ".join(long)


def _function_lines(node):
    """Lines of a def from its ``def`` line to its end, without its docstring."""
    n = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        n -= first.end_lineno - first.lineno + 1
    return n


def test_no_function_over_the_line_limit_without_a_reason():
    long = []
    for name, mod in sorted(modules().items()):
        defs = [n for n in ast.walk(mod.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in sorted(defs, key=lambda n: n.lineno):
            n = _function_lines(node)
            if n > MAX_FUNCTION_LINES and not _LONG_MARKER.search(ast.get_docstring(node) or ""):
                long.append(f"{mod.rel}:{node.lineno} {node.name}: {n} lines")
    assert not long, (f"functions over {MAX_FUNCTION_LINES} lines (split them, or say why in a docstring line "
                      f"'Long: <reason>'):\n  " + "\n  ".join(long))


def _bound_names(tree):
    """Names a module binds at its top level (defs, classes, assignments, imports; also under if/try)."""
    names = set()
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for sub in getattr(node, field, []):
                    body.extend(sub.body if isinstance(sub, ast.ExceptHandler) else [sub])
    return names


def _all_names(tree):
    """The literal ``__all__`` of a module (None without one)."""
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return ast.literal_eval(node.value)
    return None


def test_every_module_has_a_docstring_and_all():
    bad = []
    for name, mod in sorted(modules().items()):
        if not (ast.get_docstring(mod.tree) or "").strip():
            bad.append(f"{mod.rel}: no module docstring")
        names = _all_names(mod.tree)
        if names is None:
            bad.append(f"{mod.rel}: no __all__")
            continue
        bound = _bound_names(mod.tree)
        missing = [n for n in names if n not in bound and not (mod.is_package and f"{name}.{n}" in modules())]
        if missing:
            bad.append(f"{mod.rel}: __all__ names {missing}, not bound in the module")
    assert not bad, "modules without a docstring or a valid __all__:\n  " + "\n  ".join(bad)


def test_box_is_defined_only_in_geometry():
    where = [(mod.rel, node.lineno) for mod in modules().values() for node in ast.walk(mod.tree)
             if isinstance(node, ast.ClassDef) and node.name == "Box"]
    assert [rel for rel, _ in where] == ["hpcblend/geometry.py"], \
        f"class Box must be defined once, in hpcblend/geometry.py; found: {where}"


def test_yaml_is_parsed_only_by_the_strict_loader():
    """One YAML reader (``hpcblend.io.yaml_files``): no ``yaml.load``/``safe_load``/... anywhere else."""
    loaders = {"load", "safe_load", "full_load", "unsafe_load", "load_all", "safe_load_all", "full_load_all",
               "unsafe_load_all"}
    where = [f"{mod.rel}:{node.lineno} yaml.{node.attr}" for name, mod in sorted(modules().items())
             if name != "hpcblend.io.yaml_files" for node in ast.walk(mod.tree)
             if isinstance(node, ast.Attribute) and node.attr in loaders
             and isinstance(node.value, ast.Name) and node.value.id == "yaml"]
    assert not where, "YAML is read with hpcblend.io.yaml_files.load_yaml only:\n  " + "\n  ".join(where)
