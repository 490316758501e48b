"""Model name resolution: the embedded model, local folders, clear errors."""

import pytest

from caopd.models import ModelResolutionError, embedded_model_path, resolve_model_name


def test_embedded_names_resolve_to_the_cached_safetensors_checkpoint():
    path = embedded_model_path()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert resolve_model_name("smollm2") == resolve_model_name("SmolLM2-135M-Instruct") == str(path)


def test_local_folders_and_hub_ids(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_name(str(tmp_path)) == str(tmp_path)
    assert resolve_model_name("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
    with pytest.raises(ModelResolutionError, match=r"no config\.json"):
        resolve_model_name(str(tmp_path / ".."))


def test_a_conversion_finished_by_another_process_is_reused(tmp_path, monkeypatch):
    import caopd.models as models

    target = tmp_path / "models" / "SmolLM2-135M-Instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_text("")  # the other process's result: a non-empty folder
    monkeypatch.setattr(models, "cache_root", lambda: tmp_path)
    monkeypatch.setattr(models.os, "replace", lambda *_: (_ for _ in ()).throw(OSError(39, "Directory not empty")))
    models._convert_embedded_model(target)  # must not raise, and must leave no staging folder behind
    assert sorted(p.name for p in target.parent.iterdir()) == ["SmolLM2-135M-Instruct"]
