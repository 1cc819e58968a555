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
    assert 'make "${1:-test}"' in (TEMPLATE / ".ci" / "run").read_text()  # make test, or $1


def test_the_canary_runs_weekly_and_on_demand_with_make_canary() -> None:
    canary = yaml.safe_load((TEMPLATE / ".github" / "workflows" / "canary.yml").read_text())
    triggers = canary[True]  # YAML 1.1 reads the key `on` as True
    assert set(triggers) == {"schedule", "workflow_dispatch"}
    assert len(triggers["schedule"][0]["cron"].split()) == 5
    steps = canary["jobs"]["newest"]["steps"]
    assert any(step.get("run") == "bash .ci/run canary" for step in steps)
    assert "canary" in make_targets(TEMPLATE / "Makefile")


def test_template_workflows_are_zizmor_clean() -> None:
    result = run([str(BIN / "zizmor"), "--offline", "--quiet", ".github"], cwd=TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr
