"""Regenerate the client's protobuf/gRPC code from protos/, or check the committed copy is fresh.

The generated tree has exactly one home, client/src/parley_client/_gen. protoc emits imports such
as `from parley.v1 import user_pb2`; they are rewritten to `parley_client._gen.parley.v1` so the
code is importable from the installed distribution.

    python scripts/gen_protos.py           regenerate in place
    python scripts/gen_protos.py --check   exit 1 if regenerating would change anything
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
GEN_ROOT = ROOT / "client" / "src" / "parley_client" / "_gen"
GEN_PACKAGE = "parley_client._gen"
_IMPORT_PATTERN = re.compile(r"^(from|import) parley\.", re.MULTILINE)


def generate(out_dir: Path) -> None:
    """Run protoc over every .proto under protos/ into out_dir, then fix up imports and packages."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--mypy_out={out_dir}",
            f"--mypy_grpc_out={out_dir}",
            *protos,
        ],
        capture_output=True,
        text=True,
        # protoc finds the protoc-gen-mypy plugins on PATH; they sit beside this interpreter.
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"protoc failed with exit code {result.returncode}")
    for path in out_dir.rglob("*.py*"):
        if path.suffix in (".py", ".pyi"):
            text = path.read_text()
            path.write_text(_IMPORT_PATTERN.sub(rf"\1 {GEN_PACKAGE}.parley.", text))
    # Every directory becomes a regular package so mypy and wheels see the same modules.
    for directory in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()


def _differences(expected: Path, actual: Path) -> list[str]:
    comparison = filecmp.dircmp(expected, actual, ignore=["__pycache__"])
    problems: list[str] = []

    def walk(cmp: filecmp.dircmp[str], prefix: str) -> None:
        problems.extend(f"missing: {prefix}{name}" for name in cmp.left_only)
        problems.extend(f"unexpected: {prefix}{name}" for name in cmp.right_only)
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
        problems.extend(f"stale: {prefix}{name}" for name in mismatch + errors)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(comparison, "")
    return problems


def check() -> list[str]:
    """Regenerate into a temporary directory and list how the committed tree differs."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "_gen"
        generate(fresh)
        if not GEN_ROOT.is_dir():
            return [f"missing: {GEN_ROOT}"]
        return _differences(fresh, GEN_ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; change nothing")
    args = parser.parse_args()
    if args.check:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("generated code is stale: run `make protos` and commit", file=sys.stderr)
            return 1
        print("generated code is up to date")
        return 0
    shutil.rmtree(GEN_ROOT, ignore_errors=True)
    generate(GEN_ROOT)
    print(f"generated {GEN_ROOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
