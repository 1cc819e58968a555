"""The template's own CI: its workflow runs `make test` through `.ci/run`, pinned and clean."""

from __future__ import annotations

import yaml
from conftest import BIN, TEMPLATE, make_targets, run, workflow_problems


def test_template_workflows_are_pinned_and_call_real_targets() -> None:
    workflows = {
        path.name: yaml.safe_load(path.read_text())
        for path in (TEMPLATE / ".github" / "workflows").glob("*.yml")
    }
    assert "ci.yml" in workflows
    assert workflow_problems(workflows, make_targets(TEMPLATE / "Makefile")) == []
    steps = workflows["ci.yml"]["jobs"]["test"]["steps"]
    assert any(step.get("run") == "bash .ci/run" for step in steps)
    assert "make test" in (TEMPLATE / ".ci" / "run").read_text()


def test_template_workflows_are_zizmor_clean() -> None:
    result = run([str(BIN / "zizmor"), "--offline", "--quiet", ".github"], cwd=TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr
