"""What the search page and /docs need from the server: its defaults (`GET /settings`), what an
explanation shows for the model in use, the BM25 -> dense fallback note, and Swagger UI served
from the `swagger-ui-bundle` package (no CDN: /docs works offline)."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

log = logging.getLogger("mice_index.serve")

__all__ = ["FALLBACK_NOTE", "ServerSettingsOut", "display_model_name", "docs_routes", "explain_description"]


class ExplainOut(BaseModel):
    method: str = Field(description="maxsim (the cls+maxsim head's matches) or cross-attention (the cls head).")
    min_similarity: float | None = Field(description="maxsim: matches below this cosine are not shown.")
    text: str = Field(description="What the highlights show, in words.")


class ServerSettingsOut(BaseModel):
    k: int
    candidates: str
    depth: int
    rerank: str
    alpha: float = Field(description="The interpolation weight in use (the model's recommendation unless set).")
    aggregate: str = Field("maxp", description="Passage aggregation (maxp | firstp | sump); used by a passage index only.")
    model: str = Field(description="The MICE model's name (the shipped default's own name for 'default').")
    bm25_fallback: str = Field(description="What happens to a query with no BM25 term.")
    explain: ExplainOut


FALLBACK_NOTE = "no query term is in the BM25 vocabulary (only stopwords?): dense candidates were used"


def explain_description(model) -> dict:
    """What `explain` shows for `model` (ExplainOut)."""
    from mice_index.explain import MIN_SIMILARITY

    if model is not None and model.interaction.late is not None:
        return {"method": "maxsim", "min_similarity": MIN_SIMILARITY,
                "text": "Highlighted: for each query word, the document words its tokens match best in the "
                        f"model's MaxSim term (learned cosine); matches below a cosine of {MIN_SIMILARITY} are "
                        "not shown, so a hit may have none. Stopwords and punctuation are never listed."}
    return {"method": "cross-attention", "min_similarity": None,
            "text": "Highlighted: for each query word, the two document words it attended to most in MICE's "
                    "cross-attention (attention always sums to one, so every hit has some). Stopwords and "
                    "punctuation are never listed."}


def docs_routes(app: FastAPI) -> None:
    """GET /docs: Swagger UI with its assets from the swagger-ui-bundle package (offline)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        log.warning("swagger-ui-bundle is not installed: no /docs page (/openapi.json is served)")
        return
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="openapi.json", title="mice-index API",
                                   swagger_js_url="docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="docs-assets/swagger-ui.css",
                                   swagger_favicon_url="docs-assets/favicon-32x32.png")


def display_model_name(name: str) -> str:
    """"default" -> the shipped default model's own name; any other name unchanged."""
    from mice_index.defaults import DEFAULT_MODEL_DIR

    return f"{DEFAULT_MODEL_DIR.name} (default)" if name == "default" else name
