"""The CLI's reading of a run's log: the trainer's progress lines (real tqdm through the trainer's line
stream) and tails of logs that hold carriage returns."""

import io

from tqdm import tqdm

from cli.records import log_tail, parse_progress
from trainer.progress import LineStream


def test_progress_is_parsed_from_tqdm_lines():
    p = parse_progress("x\ntiny/a/b/seed1:  34%|###4  | 340/1000 [01:02<02:00, 5.40step/s, loss=2.6000]\n")
    assert p == {"step": 340, "total": 1000, "elapsed_s": 62.0, "eta_s": 120.0, "steps_per_s": 5.4}
    slow = parse_progress("r:   1%|  | 10/1000 [1:00:05<99:00:00, 2.00s/step]")
    assert slow["elapsed_s"] == 3605.0 and slow["eta_s"] == 99 * 3600.0 and slow["steps_per_s"] == 0.5
    start = parse_progress("r:   0%|   | 0/40 [00:00<?, ?step/s]")
    assert (start["step"], start["eta_s"], start["steps_per_s"]) == (0, None, None)
    assert parse_progress("[train 10:00:00] step 20: val_loss 3.01") is None


def test_the_trainers_line_stream_gives_one_parseable_line_per_redraw(tmp_path):
    buf = io.StringIO()
    bar = tqdm(total=50, file=LineStream(buf), desc="tiny/muon/alpha0/seed42", unit="step", ncols=100,
               ascii=True, mininterval=0, miniters=1)
    for _ in range(50):
        bar.update(1)
    bar.close()
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) >= 50 and all(parse_progress(line) for line in lines)
    assert parse_progress(text)["step"] == 50  # the last line counts
    log = tmp_path / "run.log"
    log.write_text("start\n" + "a: 1/9 [00:01<00:08, 1.00step/s]\r" + "a: 2/9 [00:02<00:07, 1.00step/s]\r\n")
    assert log_tail(log).splitlines() == ["start", "a: 1/9 [00:01<00:08, 1.00step/s]", "a: 2/9 [00:02<00:07, 1.00step/s]"]
    assert parse_progress(log_tail(log))["step"] == 2
    log.write_text("x" * 100 + "\nlast line\n")
    assert log_tail(log, max_bytes=20) == "last line"  # a cut first line is dropped
