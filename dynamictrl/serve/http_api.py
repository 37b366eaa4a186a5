"""The gateway's HTTP face (FastAPI, built on the gateway replica by `build_http_app`).

    POST /jobs                 a job (the schema of `dynamictrl.serve.schema`) -> {"job_id", "owner_key"}
    GET  /jobs                 the caller's jobs (by X-Owner-Key)
    GET  /jobs/{id}            state, progress, queue position          (owner only)
    GET  /jobs/{id}/result     outputs, files as base64 (once)          (owner only)
    POST /jobs/{id}/cancel                                              (owner only)
    GET  /status               replicas and job counts; details (hosts, PIDs, folders) only with the token
    GET  /healthz, /docs, /openapi.json                                 (no token needed)

Security (see docs/serving-security.md): with a shared token configured, every other
request carries `Authorization: Bearer <token>`; a job belongs to the owner key it was
submitted with (the client's `X-Owner-Key`, or one the gateway makes and returns), and
to nobody else: another key gets 404 as for a job that does not exist. Bodies larger
than `max_request_bytes` get 413 before they are read whole; a body must declare its
length (411 otherwise, see `BodyLimit`).
"""

import hashlib
import hmac
import json
from typing import Annotated

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .config import MB, TOKEN_ENV
from .schema import KINDS, as_dict, job_model, message_of

OWNER_HEADER = "X-Owner-Key"
OwnerKey = Annotated[str | None, Header(alias=OWNER_HEADER, description="the job owner's secret (16+ characters)")]


class BodyLimit:
    """ASGI middleware bounding request bodies before they are read whole.

    A declared Content-Length above the limit is answered 413 from the headers alone. A
    chunked body (no length) is answered 411: Ray Serve's HTTP proxy reads a request body
    as fast as the client sends it, without back-pressure, and hands it to the gateway in
    large batches, so counting chunks here cannot bound memory (measured: a 146 MB chunked
    body against a 100 MB limit took the proxy +320 MB and the gateway +376 MB; declared,
    +8 MB and +0). Whatever arrives is still counted, and refused 413 past the limit."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self) -> str:
        return (
            f"The request body is larger than this service's limit of {self.max_bytes / MB:g} MB "
            "(serve --max-request-mb). Send large files by path on a shared folder, or raise the limit."
        )

    @staticmethod
    async def refuse(send, status: int, message: str) -> None:
        body = json.dumps({"detail": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > self.max_bytes):
            return await self.refuse(send, 413, self.too_large())
        if declared is None and b"transfer-encoding" in headers:
            return await self.refuse(
                send,
                411,
                "Send the body with a Content-Length header (chunked bodies are "
                f"refused); the limit is {self.max_bytes / MB:g} MB.",
            )
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes an HTTPException from the body read through to its response.
                    raise HTTPException(status_code=413, detail=self.too_large(), headers={"Connection": "close"})
            return message

        return await self.app(scope, counted_receive, send)


def build_http_app(gateway) -> FastAPI:
    """The FastAPI app of one `Gateway` (its config: token digest, body limit, extra kinds)."""
    config = gateway.config
    JobBody = job_model(tuple(config.extra_kinds))
    bearer = HTTPBearer(auto_error=False, description=f"the service's shared token ({TOKEN_ENV})")

    app = FastAPI(
        title="DynamiCtrl Studio jobs",
        version="1",
        description="Pose-guided image animation, pose extraction, lip-sync, masks and captions as jobs. "
        f"Send `{OWNER_HEADER}` with every job request (any secret of 16+ characters, or the "
        "`owner_key` the first submission returned): jobs are visible to their owner only.",
    )
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, error: RequestValidationError) -> JSONResponse:
        """422 with each bad field's path and message; the offending input is not echoed
        back (it may be megabytes of base64, or a NaN that JSON cannot carry)."""
        kinds = (*KINDS, *config.extra_kinds)
        detail = [
            {"loc": [str(part) for part in item["loc"]], "msg": message_of(item, kinds), "type": item["type"]}
            for item in error.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": detail})

    def token_ok(credentials: HTTPAuthorizationCredentials | None) -> bool:
        if credentials is None or credentials.scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(credentials.credentials.encode()).hexdigest()
        return hmac.compare_digest(digest, config.token_sha256)

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.token_sha256 and not token_ok(credentials):
            raise HTTPException(
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
                detail=f"This service needs its token: send 'Authorization: Bearer <token>' "
                f"(RemoteStudio reads {TOKEN_ENV}).",
            )

    protected = [Depends(require_token)]

    @app.post("/jobs", dependencies=protected, summary="Submit a job")
    async def submit(job: JobBody = Body(...), owner_key: OwnerKey = None) -> dict:
        try:
            return await gateway.submit(as_dict(job.root), owner_key)
        except Exception as error:  # the gateway's errors become their HTTP codes below
            raise http_error(error) from None

    @app.get("/jobs", dependencies=protected, summary="The caller's jobs")
    async def jobs(owner_key: OwnerKey = None) -> list:
        if not owner_key:
            raise HTTPException(status_code=400, detail=f"Send {OWNER_HEADER}: the key your jobs were submitted with.")
        return await gateway.jobs_list(owner_key)

    @app.get("/jobs/{job_id}", dependencies=protected, summary="A job's state and progress")
    async def status(
        job_id: str,
        owner_key: OwnerKey = None,
        preview_after: int | None = Query(
            None,
            ge=-1,
            description=(
                "add the latest live preview (base64 PNG, frames side by side) if it is newer than this step; -1: any"
            ),
        ),
    ) -> dict:
        try:
            return await gateway.status(job_id, owner_key, preview_after)
        except Exception as error:
            raise http_error(error) from None

    @app.get("/jobs/{job_id}/result", dependencies=protected, summary="A finished job's outputs (once)")
    async def result(job_id: str, owner_key: OwnerKey = None) -> dict:
        from .jobs import encode_files

        try:
            answer = await gateway.result(job_id, owner_key)
        except Exception as error:
            raise http_error(error) from None
        files = {name: {"name": name, "data": data} for name, data in answer.get("files", {}).items()}
        return {**answer, "files": encode_files(files)}

    @app.post("/jobs/{job_id}/cancel", dependencies=protected, summary="Cancel a queued or running job")
    async def cancel(job_id: str, owner_key: OwnerKey = None) -> dict:
        try:
            return await gateway.cancel(job_id, owner_key)
        except Exception as error:
            raise http_error(error) from None

    @app.get("/status", summary="Replicas and job counts (details with the token)")
    async def system_status(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> dict:
        if credentials is not None and config.token_sha256 and not token_ok(credentials):
            require_token(credentials)  # a wrong token is an error, not a quiet downgrade
        return await gateway.system_status(full=bool(config.token_sha256) and token_ok(credentials))

    @app.get("/healthz", summary="Liveness")
    async def health() -> dict:
        return {"ok": True}

    return app


def http_error(error: BaseException) -> HTTPException:
    """A gateway exception as its HTTP answer: unknown (or someone else's) job 404, a full
    queue 503, a job the schema or the checks refuse 422, other bad requests 400."""
    from .deployment import QueueFull, cause_of, describe
    from .schema import JobError

    cause = cause_of(error)
    if isinstance(cause, HTTPException):
        return cause
    if isinstance(cause, KeyError):
        return HTTPException(status_code=404, detail=describe(cause))
    if isinstance(cause, QueueFull):
        return HTTPException(status_code=503, detail=describe(cause))
    if isinstance(cause, JobError):
        return HTTPException(status_code=422, detail=describe(cause))
    if isinstance(cause, ValueError):
        return HTTPException(status_code=400, detail=describe(cause))
    raise error
