"""Bearer tokens: one FastAPI security dependency, :data:`bearer`, that both refuses a
request without a valid token (where the service has tokens) and documents the scheme
on every route it guards in the OpenAPI document. Routes without it (the page, the
probes, the API's own description) are open."""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.security import HTTPBearer

from service.errors import RequestError


class TokenBearer(HTTPBearer):
    """``Authorization: Bearer <token>`` checked against the service's tokens (every
    token compared, in constant time); no tokens: every request passes."""

    async def __call__(self, request: Request):
        tokens = request.app.state.service.config.tokens
        if not tokens:
            return None
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        token = token.strip().encode("latin-1", "replace")
        known = [hmac.compare_digest(token, t.encode()) for t in tokens]
        if scheme.lower() != "bearer" or not token or not any(known):
            raise RequestError(
                401,
                "unauthorized",
                "give 'Authorization: Bearer <token>' with a token of the service's token file",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return token


bearer = TokenBearer(
    auto_error=False,
    scheme_name="bearer",
    description="a token of the service's --token-file (needed where the service has tokens)",
)
