import pytest

from worker.progress import STAGE_BANDS, ProgressReporter, Stage


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_bands_contiguous_and_ordered():
    stages = list(Stage)
    assert [s.value for s in stages] == ["validate", "download", "audio", "load", "encode", "sampling", "decode",
                                         "mux", "upload", "done"]
    prev_end = 0.0
    for s in stages:
        lo, hi = STAGE_BANDS[s]
        assert lo == prev_end and hi >= lo
        prev_end = hi
    assert prev_end == 100.0


def test_full_run_is_monotonic_with_required_keys():
    got = []
    clock = Clock()
    p = ProgressReporter(got.append, clock=clock)
    p.stage(Stage.VALIDATE)
    p.stage("download", "fetching 2 files")
    p.update(0.5)
    p.stage(Stage.AUDIO)
    p.stage(Stage.LOAD)
    p.stage(Stage.ENCODE)
    for chunk in (1, 2):
        for step in range(0, 5):
            clock.t += 1.0
            p.sampling(chunk, 2, step, 4)
    p.stage(Stage.DECODE)
    p.stage(Stage.MUX)
    p.stage(Stage.UPLOAD)
    p.done()
    percents = [u["percent"] for u in got]
    assert percents == sorted(percents) and percents[0] == 0.0 and percents[-1] == 100.0
    for u in got:
        assert {"stage", "percent", "message", "chunk", "chunks", "step", "steps"} <= set(u)
        assert isinstance(u["message"], str) and u["message"]
    samp = [u for u in got if u["stage"] == "sampling"]
    assert samp[-1]["percent"] == STAGE_BANDS[Stage.SAMPLING][1]
    assert samp[-1]["chunk"] == 2 and samp[-1]["steps"] == 4 and samp[-1]["message"] == "chunk 2/2, step 4/4"
    assert "eta_s" in samp[3] and samp[3]["eta_s"] > 0
    assert got[-1]["stage"] == "done"
    dl = [u for u in got if u["stage"] == "download"]
    assert dl[0]["message"] == "fetching 2 files" and dl[1]["percent"] == 5.0


def test_percent_never_goes_back():
    got = []
    p = ProgressReporter(got.append)
    p.stage(Stage.SAMPLING)
    p.sampling(2, 2, 2, 4)
    p.sampling(1, 2, 0, 4)  # late update
    p.stage(Stage.DOWNLOAD)  # out-of-order stage
    assert [u["percent"] for u in got] == sorted(u["percent"] for u in got)
    assert p.percent == got[-1]["percent"]


def test_eta_estimate():
    clock = Clock()
    got = []
    p = ProgressReporter(got.append, clock=clock)
    p.stage(Stage.SAMPLING)
    clock.t += 10
    p.sampling(1, 4, 4, 4)  # a quarter done in 10 s
    assert got[-1]["eta_s"] == pytest.approx(30.0)


def test_throttle_and_forced_updates():
    clock = Clock()
    got = []
    p = ProgressReporter(got.append, min_interval_s=5.0, clock=clock)
    p.stage(Stage.SAMPLING)
    for step in range(1, 10):
        clock.t += 1
        p.sampling(1, 1, step, 10)
    assert len(got) == 2  # stage entry + one after 5 s
    p.sampling(1, 1, 10, 10)  # the last step always goes out
    p.done()
    assert got[-2]["step"] == 10 and got[-1]["stage"] == "done"


def test_bad_input_and_sink_failure():
    def boom(_):
        raise RuntimeError("network")

    p = ProgressReporter(boom)
    assert p.stage(Stage.VALIDATE)["percent"] == 0.0
    assert p.sink_errors == 1
    with pytest.raises(ValueError):
        p.sampling(3, 2, 0, 4)
    with pytest.raises(ValueError):
        p.sampling(1, 2, 5, 4)
    with pytest.raises(RuntimeError):
        ProgressReporter(lambda _: None).update(0.5)

