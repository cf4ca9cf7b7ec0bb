"""The runbook catalog, parameter checking, and the run engine (real papermill and kernels)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from conftest import nexus_cli, private_env
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from nexus_ops.config import Settings
from nexus_ops.errors import ParameterError, RunbookError
from nexus_ops.paths import Layout
from nexus_ops.runbooks import ParamSpec, RunbookCatalog, RunbookRunner, validate
from nexus_ops.runbooks.catalog import candidate_folders, locate
from nexus_ops.runbooks.kernel import kernel_log_path
from nexus_ops.runbooks.prose import markdown_html, markdown_text
from nexus_ops.runbooks.report import notebook_html
from nexus_ops.runbooks.service import RunbookService
from nexus_ops.store import Database
from nexus_ops.store.runs import RunIndex

ROOT = Path(__file__).resolve().parent.parent
RUNBOOKS = ROOT / "runbooks"
EXPECTED = [
    "application_failure",
    "backup",
    "database_failure",
    "network_failure",
    "restore",
    "security_audit",
]


def write_notebook(folder: Path, name: str, params: str, *cells: str) -> Path:
    nb = new_notebook(
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        }
    )
    nb.cells.append(new_markdown_cell(f"# {name.title()}\n\nA test runbook.\n"))
    parameters = new_code_cell(params)
    parameters.metadata["tags"] = ["parameters"]
    nb.cells.append(parameters)
    nb.cells.extend(new_code_cell(source) for source in cells)
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


VERDICT_CELL = (
    "from nexus_ops.recovery import Check, record_verdict\n"
    "verdict = record_verdict('{name}', [Check(name='n', ok=n > 0, summary=str(n))], "
    "dry_run=dry_run)"
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    books = tmp_path / "books"
    books.mkdir()
    write_notebook(
        books,
        "ok",
        "dry_run: bool = True  # only look\nn: int = 3  # how many",
        "total = n * 2\ntotal",
        VERDICT_CELL.format(name="ok"),
    )
    write_notebook(
        books,
        "boom",
        "dry_run: bool = True  # only look\nn: int = 1  # a number",
        "x = 1",
        "raise RuntimeError('the disk is on fire')",
        "y = 2",
    )
    write_notebook(
        books,
        "slow",
        "dry_run: bool = True  # only look\nseconds: float = 30.0  # nap",
        "import time\ntime.sleep(seconds)",
    )
    write_notebook(books, "silent", "dry_run: bool = True  # only look", "z = 1")
    write_notebook(
        books,
        "where",
        "dry_run: bool = True  # only look",
        "import os\nfrom ipykernel.kernelapp import IPKernelApp\n"
        "app = IPKernelApp.instance()\n"
        "folder = os.path.dirname(app.ip)\n"
        "print(app.transport, oct(os.stat(folder).st_mode & 0o777), folder)",
    )
    return books


@pytest.fixture
def runner(folder: Path, tmp_path: Path) -> RunbookRunner:
    runs = tmp_path / "runs"
    runs.mkdir()
    return RunbookRunner(
        RunbookCatalog(folder), RunIndex(Database(tmp_path / "nexus.db")), runs, cell_timeout=5.0
    )


def test_every_shipped_runbook_is_catalogued_with_typed_documented_parameters() -> None:
    catalog = RunbookCatalog(RUNBOOKS)
    assert catalog.names() == EXPECTED
    for book in catalog.list():
        assert book.title and len(book.description) > 80, book.name
        spec = book.spec()
        assert spec["dry_run"].type == "bool" and spec["dry_run"].default is True, book.name
        for param in book.parameters:
            assert param.help, f"{book.name}.{param.name} has no help comment"
            if param.type in ("int", "float"):
                assert param.maximum is not None, f"{book.name}.{param.name} has no range"


def test_shipped_runbooks_are_thin_and_without_outputs() -> None:
    for path in sorted(RUNBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and tagged[0] is nb.cells[1]
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name
                assert "def " not in cell.source and "class " not in cell.source, path.name
        assert "record_verdict" in nb.cells[-1].source, path.name


def test_the_runbooks_folder_is_found_from_a_checkout_or_an_install(folder: Path) -> None:
    found = locate()  # the checkout's runbooks/, or share/nexus-ops/runbooks of a wheel
    assert sorted(p.name for p in found.glob("*.ipynb")) == [f"{n}.ipynb" for n in EXPECTED]
    for path in found.glob("*.ipynb"):
        assert path.read_bytes() == (RUNBOOKS / path.name).read_bytes()
    installed = [str(p) for p in candidate_folders() if "share/nexus-ops/runbooks" in str(p)]
    assert installed, "the installed location is not searched"
    assert locate(folder) == folder
    with pytest.raises(RunbookError, match=r"NEXUS_RUNBOOKS_DIR=.* is not a folder"):
        locate(folder / "missing")


def test_a_wheel_ships_the_runbooks_as_data_files() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"share/nexus-ops/runbooks" = ["runbooks/*.ipynb"]' in pyproject


def test_parameters_are_parsed_from_strings_and_checked_from_json(folder: Path) -> None:
    spec = RunbookCatalog(folder).get("ok").spec()
    assert validate(spec, {"dry_run": "false", "n": "7"}, from_strings=True) == {
        "dry_run": False,
        "n": 7,
    }
    assert validate(spec, {"dry_run": False, "n": 7}) == {"dry_run": False, "n": 7}
    with pytest.raises(ParameterError, match="unknown parameter 'dryrun'; did you mean 'dry_run'"):
        validate(spec, {"dryrun": False})
    with pytest.raises(ParameterError, match="parameter 'n' expects int, got 'seven'"):
        validate(spec, {"n": "seven"}, from_strings=True)
    with pytest.raises(ParameterError, match="parameter 'dry_run' expects bool, got 'False'"):
        validate(spec, {"dry_run": "False"})  # JSON must carry a real boolean
    with pytest.raises(ParameterError, match="parameter 'n' expects int"):
        validate(spec, {"n": True})
    with pytest.raises(ParameterError) as caught:
        validate(spec, {"n": 1.5, "x": 1})
    assert "'x'" in str(caught.value) and "'n'" in str(caught.value)  # every problem at once


def test_numbers_must_be_finite_and_in_their_declared_range() -> None:
    spec = RunbookCatalog(RUNBOOKS).get("application_failure").spec()
    assert spec["log_lines"].kind == "int in [1..10000]"
    for given, from_strings, why in [
        ({"exit_hours": "nan"}, True, "expects float in [0..8760], got 'nan': not a finite"),
        ({"exit_hours": "Infinity"}, True, "got 'Infinity': not a finite number"),
        ({"exit_hours": float("nan")}, False, "got nan: not a finite number"),
        ({"exit_hours": -1}, False, "got -1: below 0"),
        ({"log_lines": "0"}, True, "expects int in [1..10000], got '0': below 1"),
        ({"log_lines": 10**30}, False, "above 10000"),
    ]:
        with pytest.raises(ParameterError, match=re.escape(why)) as caught:
            validate(spec, given, from_strings=from_strings)
        assert "log_lines (int in [1..10000])" in str(caught.value.hint)
    assert validate(spec, {"exit_hours": "8760", "log_lines": 1}, from_strings=True) == {
        "exit_hours": 8760.0,
        "log_lines": 1,
    }
    free = {"n": ParamSpec(name="n", type="int"), "xs": ParamSpec(name="xs", type="list[float]")}
    with pytest.raises(ParameterError, match=f"above {2**63 - 1}"):
        validate(free, {"n": 2**63})  # no declared range: 64 bits
    with pytest.raises(ParameterError, match=r"'xs'.*not a finite number"):
        validate(free, {"xs": "1, nan"}, from_strings=True)


@pytest.mark.parametrize(
    ("declaration", "why"),
    [
        ("n: int = 3  # how many [1..x]", "'x' of its range is not an int"),
        ("n: int = 3  # how many [5..1]", "is empty"),
        ("n: int = 30  # how many [1..10]", "above 10"),
        ("s: str = 'a'  # a name [1..2]", "a range fits numbers"),
    ],
)
def test_a_bad_declared_range_is_refused_when_the_runbook_is_read(
    tmp_path: Path, declaration: str, why: str
) -> None:
    write_notebook(tmp_path, "ranged", "dry_run: bool = True  # only look\n" + declaration)
    with pytest.raises(RunbookError, match=why) as caught:
        RunbookCatalog(tmp_path).get("ranged")
    assert "[low..high]" in str(caught.value.hint)


def test_the_cli_refuses_an_out_of_range_parameter_clearly(tmp_path: Path) -> None:
    env = private_env(tmp_path)
    done = nexus_cli(env, "runbook", "run", "application_failure", "-p", "exit_hours", "nan")
    assert done.returncode != 0
    assert "parameter 'exit_hours' expects float in [0..8760], got 'nan'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "nexus" / "runs").glob("*.ipynb"))


def test_list_parameters() -> None:
    spec = RunbookCatalog(RUNBOOKS).get("restore").spec()
    assert validate(spec, {"parts": "data"}, from_strings=True) == {"parts": ["data"]}
    assert validate(spec, {"parts": '["config", "data"]'}, from_strings=True) == {
        "parts": ["config", "data"]
    }
    with pytest.raises(ParameterError, match="parameter 'parts' expects list"):
        validate(spec, {"parts": "data"})


def test_a_run_keeps_its_notebook_and_indexes_the_verdict(runner: RunbookRunner) -> None:
    done: list[tuple[int, int]] = []
    runner.progress = lambda cells, total: done.append((cells, total))
    record = runner.run("ok", {"n": "4"}, who="ann", from_strings=True)
    assert record.status == "succeeded", record.error
    assert record.who == "ann" and record.parameters == {"dry_run": True, "n": 4}
    assert record.healthy is True and record.verdict and record.verdict["summary"] == "healthy"
    notebook = nbformat.read(record.notebook, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in notebook.cells)
    assert record.cells_done == record.cells_total == len(notebook.cells)
    assert done[-1] == (record.cells_total, record.cells_total)
    assert Path(record.notebook).parent == runner.runs_dir
    assert runner.index.recent()[0].id == record.id


def test_the_kernel_listens_on_private_unix_sockets_not_tcp(runner: RunbookRunner) -> None:
    record = runner.run("where")
    notebook = nbformat.read(record.notebook, as_version=4)
    transport, mode, folder = notebook.cells[-1].outputs[0]["text"].split()
    assert (transport, mode) == ("ipc", "0o700")
    assert not Path(folder).exists(), "the sockets' folder goes with the run"


def test_the_kernels_own_output_goes_to_its_log_not_the_terminal(
    folder: Path, runner: RunbookRunner, capfd: pytest.CaptureFixture[str]
) -> None:
    """What the kernel process itself prints (its log; a traceback of ipykernel's
    while it shuts down) is kept beside the run, not shown to whoever runs it."""
    write_notebook(
        folder,
        "noisy",
        "dry_run: bool = True  # only look\nn: int = 1  # a number",
        "import os\nfrom ipykernel.kernelapp import IPKernelApp\n"
        "IPKernelApp.instance().log.error('the kernel logs this')\n"
        "os.write(2, b'Traceback: written to the kernel fd 2\\n')",
        VERDICT_CELL.format(name="noisy"),
    )
    record = runner.run("noisy")
    assert record.status == "succeeded", record.error
    shown = "".join(capfd.readouterr())
    assert "the kernel logs this" not in shown and "Traceback" not in shown
    log = kernel_log_path(Path(record.notebook)).read_text()
    assert "the kernel logs this" in log and "written to the kernel fd 2" in log


def test_an_unhealthy_verdict_is_recorded(runner: RunbookRunner) -> None:
    record = runner.run("ok", {"n": 0})
    assert record.status == "succeeded" and record.healthy is False


def test_a_failed_run_keeps_its_notebook_with_the_marker_at_the_failing_cell(
    runner: RunbookRunner,
) -> None:
    record = runner.run("boom")
    assert record.status == "failed"
    assert record.error == "RuntimeError: the disk is on fire"
    notebook = nbformat.read(record.notebook, as_version=4)
    sources = [c.source for c in notebook.cells]
    failing = next(i for i, s in enumerate(sources) if "the disk is on fire" in s)
    assert "An Exception was encountered" in sources[0]
    assert 'id="papermill-error-cell"' in sources[failing - 1]
    assert record.failed_cell is not None


def test_a_cell_that_runs_too_long_is_stopped_and_marked(runner: RunbookRunner) -> None:
    started = time.monotonic()
    record = runner.run("slow")
    assert time.monotonic() - started < 25
    assert record.status == "failed"
    assert "CellTimeoutError" in (record.error or "")
    notebook = nbformat.read(record.notebook, as_version=4)
    assert "An Exception was encountered" in notebook.cells[0].source
    assert any('id="papermill-error-cell"' in c.source for c in notebook.cells)


def test_a_runbook_without_a_verdict_does_not_pass(runner: RunbookRunner) -> None:
    record = runner.run("silent")
    assert record.status == "failed" and "no verdict" in (record.error or "")


def test_bad_parameters_are_refused_before_anything_runs(runner: RunbookRunner) -> None:
    with pytest.raises(ParameterError):
        runner.run("ok", {"n": "many"}, from_strings=True)
    with pytest.raises(ParameterError):
        runner.run("ok", {"typo": 1})
    with pytest.raises(RunbookError, match="no runbook 'nope'"):
        runner.run("nope")
    assert runner.index.recent() == []
    assert list(runner.runs_dir.glob("*.ipynb")) == []


def test_a_run_records_every_parameter_given_or_defaulted(runner: RunbookRunner) -> None:
    prepared = runner.prepare("ok", {"n": "5"}, from_strings=True)
    prepared._lock.release()
    assert runner.index.get(prepared.record.id).parameters == {"dry_run": True, "n": 5}


def test_one_runbook_runs_at_a_time(runner: RunbookRunner) -> None:
    prepared = runner.prepare("slow", {"seconds": 1.0})
    with pytest.raises(RunbookError, match="runbook slow"):
        runner.prepare("ok")
    thread = threading.Thread(target=prepared.execute)
    thread.start()
    thread.join(timeout=60)
    assert runner.run("ok").status == "succeeded"


def test_a_run_whose_process_died_is_reported_interrupted(tmp_path: Path) -> None:
    index = RunIndex(Database(tmp_path / "n.db"))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    index.create("r", "ok", who="x", parameters={}, notebook="r.ipynb", cells_total=3)
    index.db.execute("UPDATE runs SET pid = ? WHERE id = 'r'", (int(dead.stdout),))
    record = index.get("r")
    assert record.status == "interrupted" and "is gone" in (record.error or "")


def test_every_runbook_also_runs_with_plain_papermill(tmp_path: Path) -> None:
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({}))
    from conftest import private_env

    env = private_env(tmp_path / "env")
    for name in EXPECTED:
        out = tmp_path / f"{name}.ipynb"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "papermill",
                str(RUNBOOKS / f"{name}.ipynb"),
                str(out),
                "--no-progress-bar",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        from nexus_ops.runbooks import find_verdict

        verdict = find_verdict(nbformat.read(out, as_version=4))
        assert verdict is not None and verdict.dry_run
        if name != "security_audit":  # an empty host has nothing insecure
            assert not verdict.healthy  # nothing runs in this empty environment
        assert not any(a.done for a in verdict.actions)


def test_descriptions_keep_their_paragraphs_and_say_their_purpose_in_one_line() -> None:
    for book in RunbookCatalog(RUNBOOKS).list():
        assert "\n\n**When to use.**" in book.description, book.name
        assert book.purpose.endswith((".", "\u2026")) and len(book.purpose) <= 100, book.purpose
        assert not set("*`\n") & set(book.purpose), book.purpose
    network = RunbookCatalog(RUNBOOKS).get("network_failure")
    assert network.purpose == "Find out why clients cannot reach the server."


def test_runbook_prose_reads_as_text_and_as_html() -> None:
    text = markdown_text("**Purpose.** Run `x`\nnow.\n\n**When.** [Never](http://x) *late*.")
    assert text == "Purpose. Run x now.\n\nWhen. Never late."
    page = markdown_html("**Purpose.** Run `x`.\n\n<script>alert(1)</script>")
    assert "<strong>Purpose.</strong>" in page and "<code>x</code>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page


LEAKY_CELLS = (
    "print('password is hunter2-s3cret')",
    "from IPython.display import HTML\n"
    "HTML('<b>shown</b><script>alert(1)</script><img src=x onerror=alert(2)>')",
    VERDICT_CELL.format(name="leaky"),
)


def test_an_executed_notebook_renders_as_html_secrets_masked_scripts_gone(
    runner: RunbookRunner, folder: Path
) -> None:
    write_notebook(
        folder, "leaky", "dry_run: bool = True  # only look\nn: int = 2  # n", *LEAKY_CELLS
    )
    record = runner.run("leaky")
    assert record.status == "succeeded", record.error
    page = notebook_html(Path(record.notebook), ["hunter2-s3cret", ""])
    assert "hunter2" not in page and "password is ********" in page
    assert "<b>shown</b>" in page and "<script>alert" not in page
    assert not re.search(r"<img[^>]*onerror", page)
    assert "HEALTHY" in page and "A test runbook." in page


def test_the_service_masks_every_secret_file_and_secret_setting(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "nexus", alert_webhook_token="webhook-t0ken")
    layout = Layout(settings.home).ensure()
    layout.agent_token_file.write_text("agent-t0ken\n")
    service = RunbookService(settings, Database(layout.database))
    assert {"agent-t0ken", "webhook-t0ken"} <= set(service.secrets())
