"""README examples are executed, so they cannot drift from the code."""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes checkpoints under the working directory
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 4
    # The quick start is `import lightning as L`: it runs in a fresh interpreter, as a user's
    # script would, so the package binds to `lightning.pytorch` there.
    check = (
        "\nimport json, sys\nframe = monitor.to_frame()\n"
        "print(json.dumps({'last': int(frame.step.max()), 'b3': 'pathways.b.3.weight' in set(frame.target),"
        " 'trainer': type(trainer).__module__, 'old': 'pytorch_lightning' in sys.modules}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_CRITICAL_NAMESPACE"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", blocks[0] + check], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"last": 300, "b3": True, "trainer": "lightning.pytorch.trainer.trainer", "old": False}
    spaces: list[dict] = [{}]
    for block in blocks[1:]:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        spaces.append(namespace)
    assert sorted(spaces[2]["spectral"].to_frame().target.unique()) == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert set(spaces[2]["fisher"].to_frame().metric) == {"fisher_trace"}
    assert {"ablation/a", "ablation/b", "rsv/mean"} <= set(spaces[3]["reliance"].to_frame().target)
    sweep = spaces[1]["table"]
    assert (sweep.status == "ok").all() and len(sweep) == 6  # baseline + 2 windows, 2 seeds
    assert sweep.attrs["epochs_trained"] < sweep.attrs["epochs_independent"]  # shared prefixes


def _steps(script: str) -> list[str]:
    """The commands of a shell script, one per ``&&``-joined step, comments left out."""
    lines = (line for line in script.splitlines() if not line.lstrip().startswith("#"))
    return [step.strip() for line in lines for step in line.split("&&") if step.strip()]


def test_readme_commands_are_what_ci_runs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    ci = _steps(open(os.path.join(ROOT, ".ci", "run")).read())
    commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert len(commands) == 2 and "lightning-critical demo" in commands[0]
    # CI installs and tests exactly as the README says, in the same order (with the static
    # checks in between, before the tests)
    positions = [ci.index(step) for step in _steps(commands[1])]
    assert positions == sorted(positions), (positions, ci)
    lint, tests = ci.index("make lint PYTHON=python"), ci.index("python -m pytest")
    assert ci.index('pip install -e ".[dev]"') < lint < tests
