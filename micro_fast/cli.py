"""Command line: ``micro-fast info`` (more subcommands join as they are built)."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence


def _info(_args: argparse.Namespace) -> int:
    import torch

    import micro_fast
    from micro_fast import backends
    from micro_fast.backends import cpp

    print(f"micro_fast {micro_fast.__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"platform {platform.platform()}")
    try:
        import numba

        numba_version = numba.__version__
    except ImportError:
        numba_version = "not installed"
    print(f"numba {numba_version}")
    print(f"threads: torch {torch.get_num_threads()}")
    if torch.cuda.is_available():
        print(f"device: cuda ({torch.cuda.get_device_name(0)}, "
              f"{torch.cuda.device_count()} visible)")
    else:
        print("device: cpu (no CUDA device visible to torch)")
    print(f"cpp SIMD kernels: {cpp.simd_isa()}")
    print("backends (auto order):")
    for name, why in backends.status().items():
        print(f"  {name:<10} {why}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="micro-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, backends found (and why one is missing), "
                                       "threads, device")
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
