"""Every demo service by name, and the app factory that takes a name or a config."""

from __future__ import annotations

from typing import Unpack

from aiohttp import web

from services import cars, flights, hotels, inventory, notifications, orders, payments, shipping
from services.app import AppOptions, create_service_app
from services.common import ServiceConfig, ServiceSpec

SPECS: dict[str, ServiceSpec] = {
    module.SPEC.name: module.SPEC
    for module in (flights, hotels, cars, notifications, inventory, payments, shipping, orders)
}
SERVICE_NAMES: tuple[str, ...] = tuple(SPECS)
DEFAULT_PORTS: dict[str, int] = {name: spec.default_port for name, spec in SPECS.items()}


def get_spec(name: str) -> ServiceSpec:
    try:
        return SPECS[name]
    except KeyError:
        known = ", ".join(SERVICE_NAMES)
        raise ValueError(f"unknown service {name!r}; known: {known}") from None


def create_app(
    name_or_config: str | ServiceConfig, **options: Unpack[AppOptions]
) -> web.Application:
    """A new app for the named service; ``options`` override the config's settings.

    Nothing is read from the environment here: pass ``required_token`` to make
    flights demand ``Authorization: Bearer <token>``.
    """
    if isinstance(name_or_config, ServiceConfig):
        return create_service_app(get_spec(name_or_config.name), name_or_config, **options)
    return create_service_app(get_spec(name_or_config), None, **options)
