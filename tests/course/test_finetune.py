"""course.finetune (lesson 16): LoRA and prefix tuning equal to peft with the same weights, prompt and prefix
tuning equal to plain prompting when their vectors come from real tokens, and the one-line messages."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course import finetune as ft
from course.lm import IGNORE_INDEX
from course.models import GPT, GPTConfig
from course.models.llama import LlamaConfig

LORA_TOLERANCE = 1e-5     # the bar for LoRA against peft (float32)
PREFIX_TOLERANCE = 1e-5


def small_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=40, context_length=24, d_model=32, num_heads=4, num_layers=2)).eval()


def test_lora_starts_equal_to_the_frozen_model_and_trains_only_a_and_b():
    base = small_gpt()
    model = copy.deepcopy(base)
    names = ft.apply_lora(model, ["q_proj", "v_proj"], rank=4, alpha=8)
    assert names == [f"blocks.{i}.self_attn.{n}" for n in ("q_proj", "v_proj") for i in range(2)]
    ids = torch.randint(0, 40, (2, 10))
    torch.testing.assert_close(model(ids), base(ids), atol=0, rtol=0)          # B starts at zero
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{m}" for n in names for m in "AB"}
    assert ft.count_trainable(model)[0] == 2 * 2 * 4 * (32 + 32)


def test_lora_forward_is_the_linear_layer_plus_the_scaled_low_rank_product():
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(6, 5)
    lora = ft.LoRALinear(layer, rank=2, alpha=6.0)
    with torch.no_grad():
        lora.lora_B.normal_(generator=g)
    x = torch.randn(3, 6, generator=g)
    want = layer(x) + 3.0 * x @ (lora.lora_B @ lora.lora_A).T
    torch.testing.assert_close(lora(x), want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ft.lora_forward(x, layer.weight, layer.bias, lora.lora_A, lora.lora_B, 3.0), want,
                               atol=1e-6, rtol=1e-5)


def peft_pair(rank: int = 4, alpha: float = 8.0):
    peft = pytest.importorskip("peft")
    base = small_gpt()
    config = peft.LoraConfig(target_modules=["q_proj", "v_proj"], r=rank, lora_alpha=alpha, lora_dropout=0.0,
                             init_lora_weights=False)          # random B too: the adapter changes the output
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    ours = copy.deepcopy(base)
    ft.apply_lora(ours, ["q_proj", "v_proj"], rank=rank, alpha=alpha)
    assert ft.copy_peft_lora(ours, theirs) == 4
    return base, ours.eval(), theirs


def test_lora_gives_peft_s_outputs_with_the_same_weights():
    base, ours, theirs = peft_pair()
    ids = torch.randint(0, 40, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (theirs(ids) - base(ids)).abs().max() > 1e-2          # the adapter does something
        assert (ours(ids) - theirs(ids)).abs().max().item() <= LORA_TOLERANCE


def test_merged_lora_weights_equal_peft_s_merge_and_unload_and_unmerge_restores_them():
    base, ours, theirs = peft_pair()
    before = {n: p.clone() for n, p in ours.named_parameters() if n.endswith("base.weight")}
    assert ft.merge_all(ours) == 4
    merged = theirs.merge_and_unload()
    for name, layer in ft.lora_modules(ours).items():
        torch.testing.assert_close(layer.weight, merged.get_submodule(name).weight, atol=1e-6, rtol=1e-6)
    ids = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), merged(ids), atol=LORA_TOLERANCE, rtol=0)
    ft.unmerge_all(ours)
    for name, p in ours.named_parameters():
        if name in before:
            torch.testing.assert_close(p, before[name], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="not merged"):
        ft.lora_modules(ours)["blocks.0.self_attn.q_proj"].unmerge()


def test_prefix_tuning_gives_peft_s_outputs_on_a_hugging_face_llama_with_grouped_heads():
    peft = pytest.importorskip("peft")
    from course.llm import random_pair

    pair = random_pair(LlamaConfig(vocab_size=64, context_length=32, d_model=32, num_heads=4, num_kv_heads=2,
                                   num_layers=2, d_ff=64), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(pair.hf, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
        theirs.eval()
        with torch.no_grad():
            theirs.prompt_encoder["default"].embedding.weight.normal_(generator=torch.Generator().manual_seed(1))
        ours = ft.PrefixTuning(pair.ours, 5)
        ft.copy_peft_prefix(ours, theirs)
        ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            want = theirs(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            plain = pair.ours(ids)
            got = ours(ids)
    assert (want - plain).abs().max() > 1e-2                       # the prefix does something
    assert (got - want).abs().max().item() <= PREFIX_TOLERANCE


def test_a_prefix_made_from_real_tokens_equals_prompting_with_them():
    model = small_gpt()
    prompt = torch.tensor([3, 1, 4, 1, 5])
    tuned = ft.PrefixTuning(copy.deepcopy(model), 5, init=prompt)
    ids = torch.randint(0, 40, (2, 8))
    with torch.no_grad():
        want = model(torch.cat([prompt.expand(2, -1), ids], dim=1))[:, 5:]
        torch.testing.assert_close(tuned(ids), want, atol=1e-5, rtol=1e-5)
    assert tuned.context_length == 24 - 5


def test_prompt_tuning_from_real_token_embeddings_equals_prompting_with_them():
    model = small_gpt()
    prompt = torch.tensor([7, 7, 2])
    tuned = ft.PromptTuning(copy.deepcopy(model), 3, init=prompt)
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        want = model(torch.cat([prompt.expand(2, -1), ids], dim=1))[:, 3:]
        torch.testing.assert_close(tuned(ids), want, atol=1e-5, rtol=1e-5)
    assert [n for n, p in tuned.named_parameters() if p.requires_grad] == ["prompt"]


def test_prefix_attention_equals_the_model_s_attention_over_a_filled_cache():
    from course.efficient import KVCache

    torch.manual_seed(0)
    attn = small_gpt().blocks[0].self_attn
    x, px = torch.randn(2, 6, 32), torch.randn(1, 3, 32)
    cache = KVCache(16)
    cache.append(attn.split(attn.k_proj(px)), attn.split(attn.v_proj(px)))
    pk, pv = cache.k[0], cache.v[0]
    cache2 = KVCache(16)
    cache2.append(pk.expand(2, -1, -1, -1), pv.expand(2, -1, -1, -1))
    from course.attention import causal_mask

    with torch.no_grad():
        want = attn(x, x, x, mask=causal_mask(9)[3:], cache=cache2)
        got = attn.out_proj(attn.merge(ft.prefix_attention(attn.split(attn.q_proj(x)), attn.split(attn.k_proj(x)),
                                                           attn.split(attn.v_proj(x)), pk, pv)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_response_labels_keep_the_response_only_and_the_loss_reads_them_shifted():
    ids = torch.tensor([[5, 6, 7, 8, 0], [1, 2, 3, 4, 9]])
    labels = ft.response_labels(ids, torch.tensor([2, 3]), torch.tensor([4, 5]))
    assert labels.tolist() == [[-100, -100, 7, 8, -100], [-100, -100, -100, 4, 9]]
    code = {"a": 1, "b": 2, "c": 3, "\n": 4}
    batch = ft.instruction_batch([("ab", "c\n"), ("a", "bb\n")], lambda s: [code[c] for c in s], pad_id=0)
    assert batch.ids.tolist() == [[1, 2, 3, 4], [1, 2, 2, 4]]
    assert batch.labels.tolist() == [[-100, -100, 3, 4], [-100, 2, 2, 4]]
    logits = torch.randn(2, 4, 50)

    class Fixed(nn.Module):
        def forward(self, idx):
            return logits

    want = F.cross_entropy(logits[:, :-1].reshape(-1, 50), batch.labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(ft.response_loss(Fixed(), batch), want)


def test_instruction_pairs_hold_test_words_out_of_training():
    words = [f"w{c}{d}" for c in "abcdef" for d in "xyz"]
    train, test = ft.instruction_pairs(words, n_test=4, seed=0)
    assert len(test) == 4 * len(ft.TASKS["python"]) and len(train) == 14 * len(ft.TASKS["python"])
    held = {p.split()[2] for p, _ in test}
    assert not held & {p.split()[2] for p, _ in train}
    both = sum(ft.instruction_pairs(["abc", "xyz"], 1, seed=0, task="strings"), [])
    assert ("Q: reverse abc\nA: ", "cba\n") in both and ("Q: upper xyz\nA: ", "XYZ\n") in both
    python = sum(ft.instruction_pairs(["abc", "xyz"], 1, seed=0), [])
    assert {("Q: call abc\nA: ", "abc()\n"), ("Q: attribute abc\nA: ", "self.abc\n"),
            ("Q: string abc\nA: ", "'abc'\n"), ("Q: define abc\nA: ", "def abc(self):\n")} <= set(python)
    with pytest.raises(ValueError, match="unknown task 'math'; choose one of python, strings"):
        ft.instruction_pairs(["abc", "xyz"], 1, task="math")


def test_every_right_answer_is_well_formed_and_near_misses_of_the_shape_are_not():
    for name, fn in ft.INSTRUCTIONS.items():
        assert ft.well_formed(ft.format_prompt(name, "parse"), fn("parse")), name
    prompt = ft.format_prompt("define", "parse")
    assert ft.well_formed(prompt, "def other(self):")                       # the wrong word, the right shape
    for reply in ["def parse(self)", "parse()", "def parse(self): ", ""]:
        assert not ft.well_formed(prompt, reply), reply
    assert not ft.well_formed(ft.format_prompt("upper", "parse"), "PARSe")


def test_score_answers_counts_exact_and_well_formed_replies(monkeypatch):
    pairs = [(ft.format_prompt("call", "abc"), "abc()\n"), (ft.format_prompt("attribute", "abcd"), "self.abcd\n"),
             (ft.format_prompt("string", "abc"), "'abc'\n"), (ft.format_prompt("define", "abc"), "def abc(self):\n")]
    replies = {pairs[0][0]: "abc()", pairs[1][0]: "self.xyz", pairs[2][0]: "abc", pairs[3][0]: "def abc(self):"}
    monkeypatch.setattr(ft, "answer", lambda model, prompts, *args, **kwargs: [replies[p] for p in prompts])
    assert ft.score_answers(None, pairs, None, None) == {"exact": 0.5, "shape": 0.75}
    assert ft.exact_match(None, pairs, None, None) == 0.5


def test_bad_input_gets_one_line_naming_what_is_wrong():
    model = small_gpt()
    with pytest.raises(ValueError, match=r"no module named 'qproj' .* q_proj"):
        ft.apply_lora(copy.deepcopy(model), ["qproj"], rank=2, alpha=4)
    with pytest.raises(ValueError, match=r"FeedForward, not an nn.Linear"):
        ft.apply_lora(copy.deepcopy(model), ["ffn"], rank=2, alpha=4)
    with pytest.raises(ValueError, match=r"rank 64 does not fit blocks.0.self_attn.q_proj \(32 -> 32\)"):
        ft.apply_lora(copy.deepcopy(model), ["q_proj"], rank=64, alpha=4)
    with pytest.raises(ValueError, match=r"prefix of 24 slots does not fit a context window of \d+ positions: at most \d+ slots"):
        ft.PrefixTuning(copy.deepcopy(model), 24)
    with pytest.raises(ValueError, match=r"exceed the context window"):
        ft.PrefixTuning(copy.deepcopy(model), 4)(torch.zeros(1, 21, dtype=torch.long))
    with pytest.raises(ValueError, match=r"num_virtual must lie in 1..23"):
        ft.PromptTuning(copy.deepcopy(model), 30)
    untouched = copy.deepcopy(model)
    with pytest.raises(ValueError):
        ft.apply_lora(untouched, ["q_proj", "nothing"], rank=2, alpha=4)
    assert not ft.lora_modules(untouched) and all(p.requires_grad for p in untouched.parameters())


def test_answer_stops_early_without_changing_any_answer():
    """Greedy answers cut at the stop token equal generating every token and cutting afterwards."""
    from course.generate import generate

    model = small_gpt().eval()
    alphabet = "abcdefghijklmnop\n"                               # ids 16 to 39 all read as the stop character
    encode = lambda s: [alphabet.index(c) for c in s]            # noqa: E731
    decode = lambda ids: "".join(alphabet[min(i, 16)] for i in ids)  # noqa: E731
    prompts = ["abc", "abd", "ponm", "a", "kbd", "ab"]
    got = ft.answer(model, prompts, encode, decode, max_new_tokens=6)
    for prompt, reply in zip(prompts, got):
        ids = torch.tensor([encode(prompt)])
        full = decode(generate(model, ids, 6, greedy=True)[0, ids.shape[1]:].tolist())
        assert reply == full.split("\n")[0]
    assert any(len(reply) < 6 for reply in got)                   # some answers did stop early
