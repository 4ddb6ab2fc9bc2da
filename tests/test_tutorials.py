"""Every tutorial runs end to end in fast mode (``--fast``) in a fresh subprocess and writes
non-empty PNG figures into the given output folder.

Cost: ~15-40 s per tutorial on 2 cores (start-up, compilation and a tiny NUTS run each), so
the four are marked slow.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
PNG = b"\x89PNG\r\n\x1a\n"

EXPECTED = {
    "01_power_law_map_then_nuts.py": ["01_trace.png", "01_predictive.png"],
    "02_eight_schools_geometry.py": [
        "02_learned_centredness.png",
        "02_funnel_learned.png",
        "02_funnel_centred.png",
        "02_funnel_noncentred.png",
        "02_sampler_coordinates_centred.png",
        "02_sampler_coordinates_noncentred.png",
        "02_trace_centred.png",
        "02_condition_numbers.png",
    ],
    "03_numpyro_random_module.py": ["03_gp_fit.png", "03_hyperparameters.png"],
    "04_custom_bijector.py": ["04_b_below_a.png", "04_trace.png"],
    "05_neutra.py": [
        "05_funnel_plain.png",
        "05_funnel_neutra.png",
        "05_funnel_base_coordinates.png",
        "05_funnel_condition_numbers.png",
        "05_bnn_predictive.png",
    ],
}


def test_every_tutorial_is_listed():
    assert sorted(p.name for p in TUTORIALS.glob("[0-9]*.py")) == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_tutorial_runs_in_fast_mode(script, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(TUTORIALS / script), "--fast", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    for name in EXPECTED[script]:
        path = tmp_path / name
        assert path.exists(), f"{script} did not write {name}; it wrote {sorted(os.listdir(tmp_path))}"
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 5000, f"{name} is not a non-empty PNG"
