"""The registry's web pages, served by ``lorahive serve`` at ``/``: search, adapter pages with
their model cards, files, lineage and spectra, comparison, and browser sign-in.

Server-rendered HTML from the same ``RegistryService`` as the REST API (the pages never touch
tables or blobs), every asset served from this package, no JavaScript at all: the
Content-Security-Policy forbids scripts outright, so a hostile model card has nothing to run.
"""

from lorahive.registry.web.routes import router

__all__ = ["router"]
