"""bench.readme_table: the README's GPU table from a small synthetic results folder."""
import json

from bench import readme_table


def _tune_json():
    base = {"cell": "lstm", "batch": 16, "steps": 1024, "dtype": "bfloat16", "candidates": 6,
            "rejected": [], "error": None, "skipped": None}
    return {"device": {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3"},
            "peers": ["cuDNN", "FlashRNN"],
            "command": "flashseq-tune --gpu auto --ops lstm --shapes fused_rnn-tiny",
            "results": [
                {**base, "heads": 12, "head_dim": 64, "config": "fused BB=16 BH=64 warps=4 "
                 "stages=2", "time_ms": 1.5, "untuned_ms": 2.0, "ratio_vs_untuned": 0.8,
                 "ratio_vs_peer": None,
                 "peers": {"cuDNN": "n/a (torch.nn: several heads)", "FlashRNN": 0.5}},
                {**base, "heads": 1, "head_dim": 768, "config": "plan", "time_ms": 9.0,
                 "untuned_ms": 9.0, "ratio_vs_untuned": 1.0, "ratio_vs_peer": 2.0,
                 "peers": {"cuDNN": 2.0, "FlashRNN": "n/a (flashrnn not installed)"}},
                {**base, "heads": 24, "head_dim": 32, "config": "", "time_ms": None,
                 "untuned_ms": None, "ratio_vs_untuned": None, "ratio_vs_peer": None,
                 "peers": {}, "skipped": "budget reached before this workload"},
            ]}


def _suite_json():
    case = "lstm B=16 T=1024 H=768 NH=12 DH=64 bfloat16 fwd+bwd"
    rows = [
        {"case": case, "provider": "flashseq:triton", "median_ms": 3.0, "ratio_untuned": 0.75,
         "ratio_untuned_paired": 0.8, "status": "ok"},
        {"case": case, "provider": "flashseq:triton-untuned", "median_ms": 4.0,
         "ratio_untuned": 1.0, "status": "ok"},
        {"case": case, "provider": "flashseq:cuda", "median_ms": None,
         "status": "skipped: the CUDA back end is opt-in"},
        {"case": case, "provider": "flashrnn:cuda_fused", "median_ms": 6.0, "status": "ok"},
    ]
    return {"format": "flashseq-bench/1", "suite": "fused_rnn", "timestamp_utc": "2026-12-03",
            "machine": {"device_name": "NVIDIA H100 80GB HBM3",
                        "flashseq_commit": "0123456789abcdef"}, "rows": rows}


def test_renders_both_tables_from_a_results_folder(tmp_path):
    (tmp_path / "tune.json").write_text(json.dumps(_tune_json()))
    (tmp_path / "fused_rnn.json").write_text(json.dumps(_suite_json()))
    out_file = tmp_path / "README_table.md"
    assert readme_table.main([str(tmp_path), "--out", str(out_file)]) == 0
    text = out_file.read_text()
    assert text.startswith("### fused_rnn on NVIDIA H100 80GB HBM3")
    assert "Commit 0123456789" in text
    assert "Tuning (`flashseq-tune --gpu auto --ops lstm --shapes fused_rnn-tiny`" in text
    lines = text.splitlines()
    assert ("| shape | tuned config | tuned ms | untuned ms | speed-up vs untuned | "
            "speed-up vs cuDNN | speed-up vs FlashRNN |") in lines
    assert ("| lstm B=16 T=1024 NH=12 DH=64 bfloat16 | fused BB=16 BH=64 warps=4 stages=2 | "
            "1.500 | 2.000 | 1.25x | n/a (torch.nn: several heads) | 2.00x |") in lines
    assert ("| lstm B=16 T=1024 H=768 bfloat16 | plan | 9.000 | 9.000 | 1.00x | 0.50x | "
            "n/a (flashrnn not installed) |") in lines
    assert ("| lstm B=16 T=1024 NH=24 DH=32 bfloat16 | budget reached before this workload | "
            "- | - | - | - | - |") in lines
    # suite: only the providers present, in the fixed order; the untimed one says why below
    assert ("| case | flashseq Triton, tuned ms | flashseq Triton, untuned ms | flashseq CUDA ms "
            "| FlashRNN cuda_fused ms | tuned / untuned |") in lines
    assert ("| lstm B=16 T=1024 H=768 NH=12 DH=64 bfloat16 fwd+bwd | 3.000 | 4.000 | skipped | "
            "6.000 | 0.800 |") in lines
    assert "- flashseq:cuda: skipped: the CUDA back end is opt-in" in lines


def test_without_a_paired_ratio_the_medians_ratio_is_marked(tmp_path):
    data = _suite_json()
    del data["rows"][0]["ratio_untuned_paired"]
    (tmp_path / "fused_rnn.json").write_text(json.dumps(data))
    assert "| 0.750 (medians) |" in readme_table.render(tmp_path)


def test_one_file_is_enough_and_none_exits_1(tmp_path, capsys):
    (tmp_path / "tune.json").write_text(json.dumps(_tune_json()))
    text = readme_table.render(tmp_path)
    assert "speed-up vs FlashRNN" in text and "python -m bench fused_rnn" not in text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert readme_table.main([str(empty)]) == 1
    assert "neither tune.json nor fused_rnn.json" in capsys.readouterr().err
    (empty / "fused_rnn.json").write_text("{truncated")
    assert readme_table.render(empty) is None
