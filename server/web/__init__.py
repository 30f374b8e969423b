"""The web page: Try, Registry and Live views served by the app itself (Jinja2 + static files, no build step).

`router` is the one thing the app includes; it carries the pages, the static files and the live-stats
endpoint with its sampler (started and stopped by the router's lifespan).
"""

from fastapi import APIRouter

from server.web import live, pages

router = APIRouter()
router.include_router(pages.router)
router.include_router(live.router)

__all__ = ["router"]
