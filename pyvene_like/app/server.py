"""The app's HTTP side: Starlette routes, each a thin JSON shell over one
:class:`~pyvene_like.app.workspace.Workspace` method, plus one static page.

Why Starlette + uvicorn: the pages need a handful of JSON endpoints and one HTML/JS page, no
templating, no build step and no network at run time; Starlette is a small, well-kept ASGI
toolkit with a test client (request-level tests without a socket), and uvicorn serves it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from .workspace import Workspace, error_payload

STATIC = Path(__file__).resolve().parent / "static"
#: Pages may run only their own script and style: no inline script, no handler attributes, no
#: other origin (a token that is HTML could not run even if it reached innerHTML).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
DEFAULT_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _int(params, name: str, default: int | None = None) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _required(params, name: str):
    value = params.get(name)
    if value is None:
        raise ConfigError(f"the request lacks {name!r}")
    return value


def create_app(workspace: Workspace, *, allowed_hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS):
    """The Starlette application serving ``workspace``. ``allowed_hosts``: the ``Host`` headers
    answered (a page from another site that points a hostname at 127.0.0.1 is refused)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def api(path: str, compute, method: str = "GET"):
        """A JSON endpoint: ``compute(params)`` runs in a worker thread (models are slow); a
        library error becomes 400 (403 for a refused path) with ``{"error": message}``."""
        async def endpoint(request):
            try:
                if method == "POST":
                    try:
                        params = await request.json()
                    except (ValueError, json.JSONDecodeError):
                        raise ConfigError("the request body must be a JSON object") from None
                    if not isinstance(params, dict):
                        raise ConfigError("the request body must be a JSON object")
                else:
                    params = dict(request.query_params)
                result = await run_in_threadpool(compute, params)
                return JSONResponse(result, headers={"Cache-Control": "no-store"})
            except Exception as e:  # noqa: BLE001 - every failure is answered, none kills the server
                status, body = error_payload(e)
                return JSONResponse(body, status_code=status)
        return Route(path, endpoint, methods=[method])

    ws = workspace
    routes_spec = {
        "/api/files": lambda p: {"roots": sorted(ws.roots), "files": ws.scan()},
        "/api/codes/books": lambda p: ws.codebooks(_required(p, "records")),
        "/api/codes/list": lambda p: ws.code_list(_required(p, "records"), _required(p, "codebook"),
                                                  _int(p, "head"), sort=p.get("sort", "count"),
                                                  limit=_int(p, "limit", 200)),
        "/api/codes/code": lambda p: ws.code_detail(_required(p, "records"), _int(p, "row", -1)),
        "/api/sae/summary": lambda p: ws.sae_summary(_required(p, "sae"), _required(p, "prompts")),
        "/api/sae/feature": lambda p: ws.sae_feature(_required(p, "sae"), _required(p, "prompts"),
                                                     _int(p, "feature", -1)),
        "/api/patching": lambda p: ws.patching(_required(p, "path")),
    }
    post_spec = {
        "/api/codes/search": lambda p: ws.code_search(_required(p, "records"), _required(p, "pattern"),
                                                      top=p.get("top", 20), min_fires=p.get("min_fires", 1),
                                                      sort_by=p.get("sort_by", "f1")),
        "/api/codes/force": lambda p: ws.force_codes(_required(p, "codebooks"), _required(p, "prompt"),
                                                     _required(p, "codes"), max_new_tokens=p.get("max_new_tokens", 20),
                                                     mode=p.get("mode", "replace")),
        "/api/sae/scores": lambda p: ws.sae_scores(_required(p, "sae"), _required(p, "align"),
                                                   _required(p, "reference"), top_k=p.get("top_k", 10)),
        "/api/sae/steer": lambda p: ws.sae_steer(_required(p, "sae"), _required(p, "prompt"),
                                                 _required(p, "features"), value=p.get("value", 4.0),
                                                 max_new_tokens=p.get("max_new_tokens", 20)),
        "/api/interventions/run": lambda p: ws.run_intervention(_required(p, "folder"), _required(p, "text"),
                                                                source=p.get("source", ""),
                                                                top_k=p.get("top_k", 10)),
    }
    routes = [api(path, fn) for path, fn in routes_spec.items()]
    routes += [api(path, fn, "POST") for path, fn in post_spec.items()]

    async def index(request):
        return FileResponse(STATIC / "index.html")

    routes += [Route("/", index), Mount("/static", StaticFiles(directory=STATIC), name="static")]

    class SecurityHeaders:
        """Adds the CSP and no-sniff headers to every response."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            async def send_with_headers(message):
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers", []))
                    headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                                (b"referrer-policy", b"no-referrer")]
                    message = dict(message, headers=headers)
                await send(message)

            await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)

    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
                                                Middleware(SecurityHeaders)])


def serve(workspace: Workspace, *, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning") -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    hosts = list(DEFAULT_HOSTS) + ([host] if host not in DEFAULT_HOSTS else [])
    uvicorn.run(create_app(workspace, allowed_hosts=hosts), host=host, port=port, log_level=log_level)
