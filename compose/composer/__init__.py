"""The LoRAHub-style composer: mixing weights for an unseen task from a few examples.

Importing this package needs only torch and nevergrad; transformers loads when a base model
does (``compose.composer.model.load_base``).
"""

from lorahive.compose.composer.candidates import (
    Candidate,
    check_candidates,
    load_candidates,
    resolve_candidates,
)
from lorahive.compose.composer.examples import Example, examples_sha256, load_examples
from lorahive.compose.composer.search import SearchConfig, SearchResult, search
from lorahive.compose.composer.session import (
    Composer,
    ComposeResult,
    compose_params,
    compose_recipe,
)

__all__ = [
    "Candidate", "ComposeResult", "Composer", "Example", "SearchConfig", "SearchResult",
    "check_candidates", "compose_params", "compose_recipe", "examples_sha256",
    "load_candidates", "load_examples", "resolve_candidates", "search",
]
