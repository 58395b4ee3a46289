"""README examples are executed, so they cannot drift from the code."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes checkpoints under the working directory
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    spaces = []
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        spaces.append(namespace)
    frame = spaces[0]["monitor"].to_frame()
    assert frame.step.max() == 300 and "pathways.b.3.weight" in set(frame.target)
    assert sorted(spaces[1]["spectral"].to_frame().target.unique()) == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert set(spaces[1]["fisher"].to_frame().metric) == {"fisher_trace"}


def test_readme_commands_are_what_ci_runs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert len(commands) == 2 and "lightning-critical demo" in commands[0]
    assert commands[1] in ci
