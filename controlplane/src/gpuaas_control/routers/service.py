# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service itself: a health check that says only that it is up, and the API's
documentation page with Swagger UI's files served from the installed swagger-ui-bundle
package, so /docs works where there is no internet."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from sqlalchemy import select
from swagger_ui_bundle import swagger_ui_path

from gpuaas_control.deps import ReadSession
from gpuaas_control.errors import NotFound
from gpuaas_control.schemas.views import Health

ASSETS = {'swagger-ui-bundle.js': 'text/javascript', 'swagger-ui.css': 'text/css',
          'favicon-32x32.png': 'image/png'}

router = APIRouter(tags=['service'])


@router.get('/healthz', response_model=Health)
def healthz(session: ReadSession):
    """Up, and reaching its database. Nothing else: no versions, counts or addresses."""
    session.execute(select(1))
    return Health(ok=True)


@router.get('/docs', include_in_schema=False, response_class=HTMLResponse)
def docs(request: Request):
    root = request.scope.get('root_path', '')
    assets = root + '/docs/assets'
    return get_swagger_ui_html(openapi_url=root + request.app.openapi_url,
                               title=request.app.title + ' - API',
                               swagger_js_url=assets + '/swagger-ui-bundle.js',
                               swagger_css_url=assets + '/swagger-ui.css',
                               swagger_favicon_url=assets + '/favicon-32x32.png')


@router.get('/docs/assets/{name}', include_in_schema=False, response_class=FileResponse)
def docs_asset(name: str):
    if name not in ASSETS:
        raise NotFound('no documentation asset %r' % name[:80])
    return FileResponse(swagger_ui_path / name, media_type=ASSETS[name])
