"""`make synth`: a synthetic BS-80K-shaped dataset at `synth.out`."""

from __future__ import annotations

from engine.config import Config
from engine.io.summary import StageSummary
from engine.io.synth import generate_dataset


def run_synth(cfg: Config) -> StageSummary:
    """Generates a synthetic BS-80K-shaped dataset at `synth.out`."""
    summary = StageSummary("synth")
    result = generate_dataset(
        cfg.synth.out,
        patients=cfg.synth.patients,
        seed=cfg.synth.seed,
        lesion_gain=cfg.synth.lesion_gain,
        lesion_size=cfg.synth.lesion_size,
        replace=cfg.synth.replace,
    )
    summary.rows_in = summary.rows_ok = result.images
    summary.extra.update(
        out=result.out,
        patients=result.patients,
        abnormal_patients=result.abnormal_patients,
        xml_files=result.xml_files,
        reused=result.reused,
    )
    return summary.finish()
