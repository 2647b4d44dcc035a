"""The one collection crossfade serves on Chroma's API: the app's own, under the name, tenant
and database the app already uses (`chroma_api`), with a stable id (Chroma clients address a
collection by id once they have it). Its model is the app's (the old one, until it moves), so
its dimension and distance are what the app's collection had."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from proxy.chroma_api import ChromaRefusal
from proxy.config import Settings
from proxy.errors import NotFound

DEFAULT_TENANT = "default_tenant"
DEFAULT_DATABASE = "default_database"
# Ids of the served collection and database: uuid5 of their names under this namespace.
NAMESPACE = uuid.UUID("5b0f6a3e-2c1d-4e8f-9a7b-c4d5e6f7a8b9")


@dataclass(frozen=True)
class ServedCollection:
    name: str
    tenant: str
    database: str
    space: str  # cosine | l2 | ip
    dim: int  # the app's model's
    # The served side's persisted embedding function (an adopted Chroma collection's; after
    # finish the new collection's): a client that opens the collection without giving one
    # builds it from this, as from Chroma itself.
    embedding_function: dict[str, Any] | None = None

    @classmethod
    def of(
        cls, settings: Settings, dim: int, embedding_function: dict[str, Any] | None = None
    ) -> ServedCollection:
        conf, old = settings.chroma_api, settings.indexes.old
        chroma = old.backend == "chroma"
        return cls(
            name=conf.collection or old.collection,
            tenant=conf.tenant or (chroma and old.tenant) or DEFAULT_TENANT,
            database=conf.database or (chroma and old.database) or DEFAULT_DATABASE,
            space=conf.space,
            dim=dim,
            embedding_function=embedding_function,
        )

    @property
    def id(self) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{self.tenant}/{self.database}/{self.name}"))

    @property
    def database_id(self) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{self.tenant}/{self.database}"))

    def database_json(self) -> dict[str, Any]:
        return {"id": self.database_id, "name": self.database, "tenant": self.tenant}

    def as_json(self) -> dict[str, Any]:
        """Chroma's collection model: the served side's persisted embedding function, else
        none (the app's own, its client's, embeds as it always did); no schema (clients then
        use the embedding function they are given)."""
        return {
            "id": self.id,
            "name": self.name,
            "configuration_json": {
                "hnsw": {"space": self.space},
                "spann": None,
                "embedding_function": self.embedding_function,
            },
            "schema": None,
            "metadata": None,
            "dimension": self.dim,
            "tenant": self.tenant,
            "database": self.database,
            "log_position": 0,
            "version": 0,
        }

    # --- the path's parts, checked with Chroma's own words ---------------------------------

    def check_tenant(self, tenant: str) -> None:
        if tenant != self.tenant:
            raise NotFound(f"Tenant [{tenant}] not found")

    def check_database(self, tenant: str, database: str) -> None:
        self.check_tenant(tenant)
        if database != self.database:
            raise NotFound(f"Database [{database}] not found. Are you sure it exists?")

    def check_name(self, tenant: str, database: str, name: str) -> None:
        self.check_database(tenant, database)
        if name != self.name:
            raise NotFound(
                f"Collection [{name}] does not exist (crossfade serves one collection, "
                f"{self.name!r}: the one migrating)"
            )

    def check_id(self, tenant: str, database: str, collection_id: str) -> None:
        self.check_database(tenant, database)
        try:
            uuid.UUID(collection_id)
        except ValueError:
            raise ChromaRefusal("Collection ID is not a valid UUIDv4") from None
        if collection_id != self.id:
            raise NotFound(f"Collection [{collection_id}] does not exist.")
