"""Model name resolution: the embedded model, local folders, clear errors."""

import subprocess
import sys

import pytest
from conftest import ROOT

import caopd.models as models
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
    # this process's own conversion (dequantizing takes a minute; the race is about the rename that follows it)
    monkeypatch.setattr(models, "_write_converted_model", lambda _, folder: (folder / "config.json").write_text("{}"))
    monkeypatch.setattr(models.os, "replace", lambda *_: (_ for _ in ()).throw(OSError(39, "Directory not empty")))
    models._convert_embedded_model(target)  # must not raise, and must leave no staging folder behind
    assert sorted(p.name for p in target.parent.iterdir()) == ["SmolLM2-135M-Instruct"]


def _token_names(tokenizer) -> dict:
    return {
        "bos": (tokenizer.bos_token, tokenizer.bos_token_id),
        "eos": (tokenizer.eos_token, tokenizer.eos_token_id),
        "pad": (tokenizer.pad_token, tokenizer.pad_token_id),
        "unk": (tokenizer.unk_token, tokenizer.unk_token_id),
    }


PUBLISHED = {
    "bos": ("<|im_start|>", 1),
    "eos": ("<|im_end|>", 2),
    "pad": ("<|im_end|>", 2),
    "unk": ("<|endoftext|>", 0),
}


def test_the_embedded_tokenizer_has_the_published_special_tokens():
    from transformers import AutoTokenizer, GenerationConfig

    path = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert _token_names(tokenizer) == PUBLISHED
    assert {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.all_special_tokens)
    assert GenerationConfig.from_pretrained(path).eos_token_id == tokenizer.eos_token_id == 2
    # The chat template closes an assistant turn with the EOS token, so generation stops where a turn ends.
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Paris"}]
    ids = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    paris = tokenizer.encode("Paris", add_special_tokens=False)
    end = max(i for i in range(len(ids)) if ids[i : i + len(paris)] == paris) + len(paris)
    assert ids[end] == tokenizer.eos_token_id
    assert tokenizer.decode([1, 504, 2], skip_special_tokens=True) == tokenizer.decode([504])


def test_an_older_cache_with_the_gguf_tokens_is_corrected_on_first_use(tmp_path, monkeypatch):
    import json
    import shutil

    from transformers import AutoTokenizer

    import caopd.models as models

    source = embedded_model_path()
    old = tmp_path / "models" / "SmolLM2-135M-Instruct"
    old.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
        shutil.copy(source / name, old / name)
    (old / "model.safetensors").symlink_to(source / "model.safetensors")
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.update(eos_token="<|im_start|>", eos_token_id=1, pad_token_id=None)  # what the GGUF file names
    config.pop("pad_token", None)
    (old / "tokenizer_config.json").write_text(json.dumps(config))
    assert not models.has_published_tokens(old)

    monkeypatch.setenv("CAOPD_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_convert_embedded_model", lambda target: pytest.fail("the cache must not be rebuilt"))
    assert embedded_model_path() == old
    assert models.has_published_tokens(old)
    assert _token_names(AutoTokenizer.from_pretrained(old)) == PUBLISHED
    assert sorted(p.name for p in tmp_path.joinpath("models").iterdir()) == ["SmolLM2-135M-Instruct"]


def test_a_damaged_cache_is_rebuilt_and_an_unwritable_one_named(tmp_path, monkeypatch, capsys):
    import caopd.models as models

    source = embedded_model_path()
    target = tmp_path / "models" / "SmolLM2-135M-Instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:100_000])  # cut short
    monkeypatch.setenv("CAOPD_CACHE", str(tmp_path))
    rebuilt = []

    def convert(folder):
        rebuilt.append(folder)
        folder.mkdir()
        (folder / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_embedded_model", convert)
    monkeypatch.setattr(models, "has_published_tokens", lambda _: True)
    assert embedded_model_path() == target and rebuilt == [target]
    assert "model.safetensors has 100000 bytes, its header says" in capsys.readouterr().err
    assert sorted(p.name for p in target.parent.iterdir()) == ["SmolLM2-135M-Instruct"]  # the damaged copy is gone

    monkeypatch.undo()  # the real conversion: a cache root that is a file stops it before any loading
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelResolutionError, match=r"cache .* cannot be written .* set CAOPD_CACHE"):
        models._convert_embedded_model(blocker / "models" / "SmolLM2-135M-Instruct")


@pytest.mark.slow
def test_processes_building_the_cache_at_once_each_get_a_whole_model(tmp_path):
    """The ranks of a launch resolve the embedded model at the same instant into an empty cache."""
    from tiny_model import save_tiny_model

    source = save_tiny_model(tmp_path / "source")
    (tmp_path / "barrier").mkdir()
    script = [sys.executable, str(ROOT / "tests" / "mp_cache_build.py"), str(tmp_path / "cache"), str(source)]
    script += [str(tmp_path / "barrier"), "2"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    processes = [subprocess.Popen(script, **pipes) for _ in range(2)]
    results = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err[-2000:] for _, err in results]
    target = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"
    assert {out.strip() for out, _ in results} == {str(target)}
    assert sorted(path.name for path in target.parent.iterdir()) == [target.name]  # no staging folder left
    assert models.has_published_tokens(target)
