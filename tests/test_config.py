"""Config loading and validation messages."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT
from unictr.config import ConfigError, config_from_dict, load_config


def _raw() -> dict:
    return yaml.safe_load((ROOT / "configs" / "sim.yaml").read_text())


def test_shipped_configs_validate() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.surfaces and cfg.tasks


def test_missing_file_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_wrong_type_names_key_and_value(tmp_path) -> None:
    raw = _raw()
    raw["model"]["embedding_dim"] = "sixteen"
    with pytest.raises(ConfigError, match=r"model\.embedding_dim: .*integer.*'sixteen'"):
        config_from_dict(raw, "cfg.yaml")


def test_unknown_key_rejected() -> None:
    raw = _raw()
    raw["train"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"train\.learning_rate: Extra inputs are not permitted"):
        config_from_dict(raw)


def test_out_of_range_value() -> None:
    raw = _raw()
    raw["train"]["batch_size"] = 0
    with pytest.raises(ConfigError, match=r"train\.batch_size: .*greater than or equal to 1"):
        config_from_dict(raw)


def test_categorical_needs_hash_size() -> None:
    raw = _raw()
    feat = next(f for f in raw["features"] if "hash_size" in f)
    del feat["hash_size"]
    with pytest.raises(ConfigError, match=f"feature '{feat['name']}': categorical features need exactly one of"):
        config_from_dict(raw)


def test_task_on_unknown_surface() -> None:
    raw = _raw()
    raw["tasks"][1]["surfaces"] = ["home_feed", "shopping"]
    with pytest.raises(ConfigError, match=r"tasks\.save\.surfaces: unknown surface\(s\) \['shopping'\]"):
        config_from_dict(raw)


def test_sequence_item_feature_must_be_candidate_categorical() -> None:
    raw = _raw()
    raw["sequence"]["item_feature"] = "user_id"
    with pytest.raises(ConfigError, match="sequence.item_feature: 'user_id' must name a candidate-side"):
        config_from_dict(raw)


def test_bad_yaml(tmp_path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("features: [\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(p)


def test_config_reference_is_current() -> None:
    from unictr.config_reference import reference_markdown

    assert (ROOT / "docs" / "config.md").read_text() == reference_markdown(), (
        "docs/config.md is stale: run `python -m unictr.config_reference > docs/config.md`"
    )


def test_shared_table_must_name_an_owner() -> None:
    raw = _raw()
    topic = next(f for f in raw["features"] if f["name"] == "query_topic")
    topic["table"] = "user_activity"
    with pytest.raises(ConfigError, match="features.query_topic.table: 'user_activity' must name a categorical"):
        config_from_dict(raw)


def _set(raw: dict, path: str, value: object) -> None:
    """`raw` with the value at a dotted path (list items by index) replaced."""
    *parents, last = path.split(".")
    for key in parents:
        raw = raw[int(key)] if isinstance(raw, list) else raw[key]
    raw[int(last) if isinstance(raw, list) else last] = value


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("train.lr", float("inf"), r"train\.lr: Input should be a finite number \(got inf\)"),
        ("train.embedding_lr", float("nan"), r"train\.embedding_lr: Input should be a finite number"),
        ("tasks.0.weight", float("inf"), r"tasks\.0\.weight: Input should be a finite number \(got inf\)"),
        ("tasks.0.weight", 0.0, r"tasks\.0\.weight: Input should be greater than 0"),
        ("surfaces.0.view_types", ["grid", "grid"],
         r"surfaces\.home_feed\.view_types: duplicate value\(s\) \['grid'\]"),
        ("tasks.1.surfaces", [], r"tasks\.save\.surfaces: empty; list at least one surface, or null for all"),
        ("tasks.1.label", "click", r"tasks\[\]\.label: duplicate value\(s\) \['click'\]"),
        ("model.embedding_init_std", 0.0, r"model\.embedding_init_std: Input should be greater than 0"),
        ("train.device", "tpu", r"train\.device: Input should be 'auto', 'cpu' or 'cuda' \(got 'tpu'\)"),
        ("features.5.hash_size", 2**62,
         r"features\.ad_id\.hash_size: 4611686018427387904; every hash_size together .* at most 2\*\*31 - 1"),
    ],
)
def test_config_that_cannot_work_refused(path, value, message) -> None:
    """Each refused by the pydantic config, naming the field and what was expected."""
    raw = _raw()
    _set(raw, path, value)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw, "cfg.yaml")


def test_largest_fused_table_accepted() -> None:
    """The bound is on every table together: exactly 2**31 - 1 rows pass, one more does not."""
    raw = _raw()
    cfg = config_from_dict(raw)
    sizes = [f.hash_size for f in cfg.features if f.hash_size]
    ad_id = raw["features"][5]
    _set(raw, "features.5.hash_size", 2**31 - 1 - (sum(sizes) - ad_id["hash_size"]))
    assert config_from_dict(raw).hash_size(ad_id["name"]) > 2**30
    ad_id["hash_size"] += 1
    with pytest.raises(ConfigError, match=r"features\.ad_id\.hash_size: .* got 2147483648"):
        config_from_dict(raw)


@pytest.mark.parametrize(("feature", "message"), [
    ({"name": "q", "kind": "categorical", "side": "candidate", "table": "ad_topic", "encoding": "modulo"},
     "feature 'q': encoding belongs to a categorical feature that owns its table"),
    ({"name": "d", "kind": "dense", "side": "user", "encoding": "modulo"},
     "feature 'd': encoding belongs to a categorical feature that owns its table"),
])
def test_encoding_is_set_on_a_table_owner(feature: dict, message: str) -> None:
    from unictr.config import FeatureSpec

    with pytest.raises(ValueError, match=message):
        FeatureSpec.model_validate(feature)
