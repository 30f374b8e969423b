"""The HTML pages: Try (`/`), Registry (`/ui/tasks`, `/ui/tasks/<task>`), Live (`/ui/live`).

Server-side rendering covers what the page needs to be useful before any script runs (the task list on
Try); everything else is fetched by the page's scripts from the public HTTP API, so the page never shows
anything an API client could not see. No build step, no CDN: templates and static files ship in the package.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

import promptserve
from server.errors import ApiError
from server.state import ServerState, get_state, ready_state
from server.tasks import check_task_name, list_tasks

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(tags=["web"], include_in_schema=False)
router.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="web-static")


# The pages handle the admin token: nothing but their own scripts, styles and images runs or loads in them, no
# other site may frame them (clickjacking), and no response is sniffed into another type.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _page(request: Request, template: str, state: ServerState, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, template, {
        "version": promptserve.__version__,
        "api_token_required": state.api_token is not None,
        # under Ray Serve this process is the ingress: the engine replicas hold the tasks and run the batches
        "remote_engine": state.predictor is not None and not getattr(state.predictor, "local", True),
        **context,
    }, headers=PAGE_HEADERS)


@router.get("/", response_class=HTMLResponse)
async def try_page(request: Request, state: ServerState = Depends(get_state)) -> HTMLResponse:
    """With an API token set, the shell is public (server/auth.py) and holds no task: the script fetches them."""
    tasks, not_ready = [], None
    if not state.ready:
        not_ready = f"failed to start: {state.error}" if state.error else "the server is still loading"
    elif state.api_token is None:
        tasks = (await list_tasks(state)).tasks
    return _page(request, "try.html", state, tasks=tasks, not_ready=not_ready, active="try")


@router.get("/ui/fragments/tasks", response_class=HTMLResponse)
async def task_list_fragment(request: Request, state: ServerState = Depends(ready_state)) -> HTMLResponse:
    """The Try page's task choices as HTML, behind the API token like every data endpoint."""
    return templates.TemplateResponse(request, "task_list.html", {"tasks": (await list_tasks(state)).tasks},
                                      headers=PAGE_HEADERS)


@router.get("/ui/tasks", response_class=HTMLResponse)
async def registry_page(request: Request, state: ServerState = Depends(get_state)) -> HTMLResponse:
    return _page(request, "tasks.html", state, active="tasks")


@router.get("/ui/tasks/{task}", response_class=HTMLResponse)
async def task_page(request: Request, task: str, state: ServerState = Depends(get_state)) -> HTMLResponse:
    check_task_name(task)
    return _page(request, "task.html", state, task=task, active="tasks")


@router.get("/ui/live", response_class=HTMLResponse)
async def live_page(request: Request, state: ServerState = Depends(get_state)) -> HTMLResponse:
    return _page(request, "live.html", state, active="live")


@router.get("/ui/examples/{task}")
async def examples(task: str, state: ServerState = Depends(get_state)) -> list[dict]:
    from server.web.examples import list_examples  # lazy: `python -m server.web.examples` runs that module alone

    check_task_name(task)
    found = list_examples(state.settings.demo_tasks_dir, task)
    return [{**e, "url": f"/ui/examples/{task}/{e['name']}"} for e in found]


@router.get("/ui/examples/{task}/{name}")
async def example_file(task: str, name: str, state: ServerState = Depends(get_state)) -> FileResponse:
    from server.web.examples import example_path

    check_task_name(task)
    path = example_path(state.settings.demo_tasks_dir, task, name)
    if path is None:
        raise ApiError(404, "unknown_example", f"no example image {name[:80]!r} for task {task!r}")
    return FileResponse(path)
