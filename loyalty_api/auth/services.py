"""API keys, member tokens and what each credential may do."""

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import DomainError, Forbidden, MemberNotActive, NotFound, Unauthorized, ValidationFailed
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

    def refusal(self, scope: str, member_id: str | None, *, member_route: bool = False) -> DomainError | None:
        """Why this credential may not act with `scope` on `member_id` (a route's, if any), or None.

        A member token may act only for its own member: another member is not found, as if
        it did not exist, and a route without a member is refused unless it is a
        `member_route` (which checks ownership itself).
        """
        if not self.may(scope):
            return Forbidden()
        if self.member_id is not None:
            if member_id is None and not member_route:
                return Forbidden()
            if member_id is not None and member_id != self.member_id:
                return NotFound("No such member")
        return None


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


# Verified keys are remembered per process for a short while, so that a request usually
# needs no read before its write transaction (which also keeps psycopg's prepared
# statements, lost on every rollback). A revoked key stops working within this time.
KEY_CACHE_SECONDS = 30.0
_key_cache: dict[str, tuple[str, Principal, float]] = {}


def authenticate_key(session: Session, key: str) -> Principal:
    """Return the principal of an API key; raise Unauthorized for an unknown or revoked one."""
    prefix, key_hash = _key_parts(key)
    principal = _remembered_key(prefix, key_hash)
    if principal is not None:
        return principal
    row = session.execute(
        select(ApiKey.id, ApiKey.key_hash, ApiKey.role, ApiKey.revoked_at).where(ApiKey.prefix == prefix)
    ).first()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, key_hash):
        raise Unauthorized()
    principal = Principal(role=row.role, key_id=row.id)
    _key_cache[prefix] = (row.key_hash, principal, time.monotonic() + KEY_CACHE_SECONDS)
    return principal


def _key_parts(key: str) -> tuple[str, str]:
    """Return an API key's public prefix and its hash; raise Unauthorized if it is no key."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != _KEY_PREFIX:
        raise Unauthorized()
    return parts[1], _hash_key(key)


def _remembered_key(prefix: str, key_hash: str) -> Principal | None:
    cached = _key_cache.get(prefix)
    if cached is not None and cached[2] > time.monotonic() and hmac.compare_digest(cached[0], key_hash):
        return cached[1]
    return None


def revoke_api_key(session: Session, prefix: str, now: datetime) -> None:
    """Revoke the key with this public prefix (the part after `lk_`).

    This process forgets it at once; other processes within KEY_CACHE_SECONDS.
    Raises NotFound for an unknown prefix.
    """
    key = session.execute(select(ApiKey).where(ApiKey.prefix == prefix)).scalar()
    if key is None:
        raise NotFound("No such API key")
    key.revoked_at = key.revoked_at or now
    _key_cache.pop(prefix, None)
    session.flush()


def issue_member_token(member_id: str, secret: str, now: datetime, ttl_seconds: int) -> tuple[str, datetime]:
    """Sign a short-lived token that acts for one member; return it with its expiry."""
    expires_at = now + timedelta(seconds=ttl_seconds)
    claims = {"sub": member_id, "typ": "member", "iat": int(now.timestamp()), "exp": int(expires_at.timestamp())}
    return jwt.encode(claims, secret, algorithm="HS256"), expires_at.replace(microsecond=0)


def create_member_token(session: Session, member_id: str, secret: str, ttl_seconds: int, now: datetime) -> dict:
    """Issue a member token for an existing, active member; return {token, expires_at}.

    Raises NotFound for an unknown member, MemberNotActive for a suspended or erased one.
    """
    from ..members.models import Member

    status = session.execute(select(Member.status).where(Member.id == member_id)).scalar()
    if status is None:
        raise NotFound("No such member")
    if status != "active":
        raise MemberNotActive()
    token, expires_at = issue_member_token(member_id, secret, now, ttl_seconds)
    return {"token": token, "expires_at": expires_at}


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
    credential = _bearer_credential(authorization)
    if credential.startswith(f"{_KEY_PREFIX}_"):
        return authenticate_key(session, credential)
    return authenticate_member_token(credential, secret, now)


def authenticate_without_reading(authorization: str | None, secret: str, now: datetime) -> Principal | None:
    """Return the principal of a credential that needs no database read to verify: a member
    token, or an API key verified within KEY_CACHE_SECONDS. None when the key must be read or
    the credential is refused: `authenticate` then decides, exactly as it always does."""
    try:
        credential = _bearer_credential(authorization)
        if credential.startswith(f"{_KEY_PREFIX}_"):
            return _remembered_key(*_key_parts(credential))
        return authenticate_member_token(credential, secret, now)
    except Unauthorized:
        return None


def _bearer_credential(authorization: str | None) -> str:
    """Return the credential of an `Authorization: Bearer …` header; raise Unauthorized without one."""
    if not authorization:
        raise Unauthorized()
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise Unauthorized()
    return credential
