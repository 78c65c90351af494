"""Registry settings: one pydantic-settings object read from ``LORAHIVE_*`` env vars and an
optional ``config.toml`` in the data directory (env wins), with zero-set-up defaults under
``~/.lorahive``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from lorahive.hub.credentials import lorahive_home


def default_home() -> Path:
    return lorahive_home()


class Settings(BaseSettings):
    """Where metadata and blobs live, and the limits the service enforces."""

    model_config = SettingsConfigDict(env_prefix="LORAHIVE_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    database_url: str = ""  # default: sqlite file under home
    storage_url: str = ""  # default: file://<home>/blobs ; or s3://bucket/prefix
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    # the S3 endpoint that presigned download URLs name, where clients reach the store under
    # another address than the workers do (default: s3_endpoint_url)
    s3_public_endpoint_url: str | None = None
    # with object storage, file requests answer 302 to a presigned URL of the object (as the
    # Hugging Face Hub redirects to its CDN), so API workers never stream weights; false
    # streams them through the workers as with a local blob directory
    redirect_downloads: bool = True
    redirect_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 86_400)
    max_upload_bytes: int = 8 * 1024**3
    max_files: int = 64
    max_filename_length: int = 255
    max_manifest_bytes: int = 1024**2
    gc_grace_seconds: float = 3600.0
    db_pool_size: int = 5
    web_session_hours: float = 24.0 * 7  # a browser sign-in lasts this long at most
    web_overlap_max_bytes: int = 512 * 1024**2  # weights loaded to compare subspaces (both)
    # a bearer token that may read /metrics (for a Prometheus scraper), besides site admins
    metrics_token: str | None = None

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        self.home = Path(self.home).expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'registry.db'}"
        if not self.storage_url:
            self.storage_url = f"file://{self.home / 'blobs'}"
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=default_home() / "config.toml")
        return init_settings, env_settings, toml

    @property
    def admin_token_file(self) -> Path:
        return self.home / "admin-token"

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to print (no credentials in URLs)."""
        d = self.model_dump()
        d["database_url"] = _redact(self.database_url)
        d["metrics_token"] = "***" if self.metrics_token else None
        return d


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def get_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
