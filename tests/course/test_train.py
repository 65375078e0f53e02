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
