"""The checkpoint prefetcher: reads every byte of its files in order, stops early on request, and the
checkpoint reader runs one for the files it opens (and stops it when closed)."""
from __future__ import annotations

import time

import torch
from safetensors.torch import save_file

from worker.engine.formats import loaders
from worker.engine.formats.prefetch import Prefetcher


def _wait(p: Prefetcher, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not p.done() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_reads_every_byte_of_every_file_and_skips_missing(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 1_000_003)
    b.write_bytes(b"y" * 17)
    p = Prefetcher([a, tmp_path / "missing.bin", b], block=4096)
    _wait(p)
    assert p.done() and p.bytes_read == 1_000_003 + 17


def test_stop_ends_the_thread_before_the_end(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"z" * (8 << 20))
    p = Prefetcher([big] * 50, block=1 << 16)  # 400 MiB to read: stop() must not wait for it
    p.stop()
    assert p.done() and p.bytes_read < 50 * (8 << 20)


def test_checkpoint_reader_prefetches_its_files_and_stops_on_close(tmp_path, monkeypatch):
    f = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(f))
    started: list[Prefetcher] = []

    class Recording(Prefetcher):
        def __init__(self, files, block=loaders.Prefetcher.__init__.__defaults__[0]):
            super().__init__(files, block)
            started.append(self)

    monkeypatch.setattr(loaders, "Prefetcher", Recording)
    with loaders.CheckpointReader([f]) as reader:
        assert torch.equal(reader.get("w"), torch.arange(6.0).reshape(2, 3))
        assert [p.files for p in started] == [[f]]
    assert started[0].done()
    _ = started[0].bytes_read  # readable after close



def test_warm_start_reads_the_leading_files_that_fit_the_budget(tmp_path):
    from worker.engine.formats.prefetch import warm_start

    files = []
    for i, size in enumerate((1000, 2000, 3000, 10)):
        f = tmp_path / f"{i}.bin"
        f.write_bytes(b"a" * size)
        files.append(f)
    p = warm_start([files[0], tmp_path / "missing", files[1], files[2], files[3]], budget=3500)
    _wait(p)
    # in order, stops at the first file that would overflow (later small files are not reached out of order)
    assert p.files == [files[0], files[1]] and p.bytes_read == 3000
    everything = warm_start(files, budget=10**9)
    _wait(everything)
    assert everything.bytes_read == 6010
    nothing = warm_start(files, budget=0)
    _wait(nothing)
    assert nothing.files == [] and nothing.bytes_read == 0


def test_memory_budget_is_a_fraction_of_what_is_available():
    from pathlib import Path

    from worker.engine.formats.prefetch import memory_budget

    avail = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemAvailable:"))
    half = memory_budget(0.5)
    assert 0 < half <= avail  # host MemAvailable (or a tighter cgroup room) times the fraction
    assert memory_budget(0.25) <= half
