"""The LoRAHub-style composer: mixing weights for an unseen task from a few examples.

Importing this package needs only torch and nevergrad; transformers loads when a base model
does (``compose.composer.model.load_base``).
"""

from compose.composer.candidates import (
    Candidate,
    check_candidates,
    load_candidates,
    resolve_candidates,
)
from compose.composer.composer import Composer, write_composed
from compose.composer.examples import Example, examples_sha256, load_examples
from compose.composer.search import SearchConfig, SearchResult, search

__all__ = [
    "Candidate", "Composer", "Example", "SearchConfig", "SearchResult", "check_candidates",
    "examples_sha256", "load_candidates", "load_examples", "resolve_candidates", "search", "write_composed",
]
