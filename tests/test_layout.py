"""The shape of the repository: one generated tree that is fresh, layers that import one way, and a
client distribution that carries no server dependencies."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "server" / "src" / "parley_server" / "store"
GENERATED = ROOT / "client" / "src" / "parley_client" / "_gen"


def test_generated_code_is_fresh() -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None
    assert spec.loader is not None
    gen_protos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_protos)
    assert gen_protos.check() == [], "run `make protos` and commit the result"


def test_exactly_one_generated_tree() -> None:
    trees = {
        path.parent
        for path in ROOT.rglob("*_pb2.py")
        if ".venv" not in path.parts and "node_modules" not in path.parts
    }
    assert trees
    assert all(tree.is_relative_to(GENERATED) for tree in trees), trees


def test_each_proto_package_matches_its_directory() -> None:
    for proto in (ROOT / "protos").rglob("*.proto"):
        package = re.search(r"^package ([\w.]+);", proto.read_text(), re.MULTILINE)
        assert package is not None, proto
        assert package.group(1).split(".") == list(proto.parent.relative_to(ROOT / "protos").parts)


def test_the_store_knows_nothing_of_grpc_or_protobuf() -> None:
    for source in STORE.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(alias.name for alias in node.names)]
            for name in names:
                assert not name.startswith(("grpc", "google.protobuf", "parley_client")), source
                assert "_pb2" not in name, source


def test_client_distribution_depends_only_on_grpc_and_protobuf() -> None:
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~ \[]", dependency)[0] for dependency in project["dependencies"]}
    assert names == {"grpcio", "protobuf"}


def test_each_framework_adapter_is_an_optional_extra() -> None:
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {
        name: [re.split(r"[<>=!~ \[]", d)[0] for d in deps] for name, deps in extras.items()
    } == {
        "adk": ["google-adk"],
        "openai-agents": ["openai-agents"],
        "langchain": ["langchain-core"],
    }


def test_importing_the_client_loads_no_server_dependency() -> None:
    script = (
        "import sys, parley_client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'sqlalchemy', 'asyncpg', 'aiosqlite', 'alembic', 'pydantic', 'parley_server',"
        " 'grpc_status', 'agents', 'langchain_core'} or m.startswith(('google.rpc',"
        " 'google.adk'))))"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


_COMMAND_IMPORTS = """
import contextlib, io, sys
import parley_server.cli as cli
for argv in (["--help"], ["tail", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        cli.main(argv)
heavy = {"sqlalchemy", "asyncpg", "aiosqlite", "alembic", "pydantic", "pydantic_settings"}
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith("parley_server.")))
"""


def test_client_commands_load_no_server_dependency() -> None:
    """`parley --help` and `parley tail` start in well under a second: they import the client
    only (with the server, SQLAlchemy and Alembic they took 2.5-3 s)."""
    output = subprocess.run(
        [sys.executable, "-c", _COMMAND_IMPORTS], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "['parley_server.cli']"


def test_the_command_line_names_the_identity_values() -> None:
    from parley_server import cli, identity

    assert cli.DEFAULT_TENANT == identity.DEFAULT_TENANT
    assert tuple(role.value for role in identity.Role) == cli.ROLES


def _recipe(target: str) -> str:
    finished = subprocess.run(
        ["make", "-n", "--no-print-directory", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "warning" not in finished.stderr, finished.stderr  # e.g. a target defined twice
    return finished.stdout


def test_the_makefile_targets_do_what_ci_relies_on() -> None:
    lint = _recipe("lint")
    for step in ("gen_protos.py --check", "ruff check", "ruff format --check", "mypy", "buf lint"):
        assert step in lint, f"make lint no longer runs {step}"
    assert "pytest" in _recipe("test")
    protos = _recipe("protos")
    assert "gen_protos.py" in protos
    assert "--check" not in protos
    assert "bench/run.py" in _recipe("bench")
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "PARLEY_REQUIRE_POSTGRES=1" in (ROOT / ".ci" / "run").read_text()


SERVER = ROOT / "server" / "src" / "parley_server"
# The entry points that may read configuration: the settings themselves, the command line, the
# composition root, and Alembic's environment when it is run on its own.
ENTRY_POINTS = {"config.py", "cli.py", "app.py", "migrations/env.py"}


def _imports(source: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names += [node.module or "", *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def test_services_know_nothing_of_grpc_or_protobuf() -> None:
    for source in (SERVER / "services").rglob("*.py"):
        for name in _imports(source):
            assert not name.startswith(("grpc", "google.protobuf", "parley_client")), source
            assert not name.startswith("parley_server.api"), source


def test_nothing_below_the_composition_root_reads_the_environment() -> None:
    for source in SERVER.rglob("*.py"):
        if source.relative_to(SERVER).as_posix() in ENTRY_POINTS:
            continue
        text = source.read_text()
        assert "environ" not in text, source
        assert "getenv" not in text, source
        for name in _imports(source):
            assert not name.startswith(("parley_server.config", "pydantic_settings")), source
