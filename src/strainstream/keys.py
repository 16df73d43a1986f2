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

import argparse
import json
import os
import sys
from collections.abc import Sequence

from strainstream.server import (
    ADMIN_KEY_ENV,
    ADMIN_KEY_NOTE,
    AUTH_PROVIDER,
    READ_ONLY_SCOPES,
    VIEWER_IDENTITY,
    WRITER_IDENTITY,
    WRITER_KEY_NOTE,
    WRITER_SCOPES,
    ServerError,
    admin_key_for,
    running_server,
    write_key_file,
)

__all__ = ["KeyAdmin", "main"]

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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strainstream keys",
                                description="create, list and revoke API keys of a running server")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default="strainstream-data",
                        help="data directory of the running server (default: ./strainstream-data)")
    common.add_argument("--uri", default=os.environ.get("STRAINSTREAM_URI"),
                        help="tiled API URI (default: the server running on --data-dir)")
    common.add_argument("--admin-key", default=None,
                        help=f"admin key (default: ${ADMIN_KEY_ENV}, else DATA_DIR/.admin_key)")
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("create", parents=[common], help="mint a key")
    kind = c.add_mutually_exclusive_group(required=True)
    kind.add_argument("--read-only", action="store_true", help="for viewers: read metadata and data")
    kind.add_argument("--read-write", action="store_true",
                      help="for another writer (RunEngine, worker): read, write, create")
    c.add_argument("--note", default=None, help="what the key is for (shown by `list`)")
    c.add_argument("--expires-in", type=float, default=None, metavar="HOURS",
                   help="the key stops working after HOURS (default: never)")
    c.add_argument("--out", default=None, metavar="FILE",
                   help="write the key to FILE (created with mode 0600); default: print it on stdout")
    ls = sub.add_parser("list", parents=[common], help="list keys (first eight characters, no secrets)")
    ls.add_argument("--json", action="store_true", help="one JSON list on stdout")
    r = sub.add_parser("revoke", parents=[common], help="revoke a key by its first eight characters")
    r.add_argument("first_eight", help="the first eight characters of the key (see `list`)")
    return p


def _admin(args) -> KeyAdmin:
    uri = args.uri
    if uri is None:
        if not os.path.isdir(args.data_dir):
            raise ServerError(f"data directory {args.data_dir!r} does not exist; pass --data-dir or --uri")
        info = running_server(args.data_dir)
        if info is None:
            raise ServerError(
                f"no tiled server is running for {args.data_dir}; start one with "
                f"`strainstream serve --data-dir {args.data_dir}` or pass --uri"
            )
        uri = info.uri
    return KeyAdmin(uri, admin_key_for(args.data_dir, args.admin_key, create=False))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``strainstream keys``; errors raise :class:`ServerError` (one line)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.action == "create":
        if args.out and os.path.exists(args.out):
            raise ServerError(f"{args.out} exists; not overwriting a key file")
        if args.expires_in is not None and args.expires_in <= 0:
            raise ServerError("--expires-in must be a positive number of hours")
        expires = None if args.expires_in is None else int(round(args.expires_in * 3600))
        made = _admin(args).create(args.read_only, note=args.note, expires_in_s=expires)
        kind = "read-only" if args.read_only else "read-write"
        if args.out:
            write_key_file(args.out, made["secret"])
            print(f"{kind} key {made['first_eight']} written to {args.out} (mode 0600)")
        else:
            print(made["secret"])
            print(f"{kind} key {made['first_eight']}: keep it secret; tiled cannot show it again",
                  file=sys.stderr)
        return 0
    admin = _admin(args)
    if args.action == "list":
        keys = admin.keys()
        if args.json:
            print(json.dumps(keys))
        else:
            print(f"{'KEY':9} {'KIND':10} {'HOLDER':12} {'LAST USED':20} NOTE")
            for k in keys:
                print(f"{k['first_eight']:9} {k['kind']:10} {k['holder']:12} "
                      f"{(k['latest_activity'] or '-')[:19]:20} {k['note'] or ''}")
        return 0
    gone = admin.revoke(args.first_eight)
    print(f"revoked {gone['kind']} key {gone['first_eight']}")
    return 0
