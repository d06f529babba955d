"""GET /v1/images/files/{id}: results by URL, under the same auth rules as the API."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from serve.api.deps import ApiDeps, authorize, deps
from serve.api.images import ERRORS
from serve.errors import NotFound
from serve.jobs.files import FILES_ROUTE

router = APIRouter()


@router.get(FILES_ROUTE + "/{file_id}", responses={**ERRORS, 200: {"content": {"image/png": {}}}},
            dependencies=[Depends(authorize)])
async def get_file(file_id: str, api: ApiDeps = Depends(deps)) -> Response:
    stored = await asyncio.to_thread(api.files.get, file_id)
    if stored is None:
        raise NotFound(f"file {file_id!r} does not exist or has expired")
    max_age = max(0, int(stored.expires_at - time.time()))
    # Content-addressed: the bytes behind an id never change, so caches may keep them until expiry.
    return Response(stored.data, media_type=stored.media_type,
                    headers={"Cache-Control": f"private, max-age={max_age}, immutable", "ETag": f'"{file_id}"'})
