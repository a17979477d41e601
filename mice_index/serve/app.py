"""The HTTP search service: a FastAPI app over an already opened `Searcher`.

    app = create_app(Searcher.open("idx/"))        # model and index loaded once, by the caller
    uvicorn.run(app, host="127.0.0.1", port=8080)  # or: mice-index serve --index idx/

Endpoints: `GET /health`, `GET /info` (= `mice-index info --json`), `GET /settings` (the
server's defaults, which the page starts from), `GET|POST /search` (JSON), `GET /` (a search page),
`GET /docs` (Swagger UI, its assets served from the `swagger-ui-bundle` package: no CDN, works
offline) and `/openapi.json`. The app only
parses, validates and formats: every search goes through `Searcher.search_texts`, batched across
concurrent requests by `MicroBatcher`, so results equal `Searcher.search` with the same settings.
Bad parameters get 400 with the library's own message (`{"error": ...}`), a full queue or a
shutting-down server 503, anything unexpected 500; none of them stops the server. Per-request
limits, the time budget (504), body size (413), the Host check and the error shape live in
`limits.py`; a request is scored in passes (`ServeLimits.chunk_work`) between which its budget is
checked and waiting requests run; a replaced index is reloaded between requests.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from mice_index.errors import MiceIndexError, SearchError
from mice_index.explain import Explainer, hit_record
from mice_index.search import clipped
from mice_index.store.generation import IndexChanged
from mice_index.serve.batching import BatchConfig, MicroBatcher, QueueFull, ShuttingDown
from mice_index.serve.limits import (Budget, BudgetExceeded, Guard, RequestLog, ServeLimits,
                                     install_error_handlers)
from mice_index.text import invalid_unicode
from mice_index.serve.ui import (FALLBACK_NOTE, ServerSettingsOut, display_model_name, docs_routes,
                                explain_description)

log = logging.getLogger("mice_index.serve")

__all__ = ["create_app"]

STATIC_DIR = Path(__file__).parent / "static"
MAX_QUERIES = 64  # queries in one request
MAX_QUERY_CHARS = 4096  # characters per query (the model reads at most max_query_length tokens)
MAX_VARIANTS = 8  # searchers kept for distinct settings (each holds its own candidate indexes)


# -- request / response bodies (they make the OpenAPI description) --

class SearchRequest(BaseModel):
    q: str | list[str] = Field(description="A query, or a list of queries searched together.")
    k: int | None = Field(None, description="Hits per query [default: the server's --k].")
    candidates: str | None = Field(None, description="First stage: bm25 | dense | hybrid [default: the server's].")
    depth: int | None = Field(None, description="Candidates per query re-ranked by MICE [default: the server's].")
    rerank: str | None = Field(None, description="mice | none [default: the server's].")
    alpha: float | None = Field(None, description="Weight of the first-stage score interpolated with MICE's "
                                                   "(where the library supports it).")
    explain: bool = Field(False, description="Also return which document words each query word attended to.")
    aggregate: str | None = Field(None, description="A passage index: a document's score from its passages' "
                                                    "(maxp | firstp | sump) [default: the server's]; no effect "
                                                    "on an index without passages.")
    filter: str | None = Field(None, description="Metadata filter over the index's fields, e.g. \"year >= 2020 "
                                                 "and source in ('a','b')\" (README → Filters): only matching "
                                                 "documents are searched, min(k, matches) hits per query.")


class WordMatchOut(BaseModel):
    word: str
    weight: float = Field(description="Attention mass (0..1) the query word gave this word's occurrences.")
    spans: list[tuple[int, int]] = Field(description="[start, end) offsets of its occurrences in title + ' ' + text.")


class QueryWordOut(BaseModel):
    query_word: str
    words: list[WordMatchOut]


class PassageOut(BaseModel):
    number: int = Field(description="The passage's number in its document (from 0).")
    char_start: int = Field(description="Its [char_start, char_end) span in the document's text.")
    char_end: int


class HitOut(BaseModel):
    rank: int
    doc_id: str
    score: float
    title: str
    snippet: str
    highlights: list[tuple[int, int]] | None = Field(None, description="[start, end) in the snippet (explain).")
    matches: list[QueryWordOut] | None = Field(None, description="Per query word, its best document words (explain).")
    passage: PassageOut | None = Field(None, description="A passage index: the passage that decided the score "
                                                         "(its text is the snippet's).")


class ResultOut(BaseModel):
    query: str
    hits: list[HitOut]
    note: str | None = Field(None, description="How the candidates were found when not as asked, e.g. the "
                                               "BM25 -> dense fallback of a query with no BM25 term.")


class SettingsOut(BaseModel):
    k: int
    candidates: str
    depth: int
    rerank: str
    alpha: float | None
    aggregate: str = "maxp"
    filter: str | None = None


class SearchResponse(BaseModel):
    results: list[ResultOut]
    settings: SettingsOut
    took_ms: float


class ErrorOut(BaseModel):
    error: str


# -- the work handed to the batcher --

class Settings(NamedTuple):
    """What decides a search pass: requests with equal settings share one."""
    candidates: str
    depth: int
    rerank: str
    alpha: float | None
    aggregate: str = "maxp"
    filter: str | None = None  # a metadata filter (its mask is cached by the searcher)


class _Work(NamedTuple):
    queries: list[str]
    k: int
    explain: bool
    budget: Budget | None = None


def supports_alpha() -> bool:
    from mice_index.search import SearchConfig

    return any(f.name == "alpha" for f in dataclasses.fields(SearchConfig))


class _Engine:
    """Runs on the batcher's worker thread: searchers per settings, search, explain, format."""

    def __init__(self, searcher, snippet_width: int = 200, chunk_work: int = 2000):
        self.base, self.width, self.chunk_work = searcher, snippet_width, chunk_work
        self.stopping = False  # set when the server stops: work in progress ends at its next chunk
        self.between_passes: Callable[[], None] = lambda: None  # create_app: the batcher's run_waiting
        self.variants: OrderedDict[Settings, Any] = OrderedDict({self.settings_of(searcher.config): searcher})
        self._explainer: Explainer | None = None

    @staticmethod
    def settings_of(config) -> Settings:
        return Settings(config.candidates, config.depth, config.rerank, getattr(config, "alpha", None),
                        config.aggregate)

    def searcher(self, s: Settings):
        s = s._replace(filter=None)  # one searcher per search configuration, whatever the filter
        if s not in self.variants:
            changes = {"candidates": s.candidates, "depth": s.depth, "rerank": s.rerank, "aggregate": s.aggregate}
            if supports_alpha():
                changes["alpha"] = s.alpha
            self.variants[s] = self.base.with_config(**changes)
            if len(self.variants) > MAX_VARIANTS:  # keep the server's own settings, drop the oldest other
                oldest = next(k for k in self.variants if self.variants[k] is not self.base)
                del self.variants[oldest]
        self.variants.move_to_end(s)
        return self.variants[s]

    def explainer(self) -> Explainer:
        if self._explainer is None:
            model = self.base.model
            if model is None:
                from mice_index.search import checked_model

                model = checked_model(self.base.reader)
            self._explainer = Explainer(model, self.base.reader)
        return self._explainer

    def _check(self, w: _Work) -> None:
        if self.stopping and w.budget is not None:
            w.budget.cancel("the server is shutting down")
        if w.budget is not None:
            w.budget.check()

    def reload_if_replaced(self) -> None:
        """Between requests: pick up the index's new build as a whole if `build --overwrite`
        replaced it (store/generation.py); the model stays loaded."""
        if self.base.is_current():
            return
        new = self.base.reopened()  # MiceIndexError (503) while the folder is being swapped
        log.info("the index was replaced: reloaded %s (%d documents)", Path(new.reader.root).name, new.reader.num_live)
        self.base, self._explainer = new, None
        self.variants = OrderedDict({self.settings_of(new.config): new})

    def run(self, settings: Settings, works: Sequence[_Work]) -> list[list[tuple[list[dict], str | None]] | BudgetExceeded]:
        """`_run` on the index's current build; a request that met a replacement mid-way is run
        again, whole, on the new build (never answered from two builds)."""
        self.reload_if_replaced()
        try:
            return self._run(settings, works)
        except IndexChanged:
            self.reload_if_replaced()
            return self._run(settings, works)

    def _run(self, settings: Settings, works: Sequence[_Work]) -> list[list[tuple[list[dict], str | None]] | BudgetExceeded]:
        """Every query of `works`, in passes of at most `chunk_work` candidates (queries x depth),
        each work's budget checked before each pass that holds its queries -> per work, per query,
        (the hit records, a note when its candidates came from the BM25 -> dense fallback), or the
        BudgetExceeded that stopped it."""
        searcher = self.searcher(settings)
        k = max(w.k for w in works)  # a prefix of each list is each k's list
        todo = [(j, q) for j, w in enumerate(works) for q in w.queries]
        hits: dict[int, list] = {j: [] for j in range(len(works))}
        failed: dict[int, BudgetExceeded] = {}
        per_pass = max(1, self.chunk_work // max(1, settings.depth))
        pos = passes = 0
        while pos < len(todo):
            chunk = []
            while pos < len(todo) and len(chunk) < per_pass:
                j, q = todo[pos]
                pos += 1
                if j in failed:
                    continue
                try:
                    self._check(works[j])
                except BudgetExceeded as exc:
                    failed[j] = exc
                    continue
                chunk.append((j, q))
            if chunk:
                if passes:  # not the first pass: let the requests that arrived meanwhile run
                    self.between_passes()
                passes += 1
                texts = [q for _, q in chunk]
                found = searcher.search_texts(texts, k, filter=settings.filter)
                for (j, _), h, f in zip(chunk, found, searcher.dense_fallback(texts)):
                    hits[j].append((h, FALLBACK_NOTE if f else None))
        out: list[list[dict] | BudgetExceeded] = []
        for j, w in enumerate(works):
            if j in failed:
                out.append(failed[j])
                continue
            try:
                lists = []
                for q, (h, note) in zip(w.queries, hits[j]):
                    h = h[:w.k]
                    if w.explain:
                        self._check(w)
                    expl = self.explainer().explain(q, h) if w.explain else [None] * len(h)
                    lists.append(([hit_record(x, e, self.width) for x, e in zip(h, expl)], note))
                out.append(lists)
            except BudgetExceeded as exc:
                out.append(exc)
        return out


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# the request parameters that share a CLI flag's name (the server's own options, e.g. --max-k, stay)
_CLI_FLAG = re.compile(r"(?<![\w-])--(k|depth|candidates|rerank|alpha|explain|query|aggregate|filter)\b(?!-)")


def _api_message(exc: Exception) -> str:
    """A shared check's message (written for the CLI) with its options named as this API's
    parameters: `--k must be positive` -> `k must be positive`."""
    return _CLI_FLAG.sub(r"\1", str(exc))


def create_app(searcher, batch: BatchConfig = BatchConfig(), k: int = 10,
               limits: ServeLimits = ServeLimits(), model_name: str | None = None) -> FastAPI:
    """The service over an opened Searcher (its config gives the default settings; `k` the
    default hits per query; `model_name` the name shown, default: the index's model; `limits`
    what one request may ask, see serve/limits.py). The batch
    worker starts and stops with the app's lifespan."""
    engine = _Engine(searcher, chunk_work=limits.chunk_work)
    batcher = MicroBatcher(engine.run, batch)
    engine.between_passes = batcher.run_waiting
    num_docs = searcher.num_documents  # at start; requests read engine.base (reloaded with the index)
    base = searcher.config

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        log.info("serving %s (%d documents): %s, depth %d, %s", searcher.reader.root, num_docs,
                 base.candidates, base.depth, base.rerank)
        try:
            yield
        finally:
            engine.stopping = True  # work still running ends at its next chunk (504)
            batcher.stop()
            log.info("batch worker stopped")

    app = FastAPI(title="mice-index", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Search a MICE index: first-stage candidates re-ranked by MICE over stored "
                              "document states. Errors are `{\"error\": message}` with status 400 (bad "
                              "parameters), 503 (queue full, shutting down) or 500.")
    app.state.batcher, app.state.engine, app.state.limits = batcher, engine, limits
    install_error_handlers(app)
    app.add_middleware(RequestLog)  # plain ASGI (FastAPI's http middleware hides client disconnects)
    app.add_middleware(Guard, limits=limits)  # outermost: refuses before a body is read

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":  # pydantic's "0: JSON decode error" says nothing useful
                parts.append(f"the request body is not valid JSON ({e.get('ctx', {}).get('error', 'cannot parse')})")
                continue
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        request.state.log = f" error={'; '.join(parts)}"
        return _error(400, "; ".join(parts) or "bad request")

    @app.get("/health", summary="Liveness: the index and model are loaded.")
    def health() -> dict:
        return {"status": "ok", "documents": engine.base.num_documents, "pending": batcher.pending}

    @app.get("/settings", response_model=ServerSettingsOut,
             summary="The server's defaults (from `mice-index serve` options) and what explain shows.")
    def settings() -> dict:
        from mice_index.search import resolve_alpha

        name = model_name or searcher.reader.manifest.model.name
        return {"k": k, "candidates": base.candidates, "depth": base.depth, "rerank": base.rerank,
                "aggregate": base.aggregate,
                "alpha": resolve_alpha(base.alpha, engine.base.model), "model": display_model_name(name),
                "bm25_fallback": "a query with no BM25 term (only stopwords?) gets dense candidates"
                                 if searcher.reader.dense_path is not None else "a query with no BM25 term is an error "
                                 "(the index has no dense vectors)",
                "explain": explain_description(engine.base.model)}

    @app.get("/info", summary="The index's summary (same as `mice-index info --json`).")
    def info() -> dict:
        from mice_index.store import index_info

        root = engine.base.reader.root
        out = {**index_info(root), "path": Path(root).name}  # no server paths
        if Path(str(out.get("model"))).is_absolute():  # a model given as a folder: its name only
            out["model"] = Path(out["model"]).name
        return out

    async def _search(req: SearchRequest, request: Request):
        start = time.perf_counter()
        try:
            settings, work = _validate(req)
        except MiceIndexError as exc:
            request.state.log = f" error={exc}"
            return _error(400, _api_message(exc))
        request.state.log = (f" k={work.k} candidates={settings.candidates} depth={settings.depth} "
                             f"queries={len(work.queries)}{' explain' if work.explain else ''}"
                             f"{' filtered' if settings.filter is not None else ''}")
        budget = work.budget
        try:
            lists = await run_within_budget(batcher, settings, work, request)
            if isinstance(lists, BudgetExceeded):
                raise lists
        except (QueueFull, ShuttingDown) as exc:
            return _error(503, str(exc))
        except BudgetExceeded as exc:
            request.state.log += f" stopped: {exc}"
            return _error(504, str(exc))
        except SearchError as exc:
            return _error(400, _api_message(exc))
        except MiceIndexError as exc:  # index damage, a failing disk: the server's fault, paths stay here
            log.error("search failed: %s", exc)
            return _error(503, "the index cannot be read (the server log says why)")
        except Exception:  # noqa: BLE001 - one request fails, the server stays up
            log.exception("search failed")
            return _error(500, "internal error (logged on the server)")
        finally:
            budget.cancel("done")
        return SearchResponse(
            results=[ResultOut(query=q, hits=h, note=n) for q, (h, n) in zip(work.queries, lists)],
            settings=SettingsOut(k=work.k, **settings._asdict()),
            took_ms=round((time.perf_counter() - start) * 1000, 2))

    def _validate(req: SearchRequest) -> tuple[Settings, _Work]:
        queries = [req.q] if isinstance(req.q, str) else list(req.q)
        if not queries:
            raise SearchError("q: no query given")
        if len(queries) > MAX_QUERIES:
            raise SearchError(f"q: at most {MAX_QUERIES} queries per request, got {len(queries)}")
        for q in queries:
            if not q.strip():
                raise SearchError("q: query is empty")
            if len(q) > MAX_QUERY_CHARS:
                raise SearchError(f"q: a query may have at most {MAX_QUERY_CHARS} characters, got {len(q)}")
            if invalid_unicode(q):
                raise SearchError(f"q: {invalid_unicode(q)} (refused, never repaired)")
        for name, value, most in (("k", req.k, limits.max_k), ("depth", req.depth, limits.max_depth)):
            if value is not None and value > most:
                raise SearchError(f"{name}: at most {most} on this server (--max-{name}), got {value}")
        changes = {name: value for name, value in
                   (("candidates", req.candidates), ("depth", req.depth), ("rerank", req.rerank),
                    ("aggregate", req.aggregate)) if value is not None}
        if req.alpha is not None:
            if not supports_alpha():
                raise SearchError("alpha: this version has no first-stage score interpolation")
            changes["alpha"] = req.alpha
        config = dataclasses.replace(base, **changes)  # SearchError (the CLI's message) if invalid
        if config.rerank == "mice" and searcher.model is None:
            raise SearchError("rerank mice: this server was started without a MICE model (--rerank none)")
        # k and depth above the corpus size are clipped with a warning, as in the CLI
        n = engine.base.num_documents  # a passage index: documents, not its passage rows
        config = dataclasses.replace(config, depth=clipped("--depth", req.depth, base.depth, n))
        k_ = clipped("--k", req.k, k, n)
        work = len(queries) * config.depth if config.rerank == "mice" else len(queries) * k_
        if work > limits.max_work:
            raise SearchError(f"queries x depth = {work} is above this server's limit of {limits.max_work} per "
                              "request (--max-work): send fewer queries or a smaller depth")
        if req.explain and len(queries) * k_ > limits.max_explain:
            raise SearchError(f"explain: queries x k = {len(queries) * k_} explained hits is above this server's "
                              f"limit of {limits.max_explain} (--max-explain)")
        if req.filter is not None:
            engine.base.check_filter(req.filter)  # FilterError (400) before queueing; the worker makes the mask
        settings = _Engine.settings_of(config)._replace(filter=req.filter)
        return settings, _Work(queries, k_, req.explain, Budget(limits.request_timeout_s))

    responses = {code: {"model": ErrorOut} for code in (400, 413, 500, 503, 504)}

    @app.post("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=responses,
              summary="Search with a JSON body.")
    async def search_post(req: SearchRequest, request: Request):
        return await _search(req, request)

    @app.get("/search", response_model=SearchResponse, response_model_exclude_none=True, responses=responses,
             summary="Search with query parameters (repeat q for several queries).")
    async def search_get(request: Request, q: list[str] = Query(..., description="Query text (repeatable)."),
                         k: int | None = None, candidates: str | None = None, depth: int | None = None,
                         rerank: str | None = None, alpha: float | None = None, explain: bool = False,
                         aggregate: str | None = None, filter: str | None = None):
        req = SearchRequest(q=q, k=k, candidates=candidates, depth=depth, rerank=rerank, alpha=alpha, explain=explain,
                            aggregate=aggregate, filter=filter)
        return await _search(req, request)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    docs_routes(app)
    return app


async def run_within_budget(batcher: MicroBatcher, settings: Settings, work: _Work, request: Request):
    """Queue `work` and wait for it within its budget; a client that goes away cancels it. Still
    queued at the deadline -> ShuttingDown-like 503 (QueueFull); running -> BudgetExceeded (504), the
    worker stopping it at its next chunk."""
    import asyncio

    budget = work.budget
    future = batcher.submit_future(settings, work)

    async def watch_client():
        while not future.done():
            if await request.is_disconnected():
                budget.cancel("the client disconnected")
                future.cancel()
                log.info("%s %s: client disconnected, request cancelled", request.method, request.url.path)
                return
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch_client())
    try:
        remaining = max(0.0, budget.deadline - time.monotonic())
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), remaining)
    except asyncio.TimeoutError:
        budget.cancel(f"the request ran past its time budget ({budget.seconds:g} s, --request-timeout)")
        if future.cancel():  # never started: the server is too busy
            raise QueueFull(f"the server is busy: the request waited {budget.seconds:g} s (--request-timeout) "
                            "without starting; try again shortly") from None
        raise BudgetExceeded(budget.reason) from None
    finally:
        watcher.cancel()


def _version() -> str:
    from mice_index import __version__

    return __version__
