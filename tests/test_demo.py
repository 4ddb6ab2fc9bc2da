"""The README's main job runs end to end: MAP → NUTS → ArviZ summary → PNG."""

import os
import subprocess
import sys

import numpy as np


def test_demo_command_writes_a_trace_plot(tmp_path):
    out = tmp_path / "figs"
    proc = subprocess.run(
        [sys.executable, "-m", "reparam_bridge", "demo", "--quick", "--no-progress", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for word in ("amplitude", "power", "noise", "r_hat", "ess_bulk", "divergences"):
        assert word in text
    png = out / "demo_trace.png"
    assert png.exists() and png.stat().st_size > 10_000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_demo_recovers_the_generating_parameters(tmp_path):
    from reparam_bridge._demo import run_demo

    result = run_demo(str(tmp_path), num_warmup=300, num_samples=300, progress_bar=False)
    summary = result["summary"]
    # Generated with amplitude 2.0, power 0.7, noise 0.3 from 50 points: each truth lies
    # within 4 posterior sds of the posterior mean.
    for name, truth in {"amplitude": 2.0, "power": 0.7, "noise": 0.3}.items():
        mean, sd = summary.loc[name, "mean"], summary.loc[name, "sd"]
        assert abs(mean - truth) < 4 * sd, (name, mean, sd)
    assert np.all(summary["r_hat"] < 1.05)
    assert os.path.exists(result["figure"])
