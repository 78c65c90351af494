"""Thin routers: parse the request, call ``RegistryService``, shape the response."""
