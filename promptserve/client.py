"""A Python client for a running promptserve server (httpx): `Client` (sync) and `AsyncClient` (async).

    client = promptserve.Client()                    # PROMPTSERVE_URL, else http://127.0.0.1:8000
    answers = client.classify("flowers", ["a.jpg", open("b.png", "rb").read()])
    client.push("flowers", "runs/flowers.safetensors")   # needs the admin token

Any number of images: `classify` splits them into requests of the server's per-request limit (from
`/readyz`) and halves a request the server refuses as too many pixels. Every failure (an HTTP error, an
unreachable server, an unreadable file) raises `ClientError`, whose message carries the server's own
`error` code and `detail`.

Tokens: `token=` or the environment: PROMPTSERVE_ADMIN_TOKEN (uploads, rollback, delete; the admin token
also passes every API check), else PROMPTSERVE_API_TOKEN.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "PROMPTSERVE_URL"
ADMIN_TOKEN_ENV = "PROMPTSERVE_ADMIN_TOKEN"
API_TOKEN_ENV = "PROMPTSERVE_API_TOKEN"
FALLBACK_IMAGES_PER_REQUEST = 32  # the server's default, for a server whose /readyz does not say

Image = str | os.PathLike | bytes


class ClientError(Exception):
    """A request that did not succeed. `status` is the HTTP status (None when there was no answer), `error`
    the server's short code (e.g. `unknown_task`, `fingerprint`) and `detail` its explanation."""

    def __init__(self, message: str, status: int | None = None, error: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.status, self.error, self.detail = status, error, detail


def resolve_url(url: str | None = None) -> str:
    return (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def resolve_token(token: str | None = None) -> str | None:
    """`token`, else the admin token, else the API token."""
    if token:
        return token
    if os.environ.get(ADMIN_TOKEN_ENV, "").strip():
        return os.environ[ADMIN_TOKEN_ENV].strip()
    return os.environ.get(API_TOKEN_ENV, "").strip() or None


def _read(image: Image, index: int) -> tuple[str, bytes]:
    """(a name for messages, the encoded bytes)."""
    if isinstance(image, bytes | bytearray):
        return f"image {index}", bytes(image)
    path = Path(image)
    try:
        return str(path), path.read_bytes()
    except OSError as e:
        raise ClientError(f"cannot read {path}: {e.strerror or e}") from None


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _error_from(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        error, detail = str(body["error"]), str(body.get("detail", ""))
    else:  # not one of the server's own answers (a proxy, another service on the port)
        error, detail = None, response.text[:500]
    message = f"HTTP {response.status_code}" + (f" {error}" if error else "") + (f": {detail}" if detail else "")
    return ClientError(message, response.status_code, error, detail)


class _Requests:
    """What the sync and async clients share: headers, request arguments and answer checks (no I/O)."""

    def __init__(self, url: str | None, token: str | None, timeout: float):
        self.url = resolve_url(url)
        self.token = resolve_token(token)
        self.timeout = timeout
        self.images_per_request: int | None = None  # learned from /readyz on the first classify

    def http_args(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return dict(base_url=self.url, headers=headers, timeout=self.timeout)

    def unreachable(self, e: httpx.HTTPError) -> ClientError:
        return ClientError(f"cannot reach the server at {self.url}: {e or type(e).__name__} (is `promptserve serve` "
                           f"running there? set {URL_ENV} or --url)")

    @staticmethod
    def answer(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise _error_from(response)
        return response.json()

    @staticmethod
    def limit_from(readiness: Any) -> int:
        limit = readiness.get("max_images_per_request") if isinstance(readiness, dict) else None
        return int(limit) if isinstance(limit, int) and limit > 0 else FALLBACK_IMAGES_PER_REQUEST

    @staticmethod
    def classify_args(task: str, chunk: list[tuple[str, bytes]], top_k: int | None) -> dict[str, Any]:
        files = [("files", (Path(name).name, data, "application/octet-stream")) for name, data in chunk]
        return dict(method="POST", url=f"/classify/{task}", files=files,
                    params={"top_k": top_k} if top_k else None)

    @staticmethod
    def is_too_many_pixels(e: ClientError, chunk: list) -> bool:
        return e.status == 413 and e.error == "too_many_pixels" and len(chunk) > 1

    @staticmethod
    def push_args(task: str, file: Image) -> dict[str, Any]:
        _, data = _read(file, 0)
        return dict(method="PUT", url=f"/tasks/{task}", content=data,
                    headers={"Content-Type": "application/octet-stream"})


class Client:
    """Sync client; use as a context manager or call `close()`. See the module docstring."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self._r = _Requests(url, token, timeout)
        self._http = httpx.Client(transport=transport, **self._r.http_args())

    @property
    def url(self) -> str:
        return self._r.url

    def _call(self, method: str, url: str, **kwargs) -> Any:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as e:
            raise self._r.unreachable(e) from None
        return self._r.answer(response)

    def ready(self) -> dict:
        """The server's /readyz answer (backbone, fingerprint, device, limits); ClientError while loading."""
        return self._call("GET", "/readyz")

    def classify(self, task: str, images: Iterable[Image], top_k: int | None = None) -> list[dict]:
        """One answer per image, in order: {task, version, predictions: [{label, index, score}], timing_ms}."""
        blobs = [_read(image, i) for i, image in enumerate(images)]
        if self._r.images_per_request is None:
            self._r.images_per_request = self._r.limit_from(self.ready())
        answers: list[dict] = []
        for chunk in _chunks(blobs, self._r.images_per_request):
            answers += self._classify_chunk(task, chunk, top_k)
        return answers

    def _classify_chunk(self, task: str, chunk: list[tuple[str, bytes]], top_k: int | None) -> list[dict]:
        try:
            return self._call(**self._r.classify_args(task, chunk, top_k))
        except ClientError as e:
            if not self._r.is_too_many_pixels(e, chunk):
                raise
            half = len(chunk) // 2  # large images: fewer per request
            return self._classify_chunk(task, chunk[:half], top_k) + self._classify_chunk(task, chunk[half:], top_k)

    def tasks(self) -> list[dict]:
        """Every task with its current version, labels, metrics, size and whether it is resident."""
        return self._call("GET", "/tasks")["tasks"]

    def push(self, task: str, file: Image) -> dict:
        """Upload a prompt set (a path or its bytes) as TASK's new version: validated, stored, served next."""
        return self._call(**self._r.push_args(task, file))

    def rollback(self, task: str, version: str) -> dict:
        return self._call("POST", f"/tasks/{task}/rollback", json={"version": version})

    def delete(self, task: str) -> dict:
        return self._call("DELETE", f"/tasks/{task}")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """The same methods as `Client`, awaitable; use `async with` or `await aclose()`."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self._r = _Requests(url, token, timeout)
        self._http = httpx.AsyncClient(transport=transport, **self._r.http_args())

    @property
    def url(self) -> str:
        return self._r.url

    async def _call(self, method: str, url: str, **kwargs) -> Any:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as e:
            raise self._r.unreachable(e) from None
        return self._r.answer(response)

    async def ready(self) -> dict:
        return await self._call("GET", "/readyz")

    async def classify(self, task: str, images: Iterable[Image], top_k: int | None = None) -> list[dict]:
        blobs = [_read(image, i) for i, image in enumerate(images)]
        if self._r.images_per_request is None:
            self._r.images_per_request = self._r.limit_from(await self.ready())
        answers: list[dict] = []
        for chunk in _chunks(blobs, self._r.images_per_request):
            answers += await self._classify_chunk(task, chunk, top_k)
        return answers

    async def _classify_chunk(self, task: str, chunk: list[tuple[str, bytes]], top_k: int | None) -> list[dict]:
        try:
            return await self._call(**self._r.classify_args(task, chunk, top_k))
        except ClientError as e:
            if not self._r.is_too_many_pixels(e, chunk):
                raise
            half = len(chunk) // 2
            return (await self._classify_chunk(task, chunk[:half], top_k)
                    + await self._classify_chunk(task, chunk[half:], top_k))

    async def tasks(self) -> list[dict]:
        return (await self._call("GET", "/tasks"))["tasks"]

    async def push(self, task: str, file: Image) -> dict:
        return await self._call(**self._r.push_args(task, file))

    async def rollback(self, task: str, version: str) -> dict:
        return await self._call("POST", f"/tasks/{task}/rollback", json={"version": version})

    async def delete(self, task: str) -> dict:
        return await self._call("DELETE", f"/tasks/{task}")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
