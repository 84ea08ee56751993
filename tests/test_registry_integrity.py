"""Registry integrity: `--force` and `--shadow` never skip it, published.json's manifest_sha256 and the
optional HMAC signature are checked on every load, and the public listing carries no absolute paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fixtures import derive_export, small_config, train_small_run
from unictr.checkpoint import MANIFEST, MODEL_FILE, sha256_file
from unictr.cli import app
from unictr.export.job import export_surface
from unictr.gate import GatePolicy, run_gate
from unictr.serving.registry import KEY_ENV, KEY_FILE_ENV, POINTER, PUBLISHED, Registry, RegistryError, registry_key

SURFACE = "home_feed"
KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"


@pytest.fixture(scope="module")
def exports(sim_config, tmp_path_factory) -> dict[str, Path]:
    """A trained export, another valid export with changed weights (its manifest names their hashes), the data."""
    root = tmp_path_factory.mktemp("integrity")
    data, run = train_small_run(small_config(sim_config), root)
    good = root / "good"
    export_surface(run, SURFACE, good)

    def shifted(w: dict) -> None:
        w["calibration.bias"] += 1.0

    return {"good": good, "other": derive_export(good, root / "other", shifted), "data": data}


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


def _registry(root: Path, export: Path, versions: int = 2, key: bytes | None = None) -> Registry:
    """A registry with `versions` copies of `export` published and v0001 live."""
    registry = Registry(root / "registry", key=key)
    for _ in range(versions):
        registry.publish(SURFACE, export)
    registry.promote(SURFACE, "v0001", force=True)
    return registry


def _corrupt_file(vdir: Path) -> None:
    """A published version's weights changed in place, its manifest untouched."""
    path = vdir / MODEL_FILE
    path.write_bytes(path.read_bytes() + b"\0")


def _swap_in(vdir: Path, export: Path, rewrite_published: bool = False) -> None:
    """A published version's weights and manifest replaced by another export's: the manifest names the new
    files' hashes; with `rewrite_published`, published.json's manifest_sha256 names the new manifest too."""
    for name in (MODEL_FILE, MANIFEST):
        shutil.copy2(export / name, vdir / name)
    if rewrite_published:
        published = json.loads((vdir / PUBLISHED).read_text())
        published["manifest_sha256"] = sha256_file(vdir / MANIFEST)
        (vdir / PUBLISHED).write_text(json.dumps(published))


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit code, output) of `unictr registry ARGS`, on a console wide enough that rich wraps no line."""
    result = CliRunner().invoke(app, ["registry", *args], env={"COLUMNS": "1000", **(env or {})})
    return result.exit_code, result.output


def _assert_one_line_error(code: int, output: str, *expected: str) -> None:
    """Exit code 2 and the output one `error: ...` line holding each of `expected`."""
    assert code == 2 and output.strip().startswith("error:") and len(output.strip().splitlines()) == 1, output
    for text in expected:
        assert text in output, (text, output)


def test_force_never_skips_integrity(exports, tmp_path) -> None:
    registry = _registry(tmp_path, exports["good"])
    _corrupt_file(registry.version_dir(SURFACE, "v0002"))
    pointer = (registry.root / SURFACE / POINTER).read_bytes()
    reports = sorted((registry.root / SURFACE / "reports").iterdir())

    code, out = _cli("promote", "--registry", str(registry.root), "--surface", SURFACE, "--version", "v0002",
                     "--force")
    _assert_one_line_error(code, out, "home_feed v0002:", "model.safetensors: sha256 mismatch",
                           "not promoted (--force skips the quality gate, never integrity)")
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        registry.promote(SURFACE, "v0002", force=True)
    assert (registry.root / SURFACE / POINTER).read_bytes() == pointer
    assert sorted((registry.root / SURFACE / "reports").iterdir()) == reports  # refused before any gate report


def test_shadow_runs_the_integrity_checks(exports, tmp_path) -> None:
    registry = _registry(tmp_path, exports["good"])
    _corrupt_file(registry.version_dir(SURFACE, "v0002"))

    code, out = _cli("promote", "--registry", str(registry.root), "--surface", SURFACE, "--version", "v0002",
                     "--shadow")
    _assert_one_line_error(code, out, "home_feed v0002:", "sha256 mismatch", "not set as shadow")
    with pytest.raises(RegistryError, match="not set as shadow"):
        registry.set_shadow(SURFACE, "v0002")
    assert registry.pointer(SURFACE).shadow is None and registry.pointer(SURFACE).live == "v0001"


def test_rollback_to_a_corrupt_version_refused(exports, tmp_path) -> None:
    registry = _registry(tmp_path, exports["good"])
    registry.promote(SURFACE, "v0002", force=True)
    _corrupt_file(registry.version_dir(SURFACE, "v0001"))
    with pytest.raises(RegistryError, match=r"sha256 mismatch.*not rolled back"):
        registry.rollback(SURFACE)
    assert registry.pointer(SURFACE).live == "v0002" and registry.pointer(SURFACE).history == ("v0001",)


def test_manifest_rewritten_with_its_hashes_detected_via_published_json(exports, tmp_path) -> None:
    """No key: the manifest and the file it names replaced together still differ from published.json's record."""
    registry = _registry(tmp_path, exports["good"])
    _swap_in(registry.version_dir(SURFACE, "v0002"), exports["other"])
    message = r"home_feed v0002: manifest.json is not the published one .*manifest_sha256"
    with pytest.raises(RegistryError, match=message):
        registry.promote(SURFACE, "v0002", force=True)
    with pytest.raises(RegistryError, match=message):
        registry.verified_dir(SURFACE, "v0002")
    report = run_gate(registry, SURFACE, "v0002", "v0001", None, GatePolicy())
    assert [(c["name"], c["passed"]) for c in report.checks] == [("integrity", False)]
    assert registry.integrity(SURFACE, "v0002").startswith("refused: home_feed v0002: manifest.json is not")
    assert registry.integrity(SURFACE, "v0001") == "ok, unsigned"
    assert registry.pointer(SURFACE).live == "v0001"


def test_signed_version_rewritten_with_published_json_refused(exports, tmp_path) -> None:
    """With a key, rewriting published.json's manifest_sha256 too does not help: the signature differs."""
    registry = _registry(tmp_path, exports["good"], key=KEY)
    published = json.loads((registry.version_dir(SURFACE, "v0002") / PUBLISHED).read_text())
    assert set(published["signature"]) == {"hmac_sha256", "key_id"} and KEY.decode() not in json.dumps(published)
    assert registry.integrity(SURFACE, "v0002") == "ok, signed"

    _swap_in(registry.version_dir(SURFACE, "v0002"), exports["other"], rewrite_published=True)
    message = r"home_feed v0002: manifest.json does not match its signature \(changed after publishing\)"
    with pytest.raises(RegistryError, match=message):
        registry.verified_dir(SURFACE, "v0002")
    with pytest.raises(RegistryError, match=message):
        registry.promote(SURFACE, "v0002", force=True)
    with pytest.raises(RegistryError, match=message):
        registry.set_shadow(SURFACE, "v0002")
    assert registry.pointer(SURFACE).live == "v0001" and registry.pointer(SURFACE).shadow is None

    vdir = registry.version_dir(SURFACE, "v0002")
    published = json.loads((vdir / PUBLISHED).read_text())
    del published["signature"]  # stripping the signature is refused too
    (vdir / PUBLISHED).write_text(json.dumps(published))
    unsigned = f"home_feed v0002: not signed, but a registry key is configured .*{KEY_ENV}"
    with pytest.raises(RegistryError, match=unsigned):
        registry.verified_dir(SURFACE, "v0002")


def test_wrong_key_missing_key_and_no_key(exports, tmp_path) -> None:
    signed = _registry(tmp_path / "signed", exports["good"], versions=1, key=KEY)
    with pytest.raises(RegistryError, match="home_feed v0001: signed with another key .*refusing to load"):
        Registry(signed.root, key=OTHER_KEY).verified_dir(SURFACE, "v0001")
    assert Registry(signed.root, key=KEY).verified_dir(SURFACE, "v0001") == signed.version_dir(SURFACE, "v0001")
    # signed, opened without a key: loads (the file hashes and published.json are still checked), marked unverified
    unkeyed = Registry(signed.root)
    assert unkeyed.key is None and unkeyed.verified_dir(SURFACE, "v0001").is_dir()
    assert unkeyed.integrity(SURFACE, "v0001") == "ok, signature unverified (no key)"

    unsigned = _registry(tmp_path / "unsigned", exports["good"], versions=1)
    assert Registry(unsigned.root, key=KEY).integrity(SURFACE, "v0001").startswith(
        "refused: home_feed v0001: not signed, but a registry key is configured")


def test_key_from_the_environment(tmp_path) -> None:
    assert registry_key({}) is None
    assert registry_key({KEY_ENV: KEY.decode()}) == KEY
    key_file = tmp_path / "registry.key"
    key_file.write_bytes(KEY + b"\n")
    assert registry_key({KEY_FILE_ENV: str(key_file)}) == KEY
    with pytest.raises(RegistryError, match=f"both {KEY_ENV} and {KEY_FILE_ENV} are set"):
        registry_key({KEY_ENV: KEY.decode(), KEY_FILE_ENV: str(key_file)})
    with pytest.raises(RegistryError, match=f"{KEY_FILE_ENV}: cannot read the key file .*missing.key"):
        registry_key({KEY_FILE_ENV: str(tmp_path / "missing.key")})
    for short in ("", "tooshort"):
        with pytest.raises(RegistryError, match=f"{KEY_ENV}: the key has {len(short)} bytes; at least 16") as e:
            registry_key({KEY_ENV: short})
        assert short == "" or short not in str(e.value)


def test_cli_signs_with_the_environment_key_and_refuses_another(exports, tmp_path) -> None:
    reg = ["--registry", str(tmp_path / "registry")]
    env = {KEY_ENV: KEY.decode()}
    code, out = _cli("publish", *reg, "--surface", SURFACE, "--model", str(exports["good"]), env=env)
    assert code == 0 and "published home_feed v0001" in out, out
    code, out = _cli("promote", *reg, "--surface", SURFACE, "--force", env={KEY_ENV: OTHER_KEY.decode()})
    _assert_one_line_error(code, out, "home_feed v0001: signed with another key", "not promoted")
    assert OTHER_KEY.decode() not in out and KEY.decode() not in out
    assert Registry(tmp_path / "registry").pointer(SURFACE).live is None
    code, out = _cli("promote", *reg, "--surface", SURFACE, "--force", env=env)
    assert code == 0 and "v0001 is live (forced past the gate)" in out, out


def test_gate_with_a_corrupt_live_version_fails_its_baseline_check(exports, tmp_path) -> None:
    registry = _registry(tmp_path, exports["good"])
    _corrupt_file(registry.version_dir(SURFACE, "v0001"))
    report = registry.promote(SURFACE, "v0002", eval_data=exports["data"])
    baseline = [c for c in report.checks if c["name"] == "live_baseline"]
    assert baseline and not baseline[0]["passed"] and "sha256 mismatch" in baseline[0]["detail"], report.checks
    assert not report.promoted and registry.pointer(SURFACE).live == "v0001"
    assert registry.promote(SURFACE, "v0002", eval_data=exports["data"], force=True).promoted  # the candidate is intact


def test_public_listing_has_no_absolute_paths(exports, tmp_path) -> None:
    registry = _registry(tmp_path, exports["good"], key=KEY)
    private, public = registry.listing(), registry.listing(public=True)
    assert str(exports["good"].resolve()) in json.dumps(private)  # `registry list` still shows where it came from
    assert [(r["version"], r["role"], r["signed"]) for r in public] == [("v0001", "live", True), ("v0002", "", True)]
    assert set(public[0]) == {"surface", "version", "role", "signed", "published_at", "manifest_sha256", "tasks"}
    text = json.dumps(public)
    assert str(tmp_path) not in text and str(exports["good"].parent) not in text and '"/' not in text


def test_cli_list_shows_each_versions_integrity(exports, tmp_path) -> None:
    registry = _registry(tmp_path, exports["good"], key=KEY)
    _corrupt_file(registry.version_dir(SURFACE, "v0002"))
    code, out = _cli("list", "--registry", str(registry.root), env={"COLUMNS": "400"})
    assert code == 0, out
    assert "ok, signature unverified (no key)" in out and "refused: home_feed v0002:" in out, out


def test_load_reads_each_file_once_and_refuses_a_changed_one(exports, tmp_path, monkeypatch) -> None:
    """`Registry.load` (the server's and the gate's way in) reads the manifest and every file it names exactly
    once, hashing the bytes it uses (it used to hash each file twice, then read it again to load it), and a
    file changed after publishing is still refused, naming the version and the file."""
    registry = _registry(tmp_path, exports["good"])
    reads: list[str] = []
    read_bytes = Path.read_bytes

    def counting(path: Path) -> bytes:
        reads.append(path.name)
        return read_bytes(path)

    def no_second_pass(path: Path) -> str:
        raise AssertionError(f"{path} hashed again after it was read")

    monkeypatch.setattr(Path, "read_bytes", counting)
    monkeypatch.setattr("unictr.checkpoint.sha256_file", no_second_pass)
    export = registry.load(SURFACE, "v0001")
    assert sorted(reads) == sorted([MANIFEST, *export.manifest["files"]])
    _corrupt_file(registry.version_dir(SURFACE, "v0002"))
    with pytest.raises(RegistryError, match=rf"{SURFACE} v0002: .*{MODEL_FILE}: sha256 mismatch"):
        registry.load(SURFACE, "v0002")


@pytest.mark.parametrize("key", [None, KEY])
def test_files_swapped_after_the_manifest_check_never_load(exports, tmp_path, monkeypatch, key) -> None:
    """A version whose manifest and weights are replaced by another valid export's between the registry's
    manifest check (published sha256, signature) and the load: the load keeps to the manifest it checked,
    so the swapped weights are refused, never served. (It re-read the manifest from disk, and loaded the
    swapped pair, each consistent with the other.)"""
    registry = _registry(tmp_path, exports["good"], key=key)
    vdir = registry.version_dir(SURFACE, "v0001")
    verify = Registry._verify

    def swap_after_check(self: Registry, *args, **kwargs):
        checked = verify(self, *args, **kwargs)
        _swap_in(vdir, exports["other"])
        return checked

    monkeypatch.setattr(Registry, "_verify", swap_after_check)
    with pytest.raises(RegistryError, match=rf"{SURFACE} v0001: .*{MODEL_FILE}: sha256 mismatch"):
        registry.load(SURFACE, "v0001")
