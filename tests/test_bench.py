"""The bench's smallest configuration, end to end, so it cannot rot: figures, no errors, empty registries."""

import json
import subprocess
import sys

import pytest

from .servers import ROOT

pytestmark = pytest.mark.live

# These runs start their own SQLite registries and in-memory layers whatever the suite's
# DATABASE_URL: the embedded run covers them, and the production run would repeat them.
own_registries = pytest.mark.path_independent

TINY = [
    "--quick",
    "--db=sqlite",
    "--sessions=20",
    "--concurrency=5",
    "--hold-sessions=20",
    "--steady-connections=2",
    "--steady-messages=40",
    "--warmup=5",
    "--timeout=60",
]


def run_bench(module: str, *args: str) -> subprocess.CompletedProcess:
    """Run `python -m module ARGS` from the project root, its output captured, within 240 s."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=240)


@own_registries
def test_smallest_bench_produces_figures_for_every_target_with_zero_errors(tmp_path):
    output = tmp_path / "figures.json"
    run = run_bench("bench", *TINY, f"--json={output}")
    assert run.returncode == 0, run.stderr[-4000:]
    figures = json.loads(output.read_text())
    expected_targets = 7  # the project on two servers at two settings; a floor on each server; the peer
    assert [len(figures[scenario]) for scenario in ("churn", "steady", "hold")] == [expected_targets] * 3
    for row in figures["churn"]:
        assert row["sessions_per_s"] > 0 and row["errors"] == 0 and row["registry_after"] == 0, row
    for row in figures["steady"]:
        assert row["messages_per_s"] > 0 and row["errors"] == 0, row
    for row in figures["hold"]:
        assert row["sessions"] == 20 and row["errors"] == 0 and row["registry_after"] == 0, row
        assert row["registry_while_held"] == 20, row
    kinds = [row["kind"] for row in figures["churn"]]
    assert kinds == ["project"] * 4 + ["floor", "floor", "starlette"]
    assert [row["server"] for row in figures["churn"] if row["kind"] == "floor"] == ["daphne", "uvicorn-fast"]
    for header in ("sessions/s vs floor (daphne)", "sessions/s vs floor (uvicorn-fast)", "sessions/s vs Starlette"):
        assert header in run.stdout
    targets = [check["target"] for check in figures["targets"]]
    for server in ("daphne", "uvicorn-fast"):
        assert f"{server}, default settings: churn vs the floor on {server}" in targets
        assert f"{server}, default settings: churn p99" in targets


@own_registries
def test_a_revision_of_the_repository_runs_beside_the_project_and_is_compared(tmp_path):
    output = tmp_path / "figures.json"
    only = ["--scenarios=churn", "--servers=daphne", "--settings=bench", "--baselines=none"]
    run = run_bench("bench", *TINY, *only, "--before=HEAD", f"--json={output}")
    assert run.returncode == 0, run.stderr[-4000:]
    figures = json.loads(output.read_text())
    assert [row["before"] for row in figures["churn"]] == [False, True]
    assert all(row["sessions_per_s"] > 0 and row["errors"] == 0 for row in figures["churn"])
    assert "daphne, bench settings: churn sessions per s vs before" in [c["target"] for c in figures["targets"]]


@own_registries
def test_smallest_admin_live_bench_prints_every_figure_and_the_page_hears_the_changes():
    run = run_bench(
        "bench.admin_live",
        *("--pages=1", "--held=2", "--idle-seconds=1", "--changes=1", "--sessions=40", "--concurrency=4"),
        "--rounds=1",
    )
    assert run.returncode == 0, run.stderr[-4000:]
    for line in ("idle server CPU:", "relayed change:", "churn, no admin page:", "server CPU per churned session:"):
        assert line in run.stdout, run.stdout
    relayed = int(run.stdout.split("relayed change:")[1].split("(")[1].split(" frames")[0])
    assert relayed >= 1  # the opened and closed session reached the watching page


@pytest.mark.production
def test_smallest_scale_run_holds_every_session_once_and_drains_to_zero(tmp_path, production_services, settings):
    from .servers import suite_database_url

    output = tmp_path / "scale.json"
    run = run_bench(
        "bench.scale",
        "--sessions=90",
        "--clients=2",
        "--timeout=60",
        f"--postgres-url={suite_database_url()}_scale",  # a database of its own: the run drops it
        f"--redis-url={settings.REDIS_URL}",
        f"--json={output}",
    )
    assert run.returncode == 0, run.stderr[-4000:]
    figures = json.loads(output.read_text())
    assert (figures["sessions"], figures["registry_while_held"], figures["registry_after"]) == (90, 90, 0)
    assert figures["instances"] == 3 and not figures["errors"]


@pytest.mark.production
def test_smallest_delivery_run_measures_every_path(production_services, settings):
    from .servers import suite_database_url

    run = run_bench(
        "bench.delivery",
        "--samples=3",
        "--events=20",
        "--sessions=2",
        "--kept=20",
        f"--postgres-url={suite_database_url()}_delivery",  # a database of its own: the run drops it
        f"--redis-url={settings.REDIS_URL}",
        f"--redis-prefix={settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}-bench-delivery",
    )
    assert run.returncode == 0, run.stderr[-4000:]
    figures = json.loads(run.stdout)
    for path in ("latency_http_same_process", "latency_http_across_processes", "latency_python_other_process"):
        assert 0 < figures[path]["accepted_to_received_p50_ms"] <= figures[path]["p99_ms"], figures[path]
    assert figures["throughput"]["events"] == 20 and figures["throughput"]["events_per_second_end_to_end"] > 0
    assert figures["window"]["bytes_per_event"] > figures["window"]["payload_json_bytes"]
    assert figures["redis_stream_alternative"]["bytes_per_entry"] > 0
