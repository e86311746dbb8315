"""The layering rules (issue 19), read from the sources' import statements, lazy imports inside functions
included: the PLE store and the /proc tools import nothing of the project; the contract only the store;
the exporter never the runtime. And the contract is torch-free when imported."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# source folder -> the package name it installs as (pyproject's package-dir)
PACKAGES = {"ple_store": "gemma_edge.ple_store", "export": "gemma_edge.export", "runtime_py": "gemma_edge.runtime",
            "gemma_edge/contract": "gemma_edge.contract"}
# what each layer may import of the project (itself always)
ALLOWED = {
    "gemma_edge.ple_store": set(),
    "gemma_edge.procfs": set(),
    "gemma_edge.contract": {"gemma_edge.ple_store"},
    "gemma_edge.export": {"gemma_edge.contract", "gemma_edge.ple_store", "gemma_edge.procfs"},
    "gemma_edge.runtime": {"gemma_edge.contract", "gemma_edge.ple_store", "gemma_edge.procfs", "gemma_edge.export"},
}


def project_imports(path: Path, package: str) -> set[str]:
    """Every gemma_edge module `path` imports (absolute or relative, at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gemma_edge")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if mod.startswith("gemma_edge"):
                # `from gemma_edge import procfs` imports gemma_edge.procfs
                found |= {f"{mod}.{a.name}" if mod == "gemma_edge" else mod for a in node.names}
    return found


def layer_of(module: str) -> str:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return module


def sources():
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            yield path, package
    yield REPO / "gemma_edge" / "procfs.py", "gemma_edge"


def test_every_layer_imports_only_what_it_may():
    broken = []
    for path, package in sources():
        own = layer_of(package if path.name != "procfs.py" else "gemma_edge.procfs")
        for mod in project_imports(path, package):
            dep = layer_of(mod)
            if dep != own and dep not in ALLOWED[own]:
                broken.append(f"{path.relative_to(REPO)} ({own}) imports {mod}")
    assert not broken, "layering rules broken:\n" + "\n".join(broken)


def test_the_checker_sees_a_broken_rule(tmp_path):
    """The parser must catch the import shapes the project uses, or the rule test could pass vacuously."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from gemma_edge.runtime.tokenizer import x\n    from ..runtime import y\n"
                 "from gemma_edge import procfs\n")
    assert project_imports(f, "gemma_edge.export") == {"gemma_edge.runtime.tokenizer", "gemma_edge.runtime",
                                                      "gemma_edge.procfs"}


@pytest.mark.parametrize("module", ["gemma_edge.contract.bundle_format", "gemma_edge.contract.config",
                                    "gemma_edge.contract.presets", "gemma_edge.contract.chat", "gemma_edge.procfs"])
def test_the_contract_is_torch_free(module):
    code = (f"import sys, {module}\n"
            "heavy = sorted(m for m in ('torch', 'executorch', 'transformers', 'numpy') if m in sys.modules)\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} pulled in {out}"


def module_files() -> dict[str, Path]:
    """Project module name -> its source file."""
    files = {"gemma_edge.procfs": REPO / "gemma_edge" / "procfs.py"}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            files[".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return files


def module_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (at any depth of the file: a lazy import inside a
    function closes a circle as surely as one at the top)."""
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                for a in node.names:  # `from pkg import module` imports the module, else the names come from mod
                    out.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in files else mod)
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
        graph[name] = {m for m in out if m in files and m != name}
    return graph


def test_no_import_circle():
    """No module reaches itself through the modules it imports (exporter <-> onnx_export was one)."""
    files = module_files()
    graph = module_graph(files)
    assert "gemma_edge.export.exporter" in graph and "gemma_edge.export.step" in graph["gemma_edge.export.exporter"]
    circles = []
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                circles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # a package's __init__ re-exporting its modules is not a circle of jobs (its modules import siblings)
    packages = {m for m, path in files.items() if path.name == "__init__.py"}
    circles = [c for c in circles if not packages & set(c.split(" -> "))]
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_cpu_isa_names_the_machine_class(tmp_path):
    # every benchmark figure records it: an AVX2-only machine must not read as AVX-512, an Arm phone core as other
    from gemma_edge.procfs import cpu_isa

    cases = {"flags\t\t: fpu sse2 avx2 fma\nmodel name\t: EPYC\n": ("avx2", ["avx2", "fma"]),
             "model name\t: Xeon\nflags\t\t: avx2 fma avx512f avx512_vnni amx_tile\n":
                 ("avx512", ["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile"]),
             "Features\t: fp asimd asimddp i8mm\nCPU part\t: 0xd41\n": ("arm-i8mm", ["asimd", "asimddp", "i8mm"]),
             "Features\t: fp asimd asimddp\n": ("arm-dotprod", ["asimd", "asimddp"]),
             "": ("other", [])}
    for text, (cls, features) in cases.items():
        (tmp_path / "cpuinfo").write_text(text)
        isa = cpu_isa(str(tmp_path / "cpuinfo"))
        assert (isa["class"], isa["features"]) == (cls, features), text
