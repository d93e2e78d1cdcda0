"""Clerk's JSON objects for the emulator's state: ``Session`` and ``User``.

Each carries every property the Backend API's OpenAPI document (2026-05-12)
marks required, and nothing it does not declare (both schemas forbid extra
properties). Timestamps are unix milliseconds, as Clerk sends them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ._ids import BASE62
from ._state import EmulatedSession, EmulatedUser

__all__ = ["identification_id", "milliseconds", "session_json", "user_json"]

_ID_LENGTH = 27


def milliseconds(seconds: float) -> int:
    """Unix seconds as Clerk's integer milliseconds."""
    return int(seconds * 1000)


def identification_id(user_id: str, kind: str) -> str:
    """A stable ``idn_`` id for one of a user's identifiers (email address, phone number)."""
    number = int.from_bytes(hashlib.sha256(f"{user_id}\0{kind}".encode()).digest(), "big")
    chars = []
    for _ in range(_ID_LENGTH):
        number, digit = divmod(number, len(BASE62))
        chars.append(BASE62[digit])
    return "idn_" + "".join(chars)


def session_json(session: EmulatedSession) -> dict[str, Any]:
    """A ``Session`` object. ``abandon_at`` equals ``expire_at``: an agent session
    lives at most ``session_max_duration_in_seconds``, active or not."""
    return {
        "object": "session",
        "id": session.session_id,
        "user_id": session.user_id,
        "client_id": session.client_id,
        "actor": dict(session.actor) if session.actor is not None else None,
        "status": session.status,
        "last_active_organization_id": None,
        "last_active_at": milliseconds(session.created_at),
        "latest_activity": None,
        "expire_at": milliseconds(session.expire_at),
        "abandon_at": milliseconds(session.expire_at),
        "updated_at": milliseconds(session.updated_at),
        "created_at": milliseconds(session.created_at),
        "tasks": None,
    }


def _verification(user: EmulatedUser, strategy: str) -> dict[str, Any]:
    if user.verified:
        # What Clerk records for identifiers created through the Backend API.
        return {
            "object": "verification_admin",
            "status": "verified",
            "strategy": "admin",
            "attempts": None,
            "expire_at": None,
        }
    return {
        "object": "verification_otp",
        "status": "unverified",
        "strategy": strategy,
        "attempts": None,
        "expire_at": None,
    }


def _email_addresses(user: EmulatedUser) -> list[dict[str, Any]]:
    if user.email_address is None:
        return []
    created = milliseconds(user.created_at)
    return [
        {
            "id": identification_id(user.user_id, "email_address"),
            "object": "email_address",
            "email_address": user.email_address,
            "reserved": False,
            "verification": _verification(user, "email_code"),
            "linked_to": [],
            "matches_sso_connection": False,
            "created_at": created,
            "updated_at": created,
        }
    ]


def _phone_numbers(user: EmulatedUser) -> list[dict[str, Any]]:
    if user.phone_number is None:
        return []
    created = milliseconds(user.created_at)
    return [
        {
            "id": identification_id(user.user_id, "phone_number"),
            "object": "phone_number",
            "phone_number": user.phone_number,
            "reserved_for_second_factor": False,
            "default_second_factor": False,
            "reserved": False,
            "verification": _verification(user, "phone_code"),
            "linked_to": [],
            "backup_codes": None,
            "created_at": created,
            "updated_at": created,
        }
    ]


def user_json(user: EmulatedUser) -> dict[str, Any]:
    """A ``User`` object: a user with identifiers and nothing else set."""
    created = milliseconds(user.created_at)
    emails = _email_addresses(user)
    phones = _phone_numbers(user)
    return {
        "id": user.user_id,
        "object": "user",
        "external_id": None,
        "primary_email_address_id": emails[0]["id"] if emails else None,
        "primary_phone_number_id": phones[0]["id"] if phones else None,
        "primary_web3_wallet_id": None,
        "username": user.username,
        "first_name": None,
        "last_name": None,
        "locale": None,
        "has_image": False,
        "public_metadata": {},
        "private_metadata": {},
        "unsafe_metadata": {},
        "email_addresses": emails,
        "phone_numbers": phones,
        "web3_wallets": [],
        "passkeys": [],
        "password_enabled": False,
        "two_factor_enabled": False,
        "totp_enabled": False,
        "backup_code_enabled": False,
        "mfa_enabled_at": None,
        "mfa_disabled_at": None,
        "password_last_updated_at": None,
        "external_accounts": [],
        "saml_accounts": [],
        "enterprise_accounts": [],
        "organization_memberships": [],
        "last_sign_in_at": None,
        "banned": False,
        "locked": False,
        "lockout_expires_in_seconds": None,
        "verification_attempts_remaining": None,
        "updated_at": created,
        "created_at": created,
        "delete_self_enabled": True,
        "create_organization_enabled": True,
        "create_organizations_limit": None,
        "last_active_at": None,
        "legal_accepted_at": None,
        "bypass_client_trust": False,
    }
