"""The training engine, checkpoints, resume, eval and DDP, on tiny models and tiny images."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from detector.cli import app
from detector.config import load_config
from detector.corpus import SplitConfig, assign_splits, records_from_folder, write_manifest
from detector.training import TrainConfig, load_checkpoint, train
from detector.training.checkpoint import read_tensors
from detector.training.model import RealFakeModel, create_backbone, prepare_method

BACKBONE = "timm:test_efficientnet"


@pytest.fixture
def split_corpus(folder_corpus: Path) -> Path:
    records = records_from_folder(folder_corpus, group_regex=r"^(.+?)_crop")
    # Each generator's fakes make their own groups so both classes land in train and val.
    for r in records:
        if r.is_fake:
            r.group = f"{r.generator}-{r.group}"
    assign_splits(records, SplitConfig(seed=0, train=0.5, val=0.25, test=0.25))
    manifest = folder_corpus / "manifest.csv"
    write_manifest(records, manifest, folder_corpus)
    return manifest


def config_for(corpus: Path, out: Path, method: str, **extra) -> TrainConfig:
    overrides = [
        f"data.corpus={corpus}",
        f"out={out}",
        f"method.name={method}",
        f"model.backbone={BACKBONE}",
        "data.image_size=32",
        "data.batch_size=4",
        "optim.epochs=2",
        "optim.lr=0.01",
        "wandb.mode=disabled",
        *[f"{k}={v}" for k, v in extra.items()],
    ]
    return load_config(TrainConfig, None, overrides)


@pytest.mark.parametrize("method", ["linear-probe", "full-finetune", "lora", "effort"])
def test_every_method_trains_and_checkpoint_reloads(split_corpus, tmp_path, method):
    cfg = config_for(split_corpus, tmp_path / method, method)
    result = train(cfg, show_progress=False)
    card = result.card
    out = tmp_path / method
    for name in ("model.safetensors", "config.yaml", "calibration.json", "model_card.json", "MODEL_CARD.md"):
        assert (out / name).is_file(), name
    assert card["method"] == method and card["epochs_run"] >= 1
    assert 0 < card["trainable_parameters"] <= card["total_parameters"]
    # The checkpoint is the untouched architecture: no Effort/LoRA keys, loads strictly into a fresh one.
    keys = read_tensors(out / "model.safetensors").keys()
    assert not any("parametrizations" in k or "lora_" in k for k in keys)
    detector, config, calibrator, card2 = load_checkpoint(out)
    assert card2["method"] == method and calibrator.method == "temperature"
    x = torch.rand(3, 3, 32, 32)
    result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(detector(x)["logit"], result.model(x)["logit"], atol=1e-5, rtol=1e-5)


def test_trainable_sets_per_method():
    def counts(method: str, **kw) -> tuple[int, int, RealFakeModel]:
        cfg = load_config(TrainConfig, None, [f"method.name={method}", f"model.backbone={BACKBONE}"])
        for key, value in kw.items():
            setattr(cfg.method, key, value)
        detector = RealFakeModel(create_backbone(cfg.model), ["real", "a", "b"])
        state = prepare_method(detector, cfg.method)
        return state.trainable, state.total, detector

    head = (1 + 3) * (1 + counts("linear-probe")[2].backbone.feature_dim)
    lp, total, _ = counts("linear-probe")
    assert lp == head
    ft, total_ft, _ = counts("full-finetune")
    assert ft == total_ft
    effort1, _, detector = counts("effort")
    effort2, _, _ = counts("effort", rank=2)
    assert head < effort1 < effort2 < ft
    trainable = [n for n, p in detector.named_parameters() if p.requires_grad]
    assert all(
        n.startswith(("head.", "generator_head.")) or n.endswith(("U_res", "S_res", "V_res"))
        for n in trainable
    )
    lora, _, _ = counts("lora")
    assert head < lora < ft


def test_resume_continues_from_saved_epoch(split_corpus, tmp_path):
    out = tmp_path / "run"
    first = train(config_for(split_corpus, out, "effort", **{"optim.epochs": 1}), show_progress=False)
    assert first.card["epochs_run"] == 1
    progress = json.loads((out / "train_state" / "progress.json").read_text())
    assert progress["epoch"] == 1
    resumed = train(
        config_for(split_corpus, out, "effort", **{"optim.epochs": 2}), resume=True, show_progress=False
    )
    assert resumed.card["epochs_run"] == 2
    assert [h["epoch"] for h in resumed.card["history"]] == [1, 2]
    assert resumed.card["history"][0] == first.card["history"][0]


def test_cli_train_then_eval(split_corpus, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli-run"
    result = runner.invoke(
        app,
        [
            "train",
            "--corpus",
            str(split_corpus),
            "--out",
            str(out),
            "--method",
            "effort",
            "--backbone",
            BACKBONE,
            "--set",
            "data.image_size=32",
            "--set",
            "optim.epochs=1",
            "--set",
            "data.batch_size=4",
            "--set",
            "wandb.mode=disabled",
            "--set",
            "calibration.method=isotonic",
            "--set",
            "model.generator_head=false",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "model_card.json").is_file()
    eval_out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "eval",
            str(out),
            str(split_corpus),
            "--out",
            str(eval_out),
            "--split",
            "all",
            "-p",
            "clean,jpeg50,crop0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in (
        "metrics.csv",
        "per_generator.csv",
        "metrics.md",
        "roc.png",
        "reliability.png",
        "predictions.csv",
    ):
        assert (eval_out / name).is_file(), name
    lines = (eval_out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("perturbation,subset,n,n_fake,auc")
    assert {line.split(",")[0] for line in lines[1:]} == {"clean", "jpeg50", "crop0.5"}
    assert "| all auc |" in (eval_out / "metrics.md").read_text()
    # Bad input fails cleanly, by name.
    bad = runner.invoke(app, ["eval", str(tmp_path / "missing"), str(split_corpus)])
    assert bad.exit_code == 2 and "missing" in bad.output
    bad = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--set", "wandb.mode=disabled"])
    assert bad.exit_code == 2 and "corpus" in bad.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, corpus: str, out: str, result_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    cfg = config_for(Path(corpus), Path(out), "effort", **{"device": "cpu", "optim.epochs": 1})
    result = train(cfg, show_progress=False)
    from detector.training.checkpoint import tensors_of, write_tensors

    write_tensors(Path(result_dir) / f"rank{rank}.safetensors", tensors_of(result.model))


def test_ddp_two_gloo_processes_end_with_identical_weights(split_corpus, tmp_path):
    import torch.multiprocessing as mp

    port = _free_port()
    args = (2, port, str(split_corpus), str(tmp_path / "ddp"), str(tmp_path))
    # fork: the workers inherit the imported modules instead of re-importing torch and timm.
    mp.start_processes(_ddp_worker, args=args, nprocs=2, start_method="fork")
    a = read_tensors(tmp_path / "rank0.safetensors")
    b = read_tensors(tmp_path / "rank1.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    # And training did move the weights away from the pretrained/random start.
    assert (tmp_path / "ddp" / "model_card.json").is_file()


def test_unreadable_validation_images_are_counted_and_conflicting_labels_refused(split_corpus, tmp_path):
    from detector.corpus import CorpusError, read_manifest

    corpus = read_manifest(split_corpus)
    val = [r for r in corpus.records if r.split == "val"]
    (split_corpus.parent / val[0].path).write_bytes(b"\x89PNG\r\n\x1a\nbroken")  # unreadable now
    result = train(
        config_for(split_corpus, tmp_path / "run", "linear-probe", **{"optim.epochs": 1}), show_progress=False
    )
    metrics = result.card["metrics"]
    assert metrics["val_images_unreadable"] == 1 and metrics["val_images_scored"] == len(val) - 1
    # The same file listed twice with two labels cannot train.
    text = split_corpus.read_text().splitlines()
    real = next(line for line in text[1:] if ",real," in line)
    text.append(real.replace(",real,real,", ",fake,gen_a,", 1))
    split_corpus.write_text("\n".join(text) + "\n")
    with pytest.raises(CorpusError, match="conflicting labels"):
        train(config_for(split_corpus, tmp_path / "run2", "linear-probe"), show_progress=False)


def test_one_seed_gives_one_run(split_corpus, tmp_path):
    """Augmentations draw from their own generator: it follows the config's seed too."""
    weights = []
    for k in range(2):
        config = config_for(split_corpus, tmp_path / f"run{k}", "linear-probe", **{"optim.epochs": 1})
        train(config, show_progress=False)
        weights.append(read_tensors(tmp_path / f"run{k}" / "model.safetensors"))
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_paired_training_with_the_ranking_loss_runs_and_changes_the_model(split_corpus, tmp_path):
    from detector.corpus import read_manifest
    from detector.training import TrainingError

    corpus = read_manifest(split_corpus)
    reals = {}
    for r in corpus.records:
        if not r.is_fake:
            reals.setdefault(r.split, []).append(r.path)
    for k, r in enumerate(x for x in corpus.records if x.is_fake):
        r.source = reals[r.split][k % len(reals[r.split])]  # each fake "made from" a real of its split
    paired = split_corpus.with_name("paired.csv")
    write_manifest(corpus.records, paired, split_corpus.parent)
    assert read_manifest(paired).records[-1].source  # the column round-trips
    weights = {}
    for name, extra in {
        "plain": {},
        "paired": {"data.paired": "true", "optim.pair_loss_weight": "1.0"},
    }.items():
        config = config_for(paired, tmp_path / name, "linear-probe", **{"optim.epochs": 1, **extra})
        train(config, show_progress=False)
        weights[name] = read_tensors(tmp_path / name / "model.safetensors")
    assert any(not torch.equal(weights["plain"][k], weights["paired"][k]) for k in weights["plain"])
    with pytest.raises(TrainingError, match="data.paired"):
        train(config_for(paired, tmp_path / "x", "linear-probe", **{"optim.pair_loss_weight": "1.0"}))
