"""launch/colab.ipynb is a valid notebook and runs top to bottom on a CI-sized search.

No Jupyter packages are needed: the code cells are executed in order in one fresh namespace, as
a kernel would; shell and magic lines (`!pip ...`, `%cd ...`) become no-ops, and the parameters
cell is followed by an injected cell of overrides (papermill's convention: the cell tagged
"parameters").
"""

import json
import os
import re
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "launch", "colab.ipynb")
# 2 iterations x 2 pipelines, 1 epoch on 128 images, for both searchers.
CI_PARAMETERS = {"ITERATIONS": 2, "PIPELINES": 2, "EPOCHS": 1, "MAX_TRAIN": 128, "TOP_K": 2}


def _notebook():
    with open(NOTEBOOK) as f:
        return json.load(f)


def _source(cell):
    return "".join(cell["source"])


def _code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _parameters_cell(nb):
    tagged = [c for c in _code_cells(nb) if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, "exactly one code cell must be tagged 'parameters'"
    return tagged[0]


def to_python(source: str) -> str:
    """IPython cell source -> plain Python: `!cmd` and `%magic` lines become `pass` statements."""
    out = []
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("!", "%")):
            indent = line[:len(line) - len(stripped)]
            out.append(f"{indent}pass  # IPython: {stripped}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def test_to_python_keeps_indented_shell_lines_valid():
    code = to_python('try:\n    import x\nexcept ImportError:\n    !pip install -q x\n%cd repo\n')
    assert code == ("try:\n    import x\nexcept ImportError:\n"
                    "    pass  # IPython: !pip install -q x\n"
                    "pass  # IPython: %cd repo\n")
    compile(code, "cell", "exec")


def test_notebook_is_valid_nbformat_4():
    nb = _notebook()
    assert set(nb) == {"cells", "metadata", "nbformat", "nbformat_minor"}
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] == 5
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids)
    for cell in nb["cells"]:
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", cell["id"])
        assert isinstance(cell["metadata"], dict)
        assert isinstance(cell["source"], list) and all(isinstance(s, str) for s in cell["source"])
        # Every line but the last ends with its newline, as Jupyter writes them.
        assert all(s.endswith("\n") for s in cell["source"][:-1])
        if cell["cell_type"] == "code":
            assert set(cell) == {"cell_type", "id", "metadata", "source", "outputs",
                                 "execution_count"}
            # Committed clean: no outputs to go stale.
            assert cell["outputs"] == [] and cell["execution_count"] is None
            compile(to_python(_source(cell)), cell["id"], "exec")
        else:
            assert cell["cell_type"] == "markdown"
            assert set(cell) == {"cell_type", "id", "metadata", "source"}


def test_notebook_installs_only_when_the_package_does_not_import():
    install = [c for c in _code_cells(_notebook()) if "!pip" in _source(c)]
    assert len(install) == 1
    source = _source(install[0])
    # pip runs in the except branch only, on the requirements as requirements_to_install left them.
    branch = re.search(r"\nexcept ImportError:\n((?:    .*\n)+)", source).group(1)
    assert "requirements_to_install(" in branch
    assert re.search(r'\n    !pip install -q -r "\{f\.name\}"\n', "\n" + branch)


def test_ci_parameters_exist_in_the_parameters_cell():
    defined = set(re.findall(r"^([A-Z_]+) = ", _source(_parameters_cell(_notebook())), re.M))
    assert set(CI_PARAMETERS) | {"REPO_DIR", "WORKDIR", "ALGORITHM", "BASELINE"} <= defined


class _Displayed(list):
    """A stand-in for IPython.display that records what the notebook shows.

    The stub package looks like IPython outside a kernel to libraries that probe it (matplotlib
    reads `IPython.version_info` and calls `IPython.get_ipython()` when it draws).
    """

    def module(self):
        display = types.ModuleType("IPython.display")

        class Image:
            def __init__(self, filename):
                self.filename = filename

        class Markdown:
            def __init__(self, data):
                self.data = data

        display.Image, display.Markdown, display.display = Image, Markdown, self.append
        ipython = types.ModuleType("IPython")
        ipython.display, ipython.version_info = display, (9, 0, 0)
        ipython.get_ipython = lambda: None
        return ipython, display


def _install_cell(nb):
    cells = [c for c in _code_cells(nb) if "requirements_to_install" in _source(c)]
    assert len(cells) == 1
    return cells[0]


def test_install_keeps_the_runtimes_jax(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cell puts REPO_DIR on it
    namespace = {"__name__": "__main__", "REPO_DIR": ROOT}
    exec(compile(to_python(_source(_install_cell(_notebook()))), "install", "exec"), namespace)
    keep, runtime_jax = namespace["requirements_to_install"], namespace["runtime_jax"]
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = f.read().splitlines()
    jax_lines = [line for line in lines if re.match(r"jax(lib)?==", line)]
    pinned = jax_lines[0].split("==")[1]
    assert len(jax_lines) == 2
    others = [line for line in lines if line not in jax_lines]

    # The JAX that already imports here (the pinned one, on this CPU) is seen as it is ...
    import jax

    assert runtime_jax() == (jax.__version__, "cpu")
    # ... and a runtime's JAX of the pinned version is not reinstalled, nor its accelerator
    # plugin replaced by the CPU jaxlib: jax and jaxlib are left out, the rest installed.
    for backend in ("cpu", "gpu", "tpu"):
        assert keep(lines, pinned, backend) == others
    # Another version on an accelerator: the pinned version built for that accelerator.
    assert keep(lines, "0.4.1", "gpu") == others + [f"jax[cuda12]=={pinned}"]
    assert keep(lines, "0.4.1", "tpu") == others + [f"jax[tpu]=={pinned}"]
    # No JAX yet, or another version on a CPU: requirements.txt as it is.
    assert keep(lines, None, None) == keep(lines, "0.4.1", "cpu") == lines


def test_notebook_runs_a_tiny_search_and_report(tmp_path, monkeypatch, capsys):
    nb = _notebook()
    displayed = _Displayed()
    ipython, display = displayed.module()
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the notebook puts REPO_DIR on it
    monkeypatch.chdir(tmp_path)
    workdir = str(tmp_path / "runs")
    overrides = dict(CI_PARAMETERS, REPO_DIR=ROOT, WORKDIR=workdir)
    namespace = {"__name__": "__main__"}
    parameters = _parameters_cell(nb)
    for cell in _code_cells(nb):
        exec(compile(to_python(_source(cell)), f"colab.ipynb:{cell['id']}", "exec"), namespace)
        if cell is parameters:
            namespace.update(overrides)

    # Both searches ran with the CI budget and logged every pipeline.
    result, baseline = namespace["result"], namespace["baseline"]
    assert namespace["config"].search.algorithm == "ma2ml"
    for run, algorithm in ((result, "ma2ml"), (baseline, "random")):
        assert run.workdir == os.path.join(workdir, algorithm)
        assert len(run.trials) == 2 * 2
        with open(os.path.join(run.workdir, "trials.jsonl")) as f:
            assert len(f.read().splitlines()) == 2 * 2
    out = capsys.readouterr().out
    jax = namespace["jax"]
    assert f"backend cpu, devices {jax.devices()}" in out  # the install cell names what it uses
    assert f"reward {result.best_reward:.4f}" in out  # search.summary printed the best pipeline
    assert "Best pipeline of 4 evaluated" in out

    # The report's plots exist and were displayed; summary.md names the best reward.
    report_dir = os.path.join(workdir, "report")
    shown = [d.filename for d in displayed if hasattr(d, "filename")]
    for name in ("topk.png", "rewards.png", "pareto.png"):
        path = os.path.join(report_dir, name)
        assert os.path.getsize(path) > 0 and path in shown
    assert any(os.path.basename(p).startswith("actions_") for p in shown)
    with open(os.path.join(report_dir, "summary.md")) as f:
        summary = f.read()
    assert f"**{result.best_reward:.4f}**" in summary
    markdown = [d.data for d in displayed if hasattr(d, "data")]
    assert len(markdown) == 1 and "![" not in markdown[0]
    assert f"{baseline.best_reward:.4f}" in markdown[0]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
