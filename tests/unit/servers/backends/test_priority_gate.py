"""The priority gate: bulk forwards pause at layer boundaries while a priority forward runs."""

from __future__ import annotations

import threading
import time

import torch

from servers.backends.device import choose_placement
from servers.backends.torch_runtime import LaneStreams, PriorityGate


class _Stack(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(n))
        self.seen: list[tuple[str, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            self.seen.append((threading.current_thread().name, i))
        return x


def test_watch_hooks_every_layer_of_the_longest_stack() -> None:
    model = _Stack(5)
    assert PriorityGate().watch(model) == 5


def test_bulk_forward_waits_while_priority_forward_runs() -> None:
    model = _Stack(6)
    lanes = LaneStreams(choose_placement("cpu"), model)
    priority_entered = threading.Event()
    release_priority = threading.Event()

    def priority() -> None:
        with lanes.use("priority"):
            priority_entered.set()
            release_priority.wait(5)
            model(torch.ones(1, 4))

    def bulk() -> None:
        with lanes.use("bulk"):
            model(torch.ones(1, 4))

    p = threading.Thread(target=priority, name="prio")
    p.start()
    assert priority_entered.wait(5)
    b = threading.Thread(target=bulk, name="bulk")
    b.start()
    time.sleep(0.3)
    # The bulk forward is parked before its first layer while the priority forward is in flight.
    assert [s for s in model.seen if s[0] == "bulk"] == []
    release_priority.set()
    p.join(5)
    b.join(5)
    names = [name for name, _ in model.seen]
    assert names == ["prio"] * 6 + ["bulk"] * 6


def test_bulk_forward_runs_freely_without_priority_work() -> None:
    model = _Stack(3)
    lanes = LaneStreams(choose_placement("cpu"), model)
    with lanes.use("bulk"):
        model(torch.ones(1, 4))
    assert len(model.seen) == 3


def test_gate_without_pause_lets_bulk_run_beside_a_priority_forward() -> None:
    model = _Stack(3)
    gate = PriorityGate(pause_bulk=False)
    gate.watch(model)
    release_priority = threading.Event()
    entered = threading.Event()

    def priority() -> None:
        with gate.lane("priority"):
            entered.set()
            release_priority.wait(5)

    p = threading.Thread(target=priority)
    p.start()
    assert entered.wait(5)
    with gate.lane("bulk"):
        model(torch.ones(1, 4))  # would block until release_priority with the default gate
    assert len(model.seen) == 3
    release_priority.set()
    p.join(5)
