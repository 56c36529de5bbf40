"""docs/ci.md's GitHub Actions and GitLab CI jobs, run against a real server: their `run:`
steps and `script:` lines in order, with the secrets and CI variables filled in the way the
CI system would (the install and build steps are replaced by this checkout's `cas` and a
release tree).  Then the pipeline's outcomes and exit codes: a re-run succeeds, other
content under the same version fails with `(release_exists)`, a wrong token fails."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from conftest import Server, start_server
from doc_runner import run_script

from cas.metadata import SqliteMetadata

CI_DOC = Path(__file__).resolve().parent.parent / "docs" / "ci.md"
CI_TOKEN, ADMIN_TOKEN = "ci-secret-token-0123456789", "release-manager-secret-0123456789"
REPLACED = {"Install deltacas", "Build"}           # GitHub steps the test provides itself
REPLACED_LINES = ("pip install deltacas", "make dist")


def yaml_blocks() -> list[Any]:
    return [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```", CI_DOC.read_text(), re.S | re.M)]


@pytest.fixture
def ci_server(tmp_path: Path) -> Iterator[Server]:
    config = ("delta_builder = false\n"
              f'[[tokens]]\nname = "ci"\nscope = "publish"\ntoken = "{CI_TOKEN}"\n'
              f'[[tokens]]\nname = "release-manager"\nscope = "admin"\ntoken = "{ADMIN_TOKEN}"\n')
    server = start_server(tmp_path / "store", config=config)
    key = str(server.store / "keys" / "release.pem")
    tree = tmp_path / "base"
    tree.mkdir()
    (tree / "app.txt").write_text("app 1.3.0\n")
    server.cas("publish", str(tree), "--product", "app", "--version", "1.3.0", "--key", key, "--status",
               "released", "--channel", "beta")
    yield server
    server.stop()


def workspace(tmp_path: Path, name: str) -> Path:
    work = tmp_path / name
    (work / "dist").mkdir(parents=True)
    (work / "dist" / "app.txt").write_text("app 1.4.0\n")
    return work


def github_expr(text: str, secrets: dict[str, str], github: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        scope, name = match.group(1), match.group(2)
        return {"secrets": secrets, "github": github}[scope][name]
    return re.sub(r"\$\{\{\s*(secrets|github)\.(\w+)\s*\}\}", value, str(text))


def run_github(workflow: dict[str, Any], server: Server, work: Path, secrets: dict[str, str],
               tag: str = "v1.4.0") -> list[tuple[str, int, str, str]]:
    github = {"ref_name": tag}
    runs = []
    for job_name, job in workflow["jobs"].items():
        job_env = {k: github_expr(v, secrets, github) for k, v in job.get("env", {}).items()}
        job_env["CAS_SERVER"] = server.url      # the test server instead of updates.example.com
        for step in job["steps"]:
            if "run" not in step or step.get("name") in REPLACED:
                continue
            env = {**job_env, **{k: github_expr(v, secrets, github) for k, v in step.get("env", {}).items()},
                   "RUNNER_TEMP": str(work / "runner-temp"), "GITHUB_RUN_ID": "4242"}
            (work / "runner-temp").mkdir(exist_ok=True)
            done = run_script(step["run"], work, env=env, timeout=120)
            runs.append((f"{job_name}: {step['name']}", done.returncode, done.stdout, done.stderr))
            if done.returncode != 0:
                return runs
    return runs


def run_gitlab(pipeline: dict[str, Any], server: Server, work: Path, variables: dict[str, str]
               ) -> list[tuple[str, int, str, str]]:
    runs = []
    for job_name in ("publish", "promote-beta"):
        job = pipeline[job_name]
        env = {**pipeline.get("variables", {}), **variables, "CAS_SERVER": server.url}
        script = "\n".join(line for line in job["script"] if not line.startswith(REPLACED_LINES))
        done = run_script(script, work, env=env, timeout=120)
        runs.append((job_name, done.returncode, done.stdout, done.stderr))
        if done.returncode != 0:
            break
    return runs


def history(server: Server, version: str) -> list[tuple[str, str]]:
    meta = SqliteMetadata(server.store / "meta.db")
    try:
        return [(e["to"], e["actor"]) for e in meta.release_history("app", version)]
    finally:
        meta.close()


def channel_release(server: Server, channel: str) -> str:
    with server.client() as http:
        return http.get(f"/v1/products/app/channels/{channel}").json()["signed"]["release"]


def test_the_docs_have_both_pipelines() -> None:
    github, gitlab = yaml_blocks()
    assert [s.get("name") for s in github["jobs"]["publish"]["steps"] if "run" in s] == [
        "Install deltacas", "Build", "Publish to testing", "Mark released"]
    assert set(gitlab) >= {"publish", "promote-beta", "variables", "stages"}


def test_github_actions_job(ci_server: Server, tmp_path: Path) -> None:
    workflow = yaml_blocks()[0]
    key_pem = (ci_server.store / "keys" / "release.pem").read_text()
    secrets = {"CAS_PUBLISH_TOKEN": CI_TOKEN, "CAS_RELEASE_KEY": key_pem, "CAS_CHANNEL_TOKEN": ADMIN_TOKEN}
    work = workspace(tmp_path, "gh")
    runs = run_github(workflow, ci_server, work, secrets)
    assert [(name, code) for name, code, _, _ in runs] == [
        ("publish: Publish to testing", 0), ("publish: Mark released", 0), ("beta: Point beta at the release", 0)
    ], runs
    assert not list((work / "runner-temp").iterdir())          # the key file is gone
    published = json.loads((work / "publish.json").read_text())
    assert published["created"] is True and published["status"] == "testing"
    assert channel_release(ci_server, "beta") == "1.4.0"
    assert history(ci_server, "1.4.0") == [("draft", "token:ci"), ("testing", "token:ci"), ("released", "token:ci")]

    # A re-run of the whole workflow (a retried pipeline) succeeds and changes nothing.
    again = run_github(workflow, ci_server, work, secrets)
    assert [code for _, code, _, _ in again] == [0, 0, 0], again
    assert json.loads((work / "publish.json").read_text())["created"] is False

    # Other content under the same version: exit 1, the code, and the annotation the job prints.
    (work / "dist" / "app.txt").write_text("app 1.4.0, rebuilt differently\n")
    failed = run_github(workflow, ci_server, work, secrets)
    name, code, out, err = failed[0]
    assert (name, code) == ("publish: Publish to testing", 1) and len(failed) == 1
    assert "(release_exists)" in out and "::error::version 1.4.0 was already published with other content" in out
    assert not list((work / "runner-temp").iterdir())

    # A wrong publish token: exit 1 with the code; nothing published.
    wrong = run_github(workflow, ci_server, workspace(tmp_path, "gh2"), {**secrets, "CAS_PUBLISH_TOKEN": "nope"},
                       tag="v1.5.0")
    assert wrong[0][1] == 1 and "(bad_token)" in wrong[0][2]
    with ci_server.client() as http:
        assert http.get("/v1/products/app/releases/1.5.0").status_code == 404


def test_gitlab_ci_job(ci_server: Server, tmp_path: Path) -> None:
    pipeline = yaml_blocks()[1]
    work = workspace(tmp_path, "gl")
    variables = {"CI_COMMIT_TAG": "1.4.0", "CI_PIPELINE_ID": "77", "CAS_PUBLISH_TOKEN": CI_TOKEN,
                 "CAS_RELEASE_KEY": str(ci_server.store / "keys" / "release.pem"),   # a File variable: its path
                 "CAS_CHANNEL_TOKEN": ADMIN_TOKEN}
    runs = run_gitlab(pipeline, ci_server, work, variables)
    assert [(name, code) for name, code, _, _ in runs] == [("publish", 0), ("promote-beta", 0)], runs
    assert channel_release(ci_server, "beta") == "1.4.0"
    assert history(ci_server, "1.4.0")[-1] == ("released", "token:ci")
    with ci_server.client() as http:
        events = http.get("/v1/products/app/releases/1.4.0/history").json()["history"]
    assert events[-1]["reason"] == "GitLab pipeline 77"
    # The publish token cannot move the channel: the promote job needs the admin secret.
    refused = run_gitlab(pipeline, ci_server, work, {**variables, "CAS_CHANNEL_TOKEN": CI_TOKEN})
    assert [(n, c) for n, c, _, _ in refused] == [("publish", 0), ("promote-beta", 1)]
    assert "(insufficient_scope)" in refused[1][3]
