"""``skot-milter serve``: run the gateway."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from milter.commands import add_config, announce


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gateway (SMTP proxy and/or milter front)")
    add_config(p)
    p.add_argument("--listen", metavar="HOST:PORT", default=None,
                   help="the SMTP front's address instead of [gateway] listen "
                        "(port 0: any free port, said on stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from milter import config as config_mod
    from milter.config import ConfigError

    try:
        cfg = config_mod.load(args.config)  # read once; the workers are given it
        if args.listen is not None:
            config_mod.SCHEMA["gateway"]["listen"][0](args.listen)
            cfg = dataclasses.replace(cfg, gateway=dataclasses.replace(cfg.gateway,
                                                                       listen=args.listen))
    except ConfigError as exc:
        print(f"skot-milter: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"skot-milter: --listen: {exc}", file=sys.stderr)
        return 2
    announce(cfg)
    if cfg.gateway.workers > 1 and cfg.metrics.listen:
        # Before prometheus_client is imported: several workers keep their figures in
        # files the exporter adds up, instead of each answering for itself alone.
        from milter.metrics_dir import prepare

        try:
            prepare(cfg.state_dir / "metrics")
        except OSError as exc:
            print(f"skot-milter: cannot prepare {cfg.state_dir / 'metrics'}: {exc}",
                  file=sys.stderr)
            return 2
    import milter.daemon as daemon

    code: int = daemon.run(cfg)
    return code
