"""The data engine on synthetic videos whose true layers it never sees: accuracy of the classical backends, the
quality-control rule and panels, untrusted model output, resumability, sharding, the OpenAI-compatible backend
against a real HTTP server, the external-command backend, and a kill in the middle of a run."""
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from layert2v_core.video_io import read_video
from train.data_engine import classical
from train.data_engine.pipeline import Engine, Rules, decompose
from train.data_engine.quality import four_panels, key_frames, qualified_intervals, segments
from train.data_engine.run import run, summarize
from train.data_engine.sources import read_list
from train.data_engine.stages import Rejection, parse_annotation, parse_scores
from train.synthetic import generate_sample, write_sample
from train.vidlayer_layout import discover

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "train", "data_engine", "run.py")
FRAMES, SIZE = 21, 64
# Synthetic subjects cover 2-7% of the frame, under the paper's 10% floor.
SMALL_SUBJECTS = ["--min-area", "0.01"]


def write_videos(root, specs, lossless=True, frames=FRAMES, size=SIZE):
    """Synthetic static-camera videos; the list the engine gets holds only the full video and its captions."""
    rows, truth = [], {}
    for number, (seed, count) in enumerate(specs):
        sample = generate_sample(seed, frames, size, size, num_foregrounds=count, static_camera=True)
        folder = write_sample(sample, root / "truth" / f"s{number}", lossless=lossless)
        video = folder / ("full_video" if lossless else "full_video.mp4")
        rows.append({"id": f"v{number}", "video": os.path.relpath(video, root), "caption": sample.captions["full"],
                     "foregrounds": sample.captions["foregrounds"], "background": sample.captions["background"]})
        truth[f"v{number}"] = sample
    (root / "list.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root / "list.jsonl", truth


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    videos, truth = write_videos(root, [(1, 1), (2, 2), (4, 2)])
    assert run(["--videos", str(videos), "--out", str(root / "out"), *SMALL_SUBJECTS]) == 0
    return root, truth


def iou(a, b):
    return float((a & b).sum()) / max(1, float((a | b).sum()))


def test_classical_engine_recovers_the_hidden_layers(mined):
    """Alpha IoU (at 0.5) >= 0.9 per foreground and background PSNR >= 30 dB over the pixels the background shows
    in some frame, measured on what the engine wrote (H.264) against the synthetic truth."""
    root, truth = mined
    entries, bad = discover(root / "out")
    assert not bad and len(entries) == 3
    assert sorted(e.num_foregrounds for e in entries) == [1, 2, 2]
    for entry in entries:
        sample = truth[entry.id.split("_")[0]]
        first, last = json.loads((root / "out" / entry.id / "metadata.json").read_text())["engine"]["frames"]
        assert (first, last) == (0, FRAMES - 1)
        assert list(entry.caption_foregrounds) == sample.captions["foregrounds"]
        for mask, true_alpha in zip(entry.masks, sample.alphas[:, 0]):
            alpha = torch.from_numpy(read_video(mask)[0]).mean(-1)
            score = iou(alpha > 0.5, true_alpha > 0.5)
            print(f"{entry.id} alpha IoU {score:.4f}")
            assert score >= 0.9, (entry.id, score)
        background = torch.from_numpy(read_video(entry.background)[0][..., :3])
        true_background = sample.background.permute(1, 2, 3, 0)
        seen = ~(sample.alphas[:, 0].sum(0) > 0.999).all(0)
        mse = ((background - true_background) ** 2).mean(-1)[:, seen].mean().item()
        psnr = 10 * math.log10(1 / mse)
        print(f"{entry.id} background PSNR {psnr:.2f} dB over {int(seen.sum())} ever-visible pixels")
        assert psnr >= 30, (entry.id, psnr)


def test_engine_output_trains_stage_2(mined, tmp_path):
    from train.config import parse_config
    from train.dit_task import DiTTask
    from train.loop import train
    from train.tiny_models import write_model_folder

    root, _ = mined
    write_model_folder(tmp_path / "model")
    cfg = parse_config("test", ["--config", os.path.join(ROOT, "train", "configs", "tiny_cpu.yaml"),
                                "--model", str(tmp_path / "model"), "--data", str(root / "out"),
                                "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "1"])
    task = DiTTask(cfg)
    assert len(task.dataset) == 1  # the one single-foreground sample; the stage takes one foreground
    final = train(task, cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [1, 2]
    assert all(math.isfinite(row["loss"]) for row in log if "loss" in row)
    assert (final / "adapter.safetensors").is_file()


def test_summary_and_rerun_skip_finished_videos(mined, capsys):
    root, _ = mined
    summary = json.loads((root / "out" / "engine_summary.json").read_text())
    assert summary["videos"] == 3 and summary["kept_videos"] == 3 and summary["samples"] == 3
    assert summary["stages"]["quality"] == {"in": 3, "kept": 3, "rejected": {}}
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "out").iterdir() if p.name != "engine_summary.json"}
    assert run(["--videos", str(root / "list.jsonl"), "--out", str(root / "out"), *SMALL_SUBJECTS]) == 0
    assert "3 video(s), 3 already done" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (root / "out").iterdir() if p.name in stamps} == stamps


def test_clean_plate_where_a_subject_rests_most_of_the_clip():
    """A red square covers the left block in 15 of 21 frames, where a plain median sees red; the colour-model plate
    is exact there. The removal fills what a foreground covers in every frame from around it."""
    background = torch.linspace(0.2, 0.5, 24).view(1, 1, 24, 1).expand(21, 16, 24, 3).clone()
    background[..., 2] = 0.3
    frames = background.clone()
    frames[:15, 4:10, 2:8] = torch.tensor([0.9, 0.1, 0.1])
    frames[15:, 4:10, 12:18] = torch.tensor([0.9, 0.1, 0.1])
    naive, _ = classical.clean_plate(frames)
    assert (naive[4:10, 2:8] - background[0, 4:10, 2:8]).abs().max() > 0.5
    moving, plate = classical.moving_regions(frames)
    assert (plate - background[0]).abs().max() < 1e-6
    assert torch.equal(moving[0, 4:10, 2:8], torch.ones(6, 6, dtype=torch.bool))

    frames[:, 12:, 20:] = torch.tensor([0.1, 0.9, 0.9])  # a subject that never leaves the corner
    alpha = (frames - background).abs().amax(-1) > 0.1
    removed = classical.MedianRemover(margin=0).remove(frames, alpha.float())
    assert (removed - background)[:, :, :19].abs().max() < 1e-6
    assert (removed - background)[:, 12:, 20:].abs().max() < 0.06  # the gradient continues, about 4 px steps


# ---------------------------------------------------------------- quality control, known answers


def test_interval_rule_keeps_pairs_of_good_key_frames():
    scores = {0: (9, 8), 10: (7, 7), 20: (6, 9), 30: (8, 8), 40: (10, 10), 50: (7, 3)}
    assert qualified_intervals(scores) == [(0, 10), (30, 40)]
    assert qualified_intervals(scores, threshold=6) == [(0, 10), (10, 20), (20, 30), (30, 40)]
    assert segments([(0, 10), (10, 20), (30, 40)]) == [(0, 20), (30, 40)]
    assert segments([(0, 10), (10, 20), (30, 40)], min_frames=12) == [(0, 20)]
    assert key_frames(21) == [0, 10, 20] and key_frames(20) == [0, 10]


def test_four_panels_layout():
    original = torch.rand(4, 5, 3)
    alpha = torch.zeros(4, 5)
    alpha[1:3, 2:4] = 1.0
    background = torch.rand(4, 5, 3)
    panel = four_panels(original, alpha, background)
    assert panel.shape == (4, 20, 3)
    assert torch.equal(panel[:, :5], original)
    assert torch.equal(panel[:, 5:10, 0], alpha) and torch.equal(panel[:, 5:10, 1], alpha)
    assert torch.equal(panel[:, 10:15], background)
    assert torch.equal(panel[1:3, 17:19], original[1:3, 2:4]) and panel[0, 15:].abs().sum() == 0


def test_measured_checker_rejects_a_subject_left_in_the_background():
    sample = generate_sample(3, 11, 48, 48, num_foregrounds=1, static_camera=True)
    original = sample.full[:, 0].permute(1, 2, 0)
    alpha = sample.alphas[0, 0, 0]
    clean = sample.background[:, 0].permute(1, 2, 0)
    checker = classical.MeasuredQualityChecker()
    good = checker.score([(0, four_panels(original, alpha, clean))], "")
    ghost = checker.score([(0, four_panels(original, alpha, original))], "")  # nothing removed
    holed = checker.score([(0, four_panels(original, alpha * 0, clean))], "")  # nothing matted
    spilled = checker.score([(0, four_panels(original, classical.dilate(alpha > 0.5, 3).float(), clean))], "")
    assert good["0"][0] >= 9 and good["0"][1] >= 9, good
    assert ghost["0"][0] == 0 and holed["0"][1] == 0 and spilled["0"][1] <= 5, (ghost, holed, spilled)


# ---------------------------------------------------------------- untrusted model output


def test_annotation_answers_are_checked():
    answer = {"subjects": [{"id": "1", "caption": "a red ball"}], "always_visible": True, "subject_size": "small",
              "camera_stable": True, "quality": 8, "full_caption": "a red ball rolls", "background_caption": "a floor"}
    fenced = "Here you go:\n```json\n" + json.dumps(answer) + "\n```"
    assert parse_annotation(fenced).subjects[0].caption == "a red ball"
    for broken, message in [("{'subjects': []", "no JSON object"), ("{\"subjects\": [}", "not valid JSON"),
                            (json.dumps({**answer, "quality": 11}), "integer 0-10"),
                            (json.dumps({**answer, "quality": 7.5}), "integer 0-10"),
                            (json.dumps({**answer, "subjects": []}), "no valid subject"),
                            (json.dumps({**answer, "subject_size": "huge"}), "subject_size"),
                            (json.dumps({**answer, "camera_stable": "yes"}), "true or false"), ("", "no answer")]:
        with pytest.raises(Rejection, match=message):
            parse_annotation(broken)


def test_quality_answers_are_checked():
    assert parse_scores('{"0": [9, 8], "10": [7.0, 10]}', [0, 10]) == {0: (9, 8), 10: (7, 10)}
    for broken, message in [('{"0": [9, 8]}', "frame 10"), ('{"0": [9, 8], "10": [7, -1]}', "integer 0-10"),
                            ('{"0": [9], "10": [7, 7]}', "frame 0"), ('[1, 2]', "no JSON object"),
                            ('{"0": [9, NaN], "10": [7, 7]}', "integer 0-10")]:
        with pytest.raises(Rejection, match=message):
            parse_scores(broken, [0, 10])


class _Fixed:
    """A backend stub returning a fixed answer for every stage method."""

    needs_static_camera = False

    def __init__(self, **answers):
        self.answers = answers

    def __getattr__(self, name):
        if name in self.answers:
            return lambda *args, **kwargs: self.answers[name](*args)
        raise AttributeError(name)


@pytest.mark.parametrize("stage, backend, message", [
    ("annotate", _Fixed(annotate=lambda f, c, h: "I think it is a dog."), "no JSON object"),
    ("first_frame_mask", _Fixed(first_frame_mask=lambda f, c, x: torch.zeros(f.shape[1:3])), "empty mask"),
    ("matting", _Fixed(matte=lambda f, m: torch.full(f.shape[:3], float("nan"))), "NaN"),
    ("removal", _Fixed(remove=lambda f, a: f[:, :4]), "shape"),
    ("quality", _Fixed(score=lambda p, d: '{"0": [12, 9], "10": [9, 9], "20": [9, 9]}'), "integer 0-10"),
])
def test_bad_model_output_is_a_rejection(stage, backend, message):
    sample = generate_sample(1, FRAMES, 48, 48, num_foregrounds=1, static_camera=True)
    frames = sample.full.permute(1, 2, 3, 0).contiguous()
    parts = dict(annotator=classical.CaptionAnnotator(), masker=classical.MotionMasker(),
                 matter=classical.MotionMatter(), remover=classical.MedianRemover(),
                 checker=classical.MeasuredQualityChecker())
    key = {"annotate": "annotator", "first_frame_mask": "masker", "matting": "matter", "removal": "remover",
           "quality": "checker"}[stage]
    engine = Engine(**{**parts, key: backend}, rules=Rules(min_area=0.01))
    report = {}
    with pytest.raises(Rejection, match=message) as caught:
        decompose(engine, frames, sample.captions["full"], {"foregrounds": sample.captions["foregrounds"]}, report)
    assert caught.value.stage == stage and stage not in report["stages"]  # the stages before it are recorded
    assert list(report["stages"]) == ["annotate", "first_frame_mask", "matting", "removal"][
        :["annotate", "first_frame_mask", "matting", "removal", "quality"].index(stage)]


# ---------------------------------------------------------------- the runner


def test_video_list_errors_name_the_lines(tmp_path):
    bad = tmp_path / "list.jsonl"
    bad.write_text('{"video": "a.mp4", "caption": "x"}\nnot json\n{"video": "b.mp4"}\n'
                   '{"video": "c.mp4", "caption": "y", "id": "a b"}\n')
    with pytest.raises(ValueError) as caught:
        read_list(bad)
    text = str(caught.value)
    assert "line 2: not JSON" in text and "line 3: 'caption'" in text and "line 4: 'id'" in text


def test_shards_split_the_list_and_share_one_summary(tmp_path):
    videos, _ = write_videos(tmp_path, [(5, 1), (6, 1), (7, 1)], frames=9, size=32)
    with open(videos, "a") as handle:
        handle.write(json.dumps({"id": "missing", "video": "nowhere.mp4", "caption": "x"}) + "\n")
    for shard in ("0/2", "1/2"):
        assert run(["--videos", str(videos), "--out", str(tmp_path / "out"), "--shard", shard, "--checker", "none",
                    *SMALL_SUBJECTS]) == 0
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out" / ".engine").glob("*.json")}
    assert sorted(records) == ["missing", "v0", "v1", "v2"]
    assert records["missing"]["stage"] == "read" and "no video" in records["missing"]["reason"]
    summary = summarize(tmp_path / "out")
    assert summary["stages"]["read"] == {"in": 4, "kept": 3, "rejected": {"no video at " + str(
        tmp_path / "nowhere.mp4"): 1}}
    assert summary["samples"] == 3


def test_accelerate_ranks_take_their_share(tmp_path, monkeypatch, capsys):
    videos, _ = write_videos(tmp_path, [(5, 1), (6, 1), (7, 1)], frames=9, size=32)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run(["--videos", str(videos), "--out", str(tmp_path / "out"), "--shard", "1/2", "--checker", "none",
                *SMALL_SUBJECTS]) == 0
    assert "shard 3/4: 0 video(s)" in capsys.readouterr().out  # rows 3, 7, ... of three rows: none
    monkeypatch.setenv("RANK", "0")
    assert run(["--videos", str(videos), "--out", str(tmp_path / "out"), "--shard", "0/2", "--checker", "none",
                *SMALL_SUBJECTS]) == 0
    assert sorted(p.stem for p in (tmp_path / "out" / ".engine").glob("*.json")) == ["v0"]  # shard 0/4: row 0


# ---------------------------------------------------------------- the OpenAI-compatible backend


class ChatServer(ThreadingHTTPServer):
    """A chat-completions endpoint on 127.0.0.1: answers come from `reply(request) -> (status, text)`; every
    request body is kept."""

    def __init__(self, reply):
        self.reply, self.requests = reply, []
        super().__init__(("127.0.0.1", 0), ChatHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        status, text = self.server.reply(body)
        payload = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": text}}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        if status != 200:
            payload = {"error": {"message": text, "type": "invalid_request_error"}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_backend_against_a_chat_server(tmp_path):
    pytest.importorskip("openai")
    videos, truth = write_videos(tmp_path, [(1, 1), (3, 1), (5, 1)], frames=FRAMES, size=48)
    by_caption = {sample.captions["full"]: (name, sample) for name, sample in truth.items()}

    def reply(body):
        system = body["messages"][0]["content"]
        user = body["messages"][1]["content"]
        if system.startswith("You annotate"):
            name, sample = by_caption[user[0]["text"].split(": ", 1)[1].split("\n")[0]]
            if name == "v1":
                return 200, "Sorry, I cannot tell what the subject is."
            return 200, json.dumps({"subjects": [{"id": "1", "caption": sample.captions["foregrounds"][0]}],
                                    "always_visible": True, "subject_size": "small", "camera_stable": True,
                                    "quality": 8, "full_caption": sample.captions["full"],
                                    "background_caption": sample.captions["background"]})
        name, _ = next(v for caption, v in by_caption.items() if caption in system)
        high = 11 if name == "v2" else 9  # v2's scorer answers out of range
        return 200, "```json\n" + json.dumps({"0": [9, 9], "10": [high, 8], "20": [8, 9]}) + "\n```"

    server = ChatServer(reply)
    try:
        assert run(["--videos", str(videos), "--out", str(tmp_path / "out"), "--annotator", "openai",
                    "--checker", "openai", "--vlm-url", server.url, "--vlm-model", "tiny-vl", "--vlm-frames", "4",
                    *SMALL_SUBJECTS]) == 0
    finally:
        server.shutdown()
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out" / ".engine").glob("*.json")}
    assert records["v0"]["status"] == "kept"
    assert records["v0"]["stages"]["quality"]["scores"] == {"0": [9, 9], "10": [9, 8], "20": [8, 9]}
    assert (records["v1"]["stage"], records["v2"]["stage"]) == ("annotate", "quality")
    assert "no JSON object" in records["v1"]["reason"] and "integer 0-10" in records["v2"]["reason"]
    paths = {path for path, _ in server.requests}
    assert paths == {"/v1/chat/completions"} and len(server.requests) == 5  # 3 annotations, 2 quality checks
    annotation = next(b for _, b in server.requests if b["messages"][0]["content"].startswith("You annotate"))
    images = [p for p in annotation["messages"][1]["content"] if p["type"] == "image_url"]
    assert annotation["model"] == "tiny-vl" and len(images) == 4
    assert images[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    check = next(b for _, b in server.requests if "four panels" in b["messages"][0]["content"])
    texts = [p["text"] for p in check["messages"][1]["content"] if p["type"] == "text"]
    assert texts == ["Frame 0:", "Frame 10:", "Frame 20:"]


def test_openai_backend_server_errors(tmp_path):
    pytest.importorskip("openai")
    from train.data_engine.vlm import OpenAIVLM

    server = ChatServer(lambda body: (413 if "big" in body["messages"][0]["content"] else 503, "no"))
    try:
        vlm = OpenAIVLM(server.url, "tiny-vl", max_retries=0)
        with pytest.raises(Rejection, match="refused the request \\(413\\)"):
            vlm.chat("big", ["x"], "annotate")
        with pytest.raises(RuntimeError, match="failed \\(503\\).*rerun"):
            vlm.chat("small", ["x"], "annotate")
    finally:
        server.shutdown()
    with pytest.raises(RuntimeError, match="cannot reach"):
        OpenAIVLM(server.url, "tiny-vl", max_retries=0, timeout=2).chat("x", ["x"], "annotate")


# ---------------------------------------------------------------- external commands, kill and rerun


COPY_TOOL = """
import shutil, sys, time
from pathlib import Path
frames, alpha, out, calls = sys.argv[1:5]
count = int(Path(calls).read_text()) + 1 if Path(calls).exists() else 1
Path(calls).write_text(str(count))
if count == int(sys.argv[5]):
    Path(calls + ".holding").write_text("")
    time.sleep(120)
if count == int(sys.argv[6]):
    sys.exit("tool crashed on purpose")
shutil.copytree(frames, Path(out) / "background")
"""


def test_command_backend_and_a_kill_in_the_middle(tmp_path, capsys):
    """The removal is an external tool (here: it returns the frames unchanged). The second call hangs and the run
    is killed there; the rerun redoes nothing finished and leaves nothing half-written."""
    videos, _ = write_videos(tmp_path, [(5, 1), (6, 1), (7, 1)], frames=11, size=32)
    tool, calls = tmp_path / "tool.py", tmp_path / "calls"
    tool.write_text(COPY_TOOL)

    def command(hold, crash):
        return [sys.executable, RUN, "--videos", str(videos), "--out", str(tmp_path / "out"), "--checker", "none",
                "--remover", "command", "--remove-command",
                f"{sys.executable} {tool} {{frames}} {{alpha_frames}} {{out}} {calls} {hold} {crash}",
                *SMALL_SUBJECTS]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command(2, 0), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "calls.holding").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    out = tmp_path / "out"
    assert sorted(p.stem for p in (out / ".engine").glob("*.json")) == ["v0"]
    entries, bad = discover(out)
    assert [e.id for e in entries] == ["v0_00000-00010"] and not bad
    stamps = {p: p.stat().st_mtime_ns for p in [out / ".engine" / "v0.json", *(out / "v0_00000-00010").iterdir()]}
    (out / ".v1_00000-00010.0123.tmp").mkdir()  # what a kill while writing v1's sample would leave

    assert run(command(0, 4)[2:]) == 0  # the rerun, in this process; the tool crashes on its 4th call (v2)
    assert "3 video(s), 1 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert calls.read_text() == "4"  # v0 once, v1 twice (killed, redone), v2 once
    records = {p.stem: json.loads(p.read_text()) for p in (out / ".engine").glob("*.json")}
    assert [records[v]["status"] for v in ("v0", "v1", "v2")] == ["kept", "kept", "rejected"]
    assert records["v2"]["stage"] == "removal" and "tool crashed on purpose" in records["v2"]["reason"]
    assert sorted(p.name for p in out.iterdir()) == [".engine", "engine_summary.json", "v0_00000-00010",
                                                     "v1_00000-00010"]
    background, _ = read_video(out / "v1_00000-00010" / "background.mp4")
    full, _ = read_video(out / "v1_00000-00010" / "full_video.mp4")
    assert abs(background - full).mean() < 0.02  # the tool's output (the frames themselves) was used


def test_command_templates_are_checked_before_work(tmp_path, capsys):
    videos, _ = write_videos(tmp_path, [(5, 1)], frames=5, size=32)
    assert run(["--videos", str(videos), "--out", str(tmp_path / "out"), "--matter", "command",
                "--matte-command", "tool {video} {maks} {out}"]) == 2
    assert "bad placeholder ('maks')" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# Stand-ins for the two git-only tools, at the paths and with the command lines and output layouts their adapters
# rely on (from the tools' own inference scripts): MatAnyone writes <out>/<clip name>/pha/0000.png ... with
# --save_image; Casper writes <save_path>/<sequence>-fg=-1-0001.mp4 (and a _tuple.mp4 beside it), at its own size
# and padded in time. Here MatAnyone's alpha is the first-frame mask on every frame at half size, and Casper's
# background is the clip itself at twice the size with 4 frames more.
MATANYONE_STAND_IN = """
import argparse, os
import numpy as np
from PIL import Image
from layert2v_core.video_io import read_video
p = argparse.ArgumentParser()
p.add_argument("-i"); p.add_argument("-m"); p.add_argument("-o"); p.add_argument("--save_image", action="store_true")
a = p.parse_args()
assert a.save_image and os.path.isfile("inference_matanyone.py")  # run in its checkout
count = read_video(a.i)[0].shape[0]
mask = Image.open(a.m).convert("L")
mask = mask.resize((mask.width // 2, mask.height // 2), Image.NEAREST)
out = os.path.join(a.o, os.path.basename(a.i)[:-4], "pha")
os.makedirs(out)
for i in range(count):
    mask.save(os.path.join(out, f"{i:04d}.png"))
"""
CASPER_STAND_IN = """
import json, os, sys
import torch
from layert2v_core.video_io import read_video, write_video
config = dict(arg[len("--config."):].split("=", 1) for arg in sys.argv[1:])
sequence = os.path.join(config["data.data_rootdir"], config["experiment.run_seqs"])
assert json.load(open(os.path.join(sequence, "prompt.json")))["bg"]
assert read_video(os.path.join(sequence, "mask_00.mp4"))[0].shape[0] > 0
frames = torch.from_numpy(read_video(os.path.join(sequence, "input_video.mp4"))[0])
frames = torch.cat([frames, frames[-1:].expand(4, -1, -1, -1)])
frames = frames.repeat_interleave(2, 1).repeat_interleave(2, 2)
os.makedirs(config["experiment.save_path"])
name = os.path.join(config["experiment.save_path"], config["experiment.run_seqs"] + "-fg=-1-0001")
write_video(name + ".mp4", frames, 16.0)
write_video(name + "_tuple.mp4", torch.zeros_like(frames), 16.0)
"""


def test_matanyone_and_casper_adapters(tmp_path, monkeypatch):
    videos, truth = write_videos(tmp_path, [(5, 1)], frames=9, size=32)
    matanyone, casper = tmp_path / "MatAnyone", tmp_path / "gen-omnimatte-public"
    (casper / "inference" / "cogvideox_fun").mkdir(parents=True)
    matanyone.mkdir()
    (matanyone / "inference_matanyone.py").write_text(MATANYONE_STAND_IN)
    (casper / "inference" / "cogvideox_fun" / "predict_v2v.py").write_text(CASPER_STAND_IN)
    tools = os.path.join(ROOT, "train", "data_engine", "tools")
    monkeypatch.setenv("PYTHONPATH", ROOT)  # the stand-ins read and write videos with the project's code
    assert run(["--videos", str(videos), "--out", str(tmp_path / "out"), "--checker", "none",
                "--matter", "command", "--matte-command",
                f"{sys.executable} {tools}/matanyone.py {{video}} {{mask}} {{out}} --repo {matanyone}",
                "--remover", "command", "--remove-command",
                f"{sys.executable} {tools}/gen_omnimatte.py {{video}} {{alpha}} {{out}} --repo {casper} "
                f"--model m --transformer t.safetensors", *SMALL_SUBJECTS]) == 0
    record = json.loads((tmp_path / "out" / ".engine" / "v0.json").read_text())
    assert record["status"] == "kept", record
    sample = tmp_path / "out" / record["samples"][0]
    alpha, _ = read_video(sample / "mask.mp4")
    assert (abs(alpha[0] - alpha[-1]) > 0.5).mean() < 0.01  # MatAnyone's alpha: the first-frame mask throughout
    background, _ = read_video(sample / "background.mp4")
    full, _ = read_video(sample / "full_video.mp4")
    assert background.shape == full.shape and abs(background - full).mean() < 0.03  # Casper's, resized and cut
