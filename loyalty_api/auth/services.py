"""API keys, member tokens and what each credential may do."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import Unauthorized, ValidationFailed
from ..ids import new_id
from .models import ApiKey

ROLE_SCOPES: dict[str, frozenset[str]] = {
    "pos": frozenset({"members:read", "members:write", "purchases", "events", "redemptions",
                      "rewards:read"}),
    "app": frozenset({"members:read", "redemptions", "member_tokens", "rewards:read"}),
    "marketer": frozenset({"rules", "tiers", "rewards", "rewards:read", "program"}),
    "member": frozenset({"members:read", "redemptions", "rewards:read", "referrals:read"}),
}
ROLE_SCOPES["admin"] = frozenset().union(*ROLE_SCOPES.values()) | {
    "api_keys", "adjustments", "jobs", "referrals:read", "integrations"}
KEY_ROLES = ("pos", "app", "marketer", "admin")
_KEY_PREFIX = "lk"


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's role, or a member token bound to one member."""

    role: str
    key_id: str | None = None
    member_id: str | None = None

    def may(self, scope: str) -> bool:
        return scope in ROLE_SCOPES[self.role]


def _hash_key(key: str) -> str:
    # Keys carry 192 random bits, so a plain SHA-256 is enough (no password stretching).
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, role: str, now: datetime, name: str | None = None) -> str:
    """Create an API key for `role`; return the key itself, which is never stored."""
    if role not in KEY_ROLES:
        raise ValidationFailed(f"unknown role {role!r}", {"role": [f"must be one of {', '.join(KEY_ROLES)}"]})
    prefix = secrets.token_hex(6)
    key = f"{_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(24)}"
    session.add(ApiKey(id=new_id(), prefix=prefix, key_hash=_hash_key(key), role=role, name=name,
                       created_at=now))
    session.flush()
    return key


def authenticate_key(session: Session, key: str) -> Principal:
    """Return the principal of an API key; raise Unauthorized for an unknown or revoked one."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != _KEY_PREFIX:
        raise Unauthorized()
    row = session.execute(
        select(ApiKey.id, ApiKey.key_hash, ApiKey.role, ApiKey.revoked_at).where(ApiKey.prefix == parts[1])
    ).first()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, _hash_key(key)):
        raise Unauthorized()
    return Principal(role=row.role, key_id=row.id)


def issue_member_token(member_id: str, secret: str, now: datetime, ttl_seconds: int) -> tuple[str, datetime]:
    """Sign a short-lived token that acts for one member; return it with its expiry."""
    expires_at = now + timedelta(seconds=ttl_seconds)
    claims = {"sub": member_id, "typ": "member", "iat": int(now.timestamp()), "exp": int(expires_at.timestamp())}
    return jwt.encode(claims, secret, algorithm="HS256"), expires_at.replace(microsecond=0)


def authenticate_member_token(token: str, secret: str, now: datetime) -> Principal:
    """Return the member principal of a signed token; raise Unauthorized when bad or expired."""
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"verify_exp": False,
                                                                          "require": ["sub", "exp", "typ"]})
    except jwt.PyJWTError as err:
        raise Unauthorized() from err
    if claims.get("typ") != "member" or claims["exp"] <= now.timestamp():
        raise Unauthorized()
    return Principal(role="member", member_id=str(claims["sub"]))


def authenticate(session: Session, authorization: str | None, secret: str, now: datetime) -> Principal:
    """Resolve an `Authorization: Bearer …` header to a principal."""
    if not authorization:
        raise Unauthorized()
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise Unauthorized()
    if credential.startswith(f"{_KEY_PREFIX}_"):
        return authenticate_key(session, credential)
    return authenticate_member_token(credential, secret, now)
