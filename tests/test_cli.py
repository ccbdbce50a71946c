"""The `bench` CLI end to end, through a subprocess: first run, listings, bad input."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def bench(*args, env=None, timeout=600):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-W", "ignore", "-m", "benchmark.cli", *args],
                          capture_output=True, text=True, timeout=timeout, env=e)


def assert_one_line_error(out, pattern):
    assert out.returncode == 2, (out.stdout[-2000:], out.stderr[-2000:])
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error:") and pattern in lines[0], lines[0]


def test_run_clean_on_exact_images_prints_table():
    out = bench("run", "--defense", "rn18_aa_example", "--dataset", "cifar10", "--source", "exact20",
                "--attacks", "clean", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "clean" in out.stdout and "95% CI" in out.stdout
    assert "20" in out.stdout and "100.0%" in out.stdout  # measured: 20/20 on the exact foolbox images


def test_list_commands():
    for what, needle in [("defenses", "rn18_aa_example"), ("datasets", "cifar10"), ("subsets", "random:N:SEED")]:
        out = bench("list", what)
        assert out.returncode == 0, out.stderr[-2000:]
        assert needle in out.stdout


@pytest.mark.parametrize("args, pattern", [
    (["run", "--defense", "no_such_defense"], "unknown defense 'no_such_defense'"),
    (["run", "--defense", "rn18_aa_example", "--dataset", "mnist"], "unknown dataset"),
    (["run", "--defense", "rn18_aa_example", "--subset", "firstt:10"], "subset"),
    (["run", "--defense", "rn18_aa_example", "--subset", "first:5000"], "only 1000"),
    (["run", "--defense", "rn18_aa_example", "--attacks", "nope"], "unknown attack"),
    (["run", "--defense", "rn18_aa_example", "--device", "tpu"], "unknown device"),
    (["list", "gadgets"], "invalid choice"),
    (["run", "--defense", "rn18_aa_example", "--defense-opt", "steps"], "--defense-opt expects KEY=VALUE"),
    (["run", "--defense", "diffpure", "--defense-opt", "stepz=3", "--attacks", "clean"], "unknown option 'stepz'"),
])
def test_bad_input_gives_one_line_and_exit_2(args, pattern):
    assert_one_line_error(bench(*args), pattern)


def test_missing_dataset_offline_names_directory(tmp_path):
    out = bench("run", "--defense", "rn18_aa_example", "--source", "torchvision", "--data-root", str(tmp_path))
    assert_one_line_error(out, str(tmp_path))


def test_train_bad_yaml_and_unknown_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    assert_one_line_error(bench("train", "classifier", "--config", str(bad)), "bad YAML")
    unk = tmp_path / "unk.yaml"
    unk.write_text("no_such_key: 1\n")
    assert_one_line_error(bench("train", "classifier", "--config", str(unk)), "unknown key 'no_such_key'")


def test_checkpoint_errors(tmp_path):
    missing = tmp_path / "missing.pt"
    assert_one_line_error(bench("run", "--defense", "robustbench:Standard", "--checkpoint", str(missing)),
                          "checkpoint not found")

    evil = tmp_path / "evil.pt"
    torch.save({"model": EvilPayload()}, evil)
    assert_one_line_error(bench("run", "--defense", "robustbench:Standard", "--checkpoint", str(evil)),
                          "needs pickle")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    assert_one_line_error(bench("run", "--defense", "robustbench:Standard", "--checkpoint", str(corrupt)),
                          "corrupt checkpoint")


class EvilPayload:
    """Any Python object in a checkpoint forces pickle; the loader must refuse it."""


def test_defense_options_reach_the_factory_and_the_record(tmp_path):
    """--defense-opt steps=2 builds diffpure with 2 denoising steps; the option is in the run record
    and its hash (another value is another run folder)."""
    import json

    from defenses.weights import manifest

    assert "ddpm_cifar10" in manifest(), "ddpm_cifar10 ships with the repository"
    out = tmp_path / "run"
    r = bench("run", "--defense", "diffpure", "--defense-opt", "steps=2", "--source", "exact20", "--subset", "first:4",
              "--attacks", "clean", "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((out / "record.json").read_text())
    assert rec["defense_options"] == {"steps": 2} and rec["defense_info"]["steps"] == 2
    r2 = bench("run", "--defense", "diffpure", "--defense-opt", "steps=3", "--source", "exact20", "--subset", "first:4",
               "--attacks", "clean", "--quiet", "--out", str(out))
    assert r2.returncode != 0 and "different" in r2.stderr  # a different run is never written into this folder
