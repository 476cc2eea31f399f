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


def test_chunks_on_threads_give_the_bits_of_one_thread(two_threads):
    """map_on_threads: each chunk computed on one thread, results in order, the thread count restored, and
    the autograd mode of the caller in the workers (inference tensors written in place)."""
    from anomalens.models.components.gaussian import inverse_sqrt
    from anomalens.threads import map_on_threads

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 30, 12, dtype=torch.float64, generator=generator)
    cov = x.transpose(1, 2) @ x / 29 + 0.01 * torch.eye(12, dtype=torch.float64)
    chunks = [slice(start, start + 8) for start in range(0, 40, 8)]
    with single_thread():
        serial = torch.cat([inverse_sqrt(cov[chunk]) for chunk in chunks])
    with torch.inference_mode():
        out = torch.empty_like(cov)

        def whiten(chunk):
            assert torch.get_num_threads() == 1 and torch.is_inference_mode_enabled()
            out[chunk] = inverse_sqrt(cov[chunk])
            return chunk.start

        assert map_on_threads(whiten, chunks) == [0, 8, 16, 24, 32]
    assert torch.equal(out, serial)
    assert torch.get_num_threads() == 2


def test_squared_norms_by_solves_match_the_explicit_inverse_and_fall_back_when_singular():
    from anomalens.models.components.gaussian import squared_norms_whitened

    generator = torch.Generator().manual_seed(1)
    r = torch.randn(3, 7, 5, dtype=torch.float64, generator=generator)
    x = torch.randn(3, 20, 5, dtype=torch.float64, generator=generator)
    cov = x.transpose(1, 2) @ x / 19 + 0.1 * torch.eye(5, dtype=torch.float64)
    expected = torch.einsum("pni,pij,pnj->pn", r, torch.linalg.inv(cov), r)
    torch.testing.assert_close(squared_norms_whitened(cov, r), expected, rtol=1e-12, atol=0)
    singular = cov.clone()
    singular[1] = torch.diag(torch.tensor([1.0, 2.0, 0.0, 4.0, 5.0], dtype=torch.float64))  # one zero variance
    got = squared_norms_whitened(singular, r)
    pseudo = torch.einsum("ni,ij,nj->n", r[1], torch.linalg.pinv(singular[1]), r[1])
    torch.testing.assert_close(got[1], pseudo, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=0)
