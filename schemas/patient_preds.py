"""Table `patient_preds`: one probability per patient from its whole-body views (engine/core/metrics/patients.py).

`make threshold` writes val's (the best epoch's predictions) with the fusion rule and patient threshold it chooses
there; `make infer` writes the scored split's with that rule and threshold.
"""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ("stage", "split")
SCHEMA = pa.schema(
    [
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("y_prob", pa.float32()),  # the views' probabilities fused by `fusion`
        pa.field("y_true", pa.int8()),  # 1: abnormal in any view; 0: normal in every view; -1: no view labelled
        pa.field("y_pred", pa.int8()),  # y_prob >= thr
        pa.field("thr", pa.float32()),  # the patient threshold chosen on val
        pa.field("fusion", pa.string()),  # max or mean, chosen on val
        pa.field("n_views", pa.int16()),  # whole-body images scored for the patient
        pa.field("views", pa.string()),  # the scored views, e.g. ANT+POST; POST alone: scored from that view
        pa.field("run_id", pa.string()),
        pa.field("stage", pa.string(), nullable=False),  # threshold (val) or infer
        pa.field("split", pa.string(), nullable=False),
    ]
)
