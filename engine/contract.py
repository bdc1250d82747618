"""The model's contract: what a trained checkpoint records that scoring must reproduce, and how a config adopts it.

A trained run's `model/best.json` (and the info inside `model/best.pt`) holds `contract`: the config values the
model was trained with and that scoring must use to see images as it saw them (architecture, canvas, view, count
rule), and `cam_settings`: how that run reads its CAMs. `apply_contract` returns the config that scores with the
model (`make cam`, `make infer`; `model.from_run` or the run's own model):

- a key left at its default (the dataclass default of engine/config.py) takes the checkpoint's value;
- a contract key set to another value than the checkpoint's is a contradiction: ContractError (one line naming
  both values; the job prints `error: ...` and exits 2) unless `model.override_contract=true`, which keeps the
  configured canvas, view and count rule (the architecture, `model.name` and `model.output_stride`, is always the
  checkpoint's: the weights are that network);
- a CAM setting set to another value is used as set (it changes how the CAM is read, not what the model sees).

Setting a key to its default value is the same as leaving it: the checkpoint's value is adopted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.config import Config, ConfigError

# config key -> the checkpoint's value must be used (else the model sees other images than it was trained on)
CONTRACT_KEYS = ("model.name", "model.output_stride", "canvas.height", "canvas.width", "data.view", "data.count_scale")
ARCH_KEYS = ("model.name", "model.output_stride")  # always the checkpoint's, even with model.override_contract
# config key -> recorded and adopted where the config leaves it at its default; a set value wins
CAM_KEYS = ("cam.method", "cam.target_layer", "cam.refine", "cam.refine_reach", "cam.refine_power", "cam.refine_peaks")
# flat keys of checkpoints written before `contract` was recorded (core/model/classifier.py arch_info + training info)
LEGACY_KEYS = {
    "model": "model.name",
    "output_stride": "model.output_stride",
    "canvas_h": "canvas.height",
    "canvas_w": "canvas.width",
    "view": "data.view",
}
TRAINED_VIEWS = {"ANT": ("ANT",), "POST": ("POST",), "BOTH": ("ANT", "POST")}  # data.view -> index `view` values
THRESHOLD_FILE = "threshold.json"  # the run's chosen operating point (`make threshold`), relative to the run dir


class ContractError(ConfigError):
    """The config contradicts the model it scores with; the message names each key with both values."""


def get_key(cfg: Config, key: str) -> Any:
    """Returns the value of dotted `key` ("canvas.height") in `cfg`."""
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def set_keys(cfg: Config, values: dict[str, Any]) -> Config:
    """Returns `cfg` with dotted keys replaced by `values`."""
    by_section: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, name = key.split(".")
        by_section.setdefault(section, {})[name] = value
    return dataclasses.replace(
        cfg, **{s: dataclasses.replace(getattr(cfg, s), **fields) for s, fields in by_section.items()}
    )


def contract_info(cfg: Config) -> dict[str, Any]:
    """Returns what a trained checkpoint records for scoring: `contract`, `cam_settings` and where the chosen
    threshold will be (`threshold`: `threshold.json` of the run, written by `make threshold`)."""
    return {
        "contract": {key: get_key(cfg, key) for key in CONTRACT_KEYS},
        "cam_settings": {key: get_key(cfg, key) for key in CAM_KEYS},
        "threshold": THRESHOLD_FILE,
    }


def recorded_contract(info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (contract, cam settings) of a checkpoint's info; an older checkpoint gives what its flat keys hold."""
    contract = dict(info.get("contract") or {})
    for flat, key in LEGACY_KEYS.items():
        if key not in contract and info.get(flat) is not None:
            contract[key] = info[flat]
    return contract, dict(info.get("cam_settings") or {})


def _same(configured: Any, recorded: Any) -> bool:
    if isinstance(configured, tuple) and isinstance(recorded, list):
        recorded = tuple(recorded)
    return bool(configured == recorded)


def apply_contract(cfg: Config, info: dict[str, Any], source: str) -> tuple[Config, dict[str, str]]:
    """Returns (the config that scores with this checkpoint, what it changed: key -> note) (module docstring).

    `source` names the checkpoint in messages (`<run>/model/best.json`).

    Raises:
        ContractError: a contract key set to another value than the checkpoint's, without model.override_contract.
    """
    defaults = Config()
    contract, cam = recorded_contract(info)
    adopted: dict[str, Any] = {}
    notes: dict[str, str] = {}
    conflicts: list[str] = []
    for key, recorded in {**contract, **cam}.items():
        if key not in (*CONTRACT_KEYS, *CAM_KEYS):
            continue  # a key a newer engine records: nothing here reads it
        value = get_key(cfg, key)
        if _same(value, recorded):
            continue
        if _same(value, get_key(defaults, key)):
            adopted[key] = recorded
            notes[key] = f"{recorded} (the model's; the config left the default {value})"
        elif key in CAM_KEYS:
            notes[key] = f"{value} (as configured; the model's run used {recorded})"
        elif cfg.model.override_contract and key not in ARCH_KEYS:
            notes[key] = f"{value} (model.override_contract=true; the model was trained with {recorded})"
        elif cfg.model.override_contract:
            adopted[key] = recorded
            notes[key] = f"{recorded} (the weights' architecture; the config's {value} is ignored)"
        else:
            conflicts.append(f"{key}={value} but the model was trained with {key}={recorded}")
    if conflicts:
        raise ContractError(
            f"the config contradicts the model it scores with ({source}): {'; '.join(conflicts)}; leave the key(s) "
            "at their default to adopt the model's values, or set model.override_contract=true to score anyway"
        )
    if "data.view" in adopted and adopted["data.view"] not in TRAINED_VIEWS:
        raise ContractError(f"{source}: data.view={adopted['data.view']!r} is not one of {sorted(TRAINED_VIEWS)}")
    return set_keys(cfg, adopted), notes


def trained_views(cfg: Config) -> tuple[str, ...]:
    """Returns the index `view` values the model scores: those of `data.view` (ANT, POST, or both)."""
    return TRAINED_VIEWS[cfg.data.view]
