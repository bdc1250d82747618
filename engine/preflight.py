"""Driver-side checks a job runs before Ray starts: the inputs of its stage exist and the hub weights are reachable.

Each check raises `PreflightError` with one line naming what is missing and the command that makes it; the job
CLI (jobs/_cli.py) prints it as `error: ...` and exits 2, within a second, before torch, timm or Ray are imported.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from engine.config import Config, ConfigError
from engine.stages._stage import MODEL, SPLITS, THRESHOLD, Stage

HUB_TIMEOUT_S = 1.5  # the hub reachability probe gives up after this long (DNS included)


class PreflightError(ConfigError):
    """A stage's input is missing or unreachable; the message says which and how to make it."""


FROM_RUN = (MODEL, THRESHOLD)  # read from `model.from_run` when it is set


def declared(stage: Stage | str) -> Stage:
    """Returns `stage`, or the declaration of the stage of that name (engine/stages/<name>.py)."""
    from engine.stages import stage as declaration

    return declaration(stage) if isinstance(stage, str) else stage


def exists(run_dir: str, relative: str) -> bool:
    """Returns True when `<run_dir>/<relative>` exists (a non-empty folder, or a file); storage URIs via pyarrow."""
    if "://" not in run_dir:
        path = os.path.join(run_dir, relative)
        return os.path.isfile(path) or (os.path.isdir(path) and bool(os.listdir(path)))
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(run_dir)
    return fs.get_file_info(f"{root.rstrip('/')}/{relative}").type != pafs.FileType.NotFound


def check_inputs(stage: Stage | str, cfg: Config) -> None:
    """Raises PreflightError naming the first missing input of `stage` (its declared `inputs(cfg)`) and the command
    that makes it.

    With `model.from_run` the model and threshold come from that run, and new scans need no splits (cam, infer).
    """
    stage = declared(stage)
    for need in stage.inputs(cfg):
        if cfg.model.from_run and need == SPLITS and stage.name in ("cam", "infer"):
            continue
        run_dir = cfg.model.from_run if cfg.model.from_run and need in FROM_RUN else cfg.run.dir
        if not exists(run_dir, need.path):
            raise PreflightError(f"{run_dir}/{need.path} missing: run `{need.made_by}` first")


def hub_repo(model_name: str) -> str:
    """Returns the Hugging Face repo of an `hf_hub:` model name, else "" (a timm name; its repo is timm's choice)."""
    return model_name.removeprefix("hf_hub:") if model_name.startswith("hf_hub:") else ""


def host_reachable(url: str, timeout_s: float = HUB_TIMEOUT_S) -> bool:
    """Returns True when a TCP connection to `url`'s host opens within `timeout_s` (name lookup included)."""
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    probe = threading.Thread(target=connect, daemon=True)  # getaddrinfo has no timeout of its own
    probe.start()
    probe.join(timeout_s)
    return bool(result and result[0])


def check_pretrained(cfg: Config) -> None:
    """Raises PreflightError when `model.pretrained=true` but the weights are neither cached nor downloadable."""
    if not cfg.model.pretrained:
        return
    from huggingface_hub import constants, try_to_load_from_cache

    repo = hub_repo(cfg.model.name)
    files = ("model.safetensors", "pytorch_model.bin")
    if repo and any(isinstance(try_to_load_from_cache(repo, f), str) for f in files):
        return
    if not constants.HF_HUB_OFFLINE and host_reachable(constants.ENDPOINT):
        return
    where = "offline mode (HF_HUB_OFFLINE)" if constants.HF_HUB_OFFLINE else f"{constants.ENDPOINT} unreachable"
    raise PreflightError(
        f"model.pretrained=true but the weights of '{cfg.model.name}' are not cached and {where}: "
        "set model.pretrained=false (train from scratch), with model.weights=<local state dict file> to start from it"
    )


def read_json(run_dir: str, relative: str) -> dict | None:
    """Returns the JSON object of `<run_dir>/<relative>`, or None when there is no such file (storage URIs too)."""
    import json

    if "://" not in run_dir:
        path = os.path.join(run_dir, relative)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(run_dir)
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{relative}") as stream:
            return json.loads(stream.read())
    except FileNotFoundError:
        return None


def check_contract(stage: Stage | str, cfg: Config) -> None:
    """Raises ContractError (one line naming both values) when `make cam` / `make infer`'s config contradicts the
    model it scores with (its model/best.json; engine/contract.py), unless model.override_contract=true."""
    if declared(stage).name not in ("cam", "infer"):
        return
    from engine.contract import apply_contract

    run_dir = cfg.model.from_run or cfg.run.dir
    info = read_json(run_dir, "model/best.json")
    if info is not None:
        apply_contract(cfg, info, f"{run_dir.rstrip('/')}/model/best.json")


def preflight(stage: Stage | str, cfg: Config) -> None:
    """Runs every driver-side check of `stage` (its declaration, or a stage's name): its inputs, (cam, infer) the
    model's contract, then (train) the pretrained weights."""
    stage = declared(stage)
    check_inputs(stage, cfg)
    check_contract(stage, cfg)
    if stage.name == "train":
        check_pretrained(cfg)
