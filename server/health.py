"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.schemas import Health, Readiness
from server.state import ServerState, get_state

router = APIRouter(tags=["operations"])


@router.get("/healthz", operation_id="healthz", response_model=Health, responses={503: {"model": Health}},
            summary="Alive: 200 while the process works (also while loading), 503 once start-up failed")
async def healthz(state: ServerState = Depends(get_state)):
    if state.error:  # a liveness probe should restart a process that can never become ready
        return JSONResponse(Health(status="failed").model_dump(), status_code=503)
    return Health(status="ok")


@router.get("/readyz", operation_id="readyz", response_model=Readiness,
            summary="Ready to classify (503 until the backbone is loaded)", responses={503: {"model": Readiness}})
async def readyz(state: ServerState = Depends(get_state)):
    if not state.ready:
        body = Readiness(status="failed" if state.error else "loading", detail=state.error)
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})
    engine = state.engine
    return Readiness(status="ready", backbone=state.backbone.display_name, fingerprint=state.backbone.fingerprint,
                     device=str(engine.device), resident_tasks=len(engine.tasks),
                     max_images_per_request=state.settings.max_images_per_request,
                     dtype=str(engine.dtype).removeprefix("torch."), backend=engine.backend.name,
                     precision=state.precision.as_dict() if state.precision is not None else None)


@router.get("/metrics", operation_id="metrics", response_class=PlainTextResponse,
            summary="Prometheus metrics (text exposition format)",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
async def metrics(state: ServerState = Depends(get_state)) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
