"""`make bench` stays runnable: the whole benchmark, end to end, with tiny durations."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from itertools import product
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PostgresTemplate, _skip_or_fail_postgres

ROOT = Path(__file__).resolve().parent.parent


def _bench(results: Path, *arguments: str) -> tuple[str, dict[str, Any]]:
    """Run bench/run.py with `arguments`; its output and its results, by backend."""
    command = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        *arguments,
        "--results",
        str(results),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=220)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished.stdout, {
        path.stem: json.loads(path.read_text()) for path in results.glob("*.json")
    }


# A minute of work on two cores shared with the rest of the suite.
@pytest.mark.timeout(240)
def test_the_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    output, by_backend = _bench(
        tmp_path, "--backends", "sqlite",
        "--clients", "1,2", "--seconds", "0.3", "--warmup", "0.1",
        "--growth", "100,200", "--growth-seconds", "0.4",
        "--watchers", "1,3", "--watch-seconds", "0.3", "--idle-watchers", "20",
        "--frameworks", "", "--rounds", "1",
    )  # fmt: skip
    results = by_backend["sqlite"]
    workloads = {cell["workload"] for cell in results["cells"]}
    assert workloads == {
        "append", "batch_append_10", "list_last_50", "stream_1000", "context_window",
        "agent_turn",
    }  # fmt: skip
    assert all(cell["errors"] == 0 and cell["operations"] > 0 for cell in results["cells"])
    assert {c["workload"] for c in results["ceilings"]} == {
        "ceiling_1_database",
        "ceiling_2_grpc",
    }
    # The read ceilings are PostgreSQL's (asyncpg): on SQLite only appends have a ceiling.
    for cell in results["cells"]:
        appends = cell["workload"] in ("append", "batch_append_10")
        assert (
            (cell["fraction_of_ceiling"] or 0) > 0
            if appends
            else cell["fraction_of_ceiling"] is None
        )
    assert [point["session_size"] for point in results["growth"]] == [100, 200]
    assert results["stream_memory"]["messages"] >= 200  # the growth rounds appended to it
    assert results["growth"][0]["append_ratio"] == 1.0  # each size against the first
    assert [(p["watchers"], p["missing"]) for p in results["delivery"]] == [(1, 0), (3, 0)]
    assert results["idle_watchers"]["watchers"] == 20
    assert results["idle_watchers"]["append_ratio"] > 0
    assert len(results["idle_watchers"]["append_without"]) == 3
    assert (tmp_path / "chart.png").stat().st_size > 10_000
    assert "fraction of ceiling" in output


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_the_postgres_benchmark_measures_every_ceiling(
    tmp_path: Path, postgres_template: PostgresTemplate
) -> None:
    """The ceiling server stands in for parley in each read and in single appends; every cell
    runs in rounds beside its ceiling; appends and reads also run open loop."""
    if postgres_template.name is None:
        _skip_or_fail_postgres(postgres_template)
    output, by_backend = _bench(
        tmp_path, "--backends", "postgres",
        "--clients", "1,2", "--seconds", "0.3", "--warmup", "0.1", "--growth", "",
        "--watchers", "", "--idle-watchers", "0", "--frameworks", "",
        "--rounds", "2", "--open-loop-seconds", "0.5",
    )  # fmt: skip
    results = by_backend["postgres"]
    ceilings = results["ceilings"]
    assert {(c["workload"], c["clients"]) for c in ceilings} == set(
        product(
            (
                "ceiling_1_database",
                "ceiling_2_grpc",
                "ceiling_read_list",
                "ceiling_read_window",
                "ceiling_stream",
                "ceiling_stream_from_rows",
                "ceiling_append",
                "ceiling_append_parley_path",
            ),
            (1, 2),
        )
    )
    for cell in ceilings + results["cells"]:
        assert cell["errors"] == 0, cell
        assert cell["operations"] > 0, cell
    fitted = [cell for cell in results["cells"] if cell["workload"] != "agent_turn"]
    assert all(cell["fraction_of_ceiling"] > 0 for cell in fitted)
    assert all(len(cell["round_fractions"]) == 2 for cell in fitted)
    # An agent's turn has no ceiling to stand for it.
    assert {c["fraction_of_ceiling"] for c in results["cells"] if c not in fitted} == {None}
    assert [c["workload"] for c in results["open_loop"]] == ["append", "list_last_50"]
    for point in results["open_loop"]:  # parley's, and its ceiling server's for reference
        for cell in (point["cell"], point["ceiling"]["cell"]):
            assert cell["errors"] == 0, cell
            assert cell["operations"] > 0, cell
    assert "list_last_50 at 1 clients >= 80% of its ceiling" in output
    (stream_check,) = [c for c in results["checks"] if c["target"].startswith("PostgreSQL stream")]
    assert (
        "of a minimal server that builds its batches from the rows it reads"
        in (stream_check["measured"])
    )
    for kind in ("appends", "single append"):
        (append_check,) = [
            c for c in results["checks"] if c["target"].startswith(f"PostgreSQL {kind}")
        ]
        assert (
            "a minimal server appending through parley's own write path"
            in (append_check["measured"])
        )


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_the_framework_benchmark_runs_end_to_end(
    tmp_path: Path, postgres_template: PostgresTemplate
) -> None:
    """Each adapter against its framework's own PostgreSQL store, with tiny durations."""
    if postgres_template.name is None:
        _skip_or_fail_postgres(postgres_template)
    output, by_backend = _bench(
        tmp_path, "--backends", "",
        "--framework-clients", "1,2", "--seconds", "0.2", "--warmup", "0.05",
    )  # fmt: skip
    cells = by_backend["postgres"]["frameworks"]
    assert {(c["framework"], c["workload"], c["clients"]) for c in cells} == set(
        product(("adk", "openai_agents", "langchain"), ("append", "read"), (1, 2))
    )
    for cell in cells:
        for store in ("parley", "native"):
            assert cell[store]["errors"] == 0
            assert cell[store]["operations"] > 0
    assert "own PostgreSQL store" in output


async def test_a_cell_measures_an_operation_that_outlasts_its_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a busy machine an operation begun in the warmup can end after the window: the cell
    still measures one (the framework benchmark's test once failed with a cell of none)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # run.py imports its neighbours
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up while the class is made.
    monkeypatch.setitem(sys.modules, "bench_run", bench)
    spec.loader.exec_module(bench)
    calls = 0

    async def slow_first(_: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.2)  # the slow operation itself, not a wait for a condition

    cell = await bench.closed_loop("sqlite", "slow first", slow_first, 1, 0.05, 0.01)
    assert cell.operations >= 1
    assert cell.errors == 0
