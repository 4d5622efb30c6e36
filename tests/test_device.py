import threading
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers.device import pick_device, prefetch, upload

CPU = torch.device("cpu")


def test_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")


def test_an_explicit_choice_wins(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cpu") == torch.device("cpu")


def test_amp_dtype_prefers_bfloat16_and_falls_back_to_float16(monkeypatch):
    from helpers.device import amp_dtype

    assert amp_dtype(torch.device("cpu")) == torch.bfloat16
    assert amp_dtype(torch.device("mps")) == torch.float16
    # a T4 (Colab) emulates bfloat16: supported only when emulation counts, and float16 is the answer
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert amp_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp_dtype(torch.device("cuda")) == torch.bfloat16


def numbered(count: int, made: list[int] | None = None, error_at: int | None = None):
    """Batches (tensor of i,) for i in range(count), noting each as it is made; an error at ``error_at``."""
    for number in range(count):
        if number == error_at:
            raise ValueError(f"Cannot read image {number:04}.jpg: the file is damaged")
        if made is not None:
            made.append(number)
        yield (torch.full((2,), number),)


def prefetch_threads() -> int:
    return sum(thread.name == "prefetch" for thread in threading.enumerate())


def test_prefetched_batches_are_the_batches_in_their_order():
    assert [int(batch[0][0]) for batch in prefetch(numbered(20), CPU)] == list(range(20))
    assert prefetch_threads() == 0  # the thread ends with the batches


def test_on_mps_the_batches_are_made_without_a_thread():
    """Two threads running MPS operations at once can crash the process (pytorch/pytorch#197805)."""
    made = []
    batches = prefetch(numbered(5, made), torch.device("mps"))  # CPU tensors: nothing runs on MPS here
    assert int(next(batches)[0][0]) == 0 and made == [0] and prefetch_threads() == 0  # none ahead
    assert [int(batch[0][0]) for batch in batches] == [1, 2, 3, 4]


def test_an_error_in_the_thread_is_raised_where_the_batches_are_used_naming_the_file():
    seen = []
    with pytest.raises(ValueError, match="Cannot read image 0005.jpg: the file is damaged"):
        for (batch,) in prefetch(numbered(20, error_at=5), CPU):
            seen.append(int(batch[0]))
    assert seen == [0, 1, 2, 3, 4]  # every batch before it, none skipped
    assert prefetch_threads() == 0


def test_the_thread_makes_at_most_depth_batches_ahead_and_stops_with_the_loop():
    made = []
    batches = prefetch(numbered(100, made), CPU)  # depth=2, the default
    next(batches)
    time.sleep(0.2)  # time enough to run far ahead, if nothing held it back
    assert len(made) <= 1 + 2 + 1  # the one in use, two queued, and one waiting to be queued
    thread = next(thread for thread in threading.enumerate() if thread.name == "prefetch")
    assert thread.is_alive() and thread.daemon  # waiting for room, not given up; as a daemon it cannot keep
    # Python from exiting if a loop forgets its batches
    assert [int(next(batches)[0][0]) for _ in range(3)] == [1, 2, 3]  # a slow loop misses none
    batches.close()  # a loop that stops early (break) closes it the same way
    assert prefetch_threads() == 0 and len(made) <= 4 + 2 + 1  # four taken, two queued, one waiting


def test_upload_to_the_cpu_neither_copies_nor_pins():
    """Pinning is for a CUDA copy; on the CPU (and MPS) upload is a plain ``.to``."""
    tensor = torch.arange(6)
    uploaded = upload(tensor, CPU)
    assert uploaded is tensor and not uploaded.is_pinned()


@pytest.mark.skipif(torch.accelerator.is_available(), reason="pins where there is an accelerator")
def test_pin_memory_without_an_accelerator_is_ignored_with_a_warning():
    """06 turns pin_memory on for CUDA only: without an accelerator, torch warns and pins nothing."""
    loader = DataLoader(TensorDataset(torch.zeros(2, 3)), batch_size=2, pin_memory=True)
    with pytest.warns(UserWarning, match="'pin_memory' argument is set as true but no accelerator"):
        (batch,) = next(iter(loader))
    assert not batch.is_pinned()


def test_prefetch_refuses_a_depth_that_would_make_every_batch_ahead():
    for depth in (0, -1):  # queue.Queue(maxsize=0) has no limit
        refused = rf"^prefetch keeps depth batches ahead: at least 1, not {depth}\."
        with pytest.raises(ValueError, match=refused):
            next(prefetch(iter([(torch.zeros(1),)]), CPU, depth=depth))
    made = []
    batches = prefetch(numbered(10, made), CPU, depth=1)  # one ahead: the least there is
    assert int(next(batches)[0][0]) == 0
    time.sleep(0.1)
    assert len(made) <= 1 + 1 + 1  # the one in use, one queued, and one waiting to be queued
    assert [int(batch[0][0]) for batch in batches] == list(range(1, 10))


def test_check_devices_tells_on_a_cpu_where_predict_moved_the_image_and_the_mask():
    """06's Exercise 2: on a CPU the model and the mask are where they should be already, so only the
    meta stand-in can tell an answer that moves nothing from one that does."""
    from helpers.device import check_devices

    def answer(move: bool = True, back: bool = True, call=None):
        def predict(model, image):
            device = next(model.parameters()).device
            with torch.no_grad():
                mask = (call or model)((image.to(device) if move else image)[None]).argmax(dim=1)[0]
            return mask.cpu() if back else mask
        return predict

    assert check_devices(answer(), 16, 4) is True
    assert check_devices(lambda model, image: None, 16, 4) is False  # the stub
    for wrong, message in [(answer(move=False), "got the image on cpu: move it"),
                           (answer(back=False), r"return the mask on the CPU \(.cpu\(\)\)"),
                           (answer(call=lambda batch: torch.zeros(1, 4, 100, 115)), "call the model")]:
        with pytest.raises(AssertionError, match=message):
            check_devices(wrong, 16, 4)
