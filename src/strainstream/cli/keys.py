"""``strainstream keys create | list | revoke``: API keys of a running tiled server.

The keys themselves are managed by :class:`strainstream.keys.KeyAdmin` through tiled's admin
API with the admin key (``--admin-key``, ``$STRAINSTREAM_ADMIN_KEY`` or ``DATA_DIR/.admin_key``).
"""

from __future__ import annotations

import json
import os
import sys

from ._common import CommandError, add_server_options, resolve_server

__all__ = ["register"]


def register(commands) -> None:
    """Add ``keys create | list | revoke`` to the sub-command parsers ``commands``."""
    from ._common import Parser

    p = commands.add_parser("keys", help="create and list API keys (read-write for writers, "
                                         "read-only for viewers)",
                            description="create, list and revoke API keys of a running server")
    p.set_defaults(group_parser=p)
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)

    def action(name: str, help_text: str):
        a = sub.add_parser(name, help=help_text)
        add_server_options(a, api_key=False,
                           data_dir_help="data directory of the running server (default: ./strainstream-data)")
        a.add_argument("--admin-key", default=None,
                       help="admin key (default: $STRAINSTREAM_ADMIN_KEY, else DATA_DIR/.admin_key)")
        a.set_defaults(func=cmd_keys)
        return a

    c = action("create", "mint a key")
    kind = c.add_mutually_exclusive_group(required=True)
    kind.add_argument("--read-only", action="store_true", help="for viewers: read metadata and data")
    kind.add_argument("--read-write", action="store_true",
                      help="for another writer (RunEngine, worker): read, write, create")
    c.add_argument("--note", default=None, help="what the key is for (shown by `list`)")
    c.add_argument("--expires-in", type=float, default=None, metavar="HOURS",
                   help="the key stops working after HOURS (default: never)")
    c.add_argument("--out", default=None, metavar="FILE",
                   help="write the key to FILE (created with mode 0600); default: print it on stdout")
    ls = action("list", "list keys (first eight characters, no secrets)")
    ls.add_argument("--json", action="store_true", help="one JSON list on stdout")
    r = action("revoke", "revoke a key by its first eight characters")
    r.add_argument("first_eight", help="the first eight characters of the key (see `list`)")


def _admin(args):
    from strainstream.keys import KeyAdmin

    target = resolve_server(args, need_server=True, key="admin")
    return KeyAdmin(target.uri, target.api_key)


def cmd_keys(args) -> int:
    """``strainstream keys ACTION``; errors are one line (exit 2)."""
    from strainstream.auth import write_key_file

    if args.action == "create":
        if args.out and os.path.exists(args.out):
            raise CommandError(f"{args.out} exists; not overwriting a key file")
        if args.expires_in is not None and args.expires_in <= 0:
            raise CommandError("--expires-in must be a positive number of hours")
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
