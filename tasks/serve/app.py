"""Serve the champion model over HTTP: FastAPI, a bearer token, Presidio on every answer, Prometheus metrics.

    export PFT_SERVE_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    python -m tasks.serve.app --host 127.0.0.1 --port 8000          # or: make serve
    curl -s localhost:8000/v1/generate -H "Authorization: Bearer $PFT_SERVE_TOKEN" \
         -H 'Content-Type: application/json' -d '{"prompt": "What is the out-of-network deductible?"}'

Endpoints:
  POST /v1/generate  {"prompt": str, "max_new_tokens": int (optional, 1..256)} →
                     {"text", "model", "version", "masked_entities", "prompt_tokens", "prompt_tokens_used",
                     "truncated"}. Bearer token required, in the Authorization header only (never a query string).
                     A prompt longer than the model's context is cut to fit (the middle goes, see
                     tasks/serve/pyfunc_model.py fit_prompt) and "truncated" says so; the three are null for versions
                     registered before this existed. 422: missing / unknown fields, wrong types, an empty prompt,
                     a body that is not UTF-8, a lone surrogate; 413: prompt or body too long (the body is counted
                     as it streams, chunked or not); 401: no or wrong token; 503: no model (or no masking engine)
                     loaded yet.
  GET  /healthz      {"model", "alias", "version", "loaded", "masking", "ready"}; 200 when ready, else 503
                     (a readiness probe: the model loads in the background after start-up). Public: it holds
                     names and a version number, no data.
  GET  /metrics      Prometheus text: requests by route and status, latency histogram, served version,
                     masked entities by type, reloads by result. Public unless $PFT_METRICS_TOKEN is set; then
                     it needs "Authorization: Bearer <that token>", a token of its own, so that a scraper's
                     credential cannot call the API.
  /docs, /redoc and /openapi.json are off: Swagger UI and ReDoc load their assets from a public CDN, which
  an offline deployment must not do. `--openapi` (create_app(openapi=True)) serves /openapi.json alone.

The model is the registry's `champion` alias, loaded as an MLflow pyfunc (`tasks/serve/pyfunc_model.py`).
A background thread polls the alias every `reload_interval_s`; when it moves (promotion, rollback) the
new version is loaded next to the old one and swapped in with one assignment, so requests never see a
half-loaded model. A failed load keeps the old model serving, is logged and counted, and is retried
at the next poll.

Every answer passes through Presidio with the committed recognizers (`include/presidio/recognizers.yaml`,
the masking stage's engines and clean-up) before it leaves the process. Findings become typed
placeholders such as "<PHONE_NUMBER>", not keyed pseudonyms: the serving tier does not hold the
pseudonymisation key, so a compromised server or a client cannot test guesses against the training
data's pseudonyms, and a client gains nothing from linking two answers. (The engines need a key, so
each process draws a random one and the digest is then dropped.) Keyed pseudonyms the model reproduces
from its masked training data ("<PERSON_1a2b3c4d>") are cut to their type too.

Prompts and answers are never logged: logs hold versions, counts, status codes and timings only.
The access log ("tasks.serve.app.access") holds method, route, status and time; uvicorn's own is off because
it prints the query string, where a client might have put a token.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime, and the
# request model and Response are local to create_app.
import argparse
import codecs
import functools
import hmac
import logging
import os
import re
import secrets
import sys
import threading
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.common import offline
from tasks.config import REPO_ROOT, Paths, PipelineConfig

log = logging.getLogger("tasks.serve.app")
access_log = logging.getLogger("tasks.serve.app.access")

DEFAULT_MAX_NEW_TOKENS = 24  # the pyfunc's default (tasks/serve/pyfunc_model.py MAX_NEW_TOKENS)
MAX_NEW_TOKENS_LIMIT = 256  # the pyfunc's bound (tasks/serve/pyfunc_model.py MAX_NEW_TOKENS_LIMIT)
MIN_TOKEN_CHARS = 16
ROUTES = ("/v1/generate", "/healthz", "/metrics")
# A keyed pseudonym, "<MEMBER_ID_4e45a8ec>" → "<MEMBER_ID>" (tasks.pii.pseudonym: 8 hex digits).
_PSEUDONYM = re.compile(r"<([A-Z][A-Z0-9_]*?)_[0-9a-f]{8}>")


class ServeConfigError(RuntimeError):
    """The server cannot start: no token, a bad setting."""


def _read_token(env: str, *, required: bool) -> str:
    """The bearer token in `env`: "" when unset and not required; refused when short."""
    token = os.environ.get(env, "")
    if not token and required:
        raise ServeConfigError(
            f"{env} is not set: the API needs a bearer token. Set one, e.g. "
            f"`export {env}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')`, "
            "and give it to the clients (Authorization: Bearer <token>)"
        )
    if token and len(token) < MIN_TOKEN_CHARS:
        raise ServeConfigError(
            f"{env} is {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
            "random characters (e.g. secrets.token_urlsafe(32))"
        )
    return token


def _bearer_ok(headers, expected: str) -> bool:
    """Authorization: Bearer <expected>, compared in constant time."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


class BodyGuard:
    """Pure ASGI middleware: caps a request body and checks that it is UTF-8 while it streams in.

    Content-Length alone is no cap: a chunked body has none. So every chunk is counted as the app
    reads it, and the first one past `max_bytes` ends the request with a 413; the rest is never read
    or held. Both refusals are HTTPExceptions raised from `receive`: FastAPI's body parsing passes
    those through (any other error there becomes a 400), so they answer like the endpoint's own.
    """

    def __init__(self, app, *, max_bytes: int, too_large: str):
        self.app, self.max_bytes, self.too_large = app, max_bytes, too_large

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.exceptions import HTTPException

        seen = 0
        utf8 = codecs.getincrementaldecoder("utf-8")()  # strict: also refuses encoded surrogates

        async def guarded_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                seen += len(chunk)
                if seen > self.max_bytes:
                    raise HTTPException(413, self.too_large)
                try:
                    utf8.decode(chunk, final=not message.get("more_body", False))
                except UnicodeDecodeError:  # its message quotes the bytes: not passed on
                    raise HTTPException(422, "invalid request: the body is not valid UTF-8") from None
            return message

        await self.app(scope, guarded_receive, send)


# ---------------------------------------------------------------- output masking


class OutputMasker:
    """Presidio over generated text, with the masking stage's recognizers and clean-up (tasks.pii)."""

    def __init__(self, recognizers_path: Path, *, language: str = "en", score_threshold: float = 0.4):
        self.recognizers_path = Path(recognizers_path)
        self.language, self.score_threshold = language, score_threshold
        self._key = secrets.token_bytes(32)  # per process, never stored: placeholders are cut to their type
        self.ready = False
        self.error: str | None = None

    def warm_up(self) -> None:
        """Load spaCy and the recognizers now (seconds), not on the first request."""
        try:
            self.mask("Warm-up: Jane Doe, MBR-12345678, jane.doe@example.com, call (312) 555-0147.")
        except Exception as exc:  # a missing spaCy model, a broken YAML: never serve unmasked
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        self.ready = True

    def mask(self, text: str) -> tuple[str, Counter]:
        """(masked text, entity counts by type). Keyed pseudonyms in the text are reduced to their type."""
        from tasks.pii import mask_records

        counts: Counter = Counter()
        if text.strip():
            found = next(
                iter(
                    mask_records(
                        [text],
                        key=self._key,
                        recognizers_path=self.recognizers_path,
                        score_threshold=self.score_threshold,
                        language=self.language,
                        workers=1,
                        residual=False,
                    )
                )
            )
            text, counts = found.text, found.entities
        return _PSEUDONYM.sub(r"<\1>", text), counts


# ---------------------------------------------------------------- the served model


@dataclass(frozen=True)
class Served:
    """One loaded registry version; replaced as a whole, never mutated."""

    version: int
    model: Any  # mlflow.pyfunc.PyFuncModel
    accepts_params: bool  # logged with max_new_tokens in its signature
    loaded_at: float
    # (question, new_tokens) → (prompt tokens, tokens the model reads); None for versions logged before it
    prompt_tokens: Any = None


def _prompt_counter(model):
    """The pyfunc's prompt_tokens method (tasks/serve/pyfunc_model.py), if this version has one."""
    try:
        return getattr(model.unwrap_python_model(), "prompt_tokens", None)
    except Exception:  # not a PythonModel pyfunc: nothing to ask
        return None


class ChampionWatcher:
    """Loads the version an alias points at and follows the alias.

    `current` is swapped with one assignment (atomic in CPython), so a request reads either the
    old or the new model, whole. `poll_once` is the unit the thread repeats (and tests call).
    """

    def __init__(
        self,
        *,
        paths: Paths,
        model_name: str,
        alias: str,
        interval_s: float,
        masker: OutputMasker,
        on_load=None,
        on_failure=None,
    ):
        self.paths, self.model_name, self.alias, self.interval_s = paths, model_name, alias, interval_s
        self.masker = masker
        self.current: Served | None = None
        self._on_load, self._on_failure = on_load, on_failure
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._last_problem: tuple | None = None

    def _note(self, problem: tuple, level: int, msg: str, *args) -> None:
        """Log a problem once until it changes (a poll every second must not flood the log)."""
        if problem != self._last_problem:
            log.log(level, msg, *args)
            self._last_problem = problem

    def alias_version(self) -> int | None:
        from tasks.release.registry import alias_version, registry_client

        if self._client is None:
            self._client = registry_client(self.paths)
        return alias_version(self._client, self.model_name, self.alias)

    def poll_once(self) -> bool:
        """Load the alias's version if it is not the one serving; True when a new model was swapped in."""
        import mlflow

        try:
            version = self.alias_version()
        except Exception as exc:
            self._note(
                ("alias", type(exc).__name__),
                logging.WARNING,
                "cannot read alias %s of %s (%s: %s); still serving %s",
                self.alias,
                self.model_name,
                type(exc).__name__,
                exc,
                self._serving(),
            )
            return False
        if version is None:
            self._note(
                ("none",),
                logging.WARNING,
                "model %s has no '%s' alias yet; promote a version "
                "(python -m tasks.release.registry promote); still serving %s",
                self.model_name,
                self.alias,
                self._serving(),
            )
            return False
        if self.current is not None and self.current.version == version:
            return False
        started = time.perf_counter()
        try:
            model = mlflow.pyfunc.load_model(f"models:/{self.model_name}/{version}")
        except Exception as exc:
            if self._on_failure:
                self._on_failure()
            self._note(
                ("load", version),
                logging.ERROR,
                "loading %s v%d failed (%s: %s); still serving %s, retrying every %ss",
                self.model_name,
                version,
                type(exc).__name__,
                exc,
                self._serving(),
                self.interval_s,
            )
            return False
        signature = model.metadata.signature
        accepts = bool(signature and signature.params and "max_new_tokens" in [p.name for p in signature.params.params])
        previous = self._serving()
        self.current = Served(
            version=version,
            model=model,
            accepts_params=accepts,
            loaded_at=time.time(),
            prompt_tokens=_prompt_counter(model),
        )
        self._last_problem = None
        log.info(
            "serving %s v%d (was %s), loaded in %.1fs%s",
            self.model_name,
            version,
            previous,
            time.perf_counter() - started,
            "" if accepts else "; this version ignores max_new_tokens",
        )
        if self._on_load:
            self._on_load(version)
        return True

    def _serving(self) -> str:
        return f"v{self.current.version}" if self.current else "nothing"

    def _run(self) -> None:
        try:
            self.masker.warm_up()
            log.info("output masking ready (%s)", self.masker.recognizers_path)
        except Exception:
            log.error(
                "output masking failed to load (%s); /v1/generate answers 503 until the server restarts "
                "with a working masking setup",
                self.masker.error,
            )
            return
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metrics:
    registry: Any
    requests: Any
    latency: Any
    version: Any
    masked: Any
    reloads: Any


def make_metrics(model_name: str) -> Metrics:
    """The app's own CollectorRegistry: two apps in one process (tests) never share counters."""
    from prometheus_client import CollectorRegistry, Gauge, Histogram
    from prometheus_client import Counter as PCounter

    reg = CollectorRegistry()
    version = Gauge(
        "pft_serve_model_version", "registry version being served (0 = none loaded)", ["model"], registry=reg
    )
    version.labels(model=model_name).set(0)
    return Metrics(
        registry=reg,
        requests=PCounter("pft_serve_requests", "HTTP requests by route and status", ["route", "status"], registry=reg),
        latency=Histogram(
            "pft_serve_request_seconds",
            "request latency by route",
            ["route"],
            registry=reg,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        ),
        version=version,
        masked=PCounter(
            "pft_serve_masked_entities",
            "personal-data entities masked in answers, by type",
            ["entity_type"],
            registry=reg,
        ),
        reloads=PCounter("pft_serve_model_loads", "champion loads by result", ["result"], registry=reg),
    )


# ---------------------------------------------------------------- the app


def _validation_message(errors: list[dict]) -> list[dict]:
    """Field and reason for each error, without echoing the input (it may be a prompt)."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        out.append({"field": ".".join(loc) or "body", "message": err.get("msg", "invalid")})
    return out


@dataclass
class _Server:
    """What the request handlers share: secrets, limits, the model watcher, the output masker, metrics."""

    token: str
    metrics_token: str | None
    metrics_token_env: str
    model_name: str
    alias: str
    max_prompt_chars: int
    watcher: "ChampionWatcher"
    masker: OutputMasker
    metrics: Metrics
    inference_lock: Any  # one generation at a time: a CPU model is not faster in parallel


@functools.cache
def _schemas():
    """(GenerateRequest, GenerateResponse): pydantic models, built once when the first app is."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        prompt: str = Field(description="the question")
        max_new_tokens: int | None = Field(
            None, ge=1, le=MAX_NEW_TOKENS_LIMIT, description=f"default {DEFAULT_MAX_NEW_TOKENS}"
        )

        @field_validator("prompt")
        @classmethod
        def _not_blank(cls, value: str) -> str:
            if not value.strip():
                raise ValueError("prompt is empty")
            try:  # JSON may escape a lone surrogate ("\ud800"), which no tokenizer or encoder downstream takes
                value.encode("utf-8")
            except UnicodeEncodeError:  # its message quotes the prompt: not passed on
                raise ValueError("prompt is not valid Unicode (a lone surrogate escape)") from None
            return value

    class GenerateResponse(BaseModel):
        text: str
        model: str
        version: int
        masked_entities: int
        prompt_tokens: int | None = Field(description="the prompt's length in tokens")
        prompt_tokens_used: int | None = Field(description="the tokens the model read: fewer when truncated")
        truncated: bool | None = Field(description="the prompt was cut to fit the model's context")

    return GenerateRequest, GenerateResponse


def _deny(status: int, detail: str, **headers):
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def _unauthorized(request, server: _Server):
    """A 401 when the path needs a token the request lacks. Checked before the body is read: no
    parsing, validation or model time for a caller without the token."""
    path = request.url.path
    if path.startswith("/v1/"):
        expected, what = server.token, "bearer token (Authorization: Bearer <token>)"
    elif path == "/metrics" and server.metrics_token:
        expected, what = server.metrics_token, f"metrics token (Authorization: Bearer <${server.metrics_token_env}>)"
    else:
        return None
    if _bearer_ok(request.headers, expected):
        return None
    return _deny(401, f"missing or invalid {what}", **{"WWW-Authenticate": "Bearer"})


def _install_guard(app, server: _Server) -> None:
    """Auth before anything else; failures logged by place, never by message; metrics and a query-free access log."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next):
        route = request.url.path if request.url.path in ROUTES else "other"
        started = time.perf_counter()
        response = _unauthorized(request, server)
        if response is None:
            try:
                response = await call_next(request)
            except Exception as exc:  # the message may quote input: log where, not what
                tb = exc.__traceback__
                while tb is not None and tb.tb_next is not None:
                    tb = tb.tb_next
                where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
                log.error("%s %s failed: %s at %s", request.method, route, type(exc).__name__, where)
                response = _deny(500, "internal error")
        elapsed = time.perf_counter() - started
        server.metrics.requests.labels(route=route, status=str(response.status_code)).inc()
        server.metrics.latency.labels(route=route).observe(elapsed)
        # The route, not the URL: a query string may hold a token, an unknown path anything at all.
        access_log.info("%s %s %d %.0fms", request.method, route, response.status_code, 1000 * elapsed)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = _validation_message(exc.errors())
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse({"detail": f"invalid request: {summary}", "errors": errors}, status_code=422)


def _generate(server: _Server, prompt: str, max_new_tokens: int | None) -> dict:
    """One masked answer from the champion, with the prompt's token counts."""
    import pandas as pd
    from fastapi import HTTPException

    if len(prompt) > server.max_prompt_chars:
        raise HTTPException(413, f"prompt is {len(prompt)} characters; at most {server.max_prompt_chars}")
    served, masker = server.watcher.current, server.masker
    if not masker.ready:
        raise HTTPException(
            503, "output masking is not ready" + (f" ({masker.error})" if masker.error else "; retry in a few seconds")
        )
    if served is None:
        raise HTTPException(
            503, f"no model loaded: {server.model_name}@{server.alias} is loading or not promoted yet (see /healthz)"
        )
    new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    params = {"max_new_tokens": new_tokens} if served.accepts_params else None
    with server.inference_lock:
        answer = served.model.predict(pd.DataFrame({"question": [prompt]}), params=params)[0]
        text, counts = masker.mask(str(answer))
        # under the lock too: a fast tokenizer is not safe to call from two threads at once
        total, used = served.prompt_tokens(prompt, new_tokens) if served.prompt_tokens else (None, None)
    for entity_type, n in counts.items():
        server.metrics.masked.labels(entity_type=entity_type).inc(n)
    return {
        "text": text,
        "model": server.model_name,
        "version": served.version,
        "masked_entities": int(sum(counts.values())),
        "prompt_tokens": total,
        "prompt_tokens_used": used,
        "truncated": None if total is None else used < total,
    }


def _install_routes(app, server: _Server) -> None:
    from fastapi import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    GenerateRequest, GenerateResponse = _schemas()

    @app.post("/v1/generate", response_model=GenerateResponse)
    def generate(body: GenerateRequest) -> dict:
        return _generate(server, body.prompt, body.max_new_tokens)

    @app.get("/healthz")
    def healthz(response: Response) -> dict:
        served, masker = server.watcher.current, server.masker
        masking = "ready" if masker.ready else ("failed" if masker.error else "loading")
        ready = served is not None and masker.ready
        response.status_code = 200 if ready else 503
        return {
            "model": server.model_name,
            "alias": server.alias,
            "version": served.version if served else None,
            "loaded": served is not None,
            "masking": masking,
            "ready": ready,
        }

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _server(
    cfg: PipelineConfig,
    paths: Paths,
    *,
    model_name: str,
    alias: str,
    token: str,
    metrics_token: str | None,
    metrics_token_env: str,
    reload_interval_s: float,
    max_prompt_chars: int,
) -> _Server:
    recognizers = Path(cfg.mask.recognizers)
    masker = OutputMasker(
        recognizers if recognizers.is_absolute() else REPO_ROOT / recognizers,
        language=cfg.mask.language,
        score_threshold=cfg.mask.score_threshold,
    )
    metrics = make_metrics(model_name)
    watcher = ChampionWatcher(
        paths=paths,
        model_name=model_name,
        alias=alias,
        interval_s=reload_interval_s,
        masker=masker,
        on_load=lambda v: (metrics.version.labels(model=model_name).set(v), metrics.reloads.labels(result="ok").inc()),
        on_failure=lambda: metrics.reloads.labels(result="failed").inc(),
    )
    return _Server(
        token=token,
        metrics_token=metrics_token,
        metrics_token_env=metrics_token_env,
        model_name=model_name,
        alias=alias,
        max_prompt_chars=max_prompt_chars,
        watcher=watcher,
        masker=masker,
        metrics=metrics,
        inference_lock=threading.Lock(),
    )


def create_app(
    *,
    paths: Paths | None = None,
    model_name: str | None = None,
    alias: str = "champion",
    token_env: str = "PFT_SERVE_TOKEN",
    metrics_token_env: str = "PFT_METRICS_TOKEN",
    reload_interval_s: float = 30,
    max_prompt_chars: int = 2000,
    openapi: bool = False,
    config: PipelineConfig | None = None,
):
    """The FastAPI app serving `model_name@alias`. Refuses to build without a token in `token_env`.

    `model_name` defaults to registry.model_name and the masking setup (recognizers, threshold,
    language) comes from the pipeline config (`config`, default: load_config()). /metrics needs the
    token in `metrics_token_env` when that is set. `openapi` serves /openapi.json (never /docs).
    """
    offline.apply()
    token = _read_token(token_env, required=True)
    metrics_token = _read_token(metrics_token_env, required=False)
    if max_prompt_chars < 1 or reload_interval_s <= 0:
        raise ServeConfigError("max_prompt_chars must be >= 1 and reload_interval_s > 0")
    from fastapi import FastAPI

    from tasks.config import load_config
    from tasks.release.registry import quiet_mlflow

    quiet_mlflow()
    cfg = config or load_config()
    server = _server(
        cfg,
        paths or Paths(),
        model_name=model_name or cfg.registry.model_name,
        alias=alias,
        token=token,
        metrics_token=metrics_token,
        metrics_token_env=metrics_token_env,
        reload_interval_s=reload_interval_s,
        max_prompt_chars=max_prompt_chars,
    )

    @asynccontextmanager
    async def lifespan(app):
        server.watcher.start()
        try:
            yield
        finally:
            server.watcher.stop()

    # Swagger UI and ReDoc pull their JS and CSS from a public CDN: off, whatever `openapi` says.
    app = FastAPI(
        title="PrivateTune",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if openapi else None,
        description="Domain QA from the registry's champion; every answer is masked with Presidio.",
    )
    app.state.watcher, app.state.metrics, app.state.masker = server.watcher, server.metrics, server.masker
    max_body_bytes = 4 * max_prompt_chars + 1024  # UTF-8 (≤ 4 bytes a character) plus the JSON around it
    # Added before the guard, so it runs inside it: the token is checked first, and its 413s are counted.
    app.add_middleware(
        BodyGuard,
        max_bytes=max_body_bytes,
        too_large=f"request body over {max_body_bytes} bytes; prompts are limited to {max_prompt_chars} characters",
    )
    _install_guard(app, server)
    _install_routes(app, server)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.serve.app", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 behind a proxy / in a pod)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--home", type=Path, default=None, help="data root (default: $PFT_HOME or .local)")
    parser.add_argument("--model-name", default=None, help="default: registry.model_name of the pipeline config")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--token-env", default="PFT_SERVE_TOKEN", help="env var holding the bearer token")
    parser.add_argument(
        "--metrics-token-env",
        default="PFT_METRICS_TOKEN",
        help="env var holding a token /metrics then requires (unset: /metrics is public)",
    )
    parser.add_argument(
        "--openapi",
        action="store_true",
        help="serve /openapi.json (/docs and /redoc stay off: their assets come from a public CDN)",
    )
    parser.add_argument("--reload-interval", type=float, default=30.0, help="seconds between alias polls")
    parser.add_argument("--max-prompt-chars", type=int, default=2000)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        app = create_app(
            paths=Paths(args.home),
            model_name=args.model_name,
            alias=args.alias,
            token_env=args.token_env,
            metrics_token_env=args.metrics_token_env,
            reload_interval_s=args.reload_interval,
            max_prompt_chars=args.max_prompt_chars,
            openapi=args.openapi,
        )
    except ServeConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    # uvicorn's access log prints the query string (a client may put a token there): off; the app logs
    # method, route, status and time to "tasks.serve.app.access" instead.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
