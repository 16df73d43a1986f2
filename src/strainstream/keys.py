"""``strainstream keys``: mint, list and revoke API keys on a running tiled server.

Writers (RunEngine, workers) use the writer key the server was started with; viewers get
read-only keys (``read:metadata`` + ``read:data``) made here::

    strainstream keys create --read-only --note "beamline screen" --out viewer.key
    strainstream keys list
    strainstream keys revoke 1a2b3c4d

The command talks to tiled's admin API with the admin key (``--admin-key``,
``$STRAINSTREAM_ADMIN_KEY`` or ``DATA_DIR/.admin_key``, written 0600 by the server's first
start). A new key is written to ``--out`` (created with mode 0600) or, without ``--out``,
printed alone on stdout — it is never logged, and tiled keeps only its hash, so it cannot
be shown again. ``list`` shows the first eight characters tiled uses to name a key, never
a secret. See :mod:`strainstream.server` for the access-control model.
"""

from __future__ import annotations

from collections.abc import Sequence

from strainstream.auth import (
    ADMIN_KEY_ENV,
    ADMIN_KEY_NOTE,
    AUTH_PROVIDER,
    READ_ONLY_SCOPES,
    VIEWER_IDENTITY,
    WRITER_IDENTITY,
    WRITER_KEY_NOTE,
    WRITER_SCOPES,
)
from strainstream.errors import ServerError

__all__ = ["KeyAdmin"]

_SERVER_NOTES = (WRITER_KEY_NOTE, ADMIN_KEY_NOTE)


def _kind(scopes: Sequence[str]) -> str:
    s = set(scopes)
    if "admin:apikeys" in s:
        return "admin"
    if s & {"write:data", "write:metadata", "create:node"}:
        return "read-write"
    return "read-only"


class KeyAdmin:
    """tiled's admin API (principals and their API keys) reached with the admin key.

    Parameters
    ----------
    uri : str
        tiled API URI, e.g. ``http://127.0.0.1:8000/api/v1``.
    admin_key : str
        A key with the ``admin:apikeys`` and ``read:principals`` scopes.
    """

    def __init__(self, uri: str, admin_key: str) -> None:
        import httpx
        from tiled.client.context import Context

        self.uri = uri
        try:
            self.context = Context(uri, api_key=admin_key)
        except httpx.ConnectError:
            raise ServerError(
                f"cannot reach the tiled server at {uri}: is it running? "
                "Start one with `strainstream serve --data-dir DIR`"
            ) from None

    def _call(self, fn, *args, **kwargs):
        import httpx

        try:
            return fn(*args, **kwargs)
        except httpx.ConnectError:
            raise ServerError(f"cannot reach the tiled server at {self.uri}") from None
        except httpx.HTTPStatusError as exc:
            code = exc.response.status_code
            if code in (401, 403):
                raise ServerError(
                    f"the tiled server at {self.uri} refused the admin key (HTTP {code}); pass "
                    f"--admin-key or set ${ADMIN_KEY_ENV} (the server writes DATA_DIR/.admin_key)"
                ) from None
            raise ServerError(f"the tiled server at {self.uri} answered HTTP {code}") from None

    def principals(self) -> list[dict]:
        """All principals with their keys (no secrets: tiled stores none)."""
        return list(self._call(self.context.admin.list_principals, 0, 1000))

    def _principal(self, identity: str) -> dict:
        for p in self.principals():
            for ident in p.get("identities", []):
                if ident.get("provider") == AUTH_PROVIDER and ident.get("id") == identity:
                    return p
        raise ServerError(
            f"the tiled server at {self.uri} has no '{identity}' principal: "
            "was it started by strainstream (`strainstream serve`)?"
        )

    def create(self, read_only: bool, note: str | None = None,
               expires_in_s: int | None = None) -> dict:
        """Mint a key: read-only (viewer principal) or read-write (the writers' principal).

        Returns tiled's answer: ``secret`` (the key), ``first_eight``, ``scopes``, ``note``,
        ``expiration_time``.
        """
        if note in _SERVER_NOTES:
            raise ServerError(f"the note {note!r} is reserved for the server's own keys")
        principal = self._principal(VIEWER_IDENTITY if read_only else WRITER_IDENTITY)
        scopes = list(READ_ONLY_SCOPES if read_only else WRITER_SCOPES)
        return dict(self._call(self.context.admin.create_api_key, principal["uuid"], scopes=scopes,
                               expires_in=expires_in_s, note=note))

    def keys(self) -> list[dict]:
        """Every key: ``first_eight``, ``kind``, ``holder``, ``note``, ``scopes``, times."""
        out = []
        for p in self.principals():
            holder = ",".join(i.get("id", "?") for i in p.get("identities", [])) or p["uuid"]
            for k in p.get("api_keys", []):
                out.append({
                    "first_eight": k["first_eight"],
                    "kind": _kind(k.get("scopes", [])),
                    "holder": holder,
                    "note": k.get("note"),
                    "scopes": list(k.get("scopes", [])),
                    "expiration_time": k.get("expiration_time"),
                    "latest_activity": k.get("latest_activity"),
                })
        return out

    def revoke(self, first_eight: str) -> dict:
        """Revoke the key whose first eight characters are ``first_eight``; return its entry."""
        first_eight = first_eight.strip().lower()[:8]
        for p in self.principals():
            for k in p.get("api_keys", []):
                if k["first_eight"] == first_eight:
                    if k.get("note") in _SERVER_NOTES:
                        raise ServerError(
                            f"key {first_eight} is the server's own {_kind(k['scopes'])} key: "
                            "restart the server with a new key to replace it"
                        )
                    self._call(self.context.admin.revoke_api_key, p["uuid"], first_eight)
                    return {"first_eight": first_eight, "kind": _kind(k["scopes"]),
                            "note": k.get("note")}
        raise ServerError(f"no API key starting with {first_eight!r} on {self.uri}")
