"""Bearer-token authentication of the HTTP API.

Tokens come from a tokens file (``--api-tokens FILE`` / ``SAGARAY_API_TOKENS_FILE``) and
from ``SAGARAY_API_READ_TOKEN`` / ``SAGARAY_API_WRITE_TOKEN``; all of them are valid
together. The file has one token a line, with its scope first::

    # comments and blank lines are ignored
    read  3q2+7w...      # GET routes
    write Zm9v...        # every route (write implies read)

When tokens are configured, every route but :data:`PUBLIC_PATHS` needs
``Authorization: Bearer TOKEN``: GET (and HEAD, OPTIONS) requests need a read or write
token, every other method a write token. No token or an unknown token is 401, a read
token on a write route 403; both are problems with ``WWW-Authenticate: Bearer``.
Tokens are compared in constant time and never appear in logs, errors or responses.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Middleware

from coordinator.api import Handler, problem

log = logging.getLogger(__name__)

Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Probes of orchestrators carry no credentials; they reveal nothing but up/ready.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
TOKENS_FILE_VARIABLE = "SAGARAY_API_TOKENS_FILE"
TOKEN_VARIABLES: dict[str, Scope] = {"SAGARAY_API_READ_TOKEN": "read",
                                     "SAGARAY_API_WRITE_TOKEN": "write"}
MIN_TOKEN_LENGTH = 16
REALM = "sagaray"
# RFC 6750 b64token: what may follow "Bearer " without quoting.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_BEARER = re.compile(r"Bearer +(?P<token>\S+) *", re.IGNORECASE)


class TokenConfigError(ValueError):
    """The token configuration is unusable; the message never holds a token."""


class InsecureBind(ValueError):
    """Serving on a non-loopback address without tokens and without ``--insecure``."""


@dataclass(frozen=True)
class ApiTokens:
    """The accepted tokens by scope; ``repr`` shows only how many there are."""

    read: tuple[str, ...] = field(default=(), repr=False)
    write: tuple[str, ...] = field(default=(), repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.read or self.write)

    def __repr__(self) -> str:
        return f"ApiTokens(read={len(self.read)} tokens, write={len(self.write)} tokens)"

    def scope_of(self, token: str) -> Scope | None:
        """The token's scope, or None; every configured token is compared, in constant time."""
        presented = token.encode()
        found: Scope | None = None
        for scope in SCOPES:
            for known in getattr(self, scope):
                # No early exit: the time taken does not tell which token (or scope) matched.
                if hmac.compare_digest(presented, known.encode()):
                    found = scope if found is None or scope == "write" else found
        return found

    def allows(self, scope: Scope | None, method: str) -> bool:
        return scope == "write" or (scope == "read" and method.upper() in READ_METHODS)


def check_token(token: str, where: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise TokenConfigError(f"{where}: a token may hold only letters, digits and "
                               f"-._~+/ (then '=' padding)")
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenConfigError(f"{where}: a token must be at least {MIN_TOKEN_LENGTH} "
                               f"characters long (`openssl rand -hex 32` makes a good one)")
    return token


def parse_tokens_file(text: str, source: str) -> ApiTokens:
    """Lines ``read TOKEN`` or ``write TOKEN``; ``#`` starts a comment."""
    found: dict[Scope, list[str]] = {"read": [], "write": []}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source}, line {number}"
        if len(words) != 2 or words[0] not in SCOPES:
            raise TokenConfigError(f"{where}: expected 'read TOKEN' or 'write TOKEN'")
        scope: Scope = "read" if words[0] == "read" else "write"
        found[scope].append(check_token(words[1], where))
    return ApiTokens(tuple(found["read"]), tuple(found["write"]))


def load_tokens(path: Path | str | None = None,
                environ: Mapping[str, str] | None = None) -> ApiTokens:
    """The tokens of the file at ``path`` (if any) and of the token variables in ``environ``."""
    env = os.environ if environ is None else environ
    tokens = ApiTokens()
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise TokenConfigError(f"cannot read the API tokens file {path}: "
                                   f"{error.strerror or type(error).__name__}") from None
        tokens = parse_tokens_file(text, str(path))
        if not tokens.enabled:
            raise TokenConfigError(f"the API tokens file {path} holds no token")
    read, write = list(tokens.read), list(tokens.write)
    for variable, scope in TOKEN_VARIABLES.items():
        value = env.get(variable, "").strip()
        if value:
            (read if scope == "read" else write).append(check_token(value, variable))
    return ApiTokens(tuple(read), tuple(write))


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches: 127.0.0.0/8, ::1, ``localhost``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything, "" binds every interface


def check_exposure(host: str, tokens: ApiTokens, insecure: bool) -> None:
    """Refuse to serve beyond loopback without tokens unless ``insecure`` says so."""
    if tokens.enabled or insecure or is_loopback(host):
        return
    raise InsecureBind(
        f"refusing to serve the API on {host!r} without authentication: configure tokens "
        f"(--api-tokens FILE, ${TOKENS_FILE_VARIABLE}, $SAGARAY_API_READ_TOKEN or "
        f"$SAGARAY_API_WRITE_TOKEN), bind to a loopback address, or pass --insecure")


def _challenge(error: str | None = None, scope: Scope | None = None) -> dict[str, str]:
    value = f'Bearer realm="{REALM}"'
    if error is not None:
        value += f', error="{error}"'
    if scope is not None:
        value += f', scope="{scope}"'
    return {"WWW-Authenticate": value}


def _presented(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    match = _BEARER.fullmatch(header)
    return match["token"] if match else ""


def auth_middleware(tokens: ApiTokens) -> Middleware:
    """The middleware enforcing ``tokens``; pass it to ``create_app(middlewares=...)``."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        token = _presented(request)
        if token is None:
            return problem(401, "Unauthorized", "this API needs a bearer token: send "
                           "'Authorization: Bearer TOKEN'", instance=request.path,
                           headers=_challenge())
        scope = tokens.scope_of(token) if token else None
        if scope is None:
            log.info("refused %s %s: unknown or malformed bearer token",
                     request.method, request.path)
            return problem(401, "Unauthorized", "the bearer token is not valid",
                           instance=request.path, headers=_challenge("invalid_token"))
        if not tokens.allows(scope, request.method):
            log.info("refused %s %s: a read token cannot write", request.method, request.path)
            return problem(403, "Forbidden", f"{request.method} needs a write token; this "
                           "token may only read", instance=request.path,
                           headers=_challenge("insufficient_scope", "write"))
        return await handler(request)

    return authenticate


__all__ = ["PUBLIC_PATHS", "ApiTokens", "InsecureBind", "TokenConfigError", "auth_middleware",
           "check_exposure", "is_loopback", "load_tokens", "parse_tokens_file"]
