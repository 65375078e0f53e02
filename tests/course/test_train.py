"""The training loop learns, records its history, schedules the learning rate and refuses bad input."""
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
