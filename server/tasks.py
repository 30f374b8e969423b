"""The task registry over HTTP: upload (validate, store, swap in), inspect, roll back, delete.

docs/design.md's promise "nothing refused is stored or served" lives here: nothing a client sends is stored
or served unless it validated against this server's backbone first, and a refused write changes nothing (the
store refuses before writing, and the bank is only touched after the store accepted).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import ValidationError

from promptserve import naming
from server.auth import require_admin
from server.errors import ApiError, translated
from server.schemas import (
    BrokenTask,
    DeletedResponse,
    RollbackRequest,
    TaskDetail,
    TaskList,
    TaskRecordModel,
    TaskSummary,
    error_responses,
)
from server.state import ServerState, ready_state

router = APIRouter(tags=["tasks"])

# The pattern is documented in the OpenAPI schema (json_schema_extra), not enforced by FastAPI: check_task_name
# answers a bad name with its own 422 that says what a name may be.
TaskName = Annotated[str, Path(description="Task name: 1-64 of a-z 0-9 . _ -, starting with a letter or digit.",
                               json_schema_extra={"pattern": f"^{naming.TASK_NAME_PATTERN}$"})]


def check_task_name(task: str) -> None:
    try:
        naming.check_task_name(task)
    except naming.InvalidTaskName as e:
        raise ApiError(422, "invalid_task_name", str(e)) from None


def record_model(record) -> TaskRecordModel:
    return TaskRecordModel.model_validate(record.to_dict())


@router.put(
    "/tasks/{task}",
    operation_id="put_task",
    response_model=TaskRecordModel,
    summary="Upload a prompt set (safetensors) as the task's new version and serve it",
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, 409, 413, 422, 503, 507),
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def upload(task: TaskName, request: Request, state: ServerState = Depends(ready_state)) -> TaskRecordModel:
    engine = state.engine
    try:
        check_task_name(task)
        data = await request.body()  # the body-size guard cuts this off at max_upload_mib (413)
        if not data:
            raise ApiError(422, "empty_body", "the body is empty: send the prompt set's safetensors bytes")
        with translated(task):
            ps = await asyncio.to_thread(engine.load_checked, data)  # validate against THIS backbone first
            record = await asyncio.to_thread(state.store.put, task, data)
            await engine.sync(task, known=(record.version, ps))
    except ApiError as e:
        state.metrics.refusals.labels(e.error).inc()
        raise
    state.metrics.uploads.labels(task).inc()
    return record_model(record)


@router.get("/tasks", operation_id="list_tasks", response_model=TaskList, summary="Every task with its current version")
async def list_tasks(state: ServerState = Depends(ready_state)) -> TaskList:
    with translated(""):
        records, broken = await asyncio.to_thread(state.store.scan)
    resident = state.engine.tasks
    return TaskList(tasks=[TaskSummary(**record_model(r).model_dump(), resident=r.task in resident)
                           for r in records],
                    broken=[BrokenTask(task=t, reason=why) for t, why in sorted(broken.items())])


@router.get("/tasks/{task}", operation_id="get_task", response_model=TaskDetail, responses=error_responses(404, 422),
            summary="A task's current version, history, labels, metrics, size and residency")
async def get_task(task: TaskName, state: ServerState = Depends(ready_state)) -> TaskDetail:
    check_task_name(task)
    with translated(task):
        current = await asyncio.to_thread(state.store.resolve, task)
        history = await asyncio.to_thread(state.store.history, task)
    resident_version = state.engine.tasks.version(task)
    return TaskDetail(task=task, current=record_model(current), history=[record_model(r) for r in history],
                      resident=resident_version is not None, resident_version=resident_version)


@router.post(
    "/tasks/{task}/rollback",
    operation_id="rollback_task",
    response_model=TaskRecordModel,
    summary="Point the task back at an earlier version and serve it",
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, 404, 409, 422, 503, 507),
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": RollbackRequest.model_json_schema()}}}},
)
async def rollback(task: TaskName, request: Request, state: ServerState = Depends(ready_state)) -> TaskRecordModel:
    engine = state.engine
    try:
        check_task_name(task)
        body = await _rollback_body(request)  # read after the admin check: no body is parsed for a stranger
        with translated(task):
            # the old version validated on the backbone that stored it, maybe not on this one: check again
            data = await asyncio.to_thread(state.store.get, task, body.version)
            ps = await asyncio.to_thread(engine.load_checked, data)
            record = await asyncio.to_thread(state.store.rollback, task, body.version)
            await engine.sync(task, known=(record.version, ps))
    except ApiError as e:
        state.metrics.refusals.labels(e.error).inc()
        raise
    return record_model(record)


async def _rollback_body(request: Request) -> RollbackRequest:
    try:
        return RollbackRequest.model_validate_json(await request.body())
    except ValidationError as e:
        where = "; ".join(f"body.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}".replace("body.:", "body:")
                          for err in e.errors()[:3])
        raise ApiError(422, "invalid_request", f"{where} (send {{\"version\": \"<sha256 or a prefix>\"}})") from None


@router.delete(
    "/tasks/{task}",
    operation_id="delete_task",
    response_model=DeletedResponse,
    summary="Delete the task and all its versions; it stops serving (404) at once",
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, 404, 422, 503),
)
async def delete_task(task: TaskName, state: ServerState = Depends(ready_state)) -> DeletedResponse:
    check_task_name(task)
    with translated(task):
        await asyncio.to_thread(state.store.delete, task)
    await state.engine.drop(task)
    return DeletedResponse(task=task)

