"""cluster/ holds YAML that only fails when someone runs it against a cloud. These checks catch the
mistakes that can be caught here, without credentials or Ray processes:

- the launcher YAMLs pass Ray's own validator on the path Ray takes before any cloud call: for
  `ray up` (aws, gcp) `commands._bootstrap_config` = `util.prepare_config` (defaults filled from the
  provider's defaults.yaml) then `util.validate_config`; for `ray start --autoscaling-config`
  (local.yaml; `ray up` cannot prepare it, Ray's wheel lacks fake_multi_node/example.yaml) the
  monitor's `StandardAutoscaler.reset`, which validates the file as written. Broken copies must fail
  the same validator, so a pass means something.
- what Ray's autoscaler planner (ResourceDemandScheduler.get_nodes_to_launch) launches for CPU and
  GPU demand on these node types, including where CPU demand starts to spill onto GPU nodes.
- the promises the files make: workers scale from 0, idle timeout, Ray 2.60 images, token auth on,
  dashboard on localhost, the same node type names everywhere, KubeRay fields the operator requires.
- no credentials anywhere under cluster/ (the scanner is tested on planted secrets).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE
from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
from ray.autoscaler._private.resource_demand_scheduler import ResourceDemandScheduler
from ray._private.label_utils import validate_node_label_syntax, validate_node_labels
from ray.autoscaler._private.util import prepare_config, validate_config

from raylm.config import load_config
from raylm.runtime import DATA_MARK, DATA_RESOURCE

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CLOUD = ["aws-gpu.yaml", "gcp-gpu.yaml"]
LAUNCHER_FIELDS = {
    "cluster_name", "max_workers", "upscaling_speed", "idle_timeout_minutes", "provider", "auth", "docker",
    "head_node_type", "available_node_types", "file_mounts", "cluster_synced_files",
    "file_mounts_sync_continuously", "rsync_exclude", "rsync_filter", "initialization_commands",
    "setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
    "worker_start_ray_commands",
}
IMAGE = re.compile(rf"rayproject/ray:{re.escape(ray.__version__)}-py311(-gpu)?")


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def validate_like_ray_up(config: dict) -> dict:
    """`ray up` up to the first cloud call (commands._bootstrap_config, minus the provider's
    fillout_available_node_types_resources and bootstrap_config, which call AWS/GCP APIs)."""
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def validate_like_ray_start(config: dict) -> dict:
    """`ray start --autoscaling-config`: the monitor reads the YAML as is and calls validate_config."""
    validate_config(copy.deepcopy(config))
    return config


VALIDATE = {"aws-gpu.yaml": validate_like_ray_up, "gcp-gpu.yaml": validate_like_ray_up,
            "local.yaml": validate_like_ray_start}


def check_labels(labels: dict) -> None:
    """Ray's own checks for `ray start --labels` (syntax; no reserved ray.io/ prefix)."""
    validate_node_label_syntax(labels)
    validate_node_labels(labels)
    assert labels["raylm/role"] in ("head", "data", "gpu")


def workers(config: dict) -> dict:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


# ------------------------------------------------------------------------------------ launcher YAMLs


@pytest.mark.parametrize("name", VALIDATE)
def test_launcher_yaml_passes_rays_validator(name):
    config = load(name)
    assert LAUNCHER_FIELDS <= set(config), f"missing top-level fields: {LAUNCHER_FIELDS - set(config)}"
    VALIDATE[name](config)
    for worker in workers(config).values():
        assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
    for node_type in config["available_node_types"].values():
        check_labels(node_type["labels"])


@pytest.mark.parametrize("name", VALIDATE)
@pytest.mark.parametrize("breakage", ["node type without resources", "unknown top-level key",
                                      "string resource count"])
def test_rays_validator_rejects_a_broken_copy(name, breakage):
    config = load(name)
    worker = next(iter(workers(config).values()))
    if breakage == "node type without resources":
        del worker["resources"]
    elif breakage == "unknown top-level key":
        config["idle_timeout_minute"] = 5
    else:
        worker["resources"]["CPU"] = "16"
    with pytest.raises(jsonschema.ValidationError):
        VALIDATE[name](config)


@pytest.mark.parametrize("name", CLOUD)
def test_cloud_yaml_promises(name):
    config = load(name)
    assert config["idle_timeout_minutes"] > 0
    docker = config["docker"]
    images = [docker["image"], docker["head_image"]] + [
        t.get("docker", {}).get("worker_image", docker["image"]) for t in workers(config).values()]
    assert all(IMAGE.fullmatch(image) for image in images), images
    for worker in workers(config).values():
        if worker["resources"].get("GPU"):
            assert worker["min_workers"] == 0 and "--gpus all" in worker["docker"]["worker_run_options"]
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]
              if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert "--dashboard-host=127.0.0.1" in config["head_start_ray_commands"][-1]
    assert "0.0.0.0" not in yaml.safe_dump(config)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"   # every node gets the token
    identity = "IamInstanceProfile" if config["provider"]["type"] == "aws" else "serviceAccounts"
    assert all(identity in t["node_config"] for t in config["available_node_types"].values())


def plan(config: dict, demand: list[dict], left_waiting: int = 0) -> dict:
    """Worker nodes Ray's autoscaler would launch for `demand` (bundles) on a cluster of just the
    head, and how many bundles no node it may launch can take (they wait)."""
    scheduler = ResourceDemandScheduler(None, config["available_node_types"], config["max_workers"],
                                        config["head_node_type"], config["upscaling_speed"])
    to_launch, infeasible = scheduler.get_nodes_to_launch(
        [], {config["head_node_type"]: 1}, demand, {}, [], {}, [], NodeAvailabilitySummary({}))
    assert len(infeasible) == left_waiting
    return to_launch


@pytest.mark.parametrize("name", CLOUD)
def test_autoscaler_plans_cpu_work_on_cpu_nodes_and_gpu_work_on_gpu_nodes(name):
    config = load(name)
    types = config["available_node_types"]
    cpu_worker = types["cpu-worker"]
    cpu_capacity = types["head"]["resources"]["CPU"] + cpu_worker["max_workers"] * cpu_worker["resources"]["CPU"]
    assert cpu_capacity == 264   # the number the YAML comments and README quote
    assert set(plan(config, [{"CPU": 1}] * cpu_capacity)) == {"cpu-worker"}
    # Beyond it Ray spills CPU-only work onto GPU types (a preference, not a rule), as documented.
    assert set(plan(config, [{"CPU": 1}] * (cpu_capacity + 1))) - {"cpu-worker"}
    assert plan(config, [{"CPU": 1, "GPU": 1}] * 2) == {"gpu-small": 2}
    assert plan(config, [{"CPU": 1, "GPU": 1}] * 8) == {"gpu-large": 1}   # an 8-worker GPU run
    # raylm's data work asks for the mark only CPU types declare: past their capacity (twice it here)
    # the rest waits for them instead, and a task as wide as the largest of them fits one.
    for type_name, node_type in types.items():
        declared = node_type["resources"].get(DATA_RESOURCE, 0)
        assert declared == (0 if node_type["resources"].get("GPU") else node_type["resources"]["CPU"]), type_name
    data_task = {"CPU": 1, DATA_RESOURCE: DATA_MARK}
    assert set(plan(config, [data_task] * (2 * cpu_capacity), left_waiting=cpu_capacity)) == {"cpu-worker"}
    assert plan(config, [{"CPU": cpu_worker["resources"]["CPU"], DATA_RESOURCE: DATA_MARK}]) == {"cpu-worker": 1}


def test_local_yaml_rehearses_the_cloud_node_types():
    local = load("local.yaml")
    for name in CLOUD:
        assert set(workers(local)) == set(workers(load(name))) == {"cpu-worker", "gpu-small", "gpu-large"}
        assert load(name)["head_node_type"] == "head"
    # The fake provider tags the head it did not launch with this fixed type.
    assert local["head_node_type"] == FAKE_HEAD_NODE_TYPE
    assert local["provider"]["type"] == "fake_multinode" and local["provider"]["disable_node_updaters"]
    head = local["available_node_types"][FAKE_HEAD_NODE_TYPE]
    assert head["resources"]["CPU"] <= 2 and head["max_workers"] == 0
    # The start command documented in the file matches the head type and the provider's needs.
    text = (CLUSTER / "local.yaml").read_text()
    start = " ".join(line.lstrip("# ").rstrip("\\ ") for line in text.splitlines()
                     if "RAY_FAKE_CLUSTER=1 " in line or line.startswith("#     "))
    for needed in ("RAY_FAKE_CLUSTER=1", "RAY_AUTH_MODE=token", "ray start --head", "--port=6379",
                   f"--num-cpus={head['resources']['CPU']}", "--num-gpus=0", "--autoscaling-config="):
        assert needed in start, (needed, start)
    labels = dict(kv.split("=") for kv in re.search(r"--labels=(\S+)", start)[1].split(","))
    assert labels == head["labels"]
    declared = json.loads(re.search(r"--resources='(\{.*?\})'", start)[1])
    assert declared == {DATA_RESOURCE: head["resources"]["CPU"]} and head["resources"][DATA_RESOURCE] == 1


# ------------------------------------------------------------------------------------ KubeRay


def ray_containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [group["template"]["spec"]["containers"][0] for group in groups]


def check_kuberay_cluster_spec(spec: dict) -> None:
    """What KubeRay's ValidateRayClusterSpec and the autoscaler need, and what raylm promises."""
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    gpu_groups = 0
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        assert isinstance(group["rayStartParams"], dict) and "labels" not in group["rayStartParams"]
        check_labels(group["labels"])
        assert group["template"]["spec"]["containers"], "a group needs its Ray container"
        # CPU groups declare the data mark, one per CPU the container asks for; GPU groups do not.
        cpus = group["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
        wanted = {} if group["labels"]["raylm/role"] == "gpu" else {DATA_RESOURCE: cpus}
        assert group.get("resources", {}) == wanted, group.get("groupName", "head")
    for container in ray_containers(spec):
        assert IMAGE.fullmatch(container["image"]), container["image"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        if "nvidia.com/gpu" in limits:
            gpu_groups += 1
            assert group["minReplicas"] == 0 and group["template"]["spec"]["tolerations"]
            assert group["template"]["spec"]["containers"][0]["image"].endswith("-gpu")
    assert gpu_groups >= 1
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"


def token_env(env: list[dict]) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env if e["name"].startswith("RAY_AUTH")}


def test_raycluster_manifest():
    manifest = load("kuberay/raycluster.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
    spec = manifest["spec"]
    check_kuberay_cluster_spec(spec)
    assert {g["groupName"] for g in spec["workerGroupSpecs"]} == set(workers(load("aws-gpu.yaml")))
    # Token auth on every Ray container and the autoscaler, the token only by reference to a Secret.
    for env in [c.get("env", []) for c in ray_containers(spec)] + [spec["autoscalerOptions"]["env"]]:
        auth = token_env(env)
        assert auth["RAY_AUTH_MODE"] == "token"
        assert set(auth["RAY_AUTH_TOKEN"]) == {"secretKeyRef"}


def test_rayjob_manifest():
    manifest = load("kuberay/rayjob.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    check_kuberay_cluster_spec(spec["rayClusterSpec"])
    assert spec["rayClusterSpec"]["authOptions"]["mode"] == "token"
    # The entrypoint runs a jobs/ script that exists, with overrides raylm accepts.
    words = shlex.split(spec["entrypoint"])
    assert words[0] == "python" and (ROOT / words[1]).is_file()
    load_config(None, words[2:])
    # runtime_env: the code as a zip, and raylm's dependencies as pyproject.toml declares them.
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"].endswith(".zip")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {d.split("#")[0].strip() for d in project["dependencies"] if not d.startswith("ray[")}
    assert set(runtime_env["pip"]) == deps


# ------------------------------------------------------------------------------------ secrets

SECRETS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key setting": re.compile(r"aws_secret_access_key|secretAccessKey", re.I),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GCP service account key": re.compile(r"\"type\"\s*:\s*\"service_account\"|private_key_id"),
    # Ray tokens are 64 hex characters (secrets.token_hex(32)); image digests are not tokens.
    "Ray token value": re.compile(r"(?<![0-9a-f:])[0-9a-f]{64}(?![0-9a-f])"),
    "literal RAY_AUTH_TOKEN": re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*[\"']?(?![\"'$<{])\S{8,}"
                                         r"|name:\s*RAY_AUTH_TOKEN\s*\n\s*value:"),
    "literal auth_token": re.compile(r"auth_token[\"']?\s*[=:]\s*[\"']?(?![\"'$<{~])[A-Za-z0-9+/=_-]{8,}"),
}


def find_secrets(text: str) -> list[str]:
    return [what for what, pattern in SECRETS.items() if pattern.search(text)]


def test_no_secrets_under_cluster():
    files = [p for p in CLUSTER.rglob("*") if p.is_file()]
    assert len(files) >= 6
    found = {str(p.relative_to(ROOT)): find_secrets(p.read_text()) for p in files}
    assert not any(found.values()), found


@pytest.mark.parametrize("planted", [
    "aws_access_key_id: AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ssh_private_key: |\n  -----BEGIN OPENSSH PRIVATE KEY-----\n",
    '{"type": "service_account", "project_id": "p"}',
    "token: " + "3f" * 32,
    "export RAY_AUTH_TOKEN=raycluster_secret",
    "- name: RAY_AUTH_TOKEN\n  value: hunter2hunter2",
    "stringData:\n  auth_token: super-secret-example-token",
    "kubectl create secret generic x --from-literal=auth_token=abcdefgh12345678",
])
def test_secret_scan_catches_planted_secrets(planted):
    assert find_secrets(f"cluster_name: raylm\n{planted}\n")


def test_secret_scan_passes_references_and_placeholders():
    clean = """
    export RAY_AUTH_TOKEN="$(kubectl get secret raylm-ray-auth -o jsonpath='{.data.auth_token}' | base64 -d)"
    --from-literal=auth_token="$(openssl rand -hex 32)"
    valueFrom: {secretKeyRef: {name: raylm-ray-auth, key: auth_token}}
    ~/.ray/auth_token: ~/.ray/auth_token
    IamInstanceProfile: {Arn: "arn:aws:iam::<ACCOUNT_ID>:instance-profile/raylm-head"}
    image: rayproject/ray@sha256:""" + "ab" * 32
    assert find_secrets(clean) == []
