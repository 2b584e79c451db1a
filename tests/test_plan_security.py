"""A plan is data: its exposure queries are a small language the tool parses itself, its paths stay in its folder.

Consortia send one plan to every biobank, so a plan may come from someone the
machine running it should not trust. These tests write the hostile plans a
reviewer tried against pandas ``eval`` (each would have run code or read a file
on the machine) and check that every one is refused with exit 2 and a message
naming the plan key, before anything is evaluated: the file its payload would
create does not appear. The valid language is checked against pandas' own
``DataFrame.query`` of the same query on a small frame with missing values.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import error_lines

from scalable_assoc.cli import main
from scalable_assoc.errors import PlanError
from scalable_assoc.io.metadata import _evaluate_query, exposure_values
from scalable_assoc.plan.expressions import parse_query
from scalable_assoc.plan.schema import ExposureSpec, load_plan
from scalable_assoc.simulate import simulate_study
from scalable_assoc.testing import write_study_plan

ERROR_PREFIX = "scalable-assoc run: error: "


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A small simulated study folder (plan.yaml beside its data)."""
    simulated = simulate_study(tmp_path / "study", participants=300, n_species=50, n_pathways=10)
    with simulated.plan_path.open("a") as plan:
        plan.write("min_cases: 3\n")
    return simulated.out_dir


def hostile_queries(marker: Path, secret: Path) -> dict[str, str]:
    """Queries that ran code (creating ``marker``) or read ``secret`` under pandas ``eval``, by label."""
    m = str(marker)
    return {
        "os.system via pandas": f"(MDD == 1) & (@pd.io.common.os.system('touch {m}') == 0)",
        "builtins __import__": f"MDD == 1 and @pd.core.frame.com.builtins.__import__('os').system('touch {m}') == 0",
        "Path.touch": f"@Path('{m}').touch()",
        "np.savetxt": f"@np.savetxt('{m}', [1])",
        "file read into an error": f"MDD == @np.float64(@Path('{secret}').read_text())",
        "attribute chain on a column": "MDD.__class__.__name__ == 'Series'",
        "call on a column": "MDD.astype(str) == '1'",
        "bare __import__": f"__import__('os').system('touch {m}') == 0",
        "subscript": "MDD[0] == 1",
        "lambda": f"(lambda: __import__('os').system('touch {m}'))() == 0",
        "comprehension": f"[__import__('os').system('touch {m}') for x in [1]] == [0]",
        "arithmetic": "MDD + 1 == 2",
    }


def write_exposure(folder: Path, cases: str, name: str = "plan.yaml") -> Path:
    """The study's plan with exposure MDD's cases query replaced (YAML-quoted whatever quotes it holds)."""
    return write_study_plan(
        folder,
        folder / "plan.yaml",
        filename=name,
        absolute_paths=False,
        exposures={"MDD": {"cases": cases, "controls": "no_disorder == 1"}},
    )


def one_paragraph(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    # The other layers' tables may have been converted first, which shows its progress (0% and 100%).
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), stderr
    return lines[0][len(ERROR_PREFIX) :]


# --------------------------------------------------------------------------------------
# Hostile queries: refused when the plan is loaded, nothing evaluated
# --------------------------------------------------------------------------------------
def test_hostile_queries_exit_2_in_real_processes_without_side_effects(study: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-HOSTNAME-7c1f\n")
    queries = hostile_queries(marker, secret)
    # One real `scalable-assoc run` per query, all started together (each stops while the plan is read).
    processes = {}
    for index, (label, query) in enumerate(queries.items()):
        plan = write_exposure(study, query, f"plan_{index}.yaml")
        processes[label] = subprocess.Popen(
            [sys.executable, "-m", "scalable_assoc.cli", "run", str(plan), "--out", str(study / f"out_{index}"), "--workers", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for label, process in processes.items():
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 2, (label, stderr)
        message = one_paragraph(stderr)
        assert "key 'exposures.MDD.cases'" in message, (label, message)
        assert "is refused at character" in message and "Nothing was evaluated" in message, (label, message)
        assert "TOP-SECRET" not in message, (label, message)
    assert not marker.exists(), "a query in the plan ran code"
    assert not any((study / f"out_{i}").exists() for i in range(len(queries)))


@pytest.mark.parametrize("label", list(hostile_queries(Path("/tmp/x"), Path("/tmp/y"))))
def test_each_hostile_query_names_the_key_and_position(study: Path, tmp_path: Path, label: str, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    query = hostile_queries(marker, tmp_path / "secret.txt")[label]
    plan = write_exposure(study, query)
    with pytest.raises(PlanError, match=r"key 'exposures\.MDD\.cases'.*refused at character \d+"):
        load_plan(plan)
    assert main(["run", str(plan), "--out", str(tmp_path / "out")]) == 2
    one_paragraph(capsys.readouterr().err)
    assert not marker.exists()


def test_controls_queries_are_checked_too(study: Path, tmp_path: Path) -> None:
    write_study_plan(study, study / "plan.yaml", absolute_paths=False, changes={"exposures.ssri.controls": "ssri.sum() == 0"})
    with pytest.raises(PlanError, match=r"key 'exposures\.ssri\.controls'.*attribute access"):
        load_plan(study / "plan.yaml")


def test_yaml_python_tags_are_refused_without_side_effects(study: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned-by-yaml"
    text = (
        (study / "plan.yaml")
        .read_text()
        .replace("name: lifelines-internalizing", f"name: !!python/object/apply:os.system ['touch {marker}']")
    )
    assert "!!python" in text
    (study / "plan.yaml").write_text(text)
    finished = subprocess.run(
        [sys.executable, "-m", "scalable_assoc.cli", "run", str(study / "plan.yaml"), "--out", str(study / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 2, finished.stderr
    message = one_paragraph(finished.stderr)
    assert "invalid YAML" in message and "python/object/apply" in message
    assert not marker.exists()


# --------------------------------------------------------------------------------------
# The language: what it accepts, with pandas `query` semantics
# --------------------------------------------------------------------------------------
@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": [1.0, 2.0, np.nan, 4.0, 1.0, np.nan],
            "b": ["x", None, "y", "x", "z", "y"],
            "c": [0, 1, 2, 3, 4, 5],
            "flag": [True, False, True, False, True, False],
            "age at visit": [20.0, 30.0, 40.0, np.nan, 60.0, 70.0],
        },
        index=pd.Index([f"s{i}" for i in range(6)], name="sample_id"),
    )


#: Our query -> the same query in pandas' syntax (where ours differs: isna(col) is col.isna() there).
EQUIVALENT = {
    "a == 1": "a == 1",
    "a != 1": "a != 1",
    "a < 2": "a < 2",
    "a <= 2": "a <= 2",
    "a > 1": "a > 1",
    "a >= 1.5": "a >= 1.5",
    "-1 < a": "-1 < a",
    "1 <= c < 4": "1 <= c < 4",
    "b == 'x'": "b == 'x'",
    'b != "x"': 'b != "x"',
    "b in ['x', 'z']": "b in ['x', 'z']",
    "b not in ['x', 'z']": "b not in ['x', 'z']",
    "a in [1, 4]": "a in [1, 4]",
    "a not in [1, 4]": "a not in [1, 4]",
    "isna(a)": "a.isna()",
    "notna(b)": "b.notna()",
    "not a == 1": "not a == 1",
    "~(a == 1)": "~(a == 1)",
    "a == 1 or c > 2 and b == 'x'": "a == 1 or c > 2 and b == 'x'",
    "(a == 1 or c > 2) and b == 'x'": "(a == 1 or c > 2) and b == 'x'",
    "a == 1 | c > 2 & b == 'x'": "a == 1 | c > 2 & b == 'x'",
    "not a == 1 and c > 0": "not a == 1 and c > 0",
    "flag": "flag",
    "flag == True and c >= 2": "flag == True and c >= 2",
    "flag == false": "flag == False",
    "`age at visit` > 35": "`age at visit` > 35",
    "`age at visit` != 40 or isna(`age at visit`)": "`age at visit` != 40 or `age at visit`.isna()",
    "c == 1e0": "c == 1e0",
    "c > -0.5 and c < 2.5": "c > -0.5 and c < 2.5",
}


@pytest.mark.parametrize("ours", list(EQUIVALENT))
def test_the_language_selects_what_pandas_query_selects(frame: pd.DataFrame, ours: str) -> None:
    expected = frame.query(EQUIVALENT[ours], engine="python").index
    selected, _ = _evaluate_query(frame, Path("meta.tsv"), "E", "cases", ours)
    assert list(frame.index[selected]) == list(expected), ours


def test_parsed_columns_are_the_names_in_the_query() -> None:
    assert parse_query("MDD == 1 and `sex at birth` in ['f'] or isna(bmi)", "k").columns == ("MDD", "sex at birth", "bmi")
    # A column whose name is part of another's is not counted (the old substring check counted 'age' in 'stage').
    assert parse_query("stage == 2", "k").columns == ("stage",)


def test_source_columns_come_from_the_parsed_names(frame: pd.DataFrame) -> None:
    frame = frame.assign(stage=[1, 2, 2, 1, 2, 1], ag=[1] * 6)
    spec = ExposureSpec("late", cases="stage == 2", controls="stage == 1")
    assert exposure_values(frame, Path("meta.tsv"), spec, 1).source_columns == ("stage",)


def test_unknown_columns_and_type_mismatches_are_plan_errors(frame: pd.DataFrame) -> None:
    with pytest.raises(PlanError, match=r"names 'A', which is not a column.*Did you mean 'a'\?"):
        _evaluate_query(frame, Path("meta.tsv"), "E", "cases", "A == 1")
    with pytest.raises(PlanError, match=r"exposures\.E\.cases.*different kinds"):
        _evaluate_query(frame, Path("meta.tsv"), "E", "cases", "b < 3")
    with pytest.raises(PlanError, match=r"column 'c' .* stands alone"):
        _evaluate_query(frame, Path("meta.tsv"), "E", "cases", "c")


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("a == ", "end of the query"),
        ("(a == 1", "')' to close"),
        ("a == 1 b == 2", "join conditions"),
        ("a in (1, 2)", "'[' starting a list"),
        ("'x' == 'x'", "needs a column name"),
        ("b == 'open", "not closed"),
        ("`a == 1", "not closed"),
        ("a = 1", "assignment"),
        ("len(b) > 1", "calling 'len' is not allowed"),
        ("isna(a.b)", "attribute access"),
        ("a == 1 if c else 0", "Python keyword 'if'"),
    ],
)
def test_malformed_queries_say_what_is_wrong(query: str, problem: str) -> None:
    with pytest.raises(PlanError, match="refused at character") as refused:
        parse_query(query, "plan P, key 'exposures.E.cases'")
    assert problem in str(refused.value) and "key 'exposures.E.cases'" in str(refused.value)


# --------------------------------------------------------------------------------------
# Paths stay inside the plan's folder unless --allow-outside-paths
# --------------------------------------------------------------------------------------
SMALL_ANALYSIS = [{"exposures": ["MDD"], "adjustments": ["base"], "layers": ["pathways"]}]


def edit_plan(folder: Path, change: dict) -> Path:
    """The folder's plan with dotted keys (``data.metadata``) set, written over it."""
    return write_study_plan(folder, folder / "plan.yaml", absolute_paths=False, changes=change)


def run_fails(plan: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code = main(["run", str(plan), "--out", str(plan.parent / "out"), "--no-report", "--workers", "1", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not (plan.parent / "out" / "results.parquet").exists()
    return one_paragraph(err)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("data.metadata", "../secret.tsv"),
        ("data.metadata", "ABSOLUTE"),
        ("data.layers.pathways", "../secret.tsv"),
        ("features", "../secret.tsv"),
        ("data.metadata", "sub/../../secret.tsv"),
    ],
)
def test_paths_outside_the_plan_folder_are_refused(
    study: Path, tmp_path: Path, key: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret.tsv"
    secret.write_text("sample_id\tpassword\nalice\thunter2-SECRET\n")
    value = str(secret) if value == "ABSOLUTE" else value
    plan = edit_plan(study, {key: value})
    message = run_fails(plan, capsys)
    assert f"key '{key}" in message and str(secret) in message and "outside the plan's folder" in message
    assert "--allow-outside-paths" in message and "SECRET" not in message


def test_a_symlink_inside_the_folder_to_a_file_outside_is_refused(study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "elsewhere.tsv"
    secret.write_text((study / "metadata.tsv").read_text())
    (study / "linked.tsv").symlink_to(secret)
    plan = edit_plan(study, {"data.metadata": "linked.tsv"})
    assert "key 'data.metadata'" in run_fails(plan, capsys)
    # A subfolder of the plan's folder is inside it.
    (study / "sub").mkdir()
    (study / "metadata.tsv").rename(study / "sub" / "metadata.tsv")
    assert load_plan(edit_plan(study, {"data.metadata": "sub/metadata.tsv"})).metadata == (study / "sub" / "metadata.tsv").resolve()


def test_the_python_api_takes_allow_outside_paths(study: Path, tmp_path: Path) -> None:
    (study / "metadata.tsv").rename(tmp_path / "metadata.tsv")
    plan = edit_plan(study, {"data.metadata": "../metadata.tsv"})
    with pytest.raises(PlanError, match="outside the plan's folder"):
        load_plan(plan)
    loaded = load_plan(plan, allow_outside_paths=True)
    assert loaded.metadata == (tmp_path / "metadata.tsv").resolve() and loaded.allow_outside_paths
    # How the plan was loaded is not what it asks for: the hash (and resumable work) stay the same.
    assert loaded.content_hash() == load_plan(plan, allow_outside_paths=True).content_hash()
    strict = type(loaded)(**{**loaded.__dict__, "allow_outside_paths": False})
    assert loaded.content_hash() == strict.content_hash() and loaded.rows_hash() == strict.rows_hash()


@pytest.mark.parametrize(
    "content",
    [
        "root:$6$TOP-SECRET-HASH:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",  # one field per line
        "a line of TOP-SECRET prose\twith a tab\nand TOP-SECRET another\n",  # ragged: field counts differ
        "TOP-SECRET-HOST\n",
        "\xff\xfeTOP-SECRET\tx\n",
    ],
)
@pytest.mark.parametrize("key", ["data.metadata", "data.layers.pathways", "features"])
def test_a_file_that_is_not_a_table_is_not_quoted(
    study: Path, tmp_path: Path, content: str, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "notes"
    outside.write_bytes(content.encode("latin-1") if content.startswith("\xff") else content.encode())
    plan = edit_plan(study, {key: str(outside), "analyses": SMALL_ANALYSIS})
    message = run_fails(plan, capsys, "--allow-outside-paths")
    assert str(outside) in message and "SECRET" not in message, message


def test_an_allowed_run_records_it_and_sumstats_reopens_the_plan_the_same_way(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    (study / "metadata.tsv").rename(tmp_path / "metadata.tsv")
    plan = edit_plan(study, {"data.metadata": "../metadata.tsv", "analyses": SMALL_ANALYSIS})
    out = study / "out"
    code = main(["run", str(plan), "--out", str(out), "--no-report", "--workers", "1", "--top", "0", "--allow-outside-paths"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["allow_outside_paths"] is True
    code = main(["sumstats", str(out), "--cohort", "c1", "--out", str(tmp_path / "c1.parquet")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "c1.parquet").is_file()


@pytest.mark.parametrize("name", ["../../escaped", "sub/escaped", "..", ".escaped", "a\\escaped", "line\nescaped"])
def test_a_layer_name_that_could_leave_the_output_folder_is_refused(
    study: Path, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    plan_path = study / "plan.yaml"
    plan = yaml.safe_load(plan_path.read_text())
    layers = plan["data"]["layers"]
    layers[name] = layers.pop("pathways")  # the layer's converted store was written to <cache>/<name>-...
    plan_path.write_text(yaml.safe_dump(plan))
    message = run_fails(plan_path, capsys)
    assert "key 'data.layers." in message and "layer name" in message
    assert not [p for p in tmp_path.rglob("*escaped*")]
