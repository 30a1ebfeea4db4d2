"""Nothing is read from the cache that does not match its checksum record: a flipped or truncated
entry of every kind (check outcome, conform outcome, conformed clip, validation clip, prompt,
latents, the GPU hand-back) is a miss, announced once, removed from both places and made again,
giving the very bytes (and the very LoRA) an undamaged run gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lib.core.cache import RECORD_SUFFIX, Cache
from lib.core.errors import CacheMiss
from lib.ingest import conform
from tests.test_cache import SETTINGS, triplet
from tests.training_fixtures import single_thread, training_data

__all__ = ["single_thread", "training_data", "triplet"]


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {"flipped": flip, "truncated": truncate}


def content(path: Path) -> tuple[dict, dict]:
    """A safetensors file's tensors and metadata (its header orders metadata at random)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()


def same_content(first: Path, second: Path) -> bool:
    (tensors, metadata), (other_tensors, other_metadata) = content(first), content(second)
    return (
        metadata == other_metadata
        and tensors.keys() == other_tensors.keys()
        and all(torch.equal(tensors[name], other_tensors[name]) for name in tensors)
    )


def _caches(tmp_path: Path, shared: bool) -> Cache:
    if not shared:
        return Cache.at(tmp_path / "cache")
    (tmp_path / "bucket").mkdir()
    return Cache(location=(tmp_path / "bucket").as_uri(), local=str(tmp_path / "local"))


def _prepare(triplet, cache: Cache):
    check = conform.check_triplet(triplet, cache)
    return check, conform.conform_triplet(triplet, check, SETTINGS, cache)


def _entries(check_entry: str, result) -> dict[str, str]:
    return {
        "check": check_entry,
        "outcome": str(Path(result.clip.entry).with_name("result.json")),
        "clip": result.clip.entry,
    }


def _copies(cache: Cache, entry: str) -> list[Path]:
    """The entry's copies: here, and at the location when that is another place."""
    copies = [cache.path(entry)]
    if cache.shared:
        copies.append(Path(cache.location.removeprefix("file://")) / entry)
    return copies


@pytest.mark.parametrize("shared", [False, True], ids=["folder", "location"])
@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("kind, redone", [("check", "check"), ("outcome", "conform"), ("clip", "conform")])
def test_a_damaged_dataset_entry_is_made_again_with_the_same_bytes(
    triplet, tmp_path, decodes, capsys, kind, redone, how, shared
):
    cache = _caches(tmp_path, shared)
    _, first = _prepare(triplet, cache)
    entry = _entries(conform.check_entry(triplet), first)[kind]
    undamaged = tmp_path / "undamaged.safetensors"
    shutil.copy(cache.path(first.clip.entry), undamaged)
    for copy in _copies(cache, entry):
        DAMAGE[how](copy)
    capsys.readouterr()
    decodes.update(check=0, conform=0)

    _, again = _prepare(triplet, cache)
    assert decodes == {"check": int(redone == "check"), "conform": int(redone == "conform")}
    assert again.status == "accepted" and same_content(cache.path(again.clip.entry), undamaged)
    warnings = [line for line in capsys.readouterr().err.splitlines() if entry in line]
    assert len(warnings) == 1 and "removed and made again" in warnings[0], warnings
    for copy in _copies(cache, entry):  # republished, with a record that matches
        assert copy.is_file() and Path(f"{copy}{RECORD_SUFFIX}").is_file()


def test_an_entry_without_a_record_is_not_trusted(triplet, tmp_path, decodes):
    cache = Cache.at(tmp_path / "cache")
    _, first = _prepare(triplet, cache)
    Path(f"{cache.path(first.clip.entry)}{RECORD_SUFFIX}").unlink()
    decodes.update(check=0, conform=0)
    _prepare(triplet, cache)
    assert decodes == {"check": 0, "conform": 1}


def test_a_damaged_hand_back_is_a_clear_miss_not_a_wrong_result(tmp_path):
    cache = _caches(tmp_path, shared=True)
    source = tmp_path / "lora.safetensors"
    source.write_bytes(b"x" * 1000)
    ref = cache.share(source, "runs/r1/gpu/lora.safetensors")
    at_location = Path(cache.location.removeprefix("file://")) / ref.entry
    flip(at_location)
    reader = Cache(location=cache.location, local=str(tmp_path / "cpu"))
    with pytest.raises(CacheMiss, match="runs/r1/gpu/lora.safetensors"):
        reader.open(ref)
    assert not at_location.exists()


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.slow
def test_damaged_latents_and_prompts_are_encoded_again_and_train_the_same_lora(training_data, tmp_path, how):
    from lib.model.encoding import encode_clip, load_example
    from lib.train.lora_io import lora_state_dict
    from lib.train.training import TrainSettings
    from tests.training_fixtures import train_fresh

    cache = Cache.at(tmp_path / "cache")
    shutil.copytree(training_data.cache_root / "conformed", cache.path("conformed"))
    clips = training_data.clips
    components = training_data.components
    latents = [encode_clip(components, clip, cache) for clip in clips]
    undamaged = [tmp_path / f"undamaged-{index}.safetensors" for index in range(len(latents))]
    for ref, copy in zip(latents, undamaged):
        shutil.copy(cache.path(ref.entry), copy)
    prompts = sorted(cache.path("prompts").rglob("*.safetensors"))
    DAMAGE[how](cache.path(latents[0].entry))
    shutil.rmtree(cache.path(latents[1].entry).parent)
    for prompt in prompts:  # the captions the clips need again
        DAMAGE[how](prompt)

    again = [encode_clip(components, clip, cache) for clip in clips]
    assert all(same_content(cache.path(ref.entry), copy) for ref, copy in zip(again, undamaged))

    settings = TrainSettings(rank=8, steps=3, learning_rate=1e-3, seed=5)
    data = training_data
    reference, _ = train_fresh(data, settings)
    data_again = type(data)(
        data.components, data.cache_root, data.clips, again, [load_example(cache.path(ref.entry)) for ref in again]
    )
    retrained, _ = train_fresh(data_again, settings)
    for name, tensor in lora_state_dict(reference).items():
        assert torch.equal(tensor, lora_state_dict(retrained)[name]), name


def test_a_full_cache_disk_is_one_line_naming_the_folder_and_the_entry(tmp_path):
    import errno

    from lib.core.errors import CacheUnavailable

    cache = Cache.at(tmp_path / "cache")
    with pytest.raises(CacheUnavailable) as full:
        with cache.writing("latents/k/latents.safetensors") as partial:
            Path(partial).write_bytes(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
    message = full.value.message
    assert message.startswith(f"The cache folder {cache.local} is full (No space left on device, ")
    assert "while writing 'latents/k/latents.safetensors'" in message and "\n" not in message
    assert full.value.__cause__ is None and not [p for p in cache.path("latents").rglob("*") if p.is_file()]
