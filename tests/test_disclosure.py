"""What leaves a cohort: the carrier rule of sumstats, and signed sidecars.

- Carriers: ``sumstats`` withholds (from the summary file and the cross-products
  alike) a row whose model has fewer than ``--min-cell-count`` participants with
  the feature, or a non-zero cell of present/absent x case/control below it,
  from the run's carrier counts and whatever the run's own ``min_carriers`` (the
  run here uses ``min_carriers: 0`` and reports every row with an estimate).
- Signatures: ``sumstats --sign-key`` signs the sidecar (HMAC-SHA256 with a
  shared secret, or Ed25519); ``meta`` / ``pool --verify-key`` refuse files whose
  signature is missing, made with another key, or no longer matches, as an
  attacker who edits a value and rewrites its checksum would leave it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from scalable_assoc.cli import main
from scalable_assoc.engine.run import run_study
from scalable_assoc.engine.sufficient import sufficient_statistics
from scalable_assoc.errors import DataError, UserInputError
from scalable_assoc.results.sumstats import DisclosureRules, open_cohort_file, read_run, sidecar_path, sufficient_path, write_sumstats
from scalable_assoc.testing import write_plan

CARRIER_REASON = "fewer than 3 participants with or without the feature (overall or among cases or controls)"
#: a shared secret as 'openssl rand -hex 32' writes it
SECRET = "3f1c0a9be47d25e8a6b0c3d1f2e4a5b6c7d8e9f00112233445566778899aabbcc\n"


@pytest.fixture(scope="module")
def carriers_run(tmp_path_factory: pytest.TempPathFactory, client) -> Path:
    """60 participants (20 cases); features carried by 1, 2 and 3 controls, by 11 controls and one case, and a common one."""
    folder = tmp_path_factory.mktemp("carriers")
    rng = np.random.default_rng(21)
    n = 60
    case = (np.arange(n) % 3 == 0).astype(int)
    metadata = pd.DataFrame(
        {
            "sample_id": [f"P{i:02d}" for i in range(n)],
            "age": rng.normal(50, 8, n).round(1),
            "bmi": rng.normal(25, 3, n).round(1),
            "case": case,
        }
    )
    controls, cases = np.flatnonzero(case == 0), np.flatnonzero(case == 1)
    layer = pd.DataFrame({"sample_id": metadata["sample_id"]})
    for carriers in (1, 2, 3):
        values = np.zeros(n)
        values[controls[:carriers]] = rng.uniform(1, 5, carriers)
        layer[f"carried_by_{carriers}"] = values
    one_case = np.zeros(n)
    one_case[np.concatenate([controls[:11], cases[:1]])] = rng.uniform(1, 5, 12)
    layer["one_carrying_case"] = one_case
    common = np.zeros(n)
    common[np.concatenate([controls[::2], cases[::2]])] = rng.uniform(1, 5, 30)
    layer["common"] = common
    metadata.to_csv(folder / "metadata.tsv", sep="\t", index=False)
    layer.to_csv(folder / "layer.tsv", sep="\t", index=False)
    write_plan(
        folder,
        """
data: {metadata: metadata.tsv, layers: {values: {path: layer.tsv, format: wide}}}
preprocess: {transform: log, pseudocount: 0.5}
exposures: {case: {column: case}, bmi: {column: bmi}}
adjustments: {base: [age]}
models: [lm]
min_cases: 5
min_carriers: 0
""",
    )
    run_study(folder / "plan.yaml", folder / "out", client=client)
    return folder / "out"


@pytest.fixture(scope="module")
def cross_products(carriers_run: Path, client):
    return sufficient_statistics(carriers_run, client=client)


def test_the_run_reports_every_carrier_count(carriers_run: Path) -> None:
    results = pd.read_parquet(carriers_run / "results.parquet").set_index(["exposure", "feature"])
    # min_carriers 0: the run itself estimates the single carrier's row (the hostile reviewer's export).
    assert results.loc[("case", "carried_by_1"), "status"] == "ok" and results.loc[("case", "carried_by_1"), "n_present"] == 1
    assert results.loc[("case", "one_carrying_case"), "n_present_cases"] == 1
    assert results.loc[("case", "common"), "n_present_cases"] == 10 and results.loc[("case", "common"), "n_present"] == 30
    assert results.loc[("bmi", "common"), ["n_present_cases"]].isna().all()


def test_carriers_1_2_3_are_withheld_withheld_exported(carriers_run: Path, cross_products, tmp_path: Path) -> None:
    sidecar = write_sumstats(read_run(carriers_run), "north", tmp_path / "north.parquet", DisclosureRules(), cross_products)
    summary = pd.read_parquet(tmp_path / "north.parquet")
    exported = set(zip(summary["exposure"], summary["feature"], strict=True))
    assert exported == {
        ("case", "carried_by_3"),
        ("case", "common"),  # three carrying controls: every non-zero cell at least 3
        ("bmi", "carried_by_3"),
        ("bmi", "one_carrying_case"),
        ("bmi", "common"),  # no case/control table for a continuous exposure
    }
    report = sidecar["withheld"]["summary"]
    # carried_by_1, carried_by_2 under both exposures, one_carrying_case under the binary one
    assert report["withheld_by_reason"] == {CARRIER_REASON: 5} and report["rows_withheld"] == 5 and report["rows_without_estimate"] == 0

    # The cross-products: the same rows withheld, keyed by analysis and feature; no single carrier's products leave.
    products = pq.read_table(sufficient_path(tmp_path / "north.parquet")).to_pandas()
    assert set(zip(products["exposure"], products["feature"], strict=True)) == exported
    assert "carried_by_1" not in set(products["feature"])
    assert sidecar["withheld"]["sufficient"]["withheld_by_reason"] == {CARRIER_REASON: 5}
    assert sidecar["withheld"]["sufficient"]["rows"] == 10

    # --min-cell-count 0 turns the rule off (the run's own rule was already off).
    loose = write_sumstats(read_run(carriers_run), "north", tmp_path / "loose.parquet", DisclosureRules(min_cell_count=0), cross_products)
    assert loose["withheld"]["summary"]["rows_withheld"] == 0 and len(pd.read_parquet(tmp_path / "loose.parquet")) == 10
    assert loose["withheld"]["sufficient"]["rows_exported"] == 10


def test_results_without_carrier_counts_are_withheld(carriers_run: Path, tmp_path: Path) -> None:
    """Results of an older version (no n_present_cases) cannot show a row is safe: withheld, saying why."""
    run = read_run(carriers_run)
    older = run.results.drop(columns=["n_present_cases"])
    sidecar = write_sumstats(
        type(run)(run.run_dir, run.manifest, run.plan, older, run.features), "north", tmp_path / "old.parquet", DisclosureRules()
    )
    reasons = sidecar["withheld"]["summary"]["withheld_by_reason"]
    # binary rows lack their cell counts; continuous rows still have their margins
    assert reasons["carrier counts not recorded (results of an older version; run again)"] == 5
    assert set(pd.read_parquet(tmp_path / "old.parquet")["exposure"]) == {"bmi"}


def _tamper(path: Path) -> None:
    """Edit a beta and write the file's new SHA-256 into its sidecar, as someone hiding an edit would."""
    table = pd.read_parquet(path)
    table.loc[0, "beta"] += 1.0
    table.to_parquet(path, index=False)
    side = sidecar_path(path)
    sidecar = json.loads(side.read_text())
    sidecar["files"]["summary"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    side.write_text(json.dumps(sidecar, indent=2))


def _copy_export(source: Path, folder: Path) -> Path:
    """A copy of an export under the same names (the sidecar lists its cross-products file by name)."""
    folder.mkdir()
    target = folder / source.name
    target.write_bytes(source.read_bytes())
    sidecar_path(target).write_text(sidecar_path(source).read_text())
    if sufficient_path(source).exists():
        sufficient_path(target).write_bytes(sufficient_path(source).read_bytes())
    return target


def test_hmac_signed_exports_verify_and_tampering_is_refused(
    carriers_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "consortium.key"
    secret.write_text(SECRET)
    files = []
    for cohort in ("north", "south"):
        files.append(tmp_path / f"{cohort}.parquet")
        assert main(["sumstats", str(carriers_run), "--cohort", cohort, "--out", str(files[-1]), "--sign-key", str(secret)]) == 0
    sidecar = json.loads(sidecar_path(files[0]).read_text())
    assert sidecar["signature"]["algorithm"] == "hmac-sha256" and len(sidecar["signature"]["key_fingerprint"]) == 16
    assert SECRET.strip() not in sidecar_path(files[0]).read_text()
    assert open_cohort_file(files[0], verify_key=secret).cohort == "north"
    assert main(["meta", *map(str, files), "--out", str(tmp_path / "meta"), "--verify-key", str(secret)]) == 0

    # Edited and re-hashed: the checksums agree, so without a key it passes (as before) ...
    tampered = _copy_export(files[0], tmp_path / "tampered")
    _tamper(tampered)
    assert open_cohort_file(tampered).cohort == "north"
    # ... but the signature no longer matches.
    with pytest.raises(DataError, match="does not match its content"):
        open_cohort_file(tampered, verify_key=secret)
    capsys.readouterr()
    assert main(["meta", str(tampered), str(files[1]), "--out", str(tmp_path / "refused"), "--verify-key", str(secret)]) == 2
    error = capsys.readouterr().err
    assert str(tampered) in error and "signature" in error and "Traceback" not in error
    assert not (tmp_path / "refused" / "meta_results.parquet").exists()

    # Another consortium's secret: refused, naming both keys' fingerprints.
    other = tmp_path / "other.key"
    other.write_text("a" * 64)
    with pytest.raises(DataError, match="signed with another key"):
        open_cohort_file(files[0], verify_key=other)

    # An unsigned export when a key is asked for: refused; without a key: accepted.
    unsigned = tmp_path / "unsigned.parquet"
    write_sumstats(read_run(carriers_run), "east", unsigned, DisclosureRules())
    assert open_cohort_file(unsigned).cohort == "east"
    capsys.readouterr()
    assert main(["meta", str(unsigned), str(files[1]), "--out", str(tmp_path / "unsigned_meta"), "--verify-key", str(secret)]) == 2
    error = capsys.readouterr().err
    assert str(unsigned) in error and "not signed" in error


def test_ed25519_signed_exports_pool_and_wrong_keys_are_refused(
    carriers_run: Path, cross_products, tmp_path: Path, dask_cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    private, public = tmp_path / "keys" / "key.pem", tmp_path / "keys" / "key.pub.pem"
    assert private.stat().st_mode & 0o077 == 0, "the private key is readable by its owner only"
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 2  # never overwrites a key
    north = tmp_path / "north.parquet"
    args = [
        "sumstats",
        str(carriers_run),
        "--cohort",
        "north",
        "--out",
        str(north),
        "--sufficient",
        "--scheduler",
        dask_cluster.scheduler_address,
    ]
    assert main([*args, "--sign-key", str(private)]) == 0
    # Each cohort its own pair: the coordinating site gives every cohort's public key.
    assert main(["keygen", "--out", str(tmp_path / "south_keys")]) == 0
    south_public = tmp_path / "south_keys" / "key.pub.pem"
    south = tmp_path / "south.parquet"
    write_sumstats(read_run(carriers_run), "south", south, DisclosureRules(), cross_products, sign_key=tmp_path / "south_keys" / "key.pem")
    assert json.loads(sidecar_path(north).read_text())["signature"]["algorithm"] == "ed25519"
    assert open_cohort_file(north, need_sufficient=True, verify_key=public).cohort == "north"
    both = ["--verify-key", str(public), "--verify-key", str(south_public)]
    assert main(["pool", str(north), str(south), "--out", str(tmp_path / "pooled"), *both]) == 0
    capsys.readouterr()
    assert main(["pool", str(north), str(south), "--out", str(tmp_path / "one_key"), "--verify-key", str(public)]) == 2
    error = capsys.readouterr().err
    assert str(south) in error and "signed with another key" in error

    # Tampered cross-products with their checksum rewritten: refused by pool with the key.
    tampered = _copy_export(north, tmp_path / "tampered")
    side = sidecar_path(tampered)
    sidecar = json.loads(side.read_text())
    products = pq.read_table(sufficient_path(tampered)).to_pandas()
    products.loc[0, "yy"] *= 2
    products.to_parquet(sufficient_path(tampered), index=False)
    sidecar["files"]["sufficient"]["sha256"] = hashlib.sha256(sufficient_path(tampered).read_bytes()).hexdigest()
    side.write_text(json.dumps(sidecar, indent=2))
    assert open_cohort_file(tampered, need_sufficient=True).cohort == "north"
    capsys.readouterr()
    assert main(["pool", str(tampered), str(south), "--out", str(tmp_path / "refused"), *both]) == 2
    assert str(tampered) in capsys.readouterr().err

    # Another key pair, or the shared-secret kind: refused.
    with pytest.raises(DataError, match="signed with another key"):
        open_cohort_file(north, verify_key=south_public)
    secret = tmp_path / "consortium.key"
    secret.write_text(SECRET)
    with pytest.raises(DataError, match=r"signed with another key \(ed25519"):
        open_cohort_file(north, verify_key=secret)


def test_unusable_keys_are_refused_before_any_work(carriers_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "short.key"
    short.write_text("secret\n")
    out = tmp_path / "x.parquet"
    for key, words in ((short, "too short"), (tmp_path / "missing.key", "no such key file")):
        capsys.readouterr()
        assert main(["sumstats", str(carriers_run), "--cohort", "x", "--out", str(out), "--sign-key", str(key)]) == 2
        error = capsys.readouterr().err
        assert str(key) in error and words in error and "--sign-key" in error
        assert not out.exists()
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    with pytest.raises(UserInputError, match="a public key cannot sign"):
        write_sumstats(read_run(carriers_run), "x", out, DisclosureRules(), sign_key=tmp_path / "keys" / "key.pub.pem")
    rsa = tmp_path / "rsa.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys

    rsa.write_bytes(
        rsa_keys.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(UserInputError, match="only Ed25519 keys"):
        write_sumstats(read_run(carriers_run), "x", out, DisclosureRules(), sign_key=rsa)


@pytest.mark.parametrize(("cohort", "out", "named"), [("north/east", "north.parquet", "--cohort"), ("north", "north.csv", "--out")])
def test_export_names_are_checked_before_any_work(tmp_path: Path, cohort: str, out: str, named: str) -> None:
    """A bad cohort name or file is refused before the run is read and before the cross-products' cluster work."""
    from scalable_assoc import export_sumstats

    with pytest.raises(UserInputError, match=named):
        export_sumstats(tmp_path / "not-a-run", cohort, tmp_path / out, sufficient=True, scheduler="tcp://127.0.0.1:1")
    assert list(tmp_path.iterdir()) == []
