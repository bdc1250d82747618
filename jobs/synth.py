"""`make synth`: Generate a synthetic BS-80K-shaped dataset and print its image statistics beside real scans'."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobs._cli import job_main

if TYPE_CHECKING:
    from engine.config import Config
    from engine.io.summary import StageSummary


def synth_with_statistics(cfg: Config) -> StageSummary:
    """Runs `make synth`, then adds the whole-body QC medians (engine/core/scans/qc.py) and the real-scan medians."""
    from engine.core.scans.qc import REAL_SCAN_MEDIANS
    from engine.io.synth import whole_body_statistics
    from engine.stages.synth import run_synth

    summary = run_synth(cfg)
    stats = whole_body_statistics(cfg.synth.out)
    summary.extra["whole-body frames (noise / low-count / body cut)"] = (
        f"{stats['frames']} ({stats['noise_frames']} / {stats['low_count_frames']} / {stats['body_cut_frames']})"
    )
    for name, real in REAL_SCAN_MEDIANS.items():
        summary.extra[f"median {name}"] = f"{stats[name]:.3g} (real {real:.3g})"
    return summary


main = job_main(synth_with_statistics, __doc__, "synth")

if __name__ == "__main__":
    raise SystemExit(main())
