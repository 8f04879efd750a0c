"""The saved model folder: the spec it holds, the files it needs, older formats, portability."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from peftrec.app.recommender import Recommender
from peftrec.artifact.save import ArtifactError, load_artifact, read_spec, required_files
from peftrec.config import AdapterConfig, BackboneConfig, ModelConfig
from peftrec.models.assembly import build_model
from peftrec.models.spec import ModelSpec

from .test_recommender import save, trained

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_format1_model_still_loads_with_identical_scores(tiny_bert):
    folder = FIXTURES / "format1_lora_rating"
    assert json.loads((folder / "peftrec.json").read_text())["format_version"] == 1
    rec = Recommender.from_pretrained(folder, backbone=str(tiny_bert))
    assert (
        rec.spec.dtype == "float32"
        and rec.spec.adapter.method == "lora"
        and rec.spec.task == "rating"
    )
    expected = np.array(
        json.loads((FIXTURES / "format1_lora_rating.scores.json").read_text()), dtype=np.float32
    )
    np.testing.assert_allclose(rec.score_all(), expected, rtol=0, atol=1e-6)


def test_the_spec_is_what_peftrec_json_holds(saved):
    folder, model, _ = saved
    meta = json.loads((folder / "peftrec.json").read_text())
    assert meta["format_version"] == 2
    assert ModelSpec.from_dict(meta["spec"]) == model.spec
    spec, _ = read_spec(folder)
    assert spec.head == {
        "text_dim": 64,
        "num_users": 7,
        "num_items": 11,
        "dim": 8,
        "item_ids": True,
        "item_text": True,
        "user_text_dim": None,
        "dropout": 0.0,
        "id_dropout": 0.0,
    }
    assert (folder / "README.md").read_text().startswith("# peftrec rating model")


def test_the_backbone_dtype_survives_save_and_load(tmp_path, tiny_bert):
    torch.manual_seed(0)
    model, tokenizer = build_model(
        BackboneConfig(name=str(tiny_bert), dtype="bfloat16"),
        AdapterConfig(method="lora", r=4, dropout=0.0),
        ModelConfig(dim=8),
        num_users=7,
        num_items=11,
    )
    folder = save(tmp_path / "m", model, tokenizer, tiny_bert)
    loaded, *_ = load_artifact(folder)
    assert loaded.spec.dtype == "bfloat16"
    assert loaded.backbone.get_base_model().dtype == torch.bfloat16


@pytest.fixture
def saved(tmp_path, tiny_bert):
    model, tokenizer = trained(tiny_bert)
    return save(tmp_path / "model", model, tokenizer, tiny_bert), model, tokenizer


@pytest.mark.parametrize(
    "missing",
    [
        "adapter",
        "adapter/adapter_model.safetensors",
        "tokenizer",
        "tokenizer/tokenizer_config.json",
        "head.safetensors",
        "catalog.json",
        "seen.safetensors",
    ],
)
def test_every_file_the_spec_needs_is_required(saved, missing):
    folder = saved[0]
    target = folder / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ArtifactError, match=r"missing"):
        Recommender.from_pretrained(folder)


def test_required_files_follow_the_method(saved):
    spec = saved[1].spec
    assert "adapter/adapter_model.safetensors" in required_files(spec)
    for method, needs in [
        ("frozen", None),
        ("top_layers", "adapter/backbone.safetensors"),
        ("full", "adapter/backbone.safetensors"),
    ]:
        spec.adapter.method = method
        files = required_files(spec)
        assert not any(f.startswith("adapter/adapter_") for f in files)
        assert needs is None or needs in files


def test_a_catalog_that_does_not_fit_the_head_is_refused_at_load(saved):
    folder = saved[0]
    catalog = json.loads((folder / "catalog.json").read_text())
    (folder / "catalog.json").write_text(
        json.dumps({**catalog, "item_texts": catalog["item_texts"][:-1]})
    )
    with pytest.raises(
        ArtifactError, match=r"catalog.json: does not match the model \(10 item texts for 11"
    ):
        Recommender.from_pretrained(folder)


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (3, "a peftrec format-3 model; this peftrec .* reads formats 1-2"),
        (None, "a peftrec format-None model"),
    ],
)
def test_a_format_version_it_cannot_read_says_which_it_found(saved, version, message):
    folder = saved[0]
    meta = json.loads((folder / "peftrec.json").read_text())
    (folder / "peftrec.json").write_text(json.dumps({**meta, "format_version": version}))
    with pytest.raises(ArtifactError, match=message):
        Recommender.from_pretrained(folder)


def test_an_unknown_spec_key_is_refused(saved):
    folder = saved[0]
    meta = json.loads((folder / "peftrec.json").read_text())
    meta["spec"]["flavour"] = "new"
    (folder / "peftrec.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"unknown key.*flavour"):
        Recommender.from_pretrained(folder)


def test_saved_files_are_readable_by_others_and_name_no_machine_path(saved, tiny_bert):
    folder = saved[0]
    for path in folder.rglob("*"):
        assert path.stat().st_mode & stat.S_IROTH, path
    assert not (
        folder / "adapter" / "README.md"
    ).exists()  # PEFT's card names the training machine's path
    adapter = (folder / "adapter" / "adapter_config.json").read_text()
    assert (
        json.loads(adapter)["base_model_name_or_path"] is None
    )  # the tiny backbone is an absolute path
    assert str(tiny_bert) not in adapter
