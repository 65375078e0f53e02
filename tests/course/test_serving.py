"""course.serving and course.rag (lesson 18): export checked against transformers' GPT-2, batched generation
against unbatched, the server run outside any notebook, retrieval against a hand computation."""
from __future__ import annotations

import concurrent.futures
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from course import rag, serving  # noqa: E402
from course.models.gpt import GPT, GPTConfig  # noqa: E402


class ByteTokenizer:
    """Bytes as tokens (0-255), 256 ends an answer, 257 pads."""

    eos_token_id, pad_token_id = 256, 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=260, context_length=96, d_model=32, num_heads=4, num_layers=2)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_gpt()
    folder = serving.export_gpt2(model, tmp_path_factory.mktemp("gpt2"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    return model, folder, hf


def test_exported_folder_holds_a_config_and_safetensors_only_weights(exported):
    _, folder, hf = exported
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "gpt2"
    assert type(hf).__name__ == "GPT2LMHeadModel"


def test_from_pretrained_gives_our_logits_to_1e5(exported):
    model, _, hf = exported
    x = torch.randint(0, 260, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=1e-5)


def test_export_then_gpt2_plan_round_trips_every_weight(exported):
    model, _, hf = exported
    back = GPT.from_hf_gpt2(hf)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], value, atol=0, rtol=0, msg=name)


def test_export_of_an_untied_model_is_refused_in_one_line(tmp_path):
    model = GPT(GPTConfig(vocab_size=20, context_length=8, d_model=8, num_heads=2, num_layers=1, tie_weights=False))
    with pytest.raises(ValueError, match="ties"):
        serving.export_gpt2(model, tmp_path)


def test_left_pad_puts_every_last_token_in_the_last_column():
    ids, mask = serving.left_pad([[5, 6, 7], [9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.fixture(scope="module")
def gen(exported):
    return serving.hf_batch_generator(exported[2], ByteTokenizer(), max_prompt_tokens=48)


PROMPTS = ["hello", "a much longer prompt than the others", "xy", "the river", "z", "batching works?"]


def test_batched_greedy_answers_equal_unbatched_ones_gpt2(gen):
    assert gen(PROMPTS, 6) == [gen([p], 6)[0] for p in PROMPTS]


def test_batched_greedy_answers_equal_unbatched_ones_llama():
    from course.llm import random_pair
    from course.models.llama import LlamaConfig

    hf = random_pair(LlamaConfig(vocab_size=260, d_model=32, d_ff=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                 context_length=128)).hf
    g = serving.hf_batch_generator(hf, ByteTokenizer(), max_prompt_tokens=48)
    assert g(PROMPTS, 5) == [g([p], 5)[0] for p in PROMPTS]


def test_a_prompt_over_the_token_limit_is_refused(gen):
    with pytest.raises(serving.PromptTooLong, match="at most 48"):
        gen(["x" * 49], 2)


def test_percentile_matches_numpy():
    np = pytest.importorskip("numpy")
    xs = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4]
    for q in (0, 50, 90, 99, 100):
        assert serving.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


BAD = [
    (b'{"prompt": 3}', 422, "must be a string"),
    (b'{"prompt": "hi"', 400, "not valid JSON"),
    (b"{}", 422, "missing"),
    (b"[1, 2]", 422, "JSON object"),
    (b'{"prompt": "  "}', 422, "empty"),
    (b'{"prompt": "hi", "max_new_tokens": "4"}', 422, "integer"),
    (b'{"prompt": "hi", "max_new_tokens": 0}', 422, "between 1 and"),
    (b'{"prompt": "hi", "temperature": 2}', 422, "unknown field"),
    (b'{"prompt": "' + b"x" * 60 + b'"}', 413, "at most 48"),
]


def test_server_answers_bad_requests_in_one_line_keeps_serving_and_loses_no_request(gen):
    expected = {p: gen([p], 4)[0] for p in PROMPTS}
    with serving.serve(gen, max_batch=4, max_wait_ms=20) as (url, batcher):
        for body, status, words in BAD:
            r = httpx.post(f"{url}/generate", content=body, headers={"content-type": "application/json"})
            assert r.status_code == status, (body, r.text)
            detail = r.json()["detail"]
            assert words in detail and "\n" not in detail, (body, detail)
        prompts = PROMPTS * 5                                           # 30 accepted requests, 8 clients at once
        result = serving.load_test(url, prompts, concurrency=8, max_new_tokens=4)
        assert result.statuses == [200] * len(prompts)
        assert result.answers == [expected[p] for p in prompts]         # each its own answer, none lost
        assert sum(batcher.batch_sizes) == len(prompts) and max(batcher.batch_sizes) > 1
        assert max(batcher.batch_sizes) <= 4
        # bad requests mixed in while good ones are in flight: the good ones are still all answered
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            bad = [pool.submit(httpx.post, f"{url}/generate", content=b"{nope") for _ in range(4)]
            good = serving.load_test(url, PROMPTS, concurrency=4, max_new_tokens=4)
        assert [f.result().status_code for f in bad] == [400] * 4
        assert good.answers == [expected[p] for p in PROMPTS]
        assert httpx.get(f"{url}/health").json()["ok"] is True
    with pytest.raises(httpx.TransportError):                           # stopped on exit
        httpx.get(f"{url}/health", timeout=2)


def test_a_failing_generation_is_a_500_line_not_a_hang():
    def broken(prompts, n):
        raise RuntimeError("out of memory")

    with serving.serve(broken, max_batch=2) as (url, _):
        r = httpx.post(f"{url}/generate", json={"prompt": "hi"}, timeout=10)
        assert r.status_code == 500 and "out of memory" in r.json()["detail"]


def test_batcher_rejects_a_batch_size_below_one():
    with pytest.raises(ValueError, match="at least 1"):
        serving.Batcher(lambda p, n: p, max_batch=0)


# ---------------------------------------------------------------------------------------------- retrieval

def test_documents_ship_with_the_course_and_every_question_has_its_source():
    docs = rag.load_documents()
    assert 6 <= len(docs) <= 12 and len({d.name for d in docs}) == len(docs)
    for question, source, answer in rag.QUESTIONS:
        doc = next(d for d in docs if d.name == source)
        assert answer.lower() in doc.text.lower(), question


def test_cosine_scores_equal_torchs_cosine_similarity():
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(3, 16, generator=g), torch.randn(5, 16, generator=g) * 4
    ref = torch.nn.functional.cosine_similarity(q[:, None], d[None], dim=-1)
    torch.testing.assert_close(rag.cosine_scores(q, d), ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rag.cosine_scores(q[0], d), ref[0], atol=1e-6, rtol=1e-6)


def test_top_k_is_best_first_and_refuses_a_k_out_of_range():
    s = torch.tensor([0.1, 0.9, 0.5, 0.7])
    assert rag.top_k(s, 2).tolist() == [1, 3]
    with pytest.raises(ValueError, match="between 1"):
        rag.top_k(s, 5)


def test_retriever_with_bag_of_words_finds_the_document_that_shares_the_words():
    docs = rag.load_documents()
    vocab = sorted({w for d in docs for w in d.text.lower().split()})
    index = {w: i for i, w in enumerate(vocab)}

    def embed(texts):
        out = torch.zeros(len(texts), len(vocab))
        for i, t in enumerate(texts):
            for w in t.lower().split():
                if w in index:
                    out[i, index[w]] += 1
        return out

    retriever = rag.Retriever(docs, embed)
    found = retriever.search(f"{docs[3].title}. {docs[3].text}", k=1)[0]
    assert found[0].name == docs[3].name and found[1] == pytest.approx(1.0, abs=1e-5)
    assert "Question: why?" in rag.rag_prompt("why?", [docs[0]])
