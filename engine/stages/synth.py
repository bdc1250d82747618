"""`make synth`: a synthetic BS-80K-shaped dataset at `synth.out`, its image statistics beside real scans'."""

from __future__ import annotations

from engine.config import Config
from engine.core.scans.qc import REAL_SCAN_MEDIANS
from engine.io.summary import StageSummary
from engine.io.synth import generate_dataset, whole_body_statistics
from engine.stages._stage import Stage


def run_synth(cfg: Config) -> StageSummary:
    """Generates a synthetic BS-80K-shaped dataset at `synth.out`, then adds the whole-body QC medians
    (engine/core/scans/qc.py) and the real-scan medians to the summary."""
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
    summary.finish()
    stats = whole_body_statistics(cfg.synth.out)
    summary.extra["whole-body frames (noise / low-count / body cut)"] = (
        f"{stats['frames']} ({stats['noise_frames']} / {stats['low_count_frames']} / {stats['body_cut_frames']})"
    )
    for name, real in REAL_SCAN_MEDIANS.items():
        summary.extra[f"median {name}"] = f"{stats[name]:.3g} (real {real:.3g})"
    return summary


STAGE = Stage(
    name="synth",
    run=run_synth,
    help="generate a synthetic BS-80K-shaped dataset (synth.out, synth.patients, synth.seed), its image statistics",
    sections=("synth",),
)
