"""The training loop learns, records its history, schedules the learning rate and refuses bad input."""
import math

import pytest
import torch
from torch import nn

from course.seed import seed_everything
from course.train import History, evaluate, lr_at, train


def _regression_problem():
    seed_everything(0)
    w = torch.randn(4, 1)
    x = torch.randn(256, 4)
    return x, x @ w


def test_train_fits_a_linear_regression_and_records_every_step():
    x, y = _regression_problem()
    model = nn.Linear(4, 1)
    loss_fn = lambda m, batch: nn.functional.mse_loss(m(batch[0]), batch[1])  # noqa: E731
    batch = lambda step: (x[(step * 32) % 256:][:32], y[(step * 32) % 256:][:32])  # noqa: E731
    history = train(model, batch, loss_fn, steps=300, lr=0.05, weight_decay=0.0,
                    eval_fn=lambda m: float(loss_fn(m, (x, y))), eval_every=100)
    assert len(history.train_loss) == 300 and history.steps == list(range(300))
    assert history.eval_steps == [99, 199, 299]
    assert history.final_eval < 1e-3 < history.train_loss[0]
    assert history.seconds > 0


def test_train_continues_a_history():
    x, y = _regression_problem()
    model = nn.Linear(4, 1)
    loss_fn = lambda m, batch: nn.functional.mse_loss(m(x), y)  # noqa: E731
    history = train(model, lambda s: None, loss_fn, steps=5)
    history = train(model, lambda s: None, loss_fn, steps=5, history=history)
    assert history.steps == list(range(10))


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, 100, 1.0, warmup=10, min_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1)


def test_evaluate_restores_training_mode_and_rejects_no_batches():
    model = nn.Linear(2, 1)
    model.train()
    assert evaluate(model, [torch.ones(1, 2)], lambda m, b: m(b).sum()) == pytest.approx(float(model(torch.ones(1, 2)).sum().detach()))
    assert model.training
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [], lambda m, b: m(b).sum())


def test_a_diverging_loss_stops_training_with_a_message():
    model = nn.Linear(1, 1)
    with pytest.raises(FloatingPointError, match="smaller learning rate"):
        train(model, lambda s: None, lambda m, b: m.weight.sum() * float("inf"), steps=3)


def test_history_smoothing_is_a_running_mean():
    h = History(train_loss=[4.0, 2.0, 0.0, 2.0])
    assert h.smoothed(window=2) == [4.0, 3.0, 1.0, 1.0]


def test_train_moves_the_model_and_every_batch_to_the_device_and_records_it(monkeypatch):
    """Only a CPU here: the move is watched by a spy (the batch's nested tensors are moved for real)."""
    import course.train as course_train
    from course.device import to_device

    x, y = _regression_problem()
    moved_to, seen = [], []

    def spy(batch, device):
        moved_to.append(device)
        return to_device(batch, device)

    monkeypatch.setattr(course_train, "to_device", spy)
    model = nn.Linear(4, 1)
    model_to = []
    real_to = model.to
    monkeypatch.setattr(model, "to", lambda *a, **k: model_to.append(a) or real_to(*a, **k))

    def loss_fn(m, batch):
        seen.append(type(batch["xy"]).__name__)
        return nn.functional.mse_loss(m(batch["xy"][0]), batch["xy"][1])
    history = train(model, lambda step: {"xy": (x[:32], y[:32])}, loss_fn, steps=3, device="cpu")
    assert model_to == [("cpu",)] and moved_to == ["cpu"] * 3 and seen == ["tuple"] * 3
    assert history.device == "cpu"
    # without a device, nothing is moved and the history names where the model was
    history = train(nn.Linear(4, 1), lambda step: (x[:32], y[:32]),
                    lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), steps=2)
    assert moved_to[3:] == [None, None] and history.device == "cpu"


def test_to_device_walks_tuples_lists_dicts_and_dataclasses():
    from dataclasses import dataclass

    from course.device import to_device

    @dataclass
    class Batch:
        ids: torch.Tensor
        name: str

    batch = {"a": (torch.zeros(2), [torch.ones(1), 3]), "b": Batch(torch.zeros(1), "x")}
    moved = to_device(batch, "meta")          # a real move, to PyTorch's shape-only device
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta" and moved["a"][1][1] == 3
    assert moved["b"].ids.device.type == "meta" and moved["b"].name == "x"
    assert to_device(batch, None) is batch


# ----------------------------------------------------------------------------- the loop's three choices (lesson 08)

def _tiny_gpt(tied: bool = True):
    from course.models import GPT, GPTConfig

    seed_everything(0)
    return GPT(GPTConfig(vocab_size=13, context_length=8, d_model=16, num_heads=2, num_layers=2, tie_weights=tied))


def test_decay_groups_put_every_parameter_in_exactly_one_group_and_no_norm_or_bias_in_the_decayed_one():
    from course.train import decay_groups

    for tied in (True, False):
        model = _tiny_gpt(tied)
        decayed, plain = decay_groups(model, 0.3)
        assert decayed["weight_decay"] == 0.3 and plain["weight_decay"] == 0.0
        ids = [id(p) for p in decayed["params"] + plain["params"]]
        assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
        names = {id(p): n for n, p in model.named_parameters()}
        decayed_names = {names[id(p)] for p in decayed["params"]}
        assert not any(n.endswith("bias") or "norm" in n for n in decayed_names), decayed_names
        assert {"token_embedding.weight", "position_embedding.embedding.weight",
                "blocks.0.self_attn.q_proj.weight", "blocks.1.ffn.linear2.weight"} <= decayed_names
        assert ("lm_head.weight" in decayed_names) == (not tied)     # tied: the embedding's tensor, listed once
        assert {"blocks.0.norm1.weight", "final_norm.bias", "blocks.1.ffn.linear1.bias"} <= {names[id(p)] for p in plain["params"]}
        torch.optim.AdamW([decayed, plain], lr=1e-3)                 # AdamW accepts them (it refuses duplicates)


def test_decay_groups_leave_out_frozen_parameters():
    from course.train import decay_groups

    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    model[0].weight.requires_grad_(False)
    decayed, plain = decay_groups(model, 0.1)
    assert decayed["params"] == [] and len(plain["params"]) == 3


def test_lr_schedule_values_at_chosen_steps():
    """Warm-up: lr (s + 1) / warmup; then lr (r + (1 - r) (1 + cos(pi p)) / 2), p = (s - warmup) / (steps - warmup - 1)."""
    lr, steps, warmup, r = 2.0, 22, 5, 0.1            # cosine over steps 5..21: p = (s - 5) / 16
    assert [lr_at(s, steps, lr, warmup, r) for s in range(5)] == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0])
    assert lr_at(5, steps, lr, warmup, r) == pytest.approx(2.0)                        # p = 0: the peak
    assert lr_at(13, steps, lr, warmup, r) == pytest.approx(lr * (r + (1 - r) * 0.5))  # p = 1/2: halfway down
    assert lr_at(9, steps, lr, warmup, r) == pytest.approx(lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi / 4))))
    assert lr_at(21, steps, lr, warmup, r) == pytest.approx(0.2)                       # the last step: the floor
    assert lr_at(25, steps, lr, warmup, r) == pytest.approx(0.2)                       # and it stays there
    assert lr_at(0, 1, lr) == pytest.approx(lr)                                        # one step, no warm-up
    with pytest.raises(ValueError, match="min_ratio"):
        lr_at(0, 10, lr, min_ratio=1.5)


def test_train_uses_the_decay_groups_and_the_schedule_of_course_train(monkeypatch):
    """train() builds AdamW from course.train.decay_groups and sets each step's lr with course.train.lr_at."""
    import course.train as course_train

    calls = {"groups": 0, "lr_at": []}
    real_groups, real_lr_at = course_train.decay_groups, course_train.lr_at

    def groups_spy(model, weight_decay):
        calls["groups"] += 1
        return real_groups(model, weight_decay)

    def lr_spy(step, steps, lr, warmup=0, min_ratio=0.1):
        calls["lr_at"].append((step, steps, lr, warmup, min_ratio))
        return real_lr_at(step, steps, lr, warmup, min_ratio)

    monkeypatch.setattr(course_train, "decay_groups", groups_spy)
    monkeypatch.setattr(course_train, "lr_at", lr_spy)
    model = _tiny_gpt()
    seen_groups = []
    real_step = torch.optim.AdamW.step

    def step_spy(self, *args, **kwargs):
        seen_groups.append([(g["lr"], g["weight_decay"], len(g["params"])) for g in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_spy)
    ids = torch.randint(0, 13, (4, 8), generator=torch.Generator().manual_seed(0))
    history = course_train.train(model, lambda s: ids, lambda m, b: m(b).logsumexp(-1).mean(), steps=6, lr=0.01,
                                 warmup=2, weight_decay=0.2, min_lr_ratio=0.05)
    assert calls["groups"] == 1 and calls["lr_at"] == [(i, 6, 0.01, 2, 0.05) for i in range(6)]
    decayed, plain = real_groups(model, 0.2)
    for i, groups in enumerate(seen_groups):
        want_lr = real_lr_at(i, 6, 0.01, 2, 0.05)
        assert groups == [(want_lr, 0.2, len(decayed["params"])), (want_lr, 0.0, len(plain["params"]))]
    assert history.lrs == [real_lr_at(i, 6, 0.01, 2, 0.05) for i in range(6)]


def test_train_clips_the_gradient_norm_and_records_it():
    """With SGD (no momentum) a step moves the weights by lr * gradient, so the step's size shows the clipping."""
    x, y = _regression_problem()
    for clip in (None, 0.5):
        model = nn.Linear(4, 1)
        with torch.no_grad():
            model.weight.fill_(5.0)          # far from the solution: a gradient norm well above 0.5
        before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        loss_fn = lambda m, batch: nn.functional.mse_loss(m(batch[0]), batch[1])  # noqa: E731
        grads = torch.autograd.grad(loss_fn(model, (x, y)), list(model.parameters()))
        norm = float(torch.cat([g.flatten() for g in grads]).norm())
        history = train(model, lambda s: (x, y), loss_fn, steps=1, lr=0.1, grad_clip=clip,
                        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
        moved = float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())
        assert history.grad_norms == [pytest.approx(norm, rel=1e-5)] and norm > 1.0
        if clip is None:
            assert moved == pytest.approx(0.1 * norm, rel=1e-4) and history.clipped == [False]
        else:
            assert moved == pytest.approx(0.1 * clip, rel=1e-4) and history.clipped == [True]


def test_train_equals_the_loop_written_out():
    """train() is the loop lesson 08 writes by hand: the same losses, step for step, from the same start."""
    from course.train import decay_groups

    ids = torch.randint(0, 13, (16, 8), generator=torch.Generator().manual_seed(1))
    loss_fn = lambda m, b: nn.functional.cross_entropy(m(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten())  # noqa: E731
    batch = lambda step: ids[(step * 4) % 16:][:4]  # noqa: E731

    model = _tiny_gpt()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.1), lr=0.01)
    by_hand = []
    model.train()
    for step in range(8):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, 8, 0.01, 3)
        loss = loss_fn(model, batch(step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        by_hand.append(loss.item())
    history = train(_tiny_gpt(), batch, loss_fn, steps=8, lr=0.01, warmup=3, weight_decay=0.1, grad_clip=0.5)
    assert history.train_loss == by_hand
