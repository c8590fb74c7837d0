"""Generate SyncParleyClient (client/src/parley_client/_sync_client.py) from ParleyClient, or
check that the committed copy is fresh.

unasync takes async and await out and renames the asyncio names; ParleyClient reaches grpc only
through parley_client._grpc_aio, which becomes _grpc_sync, the same names over grpc's sync API.
So both clients have the same methods, types, retries and errors, written once.

    python scripts/gen_sync_client.py           regenerate in place
    python scripts/gen_sync_client.py --check   exit 1 if regenerating would change anything
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import unasync  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "client" / "src" / "parley_client"
SOURCE, TARGET = PACKAGE / "_client.py", PACKAGE / "_sync_client.py"
REPLACEMENTS = {
    "_grpc_aio": "_grpc_sync",
    "ParleyClient": "SyncParleyClient",
    "ParleyServiceAsyncStub": "ParleyServiceStub",
    "AdminServiceAsyncStub": "AdminServiceStub",
}
HEADER = (
    '"""SyncParleyClient: ParleyClient for code that is not async, over grpc\'s sync API.\n\n'
    "Generated from _client.py by scripts/gen_sync_client.py (make protos): edit that file,\n"
    'not this one."""\n'
)


def generate() -> str:
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "async" / "_client.py"
        source.parent.mkdir()
        source.write_text(SOURCE.read_text())
        rule = unasync.Rule("/async/", "/sync/", additional_replacements=REPLACEMENTS)
        unasync.unasync_files([str(source)], [rule])
        generated = Path(scratch) / "sync" / "_client.py"
        text = generated.read_text()
        # The module docstring is ParleyClient's; the generated module says what it is.
        text = HEADER + text.split('"""', 2)[2].lstrip('"').lstrip("\n")
        generated.write_text(text)
        ruff = [sys.executable, "-m", "ruff"]
        subprocess.run([*ruff, "check", "--fix", "--quiet", "--select", "I,F401", str(generated)])
        subprocess.run([*ruff, "format", "--quiet", str(generated)], check=True)
        return generated.read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    fresh = generate()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != fresh:
            print(f"{TARGET.relative_to(ROOT)} is stale: run `make protos`", file=sys.stderr)
            return 1
        print("the sync client is up to date")
        return 0
    TARGET.write_text(fresh)
    print(f"generated {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
