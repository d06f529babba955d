"""GET /openapi.json and /docs: the API description with this deployment's configured limits."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

from serve.api.deps import ApiDeps, deps

router = APIRouter()


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request, api: ApiDeps = Depends(deps)) -> dict:
    app = request.app
    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        body = spec["paths"]["/v1/images/generations"]["post"]["requestBody"]
        body["content"]["application/json"]["schema"] = api.validator.json_schema()
        app.openapi_schema = spec
    return app.openapi_schema


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json",
                               title=f"{request.app.title} API")
