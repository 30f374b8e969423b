"""Settings of the Ray Serve deployment (`PROMPTSERVE_RAY_*`, overridden by `promptserve serve --ray` flags).

Only what Ray decides lives here: how many engine replicas and what each may use, autoscaling, health
checks, and whether requests are routed by task. Everything a replica does with a request (backbone,
store, batching, resident budget, limits) stays in ServerSettings, shared with the one-process server.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENGINE_DEPLOYMENT = "PromptServeEngine"
INGRESS_DEPLOYMENT = "PromptServeIngress"


class RaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTSERVE_RAY_", extra="ignore")

    address: str | None = Field(None, description=(
        "A running Ray cluster (`ray://host:10001` or `auto`); unset: start a local Ray instance."))
    app_name: str = Field("promptserve", min_length=1, description="The Serve application's name.")

    # ---- engine replicas: the backbone once each, a bounded set of resident tasks ------------------------
    replicas: int = Field(2, ge=1, description="Engine replicas (the initial count when autoscaling).")
    min_replicas: int | None = Field(None, ge=0, description="Autoscaling lower bound (needs max_replicas).")
    max_replicas: int | None = Field(None, ge=1, description="Autoscaling upper bound; unset: a fixed count.")
    target_ongoing_requests: float = Field(16.0, gt=0, description=(
        "Autoscaling aims at this many requests in flight per engine replica."))
    max_ongoing_requests: int = Field(64, ge=1, description=(
        "Requests one engine replica takes at once; keep it >= max_batch so batches can fill."))
    engine_num_cpus: float = Field(1.0, gt=0, description="Logical CPUs Ray reserves per engine replica.")
    engine_num_gpus: float = Field(0.0, ge=0, description="GPUs per engine replica (fractions share one GPU).")
    affinity: bool = Field(True, description=(
        "Route each request to a replica that holds its task (Ray Serve model multiplexing, task = model id). "
        "False: Ray's default task-blind routing (the benchmark's baseline)."))

    # ---- ingress: the HTTP API (decoding, validation of uploads); holds no resident tasks ----------------
    ingress_replicas: int = Field(1, ge=1)
    ingress_num_cpus: float = Field(0.5, gt=0)
    ingress_max_ongoing_requests: int = Field(256, ge=1)

    # ---- failure handling -----------------------------------------------------------------------------
    health_check_period_s: float = Field(2.0, gt=0, description="How often Serve checks each replica.")
    health_check_timeout_s: float = Field(10.0, gt=0, description="A check slower than this fails the replica.")
    graceful_shutdown_timeout_s: float = Field(5.0, ge=0)

    @model_validator(mode="after")
    def _check_autoscaling(self) -> Self:
        if self.min_replicas is not None and self.max_replicas is None:
            raise ValueError("min_replicas needs max_replicas: set both to autoscale, or only replicas for a "
                             "fixed count")
        if self.max_replicas is not None:
            low = self.min_replicas if self.min_replicas is not None else 1
            if low > self.max_replicas:
                raise ValueError(f"min_replicas ({low}) is above max_replicas ({self.max_replicas})")
            if not low <= self.replicas <= self.max_replicas:
                raise ValueError(f"replicas ({self.replicas}) is the initial count when autoscaling: keep it "
                                 f"between min_replicas ({low}) and max_replicas ({self.max_replicas})")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    def engine_options(self) -> dict:
        """`Deployment.options(...)` for the engine replicas."""
        scaling = ({"autoscaling_config": {
            "min_replicas": self.min_replicas if self.min_replicas is not None else 1,
            "initial_replicas": self.replicas, "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests}}
            if self.autoscaling else {"num_replicas": self.replicas})
        return dict(name=ENGINE_DEPLOYMENT, max_ongoing_requests=self.max_ongoing_requests,
                    ray_actor_options={"num_cpus": self.engine_num_cpus, "num_gpus": self.engine_num_gpus},
                    health_check_period_s=self.health_check_period_s,
                    health_check_timeout_s=self.health_check_timeout_s,
                    graceful_shutdown_timeout_s=self.graceful_shutdown_timeout_s, **scaling)

    def ingress_options(self) -> dict:
        return dict(name=INGRESS_DEPLOYMENT, num_replicas=self.ingress_replicas,
                    max_ongoing_requests=self.ingress_max_ongoing_requests,
                    ray_actor_options={"num_cpus": self.ingress_num_cpus},
                    health_check_period_s=self.health_check_period_s,
                    health_check_timeout_s=self.health_check_timeout_s,
                    graceful_shutdown_timeout_s=self.graceful_shutdown_timeout_s)

    def cpus_needed(self) -> float:
        """Logical CPUs the application reserves at its initial size (a local Ray instance needs them)."""
        return self.replicas * self.engine_num_cpus + self.ingress_replicas * self.ingress_num_cpus
