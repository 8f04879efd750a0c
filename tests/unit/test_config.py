# `option()` returns a dataclasses.Field, like field().

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from peftrec.config import ConfigError, config_to_dict, load_config, parse_cli, save_config
from peftrec.config.loading import option
from peftrec.tasks.rating.config import RatingRecipeConfig


def write_yaml(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def all_keys(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from all_keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


# --- defaults and schema --------------------------------------------------------------------


def test_defaults():
    cfg = load_config(RatingRecipeConfig, None)
    assert cfg == RatingRecipeConfig()
    assert cfg.data.dataset == "ml-100k" and cfg.data.protocol == "p1"
    assert cfg.backbone.name == "minilm" and cfg.adapter.method == "lora"
    assert cfg.adapter.target_modules is None and cfg.adapter.peft_kwargs == {}
    assert cfg.train.lr == 1e-3 and cfg.train.max_steps is None and cfg.train.log_with == []
    assert cfg.output_dir == "runs/minilm_lora_rating"


def test_every_field_has_help_and_mutable_defaults_are_not_shared():
    for key, f in all_keys(RatingRecipeConfig()):
        assert f.metadata.get("help"), key
    a, b = RatingRecipeConfig(), RatingRecipeConfig()
    a.train.log_with.append("tensorboard")
    a.adapter.peft_kwargs["use_dora"] = True
    assert b.train.log_with == [] and b.adapter.peft_kwargs == {}


# --- YAML and overrides ----------------------------------------------------------------------


def test_yaml_file_sets_values_and_keeps_other_defaults(tmp_path):
    path = write_yaml(
        tmp_path, {"train": {"epochs": 3, "lr": "1e-4"}, "adapter": {"method": "prefix"}}
    )
    cfg = load_config(RatingRecipeConfig, path)
    assert cfg.train.epochs == 3
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)  # YAML reads 1e-4 as text
    assert cfg.adapter.method == "prefix"
    assert cfg.train.head_lr == 5e-3 and cfg.adapter.r == 8


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_config(RatingRecipeConfig, write_yaml(tmp_path, "")) == RatingRecipeConfig()


def test_precedence_defaults_file_overrides(tmp_path):
    path = write_yaml(tmp_path, {"train": {"epochs": 3, "patience": 7}})
    cfg = load_config(RatingRecipeConfig, path, ["train.epochs=5", "train.epochs=6"])
    assert cfg.train.epochs == 6  # override beats file, the last override wins
    assert cfg.train.patience == 7  # file beats default
    assert cfg.train.grad_accum == 1  # default


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("train.lr=1e-3", "train.lr", 1e-3),
        ("train.lr=2", "train.lr", 2.0),
        ("train.l2=.5", "train.l2", 0.5),
        ("backbone.trust_remote_code=true", "backbone.trust_remote_code", True),
        ("adapter.target_modules=[query,value]", "adapter.target_modules", ["query", "value"]),
        ("train.max_steps=null", "train.max_steps", None),
        ("train.max_steps=20", "train.max_steps", 20),
        ("adapter.peft_kwargs={use_dora: true}", "adapter.peft_kwargs", {"use_dora": True}),
        ("data.interactions=/data/my ratings.csv", "data.interactions", "/data/my ratings.csv"),
        ("data.user_template={age}", "data.user_template", "{age}"),  # a template, not a mapping
        ("data.item_template={title} ({year})", "data.item_template", "{title} ({year})"),
        ("output_dir=runs/x", "output_dir", "runs/x"),
    ],
)
def test_override_values(override, key, expected):
    cfg = load_config(RatingRecipeConfig, None, [override])
    value = config_to_dict(cfg)
    for part in key.split("."):
        value = value[part]
    assert value == expected and type(value) is type(expected)


# --- errors ----------------------------------------------------------------------------------


def test_typo_in_file_names_key_file_and_suggestion(tmp_path):
    path = write_yaml(tmp_path, {"train": {"epochz": 3}})
    with pytest.raises(ConfigError) as info:
        load_config(RatingRecipeConfig, path)
    message = str(info.value)
    assert "'train.epochz'" in message and str(path) in message and "train.epochs" in message


def test_typo_in_override_names_override_and_suggestion():
    with pytest.raises(ConfigError, match=r"'adapter.lr'.*override.*did you mean adapter.r\b"):
        load_config(RatingRecipeConfig, None, ["adapter.lr=3"])


def test_typo_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"'model.xyz'.*valid keys: model.dim, model.item_ids"):
        load_config(RatingRecipeConfig, None, ["model.xyz=1"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.epochs=ten", r"'train.epochs'.*expected int, got 'ten'"),
        ("train.epochs=2.5", r"'train.epochs'.*expected int, got 2.5"),
        ("train.lr=fast", r"'train.lr'.*expected float, got 'fast'"),
        ("model.item_ids=1", r"'model.item_ids'.*expected bool, got 1"),
        ("train.epochs=true", r"'train.epochs'.*expected int, got True"),
        ("data.dataset=null", r"'data.dataset'.*expected str, got None"),
        ("adapter.target_modules=query", r"expected list\[str\] or null, got 'query'"),
        ("train.log_with=[1]", r"'train.log_with\[0\]'.*expected str, got 1"),
        ("adapter.peft_kwargs=3", r"'adapter.peft_kwargs'.*expected dict\[str, any value\]"),
        ("data=3", r"'data'.*is a section: expected a mapping, got 3"),
    ],
)
def test_wrong_type_names_key_expected_type_and_value(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(RatingRecipeConfig, None, [override])
    assert "override" in str(info.value)


def test_bad_literal_lists_allowed_values(tmp_path):
    path = write_yaml(tmp_path, {"adapter": {"method": "lroa"}})
    with pytest.raises(ConfigError) as info:
        load_config(RatingRecipeConfig, path)
    message = str(info.value)
    assert "'adapter.method'" in message and str(path) in message and "'lroa'" in message
    for allowed in ("lora", "prefix", "top_layers", "full", "frozen", "qlora"):
        assert repr(allowed) in message


@pytest.mark.parametrize("override", ["train.epochs", "=3", "train.epochs 3"])
def test_override_without_equals_sign(override):
    with pytest.raises(ConfigError, match=r"expected key\.sub=value"):
        load_config(RatingRecipeConfig, None, [override])


def test_override_naming_unknown_section():
    with pytest.raises(ConfigError, match=r"unknown key 'optim'.*'optim.lr=1'.*valid keys: data"):
        load_config(RatingRecipeConfig, None, ["optim.lr=1"])


def test_unknown_key_inside_a_mapping_override_is_reported():
    with pytest.raises(ConfigError, match=r"unknown key 'data.bogus'"):
        load_config(RatingRecipeConfig, None, ["data={dataset: x, bogus: 1}"])


def test_file_that_is_not_a_mapping_or_not_yaml(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(RatingRecipeConfig, write_yaml(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(RatingRecipeConfig, write_yaml(tmp_path, "train: {epochs: [\n", "bad.yaml"))


# --- a schema of another recipe: the loader is generic ---------------------------------------


@dataclass
class _Inner:
    """Inner section."""

    level: Literal[1, 2] = option(1, "a literal of ints")
    maybe: Optional[float] = option(None, "typing.Optional form")  # noqa: UP045 - on purpose
    counts: dict[str, int] = option({}, "a typed mapping")


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    anything: Any = option("x", "any value")


def test_generic_schema_with_other_annotations():
    cfg = load_config(
        _Outer, None, ["inner.level=2", "inner.maybe=1e-2", "inner.counts={a: 1}", "anything=[1]"]
    )
    assert cfg == _Outer(_Inner(level=2, maybe=0.01, counts={"a": 1}), anything=[1])
    with pytest.raises(ConfigError, match="expected one of 1, 2, got 3"):
        load_config(_Outer, None, ["inner.level=3"])
    with pytest.raises(ConfigError, match=r"'inner.counts.a'.*expected int, got 'one'"):
        load_config(_Outer, None, ["inner.counts={a: one}"])


# --- saving ----------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    cfg = load_config(
        RatingRecipeConfig,
        None,
        [
            "train.lr=1e-5",
            "adapter.target_modules=[q_proj,v_proj]",
            "adapter.peft_kwargs={use_dora: true, layers_to_transform: [0, 1]}",
            "data.item_template=Title: {title}: {genres} #1",
            "train.log_with=[tensorboard]",
            "backbone.dtype=bfloat16",
        ],
    )
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert yaml.safe_load(path.read_text()) == config_to_dict(cfg)
    assert load_config(RatingRecipeConfig, path) == cfg


@settings(max_examples=40, deadline=None)
@given(
    lr=st.floats(min_value=1e-12, max_value=1e3, allow_nan=False),
    template=st.text(max_size=30),
    modules=st.none() | st.lists(st.text(min_size=1, max_size=8), max_size=3),
    max_steps=st.none() | st.integers(min_value=0, max_value=10**9),
)
def test_round_trip_property(tmp_path_factory, lr, template, modules, max_steps):
    cfg = RatingRecipeConfig()
    cfg.train.lr, cfg.train.max_steps = lr, max_steps
    cfg.data.item_template, cfg.adapter.target_modules = template, modules
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    save_config(cfg, path)
    assert load_config(RatingRecipeConfig, path) == cfg


# --- command line ----------------------------------------------------------------------------


def test_parse_cli(tmp_path):
    path = write_yaml(tmp_path, {"train": {"epochs": 3}, "model": {"dim": 32}})
    cfg = parse_cli(RatingRecipeConfig, ["--config", str(path), "train.epochs=4", "adapter.r=4"])
    assert (cfg.train.epochs, cfg.model.dim, cfg.adapter.r) == (4, 32, 4)
    assert parse_cli(RatingRecipeConfig, []) == RatingRecipeConfig()


def test_parse_cli_error_exits_with_message(capsys):
    with pytest.raises(SystemExit) as info:
        parse_cli(RatingRecipeConfig, ["train.epohcs=3"])
    assert info.value.code == 2
    assert "did you mean train.epochs" in capsys.readouterr().err


def test_help_lists_every_key_with_default_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        parse_cli(RatingRecipeConfig, ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE" in out
    assert "  train.lr = 0.001  learning rate while the backbone adapts" in out
    assert '  data.protocol = "p1"' in out and "  train.max_steps = null" in out
    for key, f in all_keys(RatingRecipeConfig()):
        assert f"  {key} = " in out and f.metadata["help"] in out
