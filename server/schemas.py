"""Response models: what `/openapi.json` documents and what every route answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    error: str = Field(description="A short stable code, e.g. fingerprint, shape, queue_full, unknown_task.")
    detail: str = Field(description="What went wrong and what would work, for a human.")


class Prediction(BaseModel):
    label: str
    index: int = Field(description="Class index in the task's head.")
    score: float = Field(description="Softmax probability over the task's classes.")


class Timing(BaseModel):
    queue: float = Field(description="ms from entering the queue to the start of its batch's forward.")
    compute: float = Field(description="ms of the batch's forward (shared by every image in the batch).")
    total: float = Field(description="ms from the request's arrival to its answer, decoding included.")


class ClassifyResponse(BaseModel):
    task: str
    version: str = Field(description="sha256 of the prompt set that produced these predictions.")
    predictions: list[Prediction]
    timing_ms: Timing


class TaskRecordModel(BaseModel):
    """One stored version of a task (the store's TaskRecord)."""

    task: str
    version: str
    size: int = Field(description="Bytes of the safetensors file.")
    created: str | float | None = None
    labels: list[str] = Field(default_factory=list)
    method: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    backbone_fingerprint: str | None = None


class TaskSummary(TaskRecordModel):
    resident: bool = Field(description="Whether this replica holds the task in its prompt bank now.")


class TaskDetail(BaseModel):
    task: str
    current: TaskRecordModel
    history: list[TaskRecordModel] = Field(description="Every stored version, oldest first.")
    resident: bool
    resident_version: str | None = Field(None, description="The version this replica serves (None: not resident).")


class BrokenTask(BaseModel):
    task: str
    reason: str = Field(description="Why its stored record cannot be read, e.g. unreadable, missing_blob.")


class TaskList(BaseModel):
    tasks: list[TaskSummary]
    broken: list[BrokenTask] = Field(default_factory=list, description=(
        "Tasks whose stored record cannot be read: they answer 500 (broken_task); every other task serves."))


class RollbackRequest(BaseModel):
    version: str = Field(min_length=1, max_length=128, description="A version from the task's history.")


class DeletedResponse(BaseModel):
    task: str
    deleted: bool = True


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    backbone: str | None = None
    fingerprint: str | None = None
    device: str | None = None
    resident_tasks: int = 0
    max_images_per_request: int | None = Field(None, description=(
        "Images one classify request may carry; clients split longer lists into requests of this size."))
    dtype: str | None = Field(None, description="The precision the engine runs (dtype auto's choice, or the setting).")
    backend: str | None = Field(None, description=(
        "What runs the forward: torch or openvino (backend auto's choice, or the setting)."))
    precision: dict[str, Any] | None = Field(None, description=(
        "dtype and backend auto's measurements: each candidate's (dtype and backend) speed-up over float32 torch, "
        "top-1 agreement with float32 torch on the probe images, whether it was kept and why. Absent when both a "
        "dtype and a backend were set."))
    detail: str | None = None


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the error codes a route can answer, all with the ErrorResponse body."""
    return {code: {"model": ErrorResponse} for code in codes}
