"""`av2av check`: the report, exit codes, report.json and the debug dataset."""

from __future__ import annotations

import json
import zipfile

import av
import pytest

from flows.cli import main
from tests.media_helpers import make_zip

pytestmark = pytest.mark.usefixtures("prefect_harness")
FAST = ["--frames", "17", "--resolution", "low", "--aspect-ratio", "16:9"]


@pytest.mark.slow
def test_check_prints_report_and_writes_json_and_debug_dataset(sample_zip, tmp_path, capfd):
    report_path, debug_path = tmp_path / "report.json", tmp_path / "debug.zip"
    code = main(["check", str(sample_zip), *FAST, "--report", str(report_path), "--debug-dataset", str(debug_path)])
    out = capfd.readouterr().out
    assert code == 0
    assert "sample00  accepted" in out and "silent_audio" in out and "3 accepted, 1 rejected" in out
    report = json.loads(report_path.read_text())
    rows = {row["name"]: row for row in report["triplets"]}
    assert rows["silent"]["status"] == "rejected" and rows["silent"]["reason"] == "silent_audio"
    assert rows["sample00"]["status"] == "accepted" and rows["sample00"]["reason"] is None
    assert report["errors"] == []
    assert "Only 3 triplet(s) accepted; at least 10 are recommended." in report["warnings"]
    with zipfile.ZipFile(debug_path) as archive:
        names = set(archive.namelist())
        assert {"report.json", "sample01/preview.mp4", "sample01/target.wav", "sample01/caption.txt"} <= names
        assert "silent/preview.mp4" not in names
        archive.extract("sample01/preview.mp4", tmp_path)
    with av.open(str(tmp_path / "sample01" / "preview.mp4")) as preview:
        video = preview.streams.video[0]
        assert (video.width, video.height) == (1024, 288)  # reference | target-with-mask side by side
        assert video.frames == 17 and len(preview.streams.audio) == 1


def test_none_qualifying_exits_2_with_the_422_message(media, tmp_path, capfd):
    dog = media / "h264_aac-silent_1280x720_29.97fps_9.7s_dog.mp4"
    path = make_zip(
        tmp_path / "bad.zip",
        {
            "dog_start.mp4": dog,
            "dog_end.mp4": dog,
            "dog_mask.png": media / "masks" / "runningcar_mask_square_432x240.png",
        },
    )
    report_path = tmp_path / "report.json"
    assert main(["check", str(path), *FAST, "--report", str(report_path)]) == 2
    captured = capfd.readouterr()
    assert "422" in captured.err and "dog: silent_audio" in captured.err
    assert json.loads(report_path.read_text())["triplets"][0]["reason"] == "silent_audio"


def test_refused_archive_goes_to_errors_with_its_code(tmp_path, capfd):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../evil_start.mp4", b"x")
    report_path = tmp_path / "report.json"
    assert main(["check", str(path), "--report", str(report_path)]) == 2
    assert json.loads(report_path.read_text())["errors"][0]["code"] == "unsafe_path"
    assert "unsafe_path" in capfd.readouterr().err


def test_download_error_exits_1(tmp_path, capfd):
    assert main(["check", str(tmp_path / "does-not-exist.zip")]) == 1
    assert "does-not-exist.zip" in capfd.readouterr().err


def test_bad_parameter_exits_2_naming_the_field(sample_zip, capfd):
    assert main(["check", str(sample_zip), "--frames", "500"]) == 2
    assert "number_of_frames" in capfd.readouterr().err


def test_unavailable_model_exits_2_with_one_line(sample_zip, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("AV2AV_MODEL_SOURCE", raising=False)
    request = {
        "training_data_url": str(sample_zip),
        "model": "ltx-2.3",
        "model_source": str(tmp_path / "missing" / "ltx-2.3-22b.safetensors"),
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    assert main(["train", "--config", str(tmp_path / "request.json")]) == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert (
        lines[-1].startswith("Model unavailable: model_source: no file at") and "ltx-2.3-22b.safetensors" in lines[-1]
    )
