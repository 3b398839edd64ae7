"""The end-to-end benchmark runs at a tiny size on CPU, so the script that times the paper's setting cannot rot."""
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_generate", os.path.join(ROOT, "benchmarks",
                                                                                 "bench_generate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_generation_and_training_step_report_every_phase(tmp_path):
    bench = load_bench()
    out = tmp_path / "report.json"
    report = bench.main(["--device", "cpu", "--dim", "128", "--layers", "1", "--vae-dim", "4", "--height", "32",
                         "--width", "32", "--frames", "1", "--steps", "3", "--timed-steps", "1",
                         "--variants", "sdpa,uncached,cfg_sequential,fp8,offload,sage", "--train-sizes", "32x32x1",
                         "--train-steps", "1", "--lora-rank", "8", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    gen = report["generation"]
    assert gen["setting"]["visual_tokens"] == 4 * 1 * 2 * 2 and gen["setting"]["output_frames"] == 4
    for name in ("sdpa", "uncached", "cfg_sequential", "fp8"):
        times = gen["variants"][name]
        assert times["per_step_s"] > 0 and times["dit_s_extrapolated"] == times["per_step_s"] * 3
        assert 0 < times["floor_fraction"]
    assert gen["variants"]["offload"] == {"skipped": "needs a CUDA device"}
    assert set(gen["decode"]["layer_s"]) == {"full", "bg", "fg1", "mask1"}
    assert gen["total_exact_s_extrapolated"] > gen["decode"]["rgb_decode_s"] > 0
    train = report["training"]["32x32x1"]
    assert train["per_step_s"] > 0 and train["trainable_parameters"] > 0
    assert report["peak_host_gb"] > 0


def test_flop_count_of_the_paper_setting():
    """44,352 tokens (4 segments x 11 x 24 x 42) through Wan2.1 1.3B: about 4.8e14 FLOP per forward."""
    bench = load_bench()
    flops = bench.dit_flops(bench.DiTConfig(), 4 * 11 * 24 * 42, 240)
    assert 4.6e14 < flops < 4.9e14
