"""mice-index: offline indexing and first-stage retrieval for MICE (Minimal Interaction Cross-Encoders).

Data flow (one subpackage per stage):
    sources -> encoder -> codec -> store -> candidates -> scorer -> runs
"""

from mice_index.errors import MiceIndexError

__version__ = "0.1.0"
__all__ = ["MiceIndexError", "__version__"]
