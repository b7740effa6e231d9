"""``python3 -m pemu.accel.tcg.engine build|status``: build pemu's engine, or say which one runs."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pemu.accel.tcg.engine",
                                     description="pemu's Unicorn engine (Unicorn 2.1.4 + pemu's patches)")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build and cache the engine (once per machine and patch set)")
    build.add_argument("-j", "--jobs", type=int, default=None, help="parallel compile jobs (default: all CPUs)")
    build.add_argument("--force", action="store_true", help="rebuild even if this patch set is built")
    sub.add_parser("status", help="say which engine pemu runs on here")
    args = parser.parse_args(argv)

    if args.command == "build":
        from pemu.accel.tcg.engine.build import BuildError, build_engine

        try:
            build_engine(args.jobs, args.force)
        except BuildError as e:
            print(f"pemu: engine build failed: {e}", file=sys.stderr)
            return 1
        return 0

    from pemu.accel.tcg.engine import built_engine_dir, engine_choice, engine_info, engine_key

    print(f"patch set {engine_key()}: {built_engine_dir()}")
    print(f"PEMU_ENGINE={engine_choice()}: {engine_info().describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
