"""``strainstream config show | schema``: the configuration this command line would use."""

from __future__ import annotations

import json

from ._common import Parser, add_server_options, config_from_args

__all__ = ["register"]


def register(commands) -> None:
    """Add ``config show | schema`` to the sub-command parsers ``commands``."""
    p = commands.add_parser("config", help="show the effective configuration (file + STRAINSTREAM_* "
                                           "environment) or its JSON schema")
    p.set_defaults(group_parser=p)
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    show = sub.add_parser("show", help="the settings in effect (keys shown as <set>), as JSON")
    add_server_options(show)
    show.set_defaults(func=cmd_show)
    schema = sub.add_parser("schema", help="the JSON schema of the configuration file")
    schema.add_argument("--out", default=None, metavar="FILE", help="write it to FILE instead of stdout")
    schema.set_defaults(func=cmd_schema)


def cmd_show(args) -> int:
    """Print the effective configuration as one JSON object (keys redacted)."""
    print(json.dumps(config_from_args(args).redacted(), indent=1))
    return 0


def cmd_schema(args) -> int:
    """Print (or write) the configuration's JSON schema."""
    from strainstream.config import json_schema

    text = json.dumps(json_schema(), indent=1) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text, end="")
    return 0
