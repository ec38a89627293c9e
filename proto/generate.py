"""Regenerate the protobuf and gRPC stubs in proto/ from the .proto files.

The .proto files are compiled under the virtual path ``seraphim/proto/`` so the generated modules import each
other as ``seraphim.proto.X_pb2``. ``python -m seraphim.proto.generate`` rewrites them; ``--check`` only compares.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = ("common.proto", "ps.proto", "scheduler.proto", "exchange.proto")


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into out_dir and return the generated files."""
    from grpc_tools import protoc
    import grpc_tools

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    sources = [f"seraphim/proto/{name}" for name in PROTO_FILES if (PROTO_DIR / name).exists()]
    args = [
        "protoc",
        f"--proto_path=seraphim/proto={PROTO_DIR}",
        f"--proto_path={include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {sources}")
    return sorted((out_dir / "seraphim" / "proto").glob("*_pb2*.py*"))


def stale_files() -> list[str]:
    """Names of generated files that differ from what the .proto files produce now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [f.name for f in fresh if not (PROTO_DIR / f.name).exists()
                or (PROTO_DIR / f.name).read_bytes() != f.read_bytes()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in stubs are stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated stubs: {', '.join(stale)}; run python -m seraphim.proto.generate")
            return 1
        print("generated stubs are up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for f in generate(Path(tmp)):
            (PROTO_DIR / f.name).write_bytes(f.read_bytes())
            print(f"wrote proto/{f.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
