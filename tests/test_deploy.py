"""The production kit beyond one container (`deploy/`, docs/operations.md), per render:
Kubernetes manifests valid against the Kubernetes schemas and consistent with the image, the
CLI and the settings; the KEDA trigger uses KEDA's documented metadata and reads what the
worker reads; the alert rules pass promtool; the dashboard and the rules name only metrics
that a real drain of the render serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from conftest import TEMPLATE, clean_env
from cookiecutter.main import cookiecutter

# Kubernetes release the manifests are validated for (kubernetes-validate ships its schemas).
K8S_VERSION = "1.30.0"
# KEDA's documented `redis-streams` trigger metadata (keda.sh/docs/2.11+/scalers/redis-streams,
# "Trigger Specification" and "Parameter list"); authentication may also come from a
# TriggerAuthentication (`authenticationRef`), with the parameters of "Authentication
# Parameters" (2.12+: `tls` is `enable` or `disable`; `ca`, `cert` and `key` are PEM).
KEDA_REDIS_STREAMS_KEYS = {
    "address",
    "host",
    "port",
    "usernameFromEnv",
    "passwordFromEnv",
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
    "addressFromEnv",
    "hostFromEnv",
    "portFromEnv",
}
KEDA_REDIS_AUTH_PARAMETERS = {"username", "password", "tls", "ca", "cert", "key", "keyPassword"}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "redis-jobs": {"include_redis_jobs": True, "project_name": "Fan Out"},
    "spool-cache": {"include_spool": True, "include_aiocache": True, "project_name": "orders"},
}
SCRAPED = ["default", "redis-jobs"]  # the spool render's dashboard and rules are the default's


@dataclass(frozen=True)
class Render:
    name: str
    path: Path
    slug: str
    prefix: str
    redis: bool
    spool: bool

    def docs(self, name: str) -> list[dict[str, Any]]:
        text = (self.path / "deploy" / "k8s" / name).read_text()
        return [doc for doc in yaml.safe_load_all(text) if doc]

    def one(self, name: str) -> dict[str, Any]:
        (doc,) = self.docs(name)
        return doc

    def kind(self, name: str, kind: str) -> dict[str, Any]:
        """The one document of `kind` in `name`."""
        (doc,) = [doc for doc in self.docs(name) if doc["kind"] == kind]
        return doc

    def env_secret(self) -> dict[str, Any] | None:
        """The Secret whose keys the pod reads as variables (envFrom), if there is one."""
        refs = [
            ref["secretRef"]["name"] for ref in container(self)["envFrom"] if "secretRef" in ref
        ]
        if not refs:
            return None
        (secret,) = [doc for doc in self.docs("secret.yaml") if doc["metadata"]["name"] in refs]
        return secret

    def python(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
        """Run the render's Python (the shared venv, in the project folder)."""
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.path,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=project_env(self.prefix, **(env or {})),
        )


def project_env(prefix: str, **extra: str) -> dict[str, str]:
    """The environment without any setting of the render, plus `extra`."""
    env = {key: value for key, value in clean_env().items() if not key.startswith(prefix)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module", params=list(VARIANTS))
def render(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Render:
    answers = VARIANTS[request.param]
    out = tmp_path_factory.mktemp(request.param)
    path = Path(cookiecutter(str(TEMPLATE), no_input=True, extra_context=answers, output_dir=out))
    (prefix,) = re.findall(r"^(\w+_)PROJECT_NAME=", (path / ".env.example").read_text(), re.M)
    if not (path / ".venv").exists():
        (path / ".venv").symlink_to(Path(sys.executable).parents[1])
    return Render(
        request.param,
        path,
        path.name,  # the project folder is named after the package
        prefix,
        bool(answers.get("include_redis_jobs")),
        bool(answers.get("include_spool")),
    )


PROBE = """
import json, sys
from importlib import import_module
pkg = sys.argv[1]
module = import_module(pkg + ".settings")
configured = module.Settings()
values = {name: getattr(configured, name) for name in type(configured).model_fields}
out = {
    "prefix": module.Settings.model_config["env_prefix"],
    "fields": sorted(module.Settings.model_fields),
    "default_shutdown": module.Settings.model_fields["graceful_shutdown_timeout"].default,
    "configured": json.loads(json.dumps(values, default=str)),
}
if hasattr(configured, "jobs_group"):
    out["stream"] = import_module(pkg + ".sources.redis_jobs").stream_name(configured)
print(json.dumps(out))
"""


def manifest_env(render: Render) -> dict[str, str]:
    """The variables the ConfigMap and the Secret give the pod."""
    env = dict(render.one("configmap.yaml")["data"])
    secret = render.env_secret()
    if secret is not None:
        env.update(secret.get("stringData") or {})
    return env


@pytest.fixture(scope="module")
def settings(render: Render) -> dict[str, Any]:
    """The render's Settings model, and its values as the pod would read them."""
    result = render.python("-c", PROBE, render.slug, env=manifest_env(render))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def container(render: Render) -> dict[str, Any]:
    (worker,) = render.one("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return worker  # type: ignore[no-any-return]


def required_tool(name: str, why: str) -> str:
    """The tool's path; under CI a missing tool fails the test, elsewhere it skips it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({why}); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# ---- Kubernetes -----------------------------------------------------------------------------
def test_kustomization_lists_every_manifest(render: Render) -> None:
    folder = render.path / "deploy" / "k8s"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    manifests = {path.name for path in folder.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)
    expected = {"configmap.yaml", "deployment.yaml", "service.yaml"}
    if render.redis:
        expected |= {"scaledobject.yaml", "secret.yaml"}
    if render.spool:  # rendered with the cache, whose password goes in the Secret
        expected |= {"secret.yaml"}
    assert manifests == expected
    (image,) = kustomization["images"]
    assert container(render)["image"] == image["name"]


def test_manifests_validate_against_the_kubernetes_schemas(render: Render) -> None:
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    assert (schemas / f"v{K8S_VERSION}-local-strict").is_dir()  # offline: shipped schemas
    kinds = []
    for path in sorted((render.path / "deploy" / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            kinds.append(doc["kind"])
            if doc["apiVersion"].startswith("keda.sh/"):
                continue  # a CRD: see test_scaledobject_uses_documented_keda_metadata
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    expected = ["ConfigMap", "Deployment", "Service"]
    expected += (
        ["ScaledObject", "TriggerAuthentication", "Secret", "Secret"] if render.redis else []
    )
    expected += ["Secret"] if render.spool else []
    assert sorted(kinds) == sorted(expected)


def test_pod_runs_as_the_image_user_on_a_read_only_root(render: Render) -> None:
    dockerfile = (render.path / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    pod = render.one("deployment.yaml")["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert (str(security["runAsUser"]), str(security["runAsGroup"])) == user
    assert security["runAsNonRoot"] is True
    worker = container(render)
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= set(worker["resources"])
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in worker["volumeMounts"]}
    assert "emptyDir" in mounts["/tmp"]  # tempfile: the metrics' multi-process folder
    if render.spool:
        assert "emptyDir" in mounts[manifest_env(render)[f"{render.prefix}SPOOL_ROOT"]]
    # The image's port, the container's, the Service's and METRICS_PORT agree.
    (exposed,) = re.findall(r"^EXPOSE (\d+)$", dockerfile, re.MULTILINE)
    (port,) = worker["ports"]
    assert (
        str(port["containerPort"])
        == exposed
        == manifest_env(render)[f"{render.prefix}METRICS_PORT"]
    )
    service = render.one("service.yaml")["spec"]
    assert service["ports"][0]["targetPort"] == port["name"]
    labels = render.one("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()


def test_grace_period_exceeds_the_shutdown_timeout(
    render: Render, settings: dict[str, Any]
) -> None:
    grace = render.one("deployment.yaml")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert grace > settings["default_shutdown"]
    assert grace > settings["configured"]["graceful_shutdown_timeout"]


def test_every_env_name_is_a_setting_of_the_render(
    render: Render, settings: dict[str, Any]
) -> None:
    assert settings["prefix"] == render.prefix
    worker = container(render)
    names = set(manifest_env(render)) | {item["name"] for item in worker.get("env", [])}
    if render.redis:
        scaled = render.kind("scaledobject.yaml", "ScaledObject")
        metadata = scaled["spec"]["triggers"][0]["metadata"]
        names |= {value for key, value in metadata.items() if key.endswith("FromEnv")}
        # KEDA reads the user and password from the keys the pod reads them from.
        env_secret = render.env_secret()
        assert env_secret is not None
        refs = render.kind("scaledobject.yaml", "TriggerAuthentication")["spec"]["secretTargetRef"]
        logins = {
            ref["parameter"]: ref for ref in refs if ref["parameter"] in ("username", "password")
        }
        assert {ref["name"] for ref in logins.values()} == {env_secret["metadata"]["name"]}
        assert {ref["key"] for ref in logins.values()} <= set(env_secret["stringData"])
        names |= {ref["key"] for ref in logins.values()}
    assert names
    fields = set(settings["fields"])
    assert {name for name in names if not name.startswith(render.prefix)} == set()
    assert {name for name in names if name[len(render.prefix) :].lower() not in fields} == set()
    # The pod gets them from the ConfigMap and the Secret this folder defines.
    sources = {
        key: ref["name"] for ref in worker["envFrom"] for key, ref in ref.items() if key != "prefix"
    }
    assert sources.pop("configMapRef") == render.one("configmap.yaml")["metadata"]["name"]
    if (render.path / "deploy" / "k8s" / "secret.yaml").exists():
        env_secret = render.env_secret()
        assert env_secret is not None
        assert sources.pop("secretRef") == env_secret["metadata"]["name"]
    assert sources == {}


def test_probes_run_the_health_command_of_the_cli(render: Render) -> None:
    worker = container(render)
    commands = {
        json.dumps(worker[probe]["exec"]["command"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    (command,) = map(json.loads, commands)
    assert command == ["python", "-m", f"{render.slug}.qq", "health"]
    listed = render.python(*command[1:3], "--help")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^\W*health\b", listed.stdout, re.MULTILINE), listed.stdout
    # With nothing listening it is a failing health check (test_metric_names_... runs it
    # against a live worker).
    env = {**manifest_env(render), f"{render.prefix}METRICS_PORT": str(free_port())}
    result = render.python(*command[1:], env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "unhealthy" in result.stderr


# ---- KEDA ------------------------------------------------------------------------------------
def test_scaledobject_uses_documented_keda_metadata(render: Render) -> None:
    if not render.redis:
        assert not (render.path / "deploy" / "k8s" / "scaledobject.yaml").exists()
        return
    scaled = render.kind("scaledobject.yaml", "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == render.one("deployment.yaml")["metadata"]["name"]
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis-streams"
    metadata = trigger["metadata"]
    assert set(metadata) <= KEDA_REDIS_STREAMS_KEYS, set(metadata) - KEDA_REDIS_STREAMS_KEYS
    assert {"stream", "consumerGroup", "lagCount", "activationLagCount"} <= set(metadata)
    assert {"address", "addressFromEnv", "host", "hostFromEnv"} & set(metadata)
    assert all(isinstance(value, str) for value in metadata.values())  # a map of strings
    assert int(metadata["lagCount"]) > 0
    auth = render.kind("scaledobject.yaml", "TriggerAuthentication")
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = auth["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in refs} <= KEDA_REDIS_AUTH_PARAMETERS
    assert {"username", "password", "tls", "ca", "cert", "key"} <= {
        ref["parameter"] for ref in refs
    }
    # Every Secret and key it names is in secret.yaml (TLS off there: `tls: disable`).
    secrets = {doc["metadata"]["name"]: doc["stringData"] for doc in render.docs("secret.yaml")}
    assert all(ref["key"] in secrets[ref["name"]] for ref in refs), refs
    # TLS is set in one place for KEDA: the TriggerAuthentication, not `enableTLS` as well.
    assert not {"enableTLS", "unsafeSsl"} & set(metadata)


def test_scaledobject_reads_what_the_worker_reads(render: Render, settings: dict[str, Any]) -> None:
    if not render.redis:
        return
    metadata = render.kind("scaledobject.yaml", "ScaledObject")["spec"]["triggers"][0]["metadata"]
    configured = settings["configured"]
    assert metadata["stream"] == settings["stream"]
    assert metadata["consumerGroup"] == configured["jobs_group"]
    url = urlsplit(configured["jobs_redis_url"])
    assert metadata["address"] == f"{url.hostname}:{url.port or 6379}"
    assert metadata.get("databaseIndex", "0") == (url.path.strip("/") or "0")
    refs = render.kind("scaledobject.yaml", "TriggerAuthentication")["spec"]["secretTargetRef"]
    secrets = {doc["metadata"]["name"]: doc["stringData"] for doc in render.docs("secret.yaml")}
    values = {ref["parameter"]: secrets[ref["name"]][ref["key"]] for ref in refs}
    assert (values["tls"] == "enable") == (url.scheme == "rediss")
    assert values["tls"] in ("enable", "disable")
    keys = {ref["parameter"]: ref["key"] for ref in refs}
    assert keys["username"] == f"{render.prefix}JOBS_USERNAME"
    assert keys["password"] == f"{render.prefix}JOBS_PASSWORD"


def test_tls_files_are_mounted_where_the_configmap_points(render: Render, tmp_path: Path) -> None:
    """The ConfigMap's commented TLS lines (docs/operations.md: uncomment them) name settings
    of the render and files the Deployment mounts from the Secret KEDA reads them from; with
    them on and a rediss:// URL, the settings load."""
    if not render.redis:
        return
    text = (render.path / "deploy" / "k8s" / "configmap.yaml").read_text()
    pointed = dict(re.findall(rf"^  # ({render.prefix}JOBS_TLS_\w+): (/\S+)$", text, re.M))
    assert set(pointed) == {
        f"{render.prefix}JOBS_TLS_{kind}_FILE" for kind in ("CA", "CERT", "KEY")
    }
    pod = render.one("deployment.yaml")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounted: dict[str, tuple[str, str]] = {}  # path in the pod -> (Secret, key)
    for mount in container(render)["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            assert mount["readOnly"] is True
            for item in secret["items"]:
                path = f"{mount['mountPath']}/{item['path']}"
                mounted[path] = (secret["secretName"], item["key"])
    assert set(pointed.values()) <= set(mounted)
    refs = render.kind("scaledobject.yaml", "TriggerAuthentication")["spec"]["secretTargetRef"]
    keda = {ref["parameter"]: (ref["name"], ref["key"]) for ref in refs}
    for kind, parameter in (("CA", "ca"), ("CERT", "cert"), ("KEY", "key")):
        assert mounted[pointed[f"{render.prefix}JOBS_TLS_{kind}_FILE"]] == keda[parameter]
    # Turned on as the docs say (files of the same names here), the settings load.
    files = {name: tmp_path / Path(path).name for name, path in pointed.items()}
    openssl = required_tool("openssl", "apt-get install openssl")
    command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-subj", "/CN=worker", "-keyout", "tls.key", "-out", "tls.crt"]
    made = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    shutil.copy(tmp_path / "tls.crt", tmp_path / "ca.crt")  # self-signed: its own CA
    env = {**manifest_env(render), **{name: str(path) for name, path in files.items()}}
    env[f"{render.prefix}JOBS_REDIS_URL"] = "rediss://redis:6380/0"
    result = render.python("-c", PROBE, render.slug, env=env)
    assert result.returncode == 0, result.stderr
    configured = json.loads(result.stdout)["configured"]
    assert configured["jobs_tls_ca_file"] == str(files[f"{render.prefix}JOBS_TLS_CA_FILE"])


# ---- compose.yaml ------------------------------------------------------------------------------
def test_compose_puts_the_jobs_and_the_cache_where_the_docs_say(tmp_path: Path) -> None:
    """With the cache and the jobs in one Redis: compose.yaml, the compose example of
    docs/scaling.md and the ConfigMap give each the same database (the jobs 0, the cache 1)."""
    answers = {"include_aiocache": True, "include_redis_jobs": True}
    path = Path(
        cookiecutter(str(TEMPLATE), no_input=True, extra_context=answers, output_dir=tmp_path)
    )
    prefix = f"{path.name.upper()}_"
    compose = yaml.safe_load((path / "compose.yaml").read_text())["services"]["worker"]
    scaling = (path / "docs" / "scaling.md").read_text()
    (example,) = re.findall(r"^```text\n(services:\n.*?)^```$", scaling, re.DOTALL | re.MULTILINE)
    documented = yaml.safe_load(example)["services"]["worker"]
    configmap = yaml.safe_load((path / "deploy" / "k8s" / "configmap.yaml").read_text())["data"]

    assert compose["environment"] == documented["environment"]
    assert compose["environment"][f"{prefix}JOBS_REDIS_URL"] == configmap[f"{prefix}JOBS_REDIS_URL"]
    databases = {name: urlsplit(url).path for name, url in compose["environment"].items()}
    assert databases == {f"{prefix}JOBS_REDIS_URL": "/0", f"{prefix}CACHE_URL": "/1"}


# ---- Prometheus rules and the Grafana dashboard ----------------------------------------------
def test_promtool_checks_and_tests_the_rules(render: Render) -> None:
    promtool = required_tool("promtool", "apt-get install prometheus")
    folder = render.path / "deploy" / "prometheus"
    for command in (["check", "rules", "rules.yaml"], ["test", "rules", "rules_test.yaml"]):
        result = subprocess.run(
            [promtool, *command], cwd=folder, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
    # Each alert has a test in which it fires.
    alerts = {rule["alert"] for group in rules(render)["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((folder / "rules_test.yaml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert alerts == fired
    expected = {"WorkerFailureRatioHigh", "WorkerNoProgress", "WorkerProcessesRestarting"}
    jobs_alerts = {"WorkerDeadLettersGrowing", "WorkerScheduleOverdue"}
    assert alerts == expected | (jobs_alerts if render.redis else set())
    operations = (render.path / "docs" / "operations.md").read_text()
    assert all(f"**{alert}**" in operations for alert in alerts)


def rules(render: Render) -> dict[str, Any]:
    path = render.path / "deploy" / "prometheus" / "rules.yaml"
    return yaml.safe_load(path.read_text())  # type: ignore[no-any-return]


def dashboard_exprs(render: Render) -> list[str]:
    dashboard = json.loads((render.path / "deploy" / "grafana" / "dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def metric_names(render: Render, exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in re.findall(rf"\b{render.slug}_\w+", expr)}


def used_metrics(render: Render) -> tuple[set[str], set[str]]:
    """The metric names the dashboard uses, and those the alert rules use."""
    rule_exprs = [rule["expr"] for group in rules(render)["groups"] for rule in group["rules"]]
    return metric_names(render, dashboard_exprs(render)), metric_names(render, rule_exprs)


def test_dashboard_shows_every_runtime_metric(render: Render) -> None:
    dashboard, _ = used_metrics(render)
    slug = render.slug
    expected = {
        f"{slug}_{name}"
        for name in (
            "items_started_total",
            "items_succeeded_total",
            "items_failed_total",
            "items_retried_total",
            "items_timed_out_total",
            "item_duration_seconds_bucket",
            "queue_depth",
            "worker_process_restarts_total",
        )
    }
    if render.redis:
        expected |= {f"{slug}_source_{name}" for name in ("waiting", "pending", "dead_letters")}
    assert dashboard == expected
    exprs = " ".join(dashboard_exprs(render))
    assert all(f"histogram_quantile({q}," in exprs for q in ("0.5", "0.95", "0.99"))


DRIVE = """
import asyncio, json, os, subprocess, sys, time, urllib.request
from importlib import import_module

pkg, out, wanted = sys.argv[1], sys.argv[2], set(json.loads(sys.argv[3]))
qq = import_module(pkg + ".qq")
worker = import_module(pkg + ".worker")
settings = qq.project_settings
source = qq.runner.source
if hasattr(qq, "RedisJobs"):
    jobs = import_module(pkg + ".sources.redis_jobs")
    jobs.submit_many([{"n": n} for n in range(20)], settings=settings)
    # A schedule, for its gauge: the sample declares none (a drain submits no recurring job).
    source = jobs.RedisJobs(settings, schedules=[jobs.Every("scraped", seconds=3600)])


def scrape():
    url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=10).read().decode()


async def reader(item, ctx, settings):
    await qq.reader(item, ctx, settings)
    try:
        os.close(os.open(out + ".lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    # The first item to end scrapes (the drain waits for it) until every name is there.
    deadline = time.monotonic() + 15
    while True:
        page = await asyncio.to_thread(scrape)
        if all(name in page for name in wanted) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    health = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", pkg + ".qq", "health"], capture_output=True
    )
    with open(out, "w") as file:
        json.dump({"page": page, "health": health.returncode}, file)


run = worker.Worker(
    settings.project_name, reader=reader, source=source, context=qq.context,
    settings=settings,
)
summary = asyncio.run(run.drain())
print(summary.to_json())
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_server(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = required_tool("redis-server", "apt-get install redis-server")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(folder)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, port
        except OSError:
            time.sleep(0.05)
    server.kill()
    pytest.fail("redis-server did not start")


@pytest.mark.parametrize("render", SCRAPED, indirect=True)
def test_metric_names_appear_on_a_real_scrape_of_a_drain(render: Render, tmp_path: Path) -> None:
    """Runs the render's own source, context and reader; the Redis render's source gauges
    (`<name>_source_waiting`, `_pending`, `_dead_letters`, and with a schedule declared,
    `_schedule_next_run_timestamp_seconds`) come from the runtime."""
    from prometheus_client.parser import text_string_to_metric_families

    dashboard, alerting = used_metrics(render)
    used = dashboard | alerting
    p = render.prefix
    env = {
        **manifest_env(render),
        f"{p}METRICS_HOST": "127.0.0.1",
        f"{p}METRICS_PORT": str(free_port()),
        f"{p}NUM_PROCESSES": "2",
        f"{p}EMPTY_QUEUE_SLEEP_TIME": "0.05",
    }
    server = None
    if render.redis:
        server, port = redis_server(tmp_path)
        env[f"{p}JOBS_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    out = tmp_path / "scrape.json"
    try:
        result = render.python(
            "-c", DRIVE, render.slug, str(out), json.dumps(sorted(used)), env=env
        )
    finally:
        if server is not None:
            server.kill()
            server.wait()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1])["failed"] == 0
    scraped = json.loads(out.read_text())
    assert scraped["health"] == 0  # the probes' command, against a live worker
    names = {
        sample.name
        for family in text_string_to_metric_families(scraped["page"])
        for sample in family.samples
    }
    assert used - names == set(), f"not on the scrape: {sorted(used - names)}"
