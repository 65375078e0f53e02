"""Scaling laws and emergence (lesson 13): sweeps of small GPTs, power-law fits, FLOP counts, and the
metrics behind "emergent" abilities.

- Sizes and parameters: :class:`Size` (layers and width of a course :class:`~course.models.GPT`),
  :func:`non_embedding_parameters` (what Kaplan et al. 2020 call N), :func:`non_embedding_formula`.
- Compute: :func:`gpt_training_flops` counts the matrix-multiply FLOPs of a forward and backward pass,
  :func:`six_n_d` is the usual shorthand ``6 N D``.
- Fits: :func:`fit_loglinear` (a straight line in log-log space once E is known), :func:`fit_power_law`
  (``L(x) = E + A / x^alpha``: a grid over E, a line at each), :func:`bootstrap_power_law` (the fit's
  uncertainty), :func:`isoflop_optimum` (a parabola in log N through an IsoFLOP profile).
- Runs: :func:`lm_data`, :func:`train_lm` (one point of a sweep), :func:`run_sweep` (several, keeping the
  finished ones when interrupted); :func:`addition_data`, :func:`train_addition`, :func:`answer_metrics`
  (exact match, per-digit accuracy and log-likelihood of the right answer, from one forward pass).
- The recorded sweep: :func:`load_reference` reads ``course/data/reference/scaling_stdlib.json``, written
  only by ``utils/record_scaling.py``.

Every function that takes numbers from a learner refuses bad ones with a one-line ``ValueError``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from course.data.tasks import IGNORE_INDEX, task_split
from course.data.text import corpus_fingerprint, stdlib_corpus, train_val_split
from course.layers import block_parameter_formula
from course.lm import fixed_windows, lm_loss, random_windows, sequence_loss
from course.models import GPT, GPTConfig
from course.seed import seed_everything
from course.tokenizers import CharTokenizer
from course.train import train
from course.utils import eval_mode

__all__ = [
    "Size", "gpt_config", "non_embedding_parameters", "non_embedding_formula",
    "gpt_training_flops", "six_n_d",
    "PowerLaw", "fit_loglinear", "fit_power_law", "BootstrapFit", "bootstrap_power_law", "isoflop_optimum",
    "LMRecipe", "LMData", "lm_data", "RunResult", "train_lm", "Sweep", "run_sweep",
    "ADDITION_CHARS", "AdditionRecipe", "AdditionData", "addition_data", "encode_addition", "answer_metrics",
    "addition_metrics", "train_addition", "REFERENCE_FILE", "load_reference", "ReferenceProblem",
    "LIVE_SIZES", "RECORDED_SIZES", "EMERGENCE_SIZES", "LIVE_EMERGENCE_SIZES", "AdditionResult", "addition_batch",
]

# ------------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class Size:
    """A GPT's depth and width; heads of 16 dimensions each (at least one), ``d_ff = 4 d_model``."""

    num_layers: int
    d_model: int

    def __post_init__(self):
        if self.num_layers < 1 or self.d_model < 1:
            raise ValueError(f"a size needs at least one layer and d_model >= 1, got {self.num_layers} and {self.d_model}")

    @property
    def num_heads(self) -> int:
        return max(1, self.d_model // 16)

    @property
    def name(self) -> str:
        return f"L{self.num_layers}-d{self.d_model}"

    def __str__(self) -> str:
        return self.name


def gpt_config(size: Size, vocab_size: int, context_length: int) -> GPTConfig:
    """The :class:`GPTConfig` of ``size`` (GELU with tanh, tied embeddings, no dropout)."""
    return GPTConfig(vocab_size=vocab_size, context_length=context_length, d_model=size.d_model,
                     num_heads=size.num_heads, num_layers=size.num_layers)


def non_embedding_parameters(model: nn.Module) -> int:
    """N in the sense of Kaplan et al. (2020): every parameter except the token and position embeddings
    (and an untied output matrix, which is the token embedding's twin). Shared tensors are counted once."""
    embeddings = set()
    for name in ("token_embedding", "position_embedding", "lm_head"):
        part = getattr(model, name, None)
        if part is not None:
            embeddings |= {id(p) for p in part.parameters()}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or id(p) in embeddings:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def non_embedding_formula(num_layers: int, d_model: int, d_ff: int | None = None) -> int:
    """The same count from the sizes alone: ``num_layers`` blocks (lesson 06's formula) and the final
    LayerNorm. About ``12 num_layers d_model^2`` when ``d_ff = 4 d_model``."""
    d_ff = 4 * d_model if d_ff is None else d_ff
    return num_layers * block_parameter_formula(d_model, d_ff, activation="gelu_tanh") + 2 * d_model


# ------------------------------------------------------------------------------------------ compute


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    return value


def gpt_training_flops(num_layers: int, d_model: int, d_ff: int, vocab_size: int, batch: int, seq: int) -> int:
    """Matrix-multiply FLOPs of one training step (forward and backward) of a GPT on ``batch`` sequences
    of ``seq`` tokens. A product ``[m, k] @ [k, n]`` costs ``2 m k n`` FLOPs (a multiply and an add each).

    Forward, per sequence: in each layer the Q, K, V projections ``2 T d 3d``, the scores ``Q K^T``
    ``2 T T d``, the weighted sum of values ``2 T T d``, the output projection ``2 T d d`` and the
    feed-forward ``2 T d d_ff`` twice; then the output layer ``2 T d V``. Backward: twice the forward
    (each product needs two of its size, one for each input's gradient), so the step is three forwards.
    Embedding lookups, norms, softmax and activations are left out (``O(T d)``, not products).
    """
    for value, name in ((num_layers, "num_layers"), (d_model, "d_model"), (d_ff, "d_ff"),
                        (vocab_size, "vocab_size"), (batch, "batch"), (seq, "seq")):
        _positive_int(value, name)
    t, d = seq, d_model
    per_layer = 2 * t * d * 3 * d + 2 * t * t * d + 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * d_ff
    forward = num_layers * per_layer + 2 * t * d * vocab_size
    return 3 * batch * forward


def six_n_d(n: float, d: float) -> float:
    """The usual estimate of training compute: ``6 N D`` FLOPs for ``N`` parameters and ``D`` tokens
    (2 per parameter per token forward, 4 backward)."""
    if not (n > 0 and d > 0):
        raise ValueError(f"parameters and tokens must be positive, got N={n!r}, D={d!r}")
    return 6.0 * n * d


# ------------------------------------------------------------------------------------------ fits


@dataclass(frozen=True)
class PowerLaw:
    """``L(x) = E + A / x^alpha``: E is the loss that no size (or amount of data) removes."""

    E: float
    A: float
    alpha: float

    def __call__(self, x):
        x = torch.as_tensor(x, dtype=torch.float64)
        return self.E + self.A * x.pow(-self.alpha)

    def __str__(self) -> str:
        return f"L = {self.E:.3f} + {self.A:.3g} / x^{self.alpha:.3f}"


def _as_points(x, y, names: tuple[str, str], need: int) -> tuple[Tensor, Tensor]:
    """``x, y`` as float64 1-D tensors of equal length, positive and finite, at least ``need`` points."""
    try:
        xt = torch.as_tensor(x, dtype=torch.float64).flatten()
        yt = torch.as_tensor(y, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{names[0]} and {names[1]} must be sequences of numbers") from None
    if xt.numel() != yt.numel():
        raise ValueError(f"{xt.numel()} {names[0]} but {yt.numel()} {names[1]}: each point needs one of each")
    for t, name in ((xt, names[0]), (yt, names[1])):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"the {name} hold NaN or inf: a run that diverged? leave it out of the fit")
        if bool((t <= 0).any()):
            raise ValueError(f"the {name} must be positive (the fit takes logarithms), got {t.min().item():g}")
    if xt.numel() < need:
        raise ValueError(f"a fit with {need} parameters needs at least {need} points, got {xt.numel()}")
    if torch.unique(xt).numel() < 2:
        raise ValueError(f"the {names[0]} must take at least two different values to fit a slope")
    return xt, yt


def fit_loglinear(x, loss, E: float = 0.0) -> tuple[float, float]:
    """``(A, alpha)`` of ``loss - E = A / x^alpha``: least squares of ``log(loss - E)`` on ``log x``,
    a straight line with slope ``-alpha`` and intercept ``log A`` (natural logarithms)."""
    xt, yt = _as_points(x, loss, ("sizes", "losses"), 2)
    if not E < float(yt.min()):
        raise ValueError(f"E = {E:g} must lie below every loss (the smallest is {float(yt.min()):g})")
    u, v = xt.log(), (yt - E).log()
    du = u - u.mean()
    slope = float((du * (v - v.mean())).sum() / (du * du).sum())
    intercept = float(v.mean()) - slope * float(u.mean())
    return math.exp(intercept), -slope


def _grid_fits(u: Tensor, y: Tensor, grid: int, rounds: int, top: Tensor, E: float | None = None) -> Tensor:
    """Batched search over E: ``u [n]`` (log sizes), ``y [S, n]`` (S sets of losses), ``top [S]`` (E stays
    below it) -> ``[S, 3]`` rows of (E, A, alpha). For every candidate E, the line of ``log(y - E)`` on ``u``
    by least squares; the candidate whose curve has the smallest squared error of ``log y`` wins; then a
    finer grid around the winner, ``rounds`` times in all. A given ``E`` is the only candidate."""
    du = u - u.mean()
    t = torch.linspace(0.0, 1.0, grid, dtype=torch.float64)
    if E is None:
        lo, hi = torch.zeros_like(top), top * (1 - 1e-9)
    else:
        lo, hi, top = torch.full_like(top, E), torch.full_like(top, E), torch.full_like(top, E / (1 - 1e-9))
    log_y = y.log()[:, None, :]                                             # [S, 1, n]
    for _ in range(max(1, rounds)):
        E = lo[:, None] + (hi - lo)[:, None] * t                             # [S, G]
        v = (y[:, None, :] - E[..., None]).log()                            # [S, G, n]
        slope = (du * (v - v.mean(-1, keepdim=True))).sum(-1) / (du * du).sum()
        log_a = v.mean(-1) - slope * u.mean()
        pred = E[..., None] + (log_a[..., None] + slope[..., None] * u).exp()
        err = ((pred.log() - log_y) ** 2).sum(-1).nan_to_num(nan=math.inf)  # [S, G]
        best = err.argmin(-1)
        rows = torch.arange(y.shape[0])
        e_best, a_best, s_best = E[rows, best], log_a[rows, best].exp(), slope[rows, best]
        step = (hi - lo) / (grid - 1)
        lo, hi = (e_best - step).clamp(min=0.0), torch.minimum(e_best + step, top * (1 - 1e-9))
    return torch.stack([e_best, a_best, -s_best], dim=1)


def fit_power_law(x, loss, grid: int = 200, rounds: int = 3, E: float | None = None) -> PowerLaw:
    """Fit ``L(x) = E + A / x^alpha`` to the points, by the squared error of ``log L``.

    For a fixed E the model is a straight line in log-log space (:func:`fit_loglinear`), so the search is
    only over E: ``grid`` values from 0 to just below the smallest loss, the one whose curve fits best,
    then ``rounds - 1`` finer grids around it. (For each E the line is the least-squares one for
    ``log(L - E)``, a hair off the best for ``log L``; tests/course/test_scaling.py bounds the difference.)
    Needs at least 3 points (three parameters), all positive and finite. ``E`` given (e.g. 0 for Kaplan et
    al.'s pure power law ``A / x^alpha``): only A and alpha are fitted, from at least 2 points.
    """
    xt, yt = _as_points(x, loss, ("sizes", "losses"), 3 if E is None else 2)
    if E is not None and not 0 <= E < float(yt.min()):
        raise ValueError(f"E = {E:g} must lie in [0, smallest loss = {float(yt.min()):g})")
    E, A, alpha = _grid_fits(xt.log(), yt[None], grid, rounds, yt.min()[None], E)[0].tolist()
    return PowerLaw(E, A, alpha)


@dataclass
class BootstrapFit:
    """A fit and the spread of its parameters over bootstrap resamples."""

    fit: PowerLaw
    samples: list[PowerLaw]

    def values(self, name: str) -> Tensor:
        return torch.tensor([getattr(s, name) for s in self.samples], dtype=torch.float64)

    def std(self, name: str = "alpha") -> float:
        return float(self.values(name).std())

    def interval(self, name: str = "alpha", level: float = 0.9) -> tuple[float, float]:
        v = self.values(name)
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
        lo, hi = torch.quantile(v, q).tolist()
        return lo, hi

    def describe(self, name: str = "alpha") -> str:
        lo, hi = self.interval(name)
        return f"{name} = {getattr(self.fit, name):.3f} ± {self.std(name):.3f} (90% of resamples in {lo:.3f}..{hi:.3f})"


def bootstrap_power_law(x, loss, samples: int = 200, seed: int = 0, **fit_options) -> BootstrapFit:
    """:func:`fit_power_law` and its uncertainty by a residual bootstrap over the points.

    Fit once; take each point's residual in log space, ``r_i = log L_i - log L(x_i)``; then ``samples``
    times draw the residuals back with replacement, put them on the fitted curve, ``L(x_i) e^{r*_i}``, and
    fit again. The spread of the refitted exponents is the uncertainty the scatter of these few points
    allows. (Resampling whole points instead would often leave fewer than three distinct sizes.)
    """
    fixed = fit_options.get("E")
    xt, yt = _as_points(x, loss, ("sizes", "losses"), 3 if fixed is None else 2)
    if samples < 2:
        raise ValueError(f"a bootstrap needs at least 2 resamples, got {samples}")
    fit = fit_power_law(xt, yt, **fit_options)
    pred = fit(xt)
    residuals = yt.log() - pred.log()
    n = xt.numel()
    free = 3 if fixed is None else 2
    scale = math.sqrt(n / (n - free)) if n > free else 1.0   # residuals of a fit run smaller than the noise
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n, (samples, n), generator=g)
    resampled = pred * (scale * residuals[picks]).exp()                     # [samples, n]
    rows = _grid_fits(xt.log(), resampled, fit_options.get("grid", 200), fit_options.get("rounds", 3),
                      resampled.min(-1).values, fixed)
    out = [PowerLaw(*row) for row in rows.tolist()]
    return BootstrapFit(fit, out)


def isoflop_optimum(n, loss) -> float:
    """The size with the lowest loss on an IsoFLOP profile (runs of equal compute): the vertex of a
    parabola fitted to ``loss`` against ``log n`` (Hoffmann et al. 2022's second approach). Needs at least
    3 sizes; a parabola that opens downwards (no minimum) is refused."""
    xt, yt = _as_points(n, loss, ("sizes", "losses"), 3)
    u = xt.log()
    X = torch.stack([u * u, u, torch.ones_like(u)], dim=1)
    a, b, _ = torch.linalg.lstsq(X, yt[:, None]).solution[:, 0].tolist()
    if a <= 0:
        raise ValueError("the losses do not curve upwards on both sides: no minimum inside this profile")
    return math.exp(-b / (2 * a))


# ------------------------------------------------------------------------------------------ language-model runs


@dataclass(frozen=True)
class LMRecipe:
    """How every point of the language-model sweeps is trained (the live and the recorded ones alike)."""

    context_length: int = 64
    batch_size: int = 32
    steps: int = 300
    lr: float = 3e-3
    val_windows: int = 128
    seed: int = 0

    def tokens(self, steps: int | None = None) -> int:
        """Training tokens D of a run: steps x batch x context."""
        return (self.steps if steps is None else steps) * self.batch_size * self.context_length

    def steps_for(self, tokens: float) -> int:
        """The whole number of steps closest to ``tokens`` training tokens (at least 1)."""
        return max(1, round(tokens / (self.batch_size * self.context_length)))


@dataclass
class LMData:
    """The stdlib corpus as character ids: training ids, fixed validation windows, its fingerprint."""

    tokenizer: CharTokenizer
    train_ids: Tensor
    val_x: Tensor
    val_y: Tensor
    fingerprint: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def lm_data(recipe: LMRecipe = LMRecipe()) -> LMData:
    """Python's standard-library source (lesson 08's corpus), one id per character; the last 10% held out,
    its first ``recipe.val_windows`` windows of ``context_length`` characters the validation set."""
    text = stdlib_corpus()
    tokenizer = CharTokenizer.fit(text)
    train_text, val_text = train_val_split(text, val_fraction=0.1)
    train_ids = torch.tensor(tokenizer.encode(train_text))
    val_ids = torch.tensor(tokenizer.encode(val_text))
    val_x, val_y = fixed_windows(val_ids, recipe.context_length, max_windows=recipe.val_windows)
    return LMData(tokenizer, train_ids, val_x, val_y, corpus_fingerprint(text))


@dataclass
class RunResult:
    """One trained point: its size, N (non-embedding parameters), training tokens D, validation loss."""

    size: str
    num_layers: int
    d_model: int
    params: int
    steps: int
    tokens: int
    val_loss: float
    seconds: float = 0.0

    @property
    def compute(self) -> float:
        """``6 N D`` FLOPs."""
        return six_n_d(self.params, self.tokens)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunResult":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def train_lm(size: Size, data: LMData, recipe: LMRecipe = LMRecipe(), steps: int | None = None,
             device: torch.device | str | None = None) -> RunResult:
    """Train a GPT of ``size`` on ``data`` with ``recipe`` (``steps`` overrides its step count) and return
    its validation loss in nats per character. Seeded: the same call gives the same result on a CPU."""
    steps = recipe.steps if steps is None else _positive_int(steps, "steps")
    seed_everything(recipe.seed)
    model = GPT(gpt_config(size, data.vocab_size, recipe.context_length))
    batches = torch.Generator().manual_seed(recipe.seed)
    history = train(
        model,
        next_batch=lambda step: random_windows(data.train_ids, recipe.batch_size, recipe.context_length, generator=batches),
        loss_fn=lambda m, batch: lm_loss(m(batch[0]), batch[1]),
        steps=steps, lr=recipe.lr, warmup=max(10, steps // 20),
        eval_fn=lambda m: sequence_loss(m, data.val_x, data.val_y), eval_every=0,
        desc=f"{size.name}, {steps} steps", device=device)
    return RunResult(size.name, size.num_layers, size.d_model, non_embedding_parameters(model), steps,
                     recipe.tokens(steps), history.final_eval, history.seconds)


@dataclass
class Sweep:
    """The finished runs of a sweep; ``complete`` is False when it stopped early, ``message`` says why."""

    results: list
    planned: int
    message: str = ""

    @property
    def complete(self) -> bool:
        return len(self.results) == self.planned


def run_sweep(jobs: Sequence[Any], run: Callable[[Any], Any], what: str = "sweep") -> Sweep:
    """``run(job)`` for each job in turn. Interrupted (the notebook's stop button, Ctrl-C) or failing half-way,
    it keeps the runs that finished and says in ``message``, in one line, what happened."""
    results = []
    for i, job in enumerate(jobs):
        try:
            results.append(run(job))
        except KeyboardInterrupt:
            return Sweep(results, len(jobs), f"the {what} was interrupted during run {i + 1} of {len(jobs)} "
                                             f"({job}); {len(results)} finished run(s) kept")
        except (ValueError, FloatingPointError, RuntimeError) as err:
            line = str(err).splitlines()[0] if str(err) else type(err).__name__
            return Sweep(results, len(jobs), f"the {what} stopped at run {i + 1} of {len(jobs)} ({job}): {line}; "
                                             f"{len(results)} finished run(s) kept")
    return Sweep(results, len(jobs))


# ------------------------------------------------------------------------------------------ addition and emergence

ADDITION_CHARS = "0123456789+="
ANSWER_DIGITS = 3
PROMPT_LENGTH = 6          # "37+48=" ; the answer follows, zero-padded to three digits: "085"


def encode_addition(pairs: Sequence[tuple[str, str]]) -> Tensor:
    """``("37+48", "85")`` pairs -> ``[n, 9]`` ids of ``"37+48=085"``: operands and answer zero-padded, so
    every digit has a fixed position."""
    rows = []
    for src, tgt in pairs:
        a, b = src.split("+")
        text = f"{int(a):02d}+{int(b):02d}={int(tgt):0{ANSWER_DIGITS}d}"
        rows.append([ADDITION_CHARS.index(c) for c in text])
    return torch.tensor(rows, dtype=torch.long)


@dataclass
class AdditionData:
    """Two-digit additions (``course.data.tasks``'s task): disjoint training and test problems."""

    train: Tensor   # [n_train, 9]
    test: Tensor    # [n_test, 9]


def addition_data(n_train: int = 8000, n_test: int = 2000, seed: int = 0) -> AdditionData:
    """All 10,000 sums ``a + b`` of ``a, b`` in 0..99, split without overlap (``task_split``)."""
    train_pairs, test_pairs = task_split("addition", n_train, n_test, seed=seed)
    return AdditionData(encode_addition(train_pairs), encode_addition(test_pairs))


def addition_batch(examples: Tensor) -> tuple[Tensor, Tensor]:
    """``[n, 9]`` -> ``(x [n, 8], y [n, 8])``: the GPT reads ``x`` and predicts ``y`` (x shifted by one);
    the prompt's targets are :data:`IGNORE_INDEX`, so only the three answer digits count."""
    x, y = examples[:, :-1], examples[:, 1:].clone()
    y[:, :PROMPT_LENGTH - 1] = IGNORE_INDEX
    return x, y


def answer_metrics(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Three scores of the same predictions, with teacher forcing.

    ``logits [n, t, vocab]``, ``targets [n, t]`` (ids), ``mask [n, t]`` (bool, True at the answer's tokens;
    each row has at least one). Returns 0-d tensors:

    - exact match: the fraction of rows whose every masked position has ``argmax == target``;
    - per-token accuracy: correct masked positions over all masked positions;
    - log-likelihood: the sum over each row's masked positions of ``log p(target)``, averaged over rows.

    Exact match from one teacher-forced pass equals greedy decoding's: if every digit is the argmax given
    the right digits before it, greedy decoding writes exactly those digits, and the reverse.
    """
    logp = logits.float().log_softmax(dim=-1)
    safe = targets.masked_fill(~mask, 0)
    correct = (logp.argmax(dim=-1) == safe) & mask
    exact = (correct | ~mask).all(dim=-1).float().mean()
    per_token = correct.sum().float() / mask.sum()
    target_logp = logp.gather(-1, safe[..., None])[..., 0].masked_fill(~mask, 0.0)
    return exact, per_token, target_logp.sum(dim=-1).mean()


@torch.no_grad()
def addition_metrics(model: nn.Module, examples: Tensor, batch_size: int = 1000) -> dict:
    """Exact match, per-digit accuracy, log-likelihood of the right answer (nats) and the accuracy of
    each answer digit (hundreds, tens, units) of ``model`` on ``examples [n, 9]``."""
    device = next(model.parameters()).device
    logits, targets = [], []
    with eval_mode(model):
        for i in range(0, examples.shape[0], batch_size):
            x, y = addition_batch(examples[i: i + batch_size])
            logits.append(model(x.to(device)).float().cpu())
            targets.append(y)
    logits, targets = torch.cat(logits), torch.cat(targets)
    mask = targets != IGNORE_INDEX
    exact, per_digit, loglik = answer_metrics(logits, targets, mask)
    answer = slice(PROMPT_LENGTH - 1, None)
    by_position = (logits[:, answer].argmax(-1) == targets[:, answer]).float().mean(0)
    return {"exact_match": float(exact), "per_digit": float(per_digit), "log_likelihood": float(loglik),
            "by_digit": [round(float(v), 4) for v in by_position]}


@dataclass(frozen=True)
class AdditionRecipe:
    """How every model of the emergence sweep is trained."""

    batch_size: int = 64
    steps: int = 600
    lr: float = 3e-3
    seed: int = 0


@dataclass
class AdditionResult:
    """One model of the emergence sweep and its three scores on held-out sums."""

    size: str
    params: int
    seed: int
    exact_match: float
    per_digit: float
    log_likelihood: float
    by_digit: list = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AdditionResult":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def train_addition(size: Size, data: AdditionData, recipe: AdditionRecipe = AdditionRecipe(),
                   device: torch.device | str | None = None) -> AdditionResult:
    """Train a GPT of ``size`` on the training sums (loss on the answer digits only) and score it on
    the test sums. Seeded."""
    seed_everything(recipe.seed)
    model = GPT(GPTConfig(vocab_size=len(ADDITION_CHARS), context_length=data.train.shape[1] - 1,
                          d_model=size.d_model, num_heads=size.num_heads, num_layers=size.num_layers))
    picks = torch.Generator().manual_seed(recipe.seed)
    history = train(
        model,
        next_batch=lambda step: addition_batch(data.train[torch.randint(0, data.train.shape[0], (recipe.batch_size,),
                                                                        generator=picks)]),
        loss_fn=lambda m, batch: lm_loss(m(batch[0]), batch[1]),
        steps=recipe.steps, lr=recipe.lr, warmup=20, eval_every=0,
        desc=f"{size.name} on addition", device=device)
    scores = addition_metrics(model, data.test)
    return AdditionResult(size.name, non_embedding_parameters(model), recipe.seed, seconds=history.seconds, **scores)


# ------------------------------------------------------------------------------------------ the sweeps' sizes

#: The live sweep's sizes (the four smallest of the recorded sweep, trained with the same recipe).
LIVE_SIZES = (Size(1, 16), Size(1, 24), Size(1, 32), Size(2, 32))
#: The recorded sweep's sizes: 3.3k to 234k non-embedding parameters (70x).
RECORDED_SIZES = LIVE_SIZES + (Size(2, 48), Size(2, 64), Size(3, 80))
#: The emergence sweep's sizes: one-layer GPTs of growing width, 3.3k to 112k non-embedding parameters (34x).
EMERGENCE_SIZES = (Size(1, 16), Size(1, 24), Size(1, 32), Size(1, 40), Size(1, 48), Size(1, 64), Size(1, 96))
#: The live emergence runs: the smallest one-layer GPT and one past the jump (both recorded too, seed 0).
LIVE_EMERGENCE_SIZES = (Size(1, 16), Size(1, 48))

# ------------------------------------------------------------------------------------------ the recorded reference

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "reference"
REFERENCE_FILE = REFERENCE_DIR / "scaling_stdlib.json"


class ReferenceProblem(ValueError):
    """The recorded sweep cannot be used (missing, unreadable, another corpus, incomplete)."""


def load_reference(path: str | Path = REFERENCE_FILE, fingerprint: str | None = None) -> dict:
    """The recorded sweep written by ``utils/record_scaling.py``, with its runs as :class:`RunResult` and
    :class:`AdditionResult`. Raises :class:`ReferenceProblem` with a one-line reason when the file is
    missing or unreadable, was recorded on another corpus (``fingerprint``, default: this machine's
    ``corpus_fingerprint(stdlib_corpus())``), or was interrupted before it finished."""
    path = Path(path)
    if not path.exists():
        raise ReferenceProblem(f"no recorded sweep ({path.name} is missing; `python utils/record_scaling.py` "
                               "writes it)")
    try:
        ref = json.loads(path.read_text(encoding="utf-8"))
        sections = {k: [RunResult.from_dict(r) for r in ref[k]] for k in ("params_sweep", "data_sweep", "isoflop")}
        emergence = [AdditionResult.from_dict(r) for r in ref["emergence"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReferenceProblem(f"the recorded sweep {path.name} cannot be read ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})") from None
    want = corpus_fingerprint(stdlib_corpus()) if fingerprint is None else fingerprint
    if ref.get("corpus_fingerprint") != want:
        raise ReferenceProblem(f"the recorded sweep was trained on another corpus (fingerprint "
                               f"{ref.get('corpus_fingerprint')}, this one {want}): its losses are not comparable")
    if not ref.get("complete", False):
        raise ReferenceProblem(f"the recorded sweep {path.name} is incomplete (its recording was interrupted: "
                               f"{ref.get('stopped', 'no reason given')})")
    ref.update(sections, emergence=emergence)
    return ref
