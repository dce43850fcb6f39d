"""The training loop moves the EMA teacher, and only by the EMA rule.

A spy subclass of CTFAStep records the student and teacher projection heads at the start of
every step of a real ``train`` run; between two steps the teacher must have become exactly
``m·teacher + (1 − m)·student`` (the student after the step's optimiser update), element by
element, and after three steps it must differ from where it started.
"""

from __future__ import annotations

import torch

import ctfa_cli.training.loop as loop_module
from ctfa_cli.training.loop import train
from ctfa_cli.training.step import CTFAStep
from tests.training.helpers import tiny_config


def _heads(net) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return ({n: p.detach().clone() for n, p in net.proj_head.named_parameters()},
            {n: p.detach().clone() for n, p in net.proj_head_t.named_parameters()})


def _ema(teacher: dict, student: dict, m: float) -> dict:
    # The same float32 operations as the reference's `m·t + (1 − m)·s`.
    return {n: teacher[n] * m + student[n] * (1.0 - m) for n in teacher}


def _assert_heads_equal(a: dict, b: dict, what: str) -> None:
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=2.5e-7 * float(b[n].abs().max())
                                   + 1e-12, msg=lambda msg, n=n: f"{what} {n}: {msg}")


def test_teacher_follows_the_student_by_the_ema_rule(datadir, tmp_path, monkeypatch):
    seen: list[tuple[dict, dict]] = []

    class Spy(CTFAStep):
        def forward(self, batch, step):
            seen.append(_heads(self.network))
            return super().forward(batch, step)

    monkeypatch.setattr(loop_module, "CTFAStep", Spy)
    cfg = tiny_config()
    m = cfg.ema_momentum
    assert 0 < m < 1
    result = train(datadir, tmp_path / "run", cfg, max_iters=3, device="cpu")
    assert result.step == 3 and result.skipped == 0 and len(seen) == 3
    student0, teacher0 = seen[0]
    _assert_heads_equal(teacher0, student0, "initial teacher = student copy")
    final = _heads(result.model)
    after = [*seen[1:], final]  # heads after steps 1, 2, 3
    teacher = teacher0
    for k, (student_k, teacher_k) in enumerate(after, start=1):
        assert any(not torch.equal(student_k[n], seen[k - 1][0][n]) for n in student_k), k
        expected = _ema(teacher, student_k, m)
        _assert_heads_equal(teacher_k, expected, f"teacher after step {k}")
        teacher = teacher_k
    moved = max(float((final[1][n] - teacher0[n]).abs().max()) for n in teacher0)
    assert moved > 1e-6, "the teacher never moved"
