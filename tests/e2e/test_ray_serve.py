"""promptserve on Ray Serve (issue 15), on one local Ray instance for the whole module: two engine replicas
with half a CPU each, the random-tiny backbone, the session's real redis-server as the shared registry.

- classify across tasks gives the single-process server's answers, and names the replica that answered;
- a task keeps landing on the replica that holds it (Ray Serve multiplexing, task = model id);
- an upload reaches every replica holding the task within a second (each watches the registry);
- killing a replica loses no request a client retries once, and Ray brings the replica back;
- bad input gets the same 4xx: test_server_bad_input.py's tests run here too, against the Ray ingress.

Skips, with the reason, where Ray cannot start (or redis-server is missing)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError

from prompt_store import open_store
from server.app import create_app
from server.classify import REPLICA_HEADER
from server.ray_settings import ENGINE_DEPLOYMENT, INGRESS_DEPLOYMENT, RaySettings
from server.settings import ServerSettings
from tests.integration import test_server_bad_input as one_process
from tests.integration.server_utils import AUTH, REPO, image_bytes, prompt_set_bytes, random_tiny, wait_until
from tests.integration.test_server_bad_input import LIMITS, PNG
from tests.store_utils import free_port

ray = pytest.importorskip("ray", reason="Ray Serve is not installed: pip install 'promptserve[ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'promptserve[ray]'")

# Ray and three replica processes start once for the module: 1-3 minutes on 2 busy cores, beyond the default timeout
pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]
APP = "promptserve-test"
PINNED = "shared"  # pinned on every replica: the task both replicas hold when an upload lands


class RayServer:
    def __init__(self, url: str, store_url: str):
        self.url, self.store_url = url, store_url
        self.client = httpx.Client(base_url=url, timeout=60.0)
        self.engine = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name=APP)
        self._by_task: dict[str, serve.handle.DeploymentHandle] = {}  # one handle (and router) per task

    def classify(self, task: str, seed: int = 0) -> httpx.Response:
        return self.client.post(f"/classify/{task}", content=image_bytes(seed), headers=PNG)

    def replicas(self, timeout_s: float = 10.0, want: int = 2) -> dict[str, dict]:
        """status() of every engine replica: calls without a task are spread over the replicas by Ray."""
        seen: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while len(seen) < want and time.monotonic() < deadline:
            try:
                status = self.engine.status.remote().result(timeout_s=timeout_s)
            except ray.exceptions.RayError:  # routed to a replica that just died: Ray picks another next time
                continue
            seen[status["replica"]] = status
        return seen

    def routed_to(self, task: str) -> str:
        """The replica a call routed by `task` lands on, without loading the task there (status() loads nothing):
        this process's router hears which replica holds what from Ray's controller, as the ingress's does."""
        handle = self._by_task.setdefault(task, self.engine.options(multiplexed_model_id=task))
        return handle.status.remote().result(timeout_s=10.0)["replica"]


@pytest.fixture(scope="module")
def ray_server(redis_server):
    from server.ray_app import build_app, wait_ready

    store_url = redis_server.url.rsplit("/", 1)[0] + "/7"  # this module's own Redis database
    redis.Redis.from_url(store_url).flushdb()
    with open_store(store_url) as store:
        store.put(PINNED, prompt_set_bytes(20))  # before the replicas start, so each pins it at start-up
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as e:  # no Ray on this machine: say why instead of failing
        pytest.skip(f"Ray cannot start here: {type(e).__name__}: {e}")
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = ServerSettings(backbone="random-tiny", store=store_url, pinned_tasks=[PINNED], torch_threads=1,
                                  **LIMITS)
        rs = RaySettings(replicas=2, engine_num_cpus=0.5, ingress_num_cpus=0.25, health_check_period_s=1.0,
                         health_check_timeout_s=10.0, graceful_shutdown_timeout_s=1.0)
        serve.run(build_app(settings, rs), name=APP, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, 120)
        server = RayServer(url, store_url)
        yield server
        server.client.close()
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def env(ray_server):
    """What test_server_bad_input.py's tests expect: (client, stable's version, store spec)."""
    client = ray_server.client
    version = client.put("/tasks/stable", content=prompt_set_bytes(1), headers=AUTH).json()["version"]
    return client, version, ray_server.store_url


def test_ray_settings_say_what_to_fix():
    with pytest.raises(ValidationError, match="min_replicas needs max_replicas"):
        RaySettings(min_replicas=1)
    with pytest.raises(ValidationError, match="between min_replicas"):
        RaySettings(replicas=5, min_replicas=1, max_replicas=4)
    options = RaySettings(replicas=2, min_replicas=1, max_replicas=4, target_ongoing_requests=8).engine_options()
    assert options["autoscaling_config"] == {"min_replicas": 1, "initial_replicas": 2, "max_replicas": 4,
                                             "target_ongoing_requests": 8}
    assert "num_replicas" not in options


def test_sample_serve_config_and_import_path_are_valid(monkeypatch):
    import importlib

    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "docs/ray-serve.yaml").read_text()))
    (app,) = config.applications
    assert {d.name for d in app.deployments} == {ENGINE_DEPLOYMENT, INGRESS_DEPLOYMENT}
    module, attr = app.import_path.split(":")
    monkeypatch.setenv("PROMPTSERVE_ADMIN_TOKEN", "config-test")
    assert isinstance(getattr(importlib.import_module(module), attr), serve.Application)


def test_cli_ray_flags_say_what_to_fix():
    import typer
    from typer.testing import CliRunner

    from server import cli

    app = typer.Typer(add_completion=False)
    app.command()(cli.serve)  # one command: invoked without its name
    result = CliRunner().invoke(app, ["--backbone", "random-tiny", "--replicas", "2"])
    assert result.exit_code == 2 and "--replicas and --ray-address need --ray" in result.output
    result = CliRunner().invoke(app, ["--backbone", "random-tiny", "--ray", "--replicas", "0"])
    assert result.exit_code == 2 and "replicas: Input should be greater than or equal to 1" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # one line, no traceback


def test_classify_across_tasks_matches_one_process(ray_server, tmp_path):
    tasks = {f"mix{i}": prompt_set_bytes(30 + i) for i in range(4)}
    versions = {t: ray_server.client.put(f"/tasks/{t}", content=b, headers=AUTH).json()["version"]
                for t, b in tasks.items()}
    with ThreadPoolExecutor(4) as pool:  # concurrent, so tasks can share a replica's batch
        answers = dict(zip(tasks, pool.map(lambda t: ray_server.classify(t, seed=3), tasks), strict=True))
    replicas = set(ray_server.replicas())
    local = TestClient(create_app(ServerSettings(backbone="random-tiny", store=str(tmp_path / "reg"), **LIMITS),
                                  backbone=random_tiny()))
    with local:
        wait_until(lambda: local.get("/readyz").status_code == 200, 60)
        for task, body in tasks.items():
            local.put(f"/tasks/{task}", content=body, headers=AUTH)
            expected = local.post(f"/classify/{task}", content=image_bytes(3), headers=PNG)
            assert REPLICA_HEADER.lower() not in expected.headers  # one process names no replica
            got = answers[task]
            assert got.status_code == 200, got.text
            assert got.json()["version"] == versions[task] == expected.json()["version"]
            assert got.headers[REPLICA_HEADER] in replicas
            for g, e in zip(got.json()["predictions"], expected.json()["predictions"], strict=True):
                assert (g["label"], g["index"]) == (e["label"], e["index"])
                assert g["score"] == pytest.approx(e["score"], abs=1e-5)


def test_same_task_keeps_landing_on_the_replica_holding_it(ray_server):
    ray_server.client.put("/tasks/sticky", content=prompt_set_bytes(40), headers=AUTH)
    first = ray_server.classify("sticky")
    holder = first.headers[REPLICA_HEADER]
    # replicas report the tasks they hold every 0.1 s; Ray's routers hear of it from its controller
    wait_until(lambda: all(ray_server.routed_to("sticky") == holder for _ in range(5)), 30,
               what="Ray's routing to learn which replica holds the task")
    landed = [ray_server.classify("sticky", seed=i).headers[REPLICA_HEADER] for i in range(8)]
    assert landed == [holder] * 8
    holding = [name for name, s in ray_server.replicas().items() if "sticky" in s["resident"]]
    assert holding == [holder]


def test_upload_reaches_every_replica_within_a_second(ray_server):
    before = ray_server.replicas()
    assert len(before) == 2
    old = {s["resident"].get(PINNED) for s in before.values()}
    assert len(old) == 1 and None not in old  # both replicas hold the pinned task's same version
    new = ray_server.client.put(f"/tasks/{PINNED}", content=prompt_set_bytes(21), headers=AUTH)
    uploaded = time.monotonic()
    version = new.json()["version"]
    assert version not in old
    first_seen: dict[str, float] = {}
    while len(first_seen) < 2 and time.monotonic() - uploaded < 10.0:
        status = ray_server.engine.status.remote().result(timeout_s=10.0)
        if status["resident"].get(PINNED) == version:
            first_seen.setdefault(status["replica"], time.monotonic() - uploaded)
    assert set(first_seen) == set(before), f"replicas that serve the upload: {first_seen}"
    assert max(first_seen.values()) < 1.0, f"seconds until each replica served the upload: {first_seen}"
    assert ray_server.classify(PINNED).json()["version"] == version


def test_replica_loss_loses_no_request_retried_once_and_ray_replaces_the_replica(ray_server):
    tasks = [f"loss{i}" for i in range(4)]
    for i, task in enumerate(tasks):
        ray_server.client.put(f"/tasks/{task}", content=prompt_set_bytes(50 + i), headers=AUTH)
    before = wait_until(lambda: len(seen := ray_server.replicas()) == 2 and seen, 120, interval_s=0.5,
                        what="both engine replicas to run")
    victim_name = ray_server.classify(tasks[0]).headers[REPLICA_HEADER]
    victim = ray.get_actor(before[victim_name]["actor_name"], namespace="serve")
    wait_until(lambda: ray_server.routed_to(tasks[0]) == victim_name, 30, what="Ray's routing to learn the task")
    victim_answering = threading.Event()

    def request_retried_once(i: int) -> tuple[int, int]:
        task = tasks[i % len(tasks)]
        first = ray_server.classify(task, seed=i)
        if first.status_code == 200:
            if first.headers[REPLICA_HEADER] == victim_name:
                victim_answering.set()
            return 200, 0
        return ray_server.classify(task, seed=i).status_code, first.status_code

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(request_retried_once, i) for i in range(12)]
        assert victim_answering.wait(60), "no request reached the replica to kill"  # killed while requests flow
        ray.kill(victim, no_restart=True)
        futures += [pool.submit(request_retried_once, i) for i in range(12, 36)]
        outcomes = [f.result(timeout=120) for f in futures]
    assert [final for final, _ in outcomes] == [200] * len(outcomes), outcomes
    assert all(first in (0, 503) for _, first in outcomes), outcomes  # a lost replica is a 503, never a 500

    def replaced() -> bool:
        names = set(ray_server.replicas(timeout_s=5.0))
        return len(names) == 2 and victim_name not in names

    wait_until(replaced, 120, interval_s=0.5, what="Ray to replace the killed replica")
    assert all(ray_server.classify(t).status_code == 200 for t in tasks)


# test_server_bad_input.py's tests, collected again with this module's `env`: the same 4xx from the Ray ingress as
# from one process.
test_refused_upload_changes_nothing = one_process.test_refused_upload_changes_nothing
test_bad_task_name_is_refused = one_process.test_bad_task_name_is_refused
test_bad_classify_request = one_process.test_bad_classify_request
test_bad_admin_requests_change_nothing = one_process.test_bad_admin_requests_change_nothing
test_store_change_that_does_not_validate_is_not_served = (
    one_process.test_store_change_that_does_not_validate_is_not_served)


@pytest.fixture(scope="module")
def ray_directory_server(ray_server, tmp_path_factory):
    """A second app on the same Ray instance, one engine replica, on a directory registry: its change events
    come from a file-system watch, later than the next request may arrive (issue 23 item 11)."""
    from server.ray_app import build_app, wait_ready

    registry = tmp_path_factory.mktemp("ray-registry")
    settings = ServerSettings(backbone="random-tiny", store=str(registry), torch_threads=1, **LIMITS)
    rs = RaySettings(replicas=1, engine_num_cpus=0.25, ingress_num_cpus=0.25, health_check_period_s=1.0,
                     health_check_timeout_s=10.0, graceful_shutdown_timeout_s=1.0)
    serve.run(build_app(settings, rs), name=f"{APP}-dir", route_prefix="/dir")
    url = ray_server.url + "/dir"
    wait_ready(url, 120)
    client = httpx.Client(base_url=url, timeout=60.0)
    yield client
    client.close()
    serve.delete(f"{APP}-dir")


def test_read_your_writes_with_a_directory_registry(ray_directory_server):
    client = ray_directory_server
    stale = 0
    for seed in range(10):  # upload, then ask at once: the answer must come from the version just uploaded
        version = client.put("/tasks/fresh", content=prompt_set_bytes(30 + seed), headers=AUTH).json()["version"]
        answer = client.post("/classify/fresh", content=image_bytes(seed), headers=PNG)
        assert answer.status_code == 200, answer.text
        stale += answer.json()["version"] != version
    assert stale == 0, f"{stale} of 10 requests right after an upload were answered by the previous version"
    history = client.get("/tasks/fresh").json()["history"]
    back = client.post("/tasks/fresh/rollback", json={"version": history[0]["version"]}, headers=AUTH).json()
    assert client.post("/classify/fresh", content=image_bytes(1), headers=PNG).json()["version"] == back["version"]
    assert client.delete("/tasks/fresh", headers=AUTH).status_code == 200
    assert client.post("/classify/fresh", content=image_bytes(2), headers=PNG).status_code == 404


def test_the_pages_say_what_they_show_under_ray(ray_server, tmp_path):
    """Issue 24 item 5: under --ray the Registry said "Resident: no" for tasks the replicas serve and Live said
    "No batch ran" while requests flowed: the pages read the ingress. They now say so, and the Resident column
    does not claim what the ingress cannot know; a one-process server shows no such notice."""
    for page in ("/ui/tasks", "/ui/live"):
        html = ray_server.client.get(page).text
        assert 'id="remote-engine-notice"' in html and 'data-remote-engine="true"' in html
    one = TestClient(create_app(ServerSettings(backbone="random-tiny", store=str(tmp_path / "r")),
                                backbone=random_tiny()))
    with one:
        wait_until(lambda: one.get("/readyz").status_code == 200, 60)
        assert 'remote-engine-notice' not in one.get("/ui/tasks").text
