import json

import pytest

from edgekit.demo import run_demo


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    report = run_demo(out_dir=tmp_path, runs=30, warmup=5, progress=False)
    out = capsys.readouterr().out
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"x86-onnxruntime-fp32", "x86-openvino-fp32", "x86-tflite-fp32", "pytorch"}
    for name, row in rows.items():
        assert row["accuracy"] > 95.0, (name, row["accuracy"])  # trained on the real digits
        assert row["median_ms"] > 0
        assert name in out
    # Every runtime scores within one test image (0.28 points) of PyTorch: same model.
    for row in rows.values():
        assert abs(row["accuracy"] - rows["pytorch"]["accuracy"]) <= 0.3
    assert rows["x86-openvino-fp32"]["executes"].startswith("fp32")
    assert (tmp_path / "cnn" / "manifest.json").is_file()
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert all(r["latency"]["n"] == 30 for r in saved["results"])
    assert "| runtime target |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
