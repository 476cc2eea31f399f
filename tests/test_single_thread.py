"""anomalens/threads.py: single_thread runs its block on one CPU thread and always restores the setting."""

import pytest
import torch

from anomalens.threads import single_thread


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_one_thread_inside_and_restored_after(two_threads):
    with single_thread("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_restored_after_an_error(two_threads):
    with pytest.raises(RuntimeError), single_thread(torch.device("cpu")):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2


def test_nested_blocks_restore_the_outer_setting(two_threads):
    with single_thread("cpu"):
        with single_thread("cpu"):
            pass
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_other_devices_leave_the_threads_alone(two_threads):
    with single_thread("meta"):
        assert torch.get_num_threads() == 2


def test_blocks_overlapping_in_two_threads_leave_the_setting_restored(two_threads):
    import threading

    first_inside, second_done = threading.Event(), threading.Event()

    def first():  # opens first and closes last, around the main thread's block
        with single_thread("cpu"):
            first_inside.set()
            second_done.wait(10)

    worker = threading.Thread(target=first)
    worker.start()
    first_inside.wait(10)
    with single_thread("cpu"):  # opened while the other thread's block is open, closed before it
        pass
    second_done.set()
    worker.join(10)
    assert torch.get_num_threads() == 2
