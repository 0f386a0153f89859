"""Moved to :mod:`mnimi_adapters.core.stores.redis_store`; kept until every import names it."""

from .stores.redis_store import RedisStore, redis_location, shown_location, url_has_password

__all__ = ["RedisStore", "redis_location", "shown_location", "url_has_password"]
