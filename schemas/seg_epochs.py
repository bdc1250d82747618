"""Table `seg_epochs`: one row per `make segtrain` epoch (rank 0); epochs count from 1."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ()
SCHEMA = pa.schema(
    [
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("train_loss", pa.float32()),  # mean Dice + focal loss over the epoch's train images
        pa.field("val_loss", pa.float32()),
        pa.field("val_dice", pa.float32()),  # pooled Dice vs the val pseudo masks over all val images (selects best)
        pa.field("val_dice_lesion", pa.float32()),  # mean per-image Dice over val images with a pseudo mask
        pa.field("val_fp_normal", pa.float32()),  # share of empty-target val images with any predicted pixel
        pa.field("lr", pa.float32()),
        pa.field("images", pa.int64()),  # train images trained on this epoch (all workers)
        pa.field("val_images", pa.int64()),
        pa.field("train_errors", pa.int64()),  # undecodable train + val rows skipped this epoch
        pa.field("seconds", pa.float32()),
        pa.field("img_per_s", pa.float32()),
        pa.field("is_best", pa.bool_()),  # best val_dice so far
    ]
)
