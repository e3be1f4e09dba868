"""The run spec's DisTrO additions: optimizer.class DeMo and the capture section (no torch needed)."""

import pytest

from trainer.spec import RunSpec, SpecError, example_spec


def test_capture_section_is_validated_and_only_written_when_set():
    base = example_spec()
    plain = RunSpec.from_dict(base)
    assert "capture" not in plain.to_dict() and plain.capture.steps == []
    d = dict(base, capture={"steps": [50, 1, 50], "what": ["grad"]})
    s = RunSpec.from_dict(d)
    assert s.capture.steps == [1, 50] and s.capture.what == ["grad"]
    assert s.to_dict()["capture"] == {"steps": [1, 50], "what": ["grad"]}
    assert s.fingerprint != plain.fingerprint  # a captured run is another run
    assert RunSpec.from_dict(s.to_dict()).to_dict() == s.to_dict()
    for bad, key in (({"steps": [0]}, "capture.steps"), ({"steps": [101]}, "capture.steps"),
                     ({"steps": [5], "what": ["hessian"]}, "capture.what"), ({"every": 3}, "capture.every")):
        with pytest.raises(SpecError) as e:
            RunSpec.from_dict(dict(base, capture=bad))
        assert key in str(e.value)


def test_demo_class_is_accepted():
    d = example_spec()
    d["optimizer"] = dict(d["optimizer"], **{"class": "DeMo", "muon": {"lr": 0.003, "topk": 0.05}})
    assert RunSpec.from_dict(d).optimizer.cls == "DeMo"
