"""The promptserve HTTP server: FastAPI app factory, dynamic mixed-task batcher, inference engine.

Kept import-light on purpose (`promptserve --help` must not pay for torch): import `server.app.create_app`
and `server.settings.ServerSettings` where needed.
"""
