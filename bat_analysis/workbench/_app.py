"""The review workbench's web application (Starlette): a page, its own script and style, and a JSON API.

Safety (every request goes through :class:`Guard` before any route):

- only ``Host: 127.0.0.1:PORT`` or ``localhost:PORT`` is answered (a page on another site that resolves its
  own name to 127.0.0.1 — DNS rebinding — gets 403);
- a per-launch secret token is required on every request: in the printed address (``?token=``) on the first
  page load, which sets it as an HttpOnly, SameSite=Strict cookie and redirects to the bare address; then
  the cookie;
- a state-changing request (POST) must also echo the token in the ``X-Bat-Token`` header (the page carries
  it; another site cannot read it) and come from this origin (``Origin`` equal to this address, or
  ``Sec-Fetch-Site: same-origin``; one of the two must be present);
- every answer carries a Content-Security-Policy allowing only this origin (scripts, styles, images,
  requests); the page is built with ``html.escape`` and the script inserts data as text, never as markup;
- no route takes a path: tubes and gates are numbers, static files are a fixed list of the package's own.

Routes: ``GET /`` the page; ``GET /static/workbench.js|workbench.css``; ``GET /api/queue`` (``patient``,
``flag``, ``status`` filters); ``GET /api/tubes/{id}``; ``GET /api/tubes/{id}/gates/{k}/density.png``;
``GET /api/tubes/{id}/history``; ``POST /api/tubes/{id}/regate`` (``{gate, geometry}``);
``POST /api/tubes/{id}/decision`` (``{action: accept|correct|exclude|revert|threshold, reason, gate,
geometry, threshold}``);
``POST /api/tubes/{id}/patient`` (``{gate, geometry}`` or ``{threshold}``: the patient's classes and
dose-response curves -- measured points and fitted 4PL per arm, as numbers the page draws -- stored and
with the edit); ``GET /api/tubes/{id}/histogram`` (the activation marker, display scale, with the
threshold); ``POST /api/tubes/{id}/threshold`` (``{threshold}`` on the display scale: this tube's %CD63+);
``POST /api/patients/signoff`` (``{patient, action: signoff|withdraw, reason}``);
``GET``/``POST /api/reviewer`` (the reviewer's name, kept in a cookie unless fixed by ``--reviewer``).
"""

from __future__ import annotations

import html
import json
import secrets
from importlib import resources
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, quote, unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import BatError
from ._session import ReviewSession

TOKEN_COOKIE = "bat_review_token"
REVIEWER_COOKIE = "bat_reviewer"
MAX_BODY = 256 * 1024
STATIC = {"workbench.js": "text/javascript; charset=utf-8", "workbench.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store"),
                    (b"x-frame-options", b"DENY"), (b"cross-origin-resource-policy", b"same-origin")]

ASGIApp = Callable[..., Awaitable[None]]


class Guard:
    """ASGI middleware: the Host, token and same-origin checks (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, token: str, port: int) -> None:
        self.app = app
        self.token = token
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets here: refused before anything else
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            await PlainTextResponse(refusal, status_code=403, headers={k.decode(): v.decode()
                                                                         for k, v in SECURITY_HEADERS})(
                scope, receive, send)
            return

        async def send_secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + SECURITY_HEADERS}
            await send(message)

        await self.app(scope, receive, send_secured)

    def _same(self, given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode("utf-8", "replace"),
                                                            self.token.encode("utf-8"))

    def refusal(self, scope: dict[str, Any], headers: dict[str, str]) -> str | None:
        """Why a request is refused (None: it may go on)."""
        host = headers.get("host", "")
        if host not in self.hosts:
            return "refused: this address answers only to 127.0.0.1 and localhost on its own port"
        cookies = _cookies(headers.get("cookie", ""))
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        first_load = scope["method"] == "GET" and scope["path"] == "/" and self._same(
            (query.get("token") or [None])[0])
        if not (self._same(cookies.get(TOKEN_COOKIE)) or first_load):
            return "refused: open the address that 'bat review' printed (it carries this session's key)"
        if scope["method"] not in ("GET", "HEAD"):
            if not self._same(headers.get("x-bat-token")):
                return "refused: a change must come from the review page (missing or wrong X-Bat-Token)"
            origin, site = headers.get("origin"), headers.get("sec-fetch-site")
            if origin is None and site is None:
                return "refused: a change must say where it comes from (Origin or Sec-Fetch-Site)"
            if origin is not None and origin != f"http://{host}":
                return "refused: a change from another origin"
            if site is not None and site != "same-origin":
                return "refused: a change from another site"
        return None


def _cookies(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";"):
        name, _, value = part.strip().partition("=")
        if name and name not in out:
            out[name] = value
    return out


def _static(name: str) -> bytes:
    return resources.files("bat_analysis.workbench").joinpath("static", name).read_bytes()


def _page(session: ReviewSession, token: str) -> str:
    """The page: the queue as the server sees it (escaped), and the empty tube view the script fills in."""
    q = session.queue()
    e = html.escape
    rows = "\n".join(
        f'<li class="tube g-{e(it["group"])}" data-id="{int(it["id"])}"><span class="file">{e(it["file"])}</span>'
        f' <span class="who">{e(it["patient"])} · {e(it["pretreatment"])} · {e(it["condition"])}</span>'
        f' <span class="state">{e(it["group"])}</span></li>'
        for it in q["tubes"])
    c = q["counts"]
    counts = (f'{c["total"]} tubes · {c["failed"]} failed · {c["flagged"]} flagged · '
              f'{c["unreviewed"]} unreviewed · {c["reviewed"]} reviewed · {c["left"]} left to review')
    patients = "".join(f'<option value="{e(p)}">{e(p)}</option>' for p in q["patients"])
    flags = "".join(f'<option value="{e(f)}">{e(f)}</option>' for f in q["flags"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="bat-token" content="{e(token)}">
<title>bat review · {e(session.out.name)}</title>
<link rel="stylesheet" href="/static/workbench.css">
<link rel="icon" href="data:,">
<script src="/static/workbench.js" defer></script>
</head><body>
<header><h1>bat review</h1> <span id="folder">{e(str(session.out))}</span>
<span id="reviewer-box">Reviewer: <span id="reviewer"></span>
<input id="reviewer-name" placeholder="your name" autocomplete="name"><button id="reviewer-set">Set</button></span>
</header>
<main>
<section id="queue-pane">
<div id="filters">
<select id="f-patient"><option value="">all patients</option>{patients}</select>
<select id="f-flag"><option value="">all flags</option>{flags}</select>
<select id="f-status"><option value="">any status</option><option value="failed">failed</option>
<option value="flagged">flagged</option><option value="unreviewed">unreviewed</option>
<option value="reviewed">reviewed</option><option value="excluded">excluded</option></select>
</div>
<p id="counts">{e(counts)}</p>
<ol id="queue">{rows}</ol>
<p class="keys">Keys: n next · p previous · a accept</p>
</section>
<section id="tube-pane">
<h2 id="tube-title">Choose a tube in the queue</h2>
<div id="tube-meta"></div>
<div id="numbers"></div>
<div id="patient"></div>
<div id="gates"></div>
<div id="histogram"></div>
<div id="decide" hidden>
<label>Reason <input id="reason" size="50" placeholder="why (needed to correct, exclude or revert)"></label>
<button id="save">Save correction</button> <button id="accept">Accept</button>
<button id="exclude">Exclude</button> <button id="revert">Revert to automated</button>
<button id="signoff">Sign off patient</button> <button id="save-threshold" hidden>Save threshold</button>
<p id="message" role="status"></p>
<h3>History</h3><ol id="history"></ol>
</div>
</section>
</main>
</body></html>"""


def create_app(session: ReviewSession, *, token: str, port: int, reviewer: str | None = None) -> Guard:
    """The application for one results folder, guarded for ``127.0.0.1:port`` and ``token``."""

    def reviewer_of(request: Request) -> str:
        if reviewer:
            return reviewer
        return unquote(request.cookies.get(REVIEWER_COOKIE, "")).strip()[:200]

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise BatError("request too large", field="body", expected=f"at most {MAX_BODY} bytes")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BatError("the request is not JSON", field="body", expected="a JSON object") from None
        if not isinstance(data, dict):
            raise BatError("the request is not a JSON object", field="body", expected="a JSON object")
        return data

    def answer(fn: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                out = await fn(request)
            except BatError as exc:
                return JSONResponse({"error": exc.message, "field": exc.field, "expected": exc.expected},
                                    status_code=400)
            return out if isinstance(out, Response) else JSONResponse(out)
        return endpoint

    async def page(request: Request) -> Response:
        if "token" in request.query_params:
            resp: Response = RedirectResponse("/", status_code=303)
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
            return resp
        text = await run_in_threadpool(_page, session, token)
        return HTMLResponse(text)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return PlainTextResponse("not found", status_code=404)
        return Response(_static(name), media_type=STATIC[name])

    async def queue(request: Request) -> Any:
        qp = request.query_params
        return await run_in_threadpool(session.queue, patient=qp.get("patient") or None,
                                       flag=qp.get("flag") or None, status=qp.get("status") or None)

    async def tube(request: Request) -> Any:
        return await run_in_threadpool(session.tube, request.path_params["tube"])

    async def density(request: Request) -> Any:
        data = await run_in_threadpool(session.density_png, request.path_params["tube"],
                                       request.path_params["gate"])
        return Response(data, media_type="image/png")

    async def history(request: Request) -> Any:
        return await run_in_threadpool(session.history, request.path_params["tube"])

    async def regate(request: Request) -> Any:
        data = await body(request)
        return await run_in_threadpool(session.regate, request.path_params["tube"], str(data.get("gate")),
                                       data.get("geometry"))

    async def patient(request: Request) -> Any:
        data = await body(request)
        gate = data.get("gate")
        return await run_in_threadpool(session.patient_preview, request.path_params["tube"],
                                       None if gate is None else str(gate), data.get("geometry"),
                                       data.get("threshold"))

    async def histogram(request: Request) -> Any:
        return await run_in_threadpool(session.histogram, request.path_params["tube"])

    async def threshold(request: Request) -> Any:
        data = await body(request)
        return await run_in_threadpool(session.threshold_preview, request.path_params["tube"],
                                       data.get("threshold"))

    async def decision(request: Request) -> Any:
        data = await body(request)
        gate = data.get("gate")
        ids = await run_in_threadpool(
            session.decide, request.path_params["tube"], str(data.get("action")), reviewer=reviewer_of(request),
            reason=str(data.get("reason") or ""), gate=None if gate is None else str(gate),
            geometry=data.get("geometry"), threshold=data.get("threshold"))
        return {"logged": ids, "tube": await run_in_threadpool(session.tube, request.path_params["tube"])}

    async def signoff(request: Request) -> Any:
        data = await body(request)
        ids = await run_in_threadpool(session.sign_off, str(data.get("patient")), reviewer=reviewer_of(request),
                                      reason=str(data.get("reason") or ""), withdraw=data.get("action") == "withdraw")
        return {"logged": ids}

    async def who(request: Request) -> Any:
        if request.method == "POST":
            if reviewer:
                return {"reviewer": reviewer, "fixed": True}
            name = str((await body(request)).get("name") or "").strip()[:200]
            if not name:
                raise BatError("say who you are", field="name", expected="the reviewer's name")
            resp = JSONResponse({"reviewer": name, "fixed": False})
            resp.set_cookie(REVIEWER_COOKIE, quote(name), httponly=True, samesite="strict", path="/",
                            max_age=3600 * 24 * 365)
            return resp
        return {"reviewer": reviewer_of(request), "fixed": bool(reviewer)}

    routes = [
        Route("/", page),
        Route("/static/{name}", static),
        Route("/api/queue", answer(queue)),
        Route("/api/reviewer", answer(who), methods=["GET", "POST"]),
        Route("/api/tubes/{tube:int}", answer(tube)),
        Route("/api/tubes/{tube:int}/history", answer(history)),
        Route("/api/tubes/{tube:int}/gates/{gate:int}/density.png", answer(density)),
        Route("/api/tubes/{tube:int}/regate", answer(regate), methods=["POST"]),
        Route("/api/tubes/{tube:int}/decision", answer(decision), methods=["POST"]),
        Route("/api/patients/signoff", answer(signoff), methods=["POST"]),
        Route("/api/tubes/{tube:int}/patient", answer(patient), methods=["POST"]),
        Route("/api/tubes/{tube:int}/histogram", answer(histogram)),
        Route("/api/tubes/{tube:int}/threshold", answer(threshold), methods=["POST"]),
    ]
    return Guard(Starlette(routes=routes), token=token, port=port)
