"""The deployment files, checked statically (no Docker engine or cluster runs here).

Compose files: against the Compose specification's JSON schema, then the rules the
service needs (GPU access per vendor, the download before the service, health
checks, the TEI / Infinity profiles wired to the remote backend). Kubernetes: each
overlay rendered (the subset of kustomize the files use) and every object validated
against Kubernetes' own schemas, offline. The Dockerfile: what can be linted offline.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonpatch
import jsonschema
import kubernetes_validate
import pytest
import yaml

from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = "1.33.0"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def env_file(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    pairs = (line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs}


# -- Compose ---------------------------------------------------------------------------


@cache
def compose(accelerator: str) -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(ROOT / f"docker-compose.{accelerator}.yml")
    return loaded


@pytest.mark.parametrize("accelerator", ["cuda", "rocm"])
def test_compose_file_fits_the_compose_specification(accelerator: str) -> None:
    schema = json.loads((ROOT / "tests/contracts/compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(compose(accelerator))


@pytest.mark.parametrize("accelerator", ["cuda", "rocm"])
def test_models_are_downloaded_before_the_service_starts(accelerator: str) -> None:
    services = compose(accelerator)["services"]
    models, bge = services["models"], services["bge"]
    assert models["command"] == ["download"]
    assert models["restart"] == "no"
    assert bge["depends_on"]["models"]["condition"] == "service_completed_successfully"
    # The download fills MODELS_DIR on the volume; the service reads the same models
    # (same repo ids) from the same folder, read-only.
    directory = models["environment"]["MODELS_DIR"]
    assert f"models:{directory}" in models["volumes"]
    assert f"models:{directory}:ro" in bge["volumes"]
    for key in ("MODELS_DIR", "EMBEDDING_MODEL_NAME", "RERANKER_MODEL_NAME"):
        assert bge["environment"][key] == models["environment"][key], key


@pytest.mark.parametrize("accelerator", ["cuda", "rocm"])
def test_service_is_health_checked_restarted_and_configurable(accelerator: str) -> None:
    bge = compose(accelerator)["services"]["bge"]
    test = bge["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "/health/ready" in test[3]
    compile(test[3], "healthcheck", "exec")
    assert bge["healthcheck"]["start_period"] == "180s"
    assert bge["restart"] == "unless-stopped"
    assert bge["env_file"] == [{"path": "deploy/bge.env", "required": False}]
    assert bge["build"] == {
        "context": ".",
        "dockerfile": "deploy/Dockerfile",
        "args": {"ACCELERATOR": accelerator},
    }
    known = {name.upper() for name in Settings.__struct_fields__}
    assert set(bge["environment"]) <= known | {"HSA_OVERRIDE_GFX_VERSION"}


def test_cuda_reserves_an_nvidia_gpu_for_the_service_and_tei() -> None:
    services = compose("cuda")["services"]
    gpu = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    for name in ("bge", "tei-m3", "tei-reranker"):
        assert services[name]["deploy"]["resources"]["reservations"]["devices"] == [gpu], name
    assert "deploy" not in services["models"]  # the download needs no GPU


def test_rocm_passes_the_amd_gpu_through() -> None:
    services = compose("rocm")["services"]
    for name in ("bge", "infinity"):
        service = services[name]
        assert service["devices"] == ["/dev/kfd", "/dev/dri"], name
        assert set(service["group_add"]) == {"video", "render"}
        assert service["security_opt"] == ["seccomp=unconfined"]
        assert service.get("ipc") == "host" or "shm_size" in service


@pytest.mark.parametrize(
    ("accelerator", "profile", "services", "image"),
    [
        (
            "cuda",
            "tei",
            {"tei-m3", "tei-reranker"},
            "ghcr.io/huggingface/text-embeddings-inference",
        ),
        ("rocm", "infinity", {"infinity"}, "michaelf34/infinity:0.0.70-amd"),
    ],
)
def test_profile_adds_the_remote_engine_and_its_env_file_points_the_service_at_it(
    accelerator: str, profile: str, services: set[str], image: str
) -> None:
    all_services = compose(accelerator)["services"]
    profiled = {name for name, s in all_services.items() if profile in s.get("profiles", [])}
    assert profiled == services
    for name in services:
        assert image in all_services[name]["image"]

    settings = env_file(ROOT / f"deploy/compose.{profile}.env")
    assert settings.pop("COMPOSE_PROFILES") == profile
    # Dense and rerank go to the remote first, flag stays as the fallback; sparse stays local.
    assert settings["EMBED_BACKENDS"] == settings["RERANK_BACKENDS"] == "remote,flag"
    bge = all_services["bge"]["environment"]
    assert bge["LEXICAL_COLBERT_BACKENDS"] == "flag"
    for key in settings:  # each reaches the service through interpolation
        assert f"${{{key}" in bge[key], key
    for key, value in settings.items():
        if key.startswith("REMOTE_") and key.endswith("_URL"):
            url = urlsplit(value)
            assert url.hostname in services, value
            port = "7997" if profile == "infinity" else "80"
            assert str(url.port) == port


def test_the_remote_engines_serve_the_models_the_service_names() -> None:
    tei = compose("cuda")["services"]
    assert "${EMBEDDING_MODEL:-BAAI/bge-m3}" in tei["tei-m3"]["command"]
    assert "${RERANKER_MODEL:-BAAI/bge-reranker-v2-m3}" in tei["tei-reranker"]["command"]
    infinity = compose("rocm")["services"]["infinity"]["command"]
    assert infinity[0] == "v2" and infinity[infinity.index("--port") + 1] == "7997"
    settings = env_file(ROOT / "deploy/compose.infinity.env")
    assert f"${{EMBEDDING_MODEL:-{settings['REMOTE_MODEL']}}}" in infinity
    assert f"${{RERANKER_MODEL:-{settings['REMOTE_RERANK_MODEL']}}}" in infinity


# -- Kubernetes ------------------------------------------------------------------------

KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "images", "patches", "labels"}


def render(folder: Path) -> list[dict[str, Any]]:
    """A kustomization rendered with the kustomize features these files use."""
    spec = load_yaml(folder / "kustomization.yaml")
    unknown = set(spec) - KUSTOMIZE_FIELDS
    assert not unknown, f"{folder}: this renderer does not know {unknown}"
    objects: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        path = (folder / resource).resolve()
        if path.is_dir():
            objects += render(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for label in spec.get("labels", []):
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in spec.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    for patch in spec.get("patches", []):
        target = patch["target"]
        matched = [
            i
            for i, obj in enumerate(objects)
            if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target["name"]
        ]
        assert matched, f"{folder}: a patch targets nothing: {target}"
        for i in matched:
            objects[i] = jsonpatch.apply_patch(objects[i], yaml.safe_load(patch["patch"]))
    return copy.deepcopy(objects)


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


OVERLAYS = {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu"}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_manifest_is_valid_kubernetes(overlay: str) -> None:
    objects = render(ROOT / "deploy/k8s/overlays" / overlay)
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "Job",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


@pytest.mark.parametrize(("overlay", "gpu"), sorted(OVERLAYS.items()))
def test_each_replica_gets_one_gpu_of_its_vendor_and_the_image_for_it(
    overlay: str, gpu: str
) -> None:
    objects = render(ROOT / "deploy/k8s/overlays" / overlay)
    (container,) = by_kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert limits[gpu] == 1
    assert not set(OVERLAYS.values()) - {gpu} & set(limits)
    images = {c["image"] for obj in objects for c in _containers(obj)}
    assert images == {f"registry.example.com/bge-serve:{overlay}"}


def test_probes_rollout_and_scaling_fit_a_model_server() -> None:
    objects = render(ROOT / "deploy/k8s/base")
    deployment = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    startup = container["startupProbe"]
    # A model load may take minutes; liveness must not kill it meanwhile.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert startup["httpGet"]["path"] == container["readinessProbe"]["httpGet"]["path"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"  # a down remote ≠ dead
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    job = by_kind(objects, "Job")
    (download,) = job["spec"]["template"]["spec"]["containers"]
    assert download["args"] == ["download"]
    job_env = {e["name"]: e["value"] for e in download["env"]}
    for key in ("MODELS_DIR", "EMBEDDING_MODEL_NAME", "RERANKER_MODEL_NAME"):
        assert env[key] == job_env[key], key
    assert mounts["models"]["mountPath"] == env["MODELS_DIR"]
    assert download["volumeMounts"][0]["mountPath"] == env["MODELS_DIR"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for spec in (pod, job["spec"]["template"]["spec"])
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {by_kind(objects, "PersistentVolumeClaim")["metadata"]["name"]}
    assert by_kind(objects, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    target = by_kind(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"].items()
    assert by_kind(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
        pod_labels
    )
    assert by_kind(objects, "Service")["spec"]["selector"].items() <= pod_labels


# -- Dockerfile ------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


DOCKERFILE = ROOT / "deploy/Dockerfile"


def ignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, p) or path.split("/")[0] == p for p in patterns)


def test_every_copied_file_exists_and_reaches_the_build_context() -> None:
    copies = [rest for keyword, rest in instructions(DOCKERFILE) if keyword == "COPY"]
    sources = [
        source
        for rest in copies
        if not rest.startswith("--from")
        for source in shlex.split(rest)[:-1]
    ]
    assert "pyproject.toml" in sources and "engine" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f"{source} is excluded by .dockerignore"
    for heavy in (".venv", ".git", "tests"):
        assert ignored(heavy), heavy


def test_entrypoint_is_the_installed_command_and_runs_unprivileged() -> None:
    found = instructions(DOCKERFILE)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = json.loads(next(rest for keyword, rest in found if keyword == "ENTRYPOINT"))
    assert entrypoint == ["bge-serve"] and "bge-serve" in scripts
    users = [rest for keyword, rest in found if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}
    health = next(rest for keyword, rest in found if keyword == "HEALTHCHECK")
    command = json.loads(health[health.index("CMD") + 3 :])  # exec form: JSON
    assert command[:2] == ["python", "-c"] and "/health/ready" in command[2]
    compile(command[2], "HEALTHCHECK", "exec")  # the quoting survived
    assert sum(1 for keyword, _ in found if keyword == "FROM") == 2  # build, then runtime


def test_torch_comes_pinned_from_the_accelerators_index() -> None:
    found = instructions(DOCKERFILE)
    args = dict(rest.split("=", 1) for keyword, rest in found if keyword == "ARG" and "=" in rest)
    pinned = re.search(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned and args["TORCH_VERSION"] == pinned.group(1)
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", args["CUDA_TORCH_INDEX"])
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/rocm[\d.]+", args["ROCM_TORCH_INDEX"])
    install = next(rest for keyword, rest in found if keyword == "RUN" and "torch==" in rest)
    assert 'cuda) index="$CUDA_TORCH_INDEX"' in install
    assert 'rocm) index="$ROCM_TORCH_INDEX"' in install
    assert '--index-url "$index"' in install
    # Torch first: the project's own install then finds it in place (constraints pin it).
    runs = [rest for keyword, rest in found if keyword == "RUN"]
    assert runs.index(install) < next(i for i, r in enumerate(runs) if "-c constraints.txt" in r)


def test_image_defaults_are_settings_the_service_knows() -> None:
    env_lines = [rest for keyword, rest in instructions(DOCKERFILE) if keyword == "ENV"]
    defaults = dict(
        pair.split("=", 1) for line in env_lines for pair in shlex.split(line) if "=" in pair
    )
    known = {name.upper() for name in Settings.__struct_fields__}
    service = {key for key in defaults if key in known}
    assert {"HOST", "PORT", "DEVICE", "MODELS_DIR"} <= service
    assert defaults["MODELS_DIR"] == compose("cuda")["services"]["bge"]["environment"]["MODELS_DIR"]
    volumes = [rest for keyword, rest in instructions(DOCKERFILE) if keyword == "VOLUME"]
    assert json.loads(volumes[0]) == [defaults["MODELS_DIR"], "/data"]
    exposed = [rest for keyword, rest in instructions(DOCKERFILE) if keyword == "EXPOSE"]
    assert exposed == [defaults["PORT"]]


@pytest.mark.parametrize("accelerator", ["cuda", "rocm"])
def test_qdrant_profile_serves_the_retrieval_tools_a_persistent_store(accelerator: str) -> None:
    services = compose(accelerator)["services"]
    qdrant = services["qdrant"]
    assert qdrant["profiles"] == ["qdrant"]
    assert "6333:6333" in qdrant["ports"]
    assert qdrant["image"].split(":-", 1)[1].rstrip("}").startswith("qdrant/qdrant:v1.")
    assert any(v.endswith(":/qdrant/storage") for v in qdrant["volumes"])
    assert "qdrant-data" in compose(accelerator)["volumes"]
    # The service does not depend on it: the store is the retrieval tools' concern.
    assert "qdrant" not in str(services["bge"].get("depends_on", {}))


# -- RunPod worker image ------------------------------------------------------------------

RUNPOD_DOCKERFILE = ROOT / "deploy/runpod/Dockerfile"
START_SCRIPT = ROOT / "deploy/runpod/start.sh"


def dockerignore_keeps(path: str) -> bool:
    """Docker's rule: the last matching pattern wins, ``!`` re-including."""
    kept = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        if fnmatch.fnmatch(path, pattern) or path.split("/")[0] == pattern:
            kept = negated
    return kept


def test_the_worker_image_copies_what_exists_and_reaches_the_build_context() -> None:
    found = instructions(RUNPOD_DOCKERFILE)
    sources = [
        source
        for keyword, rest in found
        if keyword == "COPY" and not rest.startswith("--from")
        for source in shlex.split(rest)[:-1]
    ]
    assert {"worker", "engine", "backends", "api", str(START_SCRIPT.relative_to(ROOT))} <= set(
        sources
    )
    for source in sources:
        assert (ROOT / source).exists(), source
        assert dockerignore_keeps(source), f"{source} is excluded by .dockerignore"
    assert not dockerignore_keeps("deploy/Dockerfile") and not dockerignore_keeps("tests")


def test_the_worker_image_pins_torch_and_installs_runpod_without_its_fastapi_extras() -> None:
    found = instructions(RUNPOD_DOCKERFILE)
    args = dict(rest.split("=", 1) for keyword, rest in found if keyword == "ARG" and "=" in rest)
    constraints = (ROOT / "constraints.txt").read_text()
    torch = re.search(r"^torch==(\S+)$", constraints, re.M)
    assert torch and args["TORCH_VERSION"] == torch.group(1)
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", args["CUDA_TORCH_INDEX"])
    runs = [rest for keyword, rest in found if keyword == "RUN"]
    torch_run = next(i for i, r in enumerate(runs) if "torch==" in r)
    install = next(i for i, r in enumerate(runs) if '".[runpod]"' in r)
    assert torch_run < install and "-c constraints.txt" in runs[install]
    # What the Makefile does too: runpod itself, pinned, with no dependencies of its own.
    assert "pip install --no-deps -c constraints.txt runpod" in runs[install]
    assert (
        "pip install --quiet --no-deps -c constraints.txt runpod" in (ROOT / "Makefile").read_text()
    )
    assert re.search(r"^runpod==\S+$", constraints, re.M)
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["runpod"]
    assert not any(req.startswith(("runpod", "fastapi[")) for req in extra)


def test_the_worker_image_starts_the_worker_with_known_settings() -> None:
    found = instructions(RUNPOD_DOCKERFILE)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "bge-runpod-worker" in scripts
    entrypoint = json.loads(next(rest for keyword, rest in found if keyword == "ENTRYPOINT"))
    copied = next(rest for keyword, rest in found if keyword == "COPY" and "start.sh" in rest)
    assert entrypoint == [Path(shlex.split(copied)[-1]).name]
    script = START_SCRIPT.read_text()
    assert script.rstrip().endswith('exec bge-runpod-worker "$@"')
    assert 'bge-serve download --to "$MODELS_DIR"' in script
    subprocess.run(["sh", "-n", str(START_SCRIPT)], check=True)
    assert START_SCRIPT.stat().st_mode & 0o111, "start.sh must be executable"
    env_lines = [rest for keyword, rest in found if keyword == "ENV"]
    defaults = dict(
        pair.split("=", 1) for line in env_lines for pair in shlex.split(line) if "=" in pair
    )
    known = {name.upper() for name in Settings.__struct_fields__}
    assert {"DEVICE", "MODELS_DIR", "RUNPOD_CONCURRENCY", "LOG_LEVEL"} <= known & set(defaults)
    baked = next(rest for keyword, rest in found if keyword == "RUN" and "BAKE_MODELS" in rest)
    assert f"bge-serve download --to {defaults['MODELS_DIR']}" in baked
