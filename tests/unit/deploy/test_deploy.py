"""The deploy artifacts: Kubernetes manifests against the Kubernetes schema, KEDA objects against the
Deployments they scale, the compose file through `docker-compose config`, every container command through the
farm's own CLI, and their security: Redis behind a password (and TLS on Kubernetes), Flower and /metrics
behind basic auth."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from typer.testing import CliRunner

from farm.cli.app import app
from farm.planning.routing import QUEUES

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose.yaml"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "scrape-config.yaml"
K8S_VERSION = "1.30.0"
SECRET = "farm-secrets"
TLS_SECRET = "farm-redis-tls"
SECRET_VARIABLES = (
    "FARM_REDIS_URL",
    "FARM_REDIS_PASSWORD",
    "FAL_KEY",
    "RUNPOD_API_KEY",
    "FARM_FLOWER_PASSWORD",
    "FARM_METRICS_PASSWORD",
)


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    template = spec["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob" else spec["template"]
    pod: dict[str, Any] = template["spec"]
    return pod


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = pod_spec(doc)["containers"]
    return found


def deployment(name: str) -> dict[str, Any]:
    return next(d for d in by_kind("Deployment") if d["metadata"]["name"] == name)


def env_names(doc: dict[str, Any]) -> set[str]:
    return {e["name"] for e in containers(doc)[0].get("env", [])}


def test_every_kubernetes_manifest_passes_the_kubernetes_schema_strictly() -> None:
    checked = 0
    for doc in manifests():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 10


def test_the_schema_check_catches_a_broken_manifest() -> None:
    broken = by_kind("Deployment")[0]
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_each_queue_has_a_worker_deployment_scaled_by_keda_on_waiting_plus_reserved() -> None:
    deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
    scaled = by_kind("ScaledObject")
    assert sorted(s["spec"]["scaleTargetRef"]["name"] for s in scaled) == [
        f"worker-{q}" for q in sorted(QUEUES)
    ]
    for obj in scaled:
        spec = obj["spec"]
        worker = deployments[spec["scaleTargetRef"]["name"]]
        queue = containers(worker)[0]["args"][-1]
        assert containers(worker)[0]["args"] == ["worker", "--queue", queue]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        query = trigger["metadata"]["query"]
        assert trigger["type"] == "prometheus" and int(trigger["metadata"]["threshold"]) >= 1
        assert f'farm_queue_waiting{{queue="{queue}"}}' in query, "the list alone"
        assert f'farm_queue_reserved{{queue="{queue}"}}' in query, "plus what workers took (prefetch)"
        assert f'farm_queue_ready{{queue="{queue}"}}' in query, "plus what the scheduler holds for a slot"
        assert "delayed" not in query
        grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= 900, "a scale-down lets the running step finish"


def test_secrets_are_referenced_from_one_secret_never_embedded() -> None:
    assert by_kind("Secret") == []
    for doc in manifests():
        if doc["kind"] not in ("Deployment", "StatefulSet", "CronJob"):
            continue
        for container in containers(doc):
            for env in container.get("env", []):
                if env["name"] in SECRET_VARIABLES or env["name"] == "REDIS_PASSWORD":
                    assert env["valueFrom"]["secretKeyRef"]["name"] == SECRET, env
                assert "value" not in env or "KEY" not in env["name"], env
    (config,) = by_kind("ConfigMap")
    assert not set(config["data"]) & set(SECRET_VARIABLES), "no secret in the ConfigMap"
    assert "FARM_FLOWER_PASSWORD" in env_names(deployment("flower")), "Flower always has auth"
    assert "FARM_METRICS_PASSWORD" in env_names(deployment("metrics")), "/metrics always has auth"


def test_redis_keeps_every_key_and_an_append_only_file() -> None:
    (redis,) = by_kind("StatefulSet")
    command = " ".join(containers(redis)[0]["args"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command


def test_redis_requires_a_password_handed_over_off_its_command_line_and_speaks_tls_only() -> None:
    (redis,) = by_kind("StatefulSet")
    (container,) = containers(redis)
    script = " ".join(container["args"])
    assert "printf 'requirepass %s\\n' \"$REDIS_PASSWORD\" |" in script, "the password goes in on stdin"
    assert "exec redis-server - " in script, "redis-server reads its config from stdin"
    assert "--requirepass" not in script
    assert "--port 0 --tls-port 6379" in script, "no plain-text port"
    for option in ("--tls-cert-file", "--tls-key-file", "--tls-ca-cert-file"):
        assert f"{option} /tls/" in script, option
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(redis)["volumes"]}
    assert mounts["tls"] == "/tls" and volumes["tls"]["secret"]["secretName"] == TLS_SECRET
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "REDISCLI_AUTH=$REDIS_PASSWORD redis-cli --tls --cacert /tls/ca.crt ping" in probe


def test_every_farm_pod_reaches_redis_by_a_secret_url_verifying_its_certificate() -> None:
    (config,) = by_kind("ConfigMap")
    ca = Path(config["data"]["FARM_REDIS_TLS_CA"])
    farm_pods = [d for d in manifests() if d["kind"] in ("Deployment", "CronJob")]
    assert len(farm_pods) == len(QUEUES) + 3, "workers, flower, metrics, the pod reaper"
    for doc in farm_pods:
        (container,) = containers(doc)
        assert {"configMapRef": {"name": "farm-settings"}} in container["envFrom"], doc["metadata"]["name"]
        assert "FARM_REDIS_URL" in env_names(doc)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = next(v for v in pod_spec(doc)["volumes"] if v["name"] == mounts[str(ca.parent)])
        assert volume["secret"]["secretName"] == TLS_SECRET
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": ca.name}], "the CA alone, no key"
    secrets_note = (K8S / "10-config.yaml").read_text()
    assert "FARM_REDIS_URL=rediss://:...@redis:6379/0" in secrets_note, "the documented URL is rediss://"


def test_prometheus_scrapes_metrics_with_basic_auth_and_nothing_scrapes_it_without() -> None:
    (job,) = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
    service = next(d for d in by_kind("Service") if d["metadata"]["name"] == "metrics")
    port = service["spec"]["ports"][0]["port"]
    assert job["static_configs"] == [{"targets": [f"metrics.episode-farm.svc:{port}"]}]
    (config,) = by_kind("ConfigMap")
    assert job["basic_auth"]["username"] == config["data"]["FARM_METRICS_USER"]
    assert set(job["basic_auth"]) == {"username", "password_file"}, "the password stays out of the config"
    for doc in manifests():
        annotations = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
        assert "prometheus.io/scrape" not in annotations, "a discovered job would scrape without credentials"


def farm_commands() -> list[list[str]]:
    commands = [containers(d)[0]["args"] for d in manifests() if d["kind"] in ("Deployment", "CronJob")]
    commands += [
        s["command"] for s in compose()["services"].values() if s.get("image") == "episode-farm:latest"
    ]
    return commands


def test_every_container_command_is_a_farm_command_with_those_options() -> None:
    runner = CliRunner()
    for args in farm_commands():
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    farm = doc["x-farm"]
    doc["services"] = {name: {**farm, **svc} for name, svc in doc["services"].items() if name != "redis"} | {
        "redis": doc["services"]["redis"]
    }
    return doc


def test_compose_has_redis_with_password_aof_and_no_eviction_and_flower_with_auth() -> None:
    services = compose()["services"]
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--maxmemory-policy noeviction" in redis_command
    assert "printf 'requirepass %s\\n' \"$$REDIS_PASSWORD\" |" in redis_command
    assert "exec redis-server - " in redis_command and "--requirepass" not in redis_command
    assert "ports" not in services["redis"], "Redis is reachable on the project's network only"
    for name, service in services.items():
        if name != "redis":
            url = service["environment"]["FARM_REDIS_URL"]
            assert url.startswith("redis://:${REDIS_PASSWORD:?"), (name, "every client sends the password")
    example = (ROOT / "deploy" / ".env.example").read_text().splitlines()
    assert {"FARM_FLOWER_PASSWORD", "FARM_METRICS_PASSWORD", "REDIS_PASSWORD"} <= {
        line.split("=")[0] for line in example if "=" in line and not line.startswith("#")
    }
    assert {f"pool-{q}" for q in QUEUES} <= set(services) and {"flower", "metrics"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes on loopback only"
    assert (ROOT / "deploy" / ".env.example").exists()
    assert "/deploy/.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_passes_docker_compose_config(tmp_path: Path) -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        message = "needs docker-compose (make tools installs Debian's)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must install it: {message}")
        pytest.skip(message)
    shutil.copy(COMPOSE, tmp_path / "compose.yaml")
    shutil.copy(ROOT / "deploy" / ".env.example", tmp_path / ".env")
    checked = subprocess.run(
        [tool, "-f", "compose.yaml", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    rendered = yaml.safe_load(checked.stdout)
    url = rendered["services"]["pool-post"]["environment"]["FARM_REDIS_URL"]
    assert url.startswith("redis://:") and url.endswith("@redis:6379/0")
    (tmp_path / ".env").write_text("FARM_FLOWER_PASSWORD=x\n")
    missing = subprocess.run(
        [tool, "-f", "compose.yaml", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode != 0 and "REDIS_PASSWORD" in missing.stderr


def test_the_image_runs_the_farm_cli_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["farm"]' in dockerfile and "USER farm" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
