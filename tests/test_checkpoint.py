"""focal_calibration.experiments.checkpoint: atomic writes, clear errors for bad files, exact RNG round trips, resume
checks."""

import os
import random

import numpy as np
import pytest
import torch

from focal_calibration.experiments.checkpoint import (capture_rng_state, check_resume_compatible, load_checkpoint,
                                                      restore_rng_state, save_checkpoint)


def _state():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3,
            "args": {"loss": "flsd-53", "milestones": [150, 250], "lr": 0.1, "amp": None},
            "rng": capture_rng_state()}


def test_round_trip_is_exact_and_weights_only(tmp_path):
    state = _state()
    path = tmp_path / "sub" / "checkpoint.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)  # weights_only=True: the RNG states must be plain tensors / lists
    assert loaded["epoch"] == 3 and loaded["args"] == state["args"]
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    momentum = state["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"], momentum)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})

    def broken_save(obj, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1  # the old checkpoint survives intact
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_missing_empty_truncated_and_garbage_files_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt.*empty"):
        load_checkpoint(empty)
    good = tmp_path / "good.pt"
    save_checkpoint(good, _state())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.pt.*corrupted"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(garbage)
    not_a_dict = tmp_path / "list.pt"
    torch.save([1, 2], not_a_dict)
    with pytest.raises(ValueError, match="list.pt.*dict"):
        load_checkpoint(not_a_dict)


def test_rng_round_trip_continues_every_stream(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leave a cached Gaussian in numpy's legacy state
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)  # scramble everything
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected


def test_restore_rng_rejects_incomplete_state():
    with pytest.raises(ValueError, match="missing"):
        restore_rng_state({"torch": torch.get_rng_state()})


def test_check_resume_compatible_lists_every_difference():
    saved = {"loss": "ce", "model": "resnet50", "lr": 0.1, "milestones": [150, 250]}
    check_resume_compatible(saved, dict(saved, epochs=400), ["loss", "model", "milestones"])  # epochs not checked
    check_resume_compatible(saved, dict(saved, milestones=(150, 250)), ["milestones"])  # tuple == list
    with pytest.raises(ValueError) as info:
        check_resume_compatible(saved, dict(saved, loss="flsd-53", lr=0.05), ["loss", "model", "lr"])
    message = str(info.value)
    assert "--loss was 'ce', now 'flsd-53'" in message and "--lr was 0.1, now 0.05" in message
    assert "model" not in message.replace("--loss", "")
    with pytest.raises(ValueError, match="--seed was \\(not set\\), now 1"):
        check_resume_compatible(saved, dict(saved, seed=1), ["seed"])
