"""Lesson 18: the course's models in the Hugging Face format, and a REST endpoint with dynamic batching.

Three pieces:

- :func:`export_gpt2`: a course :class:`~course.models.gpt.GPT` written as a Hugging Face ``GPT2LMHeadModel``
  folder (``config.json`` plus ``model.safetensors``), the reverse of :func:`course.models.gpt.gpt2_plan`, so
  that ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads it and gives the same logits.
- :func:`hf_batch_generator`: greedy generation for a list of prompts in one call, padded on the LEFT (a
  decoder continues from the last position, so every prompt must end in the same column).
- :class:`Batcher` and :func:`serve`: requests wait in a queue; one worker thread takes up to ``max_batch``
  of them (waiting at most ``max_wait_ms`` for more once the first arrived), runs one batched generation and
  hands each request its own answer. :func:`build_app` puts that behind a FastAPI ``POST /generate`` and
  :func:`serve` runs it with uvicorn in a background thread on a free port of 127.0.0.1, stopped on exit.
  :func:`load_test` sends concurrent requests and measures throughput and latency percentiles.

Bad requests (no prompt, wrong types, malformed JSON, a prompt too long) get a 4xx answer with a one-line
``detail``; the server keeps serving.
"""
import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from course.models.gpt import GPT

__all__ = ["export_gpt2", "gpt2_state_dict", "hf_batch_generator", "left_pad", "Batcher", "build_app", "serve",
           "load_test", "LoadResult", "percentile", "PromptTooLong"]


# ---------------------------------------------------------------------------------------------
# Export: course GPT -> GPT2LMHeadModel folder
# ---------------------------------------------------------------------------------------------

def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our GPT's weights under GPT-2's names and layouts (``Conv1D`` weights ``[in, out]``; q, k, v fused in
    ``attn.c_attn``): the inverse of :func:`course.models.gpt.gpt2_plan`. Names carry the ``transformer.`` prefix
    of ``GPT2LMHeadModel``; the tied ``lm_head.weight`` is left out (``tie_word_embeddings`` restores it)."""
    c = model.config
    if not c.tie_weights:
        raise ValueError("GPT-2 ties its output layer to the token embedding; export needs tie_weights=True")
    s = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out = {"wte.weight": s["token_embedding.weight"], "wpe.weight": s["position_embedding.embedding.weight"],
           "ln_f.weight": s["final_norm.weight"], "ln_f.bias": s["final_norm.bias"]}
    for i in range(c.num_layers):
        h, b = f"h.{i}", f"blocks.{i}"
        a = f"{b}.self_attn"
        out[f"{h}.ln_1.weight"], out[f"{h}.ln_1.bias"] = s[f"{b}.norm1.weight"], s[f"{b}.norm1.bias"]
        out[f"{h}.attn.c_attn.weight"] = torch.cat([s[f"{a}.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")],
                                                   dim=0).t().contiguous()          # [d, 3d]
        out[f"{h}.attn.c_attn.bias"] = torch.cat([s[f"{a}.{n}.bias"] for n in ("q_proj", "k_proj", "v_proj")])
        out[f"{h}.attn.c_proj.weight"] = s[f"{a}.out_proj.weight"].t().contiguous()
        out[f"{h}.attn.c_proj.bias"] = s[f"{a}.out_proj.bias"]
        out[f"{h}.ln_2.weight"], out[f"{h}.ln_2.bias"] = s[f"{b}.norm2.weight"], s[f"{b}.norm2.bias"]
        out[f"{h}.mlp.c_fc.weight"] = s[f"{b}.ffn.linear1.weight"].t().contiguous()
        out[f"{h}.mlp.c_fc.bias"] = s[f"{b}.ffn.linear1.bias"]
        out[f"{h}.mlp.c_proj.weight"] = s[f"{b}.ffn.linear2.weight"].t().contiguous()
        out[f"{h}.mlp.c_proj.bias"] = s[f"{b}.ffn.linear2.bias"]
    return {f"transformer.{k}": v for k, v in out.items()}


def export_gpt2(model: GPT, folder: str | Path) -> Path:
    """Write ``model`` as a Hugging Face GPT-2 folder: ``config.json`` and ``model.safetensors``. Returns the folder.

    ``AutoModelForCausalLM.from_pretrained(folder)`` then builds a ``GPT2LMHeadModel`` with our weights."""
    import transformers
    from safetensors.torch import save_file

    c = model.config
    if c.activation != "gelu_tanh":
        raise ValueError(f"GPT-2 uses the tanh GELU; this model uses {c.activation!r} and cannot be exported as GPT-2")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.context_length, n_embd=c.d_model, n_layer=c.num_layers,
        n_head=c.num_heads, n_inner=c.d_ff, activation_function="gelu_new", layer_norm_epsilon=c.eps,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None)
    config.architectures = ["GPT2LMHeadModel"]
    config.save_pretrained(str(folder))
    save_file(gpt2_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


# ---------------------------------------------------------------------------------------------
# Batched greedy generation, padded on the left
# ---------------------------------------------------------------------------------------------

class PromptTooLong(ValueError):
    """A prompt with more tokens than the server accepts (one line)."""


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists of different lengths -> ``(ids [batch, longest], attention_mask [batch, longest])``, padded
    on the LEFT so that every prompt's last token sits in the last column (where generation continues)."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, longest - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, longest - len(r):] = 1
    return ids, mask


def hf_batch_generator(model: Any, tokenizer: Any, max_prompt_tokens: int = 256,
                       stop_id: int | None = None) -> Callable[[Sequence[str], int], list[str]]:
    """A function ``(prompts, max_new_tokens) -> answers`` running one greedy ``model.generate`` for the whole list.

    ``model``: a Hugging Face causal LM; ``tokenizer``: anything with ``encode(text) -> ids`` and
    ``decode(ids) -> text`` (a Hugging Face tokenizer is called without special tokens). Prompts are padded on
    the left with an attention mask, so each answer equals the one the prompt gets alone (tested)."""
    is_hf = hasattr(tokenizer, "convert_tokens_to_ids")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(tokenizer, "eos_token_id", None) or 0
    eos = stop_id if stop_id is not None else getattr(tokenizer, "eos_token_id", None)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False) if is_hf else list(tokenizer.encode(text))

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True) if is_hf else tokenizer.decode(ids)

    def run(prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        rows = [encode(p) for p in prompts]
        for r in rows:
            if len(r) > max_prompt_tokens:
                raise PromptTooLong(f"the prompt has {len(r)} tokens; this server accepts at most {max_prompt_tokens}")
        ids, mask = left_pad(rows, pad_id)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad_id, eos_token_id=eos)
        answers = []
        for row in out[:, ids.shape[1]:].tolist():
            if eos is not None and eos in row:
                row = row[:row.index(eos)]
            answers.append(decode(row).strip())
        return answers

    run.encode = encode            # the server checks prompt lengths before queueing
    run.max_prompt_tokens = max_prompt_tokens
    return run


# ---------------------------------------------------------------------------------------------
# Dynamic batching
# ---------------------------------------------------------------------------------------------

@dataclass
class _Job:
    prompt: str
    max_new_tokens: int
    future: Future = field(default_factory=Future)


class Batcher:
    """Dynamic batching: :meth:`submit` queues a prompt and returns a ``Future``; one worker thread takes up to
    ``max_batch`` waiting jobs (after the first arrives it waits at most ``max_wait_ms`` for more), calls
    ``generate_batch(prompts, max_new_tokens)`` once with the batch's largest ``max_new_tokens``, and sets each
    job's answer (a greedy answer cut at fewer new tokens is a prefix of a longer one, so one call serves all).
    ``batch_sizes`` records the size of every batch run."""

    def __init__(self, generate_batch: Callable[[Sequence[str], int], list[str]], max_batch: int = 8,
                 max_wait_ms: float = 10.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.generate_batch, self.max_batch, self.max_wait = generate_batch, max_batch, max_wait_ms / 1000
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.batch_sizes: list[int] = []
        self._thread = threading.Thread(target=self._work, daemon=True, name="batcher")
        self._thread.start()

    def submit(self, prompt: str, max_new_tokens: int) -> Future:
        """Queue one prompt; the ``Future`` holds its answer (a string) or the generation's exception."""
        job = _Job(prompt, max_new_tokens)
        self.queue.put(job)
        return job.future

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            batch, deadline = [job], time.perf_counter() + self.max_wait
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self.queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[_Job]) -> None:
        self.batch_sizes.append(len(batch))
        longest = max(j.max_new_tokens for j in batch)
        try:
            answers = self.generate_batch([j.prompt for j in batch], longest)
        except Exception as exc:  # every waiting request gets the error, none hangs
            for j in batch:
                j.future.set_exception(exc)
            return
        for j, answer in zip(batch, answers):
            j.future.set_result(answer)

    def close(self) -> None:
        """Finish the jobs already queued, then stop the worker."""
        self.queue.put(None)
        self._thread.join(timeout=60)


def _int_tokens(generate_batch: Callable) -> Callable[[str], int] | None:
    encode = getattr(generate_batch, "encode", None)
    return (lambda text: len(encode(text))) if encode else None


# ---------------------------------------------------------------------------------------------
# The web app
# ---------------------------------------------------------------------------------------------

def build_app(batcher: Batcher, max_new_tokens_limit: int = 32, max_prompt_chars: int = 2000,
              count_tokens: Callable[[str], int] | None = None, max_prompt_tokens: int | None = None):
    """A FastAPI app: ``POST /generate`` with JSON ``{"prompt": str, "max_new_tokens": int (optional)}`` answers
    ``{"text": str}``; ``GET /health`` answers ``{"ok": true, "batches": n}``. Bad input gets 400 or 422 with a
    one-line ``detail``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = FastAPI(title="course generation server")

    @app.exception_handler(RequestValidationError)
    async def _one_line(request: Request, exc: RequestValidationError):  # FastAPI's own errors, shortened
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return JSONResponse({"detail": "the body is not valid JSON"}, status_code=400)
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    def bad(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True, "batches": len(batcher.batch_sizes)}

    @app.post("/generate")
    async def generate(request: Request):
        import asyncio

        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return bad(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            return bad(422, "the body must be a JSON object like {\"prompt\": \"...\"}")
        unknown = set(body) - {"prompt", "max_new_tokens"}
        if unknown:
            return bad(422, f"unknown field(s): {', '.join(sorted(unknown))}; the fields are prompt, max_new_tokens")
        prompt = body.get("prompt")
        if prompt is None:
            return bad(422, "prompt: missing; send {\"prompt\": \"...\"}")
        if not isinstance(prompt, str):
            return bad(422, f"prompt: must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            return bad(422, "prompt: empty")
        n = body.get("max_new_tokens", max_new_tokens_limit)
        if isinstance(n, bool) or not isinstance(n, int):
            return bad(422, f"max_new_tokens: must be an integer, got {type(n).__name__}")
        if not 1 <= n <= max_new_tokens_limit:
            return bad(422, f"max_new_tokens: must be between 1 and {max_new_tokens_limit}, got {n}")
        if len(prompt) > max_prompt_chars:
            return bad(413, f"prompt: {len(prompt)} characters; this server accepts at most {max_prompt_chars}")
        if count_tokens is not None and max_prompt_tokens is not None:
            tokens = count_tokens(prompt)
            if tokens > max_prompt_tokens:
                return bad(413, f"prompt: {tokens} tokens; this server accepts at most {max_prompt_tokens}")
        try:
            text = await asyncio.wrap_future(batcher.submit(prompt, n))
        except Exception as exc:  # noqa: BLE001 - reported in one line, the server keeps serving
            return bad(500, f"generation failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return {"text": text}

    return app


@contextlib.contextmanager
def serve(generate_batch: Callable[[Sequence[str], int], list[str]], max_batch: int = 8, max_wait_ms: float = 10.0,
          max_new_tokens_limit: int = 32) -> Iterator[tuple[str, Batcher]]:
    """Run the app with uvicorn in a background thread on a free port of 127.0.0.1; yields ``(url, batcher)``
    and stops the server (and the batcher) on exit. ``max_batch=1`` serves one request at a time."""
    import uvicorn

    batcher = Batcher(generate_batch, max_batch=max_batch, max_wait_ms=max_wait_ms)
    app = build_app(batcher, max_new_tokens_limit, count_tokens=_int_tokens(generate_batch),
                    max_prompt_tokens=getattr(generate_batch, "max_prompt_tokens", None))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="uvicorn")
    thread.start()
    try:
        start = time.perf_counter()
        while not (server.started and server.servers):
            if not thread.is_alive() or time.perf_counter() - start > 30:
                raise RuntimeError("the server did not start (is the port range blocked?)")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", batcher
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        batcher.close()


# ---------------------------------------------------------------------------------------------
# Load test
# ---------------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation, as ``numpy.percentile``'s default."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class LoadResult:
    """What :func:`load_test` measured: answers in request order, per-request latencies (s), total wall time."""

    answers: list[str | None]
    statuses: list[int]
    latencies: list[float]
    wall_s: float

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return sum(s == 200 for s in self.statuses) / self.wall_s

    def summary(self) -> dict[str, float]:
        """Throughput and latency percentiles (p50, p90, p99, in seconds)."""
        return {"requests": len(self.statuses), "ok": sum(s == 200 for s in self.statuses),
                "throughput": self.throughput, "p50": percentile(self.latencies, 50),
                "p90": percentile(self.latencies, 90), "p99": percentile(self.latencies, 99)}


def load_test(url: str, prompts: Sequence[str], concurrency: int = 8, max_new_tokens: int = 8,
              timeout_s: float = 120.0) -> LoadResult:
    """Send every prompt to ``url/generate`` from ``concurrency`` client threads at once; each thread sends its
    next request as soon as the previous one is answered."""
    import httpx

    answers: list[str | None] = [None] * len(prompts)
    statuses = [0] * len(prompts)
    latencies = [0.0] * len(prompts)
    local = threading.local()

    def one(i: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=timeout_s)
        t0 = time.perf_counter()
        r = client.post(f"{url}/generate", json={"prompt": prompts[i], "max_new_tokens": max_new_tokens})
        latencies[i] = time.perf_counter() - t0
        statuses[i] = r.status_code
        answers[i] = r.json().get("text") if r.status_code == 200 else None

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(len(prompts))))
    return LoadResult(answers, statuses, latencies, time.perf_counter() - start)
