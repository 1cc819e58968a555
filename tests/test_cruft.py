"""`cruft create` from a tag, a user edit, a skipped file, a new tagged template version,
`cruft diff --checkout` and `cruft update --checkout` to it: the template's change and the
user's edit are both kept, and the skipped file is left alone. The files a project calls
yours (`qq.py`, `tests/test_qq.py`) are left out of updates, even where the template changed
them. A project made with plain `cookiecutter` is linked, as its README says, to the version
it came from, and then updates from there."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import time
from pathlib import Path

from conftest import BIN, TEMPLATE, clean_env, run

IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "__pycache__", ".*_cache")


def git(cwd: Path, *args: str) -> str:
    result = run(["git", *args], cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def template_repository(tmp_path: Path) -> Path:
    """The template's working tree committed to a new repository, tagged v0.1.0."""
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE, template, ignore=IGNORED)
    git(template, "init", "-q", "-b", "main")
    git(template, "add", "-A")
    git(template, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "v1")
    git(template, "tag", "v0.1.0")
    return template


def make_project(
    template: Path, tmp_path: Path, *options: str, tool: str = "cruft"
) -> tuple[Path, str]:
    """`cruft create` (or plain `cookiecutter`) from `template` with the defaults and
    `options`; the project, committed to a git repository of its own, and what the
    command printed."""
    command = [str(BIN / tool)] + (["create"] if tool == "cruft" else [])
    out = tmp_path / "out"
    made = run(
        [*command, "--no-input", *options, "--output-dir", str(out), str(template)], tmp_path
    )
    assert made.returncode == 0, made.stdout + made.stderr
    project = out / "my_worker"
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    commit(project, "created")
    return project, made.stdout


def commit(repository: Path, message: str, *options: str) -> None:
    """Commit in `repository` (a template or a project)."""
    identity = ("-c", "user.name=u", "-c", "user.email=u@example.com")
    git(repository, *identity, "commit", "-q", *options, "-m", message)


def test_cruft_update_brings_template_changes_and_keeps_user_edits(tmp_path: Path) -> None:
    template = template_repository(tmp_path)

    project, _ = make_project(template, tmp_path, "--checkout", "v0.1.0")

    qq = project / "my_worker" / "qq.py"
    qq.write_text(qq.read_text().replace("a stand-in for real work", "our real work"))
    makefile = project / "Makefile"
    makefile.write_text(makefile.read_text() + "\nours:\n\techo our target\n")
    cruft_json = project / ".cruft.json"
    state = json.loads(cruft_json.read_text())
    cruft_json.write_text(json.dumps({**state, "skip": ["Dockerfile"]}, indent=2) + "\n")
    dockerfile = (project / "Dockerfile").read_text()
    commit(project, "edit", "-a")

    summary = (
        template
        / "{{cookiecutter.__package_slug}}"
        / "{{cookiecutter.__package_slug}}"
        / "worker"
        / "summary.py"
    )
    summary.write_text(
        summary.read_text().replace(
            '"""The result of one run of the worker."""',
            '"""The result of one run of the worker (v2)."""',
        )
    )
    template_dockerfile = template / "{{cookiecutter.__package_slug}}" / "Dockerfile"
    template_dockerfile.write_text("# v2\n" + template_dockerfile.read_text())
    commit(template, "v2", "-a")
    git(template, "tag", "v0.2.0")

    checked = run([str(BIN / "cruft"), "check"], cwd=project)
    assert checked.returncode != 0  # the project is behind the template
    # `cruft diff`: the project against the template at its recorded commit (only our edit);
    # with --checkout, against the new version (its change and our edit, as the README says).
    recorded = run([str(BIN / "cruft"), "diff"], cwd=project)
    assert recorded.returncode == 0, recorded.stderr
    assert "echo our target" in recorded.stdout
    assert "(v2)" not in recorded.stdout
    assert "our real work" not in recorded.stdout  # qq.py is ours: [tool.cruft] skip
    ahead = run([str(BIN / "cruft"), "diff", "--checkout", "v0.2.0"], cwd=project)
    assert ahead.returncode == 0, ahead.stderr
    assert "(v2)" in ahead.stdout
    assert "echo our target" in ahead.stdout
    updated = run(
        [
            *(str(BIN / "cruft"), "update", "--checkout", "v0.2.0"),
            *("--skip-apply-ask", "--allow-untracked-files"),
        ],
        cwd=project,
    )
    assert updated.returncode == 0, updated.stdout + updated.stderr

    assert "(v2)" in (project / "my_worker" / "worker" / "summary.py").read_text()
    assert "our real work" in qq.read_text()
    assert "echo our target" in makefile.read_text()
    assert (project / "Dockerfile").read_text() == dockerfile  # skipped: ours, not updated
    assert (
        json.loads(cruft_json.read_text())["commit"] == git(template, "rev-parse", "v0.2.0").strip()
    )
    assert run([str(BIN / "cruft"), "check"], cwd=project).returncode == 0


def test_the_files_that_are_yours_are_left_out_of_updates(tmp_path: Path) -> None:
    """The template's next version changes the sample in qq.py and tests/test_qq.py, where
    the user rewrote them: `cruft update` leaves both as the user wrote them (no conflict) and
    brings the rest."""
    template = template_repository(tmp_path)
    out = tmp_path / "out"
    created = run(
        [str(BIN / "cruft"), "create", "--no-input", "--output-dir", str(out), str(template)],
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    project = out / "my_worker"
    yours = [project / "my_worker" / "qq.py", project / "tests" / "test_qq.py"]
    for path in yours:
        path.write_text(path.read_text().replace('"""', '"""Ours. ', 1))
    mine = [path.read_text() for path in yours]
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    commit(project, "ours")

    package = template / "{{cookiecutter.__package_slug}}"
    sample = package / "{{cookiecutter.__package_slug}}" / "qq.py"
    for path in (sample, package / "tests" / "test_qq.py", package / "Makefile"):
        path.write_text(path.read_text().replace("\n", "\n# The template's v2.\n", 1))
    commit(template, "v2", "-a")
    updated = run([str(BIN / "cruft"), "update", "--skip-apply-ask"], cwd=project)

    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert [path.read_text() for path in yours] == mine
    assert "# The template's v2." in (project / "Makefile").read_text()  # the rest arrived
    status = git(project, "status", "--porcelain")
    assert status.split() == ["M", ".cruft.json", "M", "Makefile"], status
    assert not list(project.rglob("*.rej"))


def test_a_plain_cookiecutter_project_links_to_the_version_it_came_from(tmp_path: Path) -> None:
    """The rendered README's `cruft link --checkout v<version>` links to the template version
    the project was rendered from, so `cruft update` brings what changed since."""
    template = template_repository(tmp_path)
    version = json.loads((template / "cookiecutter.json").read_text())["__template_version"]
    git(template, "tag", "-f", f"v{version}")
    project, _ = make_project(template, tmp_path, tool="cookiecutter")
    makefile = template / "{{cookiecutter.__package_slug}}" / "Makefile"
    makefile.write_text(makefile.read_text() + "\n# A change of the template's next version.\n")
    commit(template, "v2", "-a")

    readme = (project / "README.md").read_text()
    (command,) = re.findall(r"^\.venv/bin/(cruft link .*)$", readme, re.MULTILINE)
    link = command.replace("<template-url>", str(template)).split()
    linked = run([str(BIN / link[0]), *link[1:], "--no-input"], cwd=project)
    assert linked.returncode == 0, linked.stdout + linked.stderr

    state = json.loads((project / ".cruft.json").read_text())
    assert state["commit"] == git(template, "rev-parse", f"v{version}^{{commit}}").strip()
    assert run([str(BIN / "cruft"), "check"], cwd=project).returncode != 0  # behind: v2
    git(project, "add", ".cruft.json")
    commit(project, "link")
    updated = run([str(BIN / "cruft"), "update", "--skip-apply-ask"], cwd=project)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert "# A change of the template's next version." in (project / "Makefile").read_text()


def test_next_steps_follow_the_first_render_only(tmp_path: Path) -> None:
    """`cruft create` prints the next steps; `cruft diff` and `cruft update`, which render the
    template again into a temporary folder, do not print them into their output."""
    template = template_repository(tmp_path)
    project, printed = make_project(template, tmp_path)
    assert "Created My Worker. Next:" in printed
    readme = template / "{{cookiecutter.__package_slug}}" / "README.md"
    readme.write_text(readme.read_text() + "\nA line from the template's next version.\n")
    commit(template, "v2", "-a")

    differences = run([str(BIN / "cruft"), "diff", "--checkout", "main"], cwd=project)
    updated = run([str(BIN / "cruft"), "update", "--skip-apply-ask"], cwd=project)

    assert differences.returncode == 0, differences.stderr
    assert "+A line from the template's next version." in differences.stdout
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert "A line from the template's next version." in (project / "README.md").read_text()
    for output in (differences, updated):
        assert "Next:" not in output.stdout + output.stderr
        assert "Created My Worker" not in output.stdout + output.stderr


def test_a_plain_cookiecutter_project_is_linked_with_cruft_link(tmp_path: Path) -> None:
    template = template_repository(tmp_path)
    out = tmp_path / "out"
    made = run(
        [str(BIN / "cookiecutter"), "--no-input", "--output-dir", str(out), str(template)],
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    project = out / "my_worker"
    assert not (project / ".cruft.json").exists()
    assert run([str(BIN / "cruft"), "check"], cwd=project).returncode != 0  # not linked yet

    linked = run([str(BIN / "cruft"), "link", "--no-input", str(template)], cwd=project)
    assert linked.returncode == 0, linked.stdout + linked.stderr

    state = json.loads((project / ".cruft.json").read_text())
    assert state["commit"] == git(template, "rev-parse", "HEAD").strip()
    checked = run([str(BIN / "cruft"), "check"], cwd=project)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    differences = run([str(BIN / "cruft"), "diff", "--exit-code"], cwd=project)
    assert differences.returncode == 0, differences.stdout  # the render is the template's


def answer_in_a_terminal(
    command: list[str], cwd: Path, answers: list[str], timeout: float = 120
) -> tuple[int, str]:
    """Run `command` in a pseudo-terminal, typing each answer when the next question appears;
    return its exit status and everything it wrote."""
    env = clean_env(GIT_PAGER="cat", PAGER="cat", TERM="dumb", COLUMNS="120")
    pid, fd = pty.fork()
    if pid == 0:  # the child: run the command with the terminal as stdin/stdout/stderr
        os.chdir(cwd)
        os.execvpe(command[0], command, env)
    output = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, (
                f"no exit within {timeout}s; output:\n{output.decode(errors='replace')}"
            )
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if pending and output.rstrip().endswith(b":") and b"Apply diff" in output[-200:]:
                os.write(fd, pending.pop(0).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_interactive_cruft_update_asks_shows_and_applies(tmp_path: Path) -> None:
    """`cruft update` as a person runs it: at its question, `v` shows the changes, then `y`
    applies them (typer 0.26 and newer made cruft 2.16 crash there)."""
    template = template_repository(tmp_path)
    project, _ = make_project(template, tmp_path)
    readme = template / "{{cookiecutter.__package_slug}}" / "README.md"
    readme.write_text(readme.read_text() + "\nA line from the template's next version.\n")
    commit(template, "v2", "-a")

    status, output = answer_in_a_terminal([str(BIN / "cruft"), "update"], project, ["v", "y"])

    assert status == 0, output
    assert "Traceback" not in output, output
    assert output.count("Apply diff and update?") == 2, output  # asked again after `v`
    assert "+A line from the template's next version." in output  # `v` showed the change
    assert "A line from the template's next version." in (project / "README.md").read_text()
