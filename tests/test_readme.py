"""The README tells the truth: its two set-up commands and its Python example."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_readme_opens_with_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", _readme(), re.S).group(1).strip().splitlines()
    assert first_block == ["pip install -r requirements.txt && python -m ma2ml_jax.train",
                           "pip install -r requirements.txt && python -m pytest -q"]


def test_ci_runs_the_readme_test_command_verbatim():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert "pip install -r requirements.txt && python -m pytest -q\n" in f.read()


def test_objective_example_runs(tmp_path, monkeypatch, capsys):
    section = _readme().split("## Your own objective", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert len(result.trials) == 20 * 8
    # The best pipeline scores what the example's objective says it scores.
    assert result.best_reward == max(namespace["objective"]([t["pipeline"]])[0]
                                     for t in result.trials)
    assert "Best pipeline of 160 evaluated" in capsys.readouterr().out
    assert (tmp_path / "runs" / "objective" / "trials.jsonl").exists()
