"""lorahive.registry: storage (SQL + blobs), the publish/resolve/search service, the REST app."""
