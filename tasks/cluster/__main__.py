"""python -m tasks.cluster up|down|status|env [--home PFT_HOME] [--config PIPELINE_YAML]"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tasks.cluster import control
from tasks.cluster.topology import Cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.cluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("PFT_HOME", ".local")))
    parser.add_argument("--config", help="the pipeline config the components read (kept for later `up`s)")
    args = parser.parse_args(argv)
    cluster = Cluster.at(args.home)
    if args.config is not None and args.config != cluster.settings.pft_config:
        if any(control.status(cluster).values()):
            parser.error(f"the cluster runs with config {cluster.settings.pft_config!r}: `down` first to change it")
        cluster.settings.pft_config = str(Path(args.config).resolve())
        cluster.settings.save(cluster.state)
    if args.command == "up":
        try:
            control.up(cluster)
        except (OSError, RuntimeError, TimeoutError, ValueError) as exc:  # a missing package, a port, a service's log
            print(f"make cluster: {exc}", file=sys.stderr)
            return 1
    elif args.command == "down":
        control.down(cluster)
    elif args.command == "env":
        print((cluster.state / "cluster.env").read_text(), end="")
    else:
        health = control.status(cluster)
        for name, ok in health.items():
            print(f"{name:<12} {'healthy' if ok else 'down'}")
        return 0 if all(health.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
