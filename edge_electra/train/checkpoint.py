"""Hugging Face checkpoint folders: load ELECTRA (and BERT-family) weights into `Electra`, save them back.

A folder holds config.json plus model.safetensors or pytorch_model.bin. Weight names are mapped
between the Hugging Face layout and ours by the rules below, so `transformers` loads what we save.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from edge_electra.atomic import atomic_dir
from edge_electra.train.config import ACTIVATIONS, ElectraConfig
from edge_electra.errors import CheckpointError
from edge_electra.train.model import Electra

log = logging.getLogger(__name__)
# (Hugging Face name, our name); {i} is a layer index, {p} is weight or bias.
ENCODER_RULES = [
    ("embeddings.word_embeddings.weight", "encoder.embeddings.word.weight"),
    ("embeddings.position_embeddings.weight", "encoder.embeddings.position.weight"),
    ("embeddings.token_type_embeddings.weight", "encoder.embeddings.token_type.weight"),
    ("embeddings.LayerNorm.{p}", "encoder.embeddings.norm.{p}"),
    ("embeddings_project.{p}", "encoder.project.{p}"),
    ("encoder.layer.{i}.attention.self.query.{p}", "encoder.layers.{i}.attn.q.{p}"),
    ("encoder.layer.{i}.attention.self.key.{p}", "encoder.layers.{i}.attn.k.{p}"),
    ("encoder.layer.{i}.attention.self.value.{p}", "encoder.layers.{i}.attn.v.{p}"),
    ("encoder.layer.{i}.attention.output.dense.{p}", "encoder.layers.{i}.attn.out.{p}"),
    ("encoder.layer.{i}.attention.output.LayerNorm.{p}", "encoder.layers.{i}.attn_norm.{p}"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "encoder.layers.{i}.ffn_in.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "encoder.layers.{i}.ffn_out.{p}"),
    ("encoder.layer.{i}.output.LayerNorm.{p}", "encoder.layers.{i}.ffn_norm.{p}"),
]
HEAD_RULES = {
    "discriminator": [("discriminator_predictions.dense.{p}", "head.dense.{p}"),
                      ("discriminator_predictions.dense_prediction.{p}", "head.out.{p}")],
    "generator": [("generator_predictions.dense.{p}", "head.dense.{p}"),
                  ("generator_predictions.LayerNorm.{p}", "head.norm.{p}"),
                  ("generator_lm_head.bias", "head.bias")],
    "sequence": [("classifier.dense.{p}", "head.dense.{p}"), ("classifier.out_proj.{p}", "head.out.{p}")],
    "token": [("classifier.{p}", "head.out.{p}")],
    "joint": [("intent_classifier.dense.{p}", "head.intent.dense.{p}"),
              ("intent_classifier.out_proj.{p}", "head.intent.out.{p}"),
              ("slot_classifier.{p}", "head.slots.out.{p}")],
}
ARCHITECTURES = {
    "discriminator": "ElectraForPreTraining",
    "generator": "ElectraForMaskedLM",
    "sequence": "ElectraForSequenceClassification",
    "token": "ElectraForTokenClassification",
    "joint": "EdgeElectraForJointIntentSlot",
}
# Names Hugging Face models put before the encoder's weights, by model family.
ENCODER_PREFIXES = ("electra.", "bert.", "")
IGNORED = re.compile(r"(position_ids|pooler\.|generator_lm_head\.weight|cls\.)")


def _pattern(template: str) -> re.Pattern:
    rx = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(rx + "$")


def _rename(name: str, rules: list[tuple[str, str]], reverse: bool = False) -> str | None:
    for hf, ours in rules:
        src, dst = (ours, hf) if reverse else (hf, ours)
        m = _pattern(src).match(name)
        if m:
            return dst.format(**m.groupdict())
    return None


def from_hf_state_dict(hf: dict[str, torch.Tensor], task: str) -> tuple[dict, list[str]]:
    """Map Hugging Face weight names to ours. Returns the mapped dict and the names left unused."""
    ours, unused = {}, []
    for name, tensor in hf.items():
        mapped = _rename(name, HEAD_RULES[task])
        if mapped is None:
            for prefix in ENCODER_PREFIXES:
                if name.startswith(prefix) and (mapped := _rename(name[len(prefix):], ENCODER_RULES)):
                    break
        if mapped is not None:
            ours[mapped] = tensor
        elif not IGNORED.search(name):
            unused.append(name)
    return ours, unused


def to_hf_state_dict(model: Electra) -> dict[str, torch.Tensor]:
    prefix = "" if model.config.task == "joint" else "electra."
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "head.word_embeddings.weight":
            continue
        hf = _rename(name, HEAD_RULES[model.config.task], reverse=True)
        if hf is None:
            hf = prefix + _rename(name, ENCODER_RULES, reverse=True)
        out[hf] = tensor.detach().cpu().contiguous()
    if model.config.task == "generator":
        out["generator_lm_head.weight"] = out[prefix + "embeddings.word_embeddings.weight"].clone()
    return out


def _labels(hf_config: dict) -> list[str]:
    id2label = hf_config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


def config_from_hf(hf: dict) -> ElectraConfig:
    task = next((t for t, arch in ARCHITECTURES.items() if arch in hf.get("architectures", [])), "sequence")
    extra = hf.get("edge_electra", {})
    task = extra.get("task", task)
    # Pre-training heads have no labels; Hugging Face fills id2label with LABEL_0, LABEL_1 regardless.
    labels = [] if task in ("discriminator", "generator") else _labels(hf)
    slot_labels = extra.get("slot_labels", [])
    pooling = extra.get("pooling", "cls")
    if task == "token":  # a token classifier's id2label holds its tags
        labels, slot_labels = [], labels
    activation = hf.get("hidden_act", "gelu")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"the checkpoint's hidden_act {activation!r} is not implemented here "
                              f"(supported: {', '.join(ACTIVATIONS)}); loading it would compute another function")
    try:
        return ElectraConfig(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            embedding_size=hf.get("embedding_size", hf["hidden_size"]),
            num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12), dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1), pad_token_id=hf.get("pad_token_id", 0),
            hidden_act=activation, task=task, labels=labels, slot_labels=slot_labels, pooling=pooling)
    except KeyError as e:
        raise CheckpointError(f"config.json lacks {e.args[0]!r}; is this an ELECTRA or BERT checkpoint?") from e


def config_to_hf(cfg: ElectraConfig) -> dict:
    hf = {
        "model_type": "electra", "architectures": [ARCHITECTURES[cfg.task]],
        "vocab_size": cfg.vocab_size, "embedding_size": cfg.embedding_size, "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size, "hidden_act": cfg.hidden_act,
        "max_position_embeddings": cfg.max_position, "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps, "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout, "pad_token_id": cfg.pad_token_id,
        "summary_type": "first", "summary_use_proj": True, "summary_activation": "gelu",
        "summary_last_dropout": 0.1, "position_embedding_type": "absolute",
        "edge_electra": {"task": cfg.task, "slot_labels": cfg.slot_labels, "pooling": cfg.pooling},
    }
    labels = cfg.slot_labels if cfg.task == "token" else cfg.labels
    if labels:
        hf["id2label"] = {str(i): label for i, label in enumerate(labels)}
        hf["label2id"] = {label: i for i, label in enumerate(labels)}
    return hf


def resolve(source: str | Path) -> Path:
    """A local checkpoint folder, or a Hugging Face Hub id downloaded through huggingface_hub."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise CheckpointError(f"checkpoint folder {source} not found")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise CheckpointError(f"{source} is not a local folder, and loading from the Hub needs "
                              "`pip install edge-electra[hub]`") from e
    try:
        return Path(snapshot_download(str(source), allow_patterns=[
            "config.json", "model.safetensors", "pytorch_model.bin", "vocab.txt", "tokenizer.json"]))
    except Exception as e:  # the hub raises many kinds: offline, unknown repo, gated, HTTP
        raise CheckpointError(f"could not download {source} from the Hugging Face Hub ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no details'}). If this machine is "
                              "offline, copy the checkpoint folder here and pass its path.") from e


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file
        try:
            return load_file(folder / "model.safetensors")
        except Exception as e:
            raise CheckpointError(f"{folder / 'model.safetensors'} cannot be read: {e}") from e
    if (folder / "pytorch_model.bin").exists():
        try:  # weights_only: a checkpoint must never run code
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{folder / 'pytorch_model.bin'} cannot be read: {e}") from e
    raise CheckpointError(f"{folder} has no model.safetensors or pytorch_model.bin")


def load_pretrained(source: str | Path, **overrides) -> tuple[Electra, dict]:
    """Load a checkpoint folder or Hub id. `overrides` change the config (task, labels, ...).

    Every encoder weight must come from the checkpoint: a CheckpointError says which are missing (a
    checkpoint of another model family maps none of them). Only the head may start fresh. Returns the
    model and a report, also logged: `missing` (head weights newly initialised, e.g. for new labels)
    and `unused` (checkpoint weights with no place in this model).
    """
    folder = resolve(source)
    try:
        hf = json.loads((folder / "config.json").read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{folder} has no config.json") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{folder / 'config.json'} is not valid JSON: {e}") from e
    base = config_from_hf(hf)
    cfg = base.replace(**overrides)
    weights, unused = from_hf_state_dict(read_weights(folder), cfg.task)
    model = Electra(cfg)
    own = model.state_dict()
    for name, tensor in weights.items():
        if name in own and own[name].shape != tensor.shape:
            raise CheckpointError(f"weight {name} has shape {tuple(tensor.shape)} in {folder}, "
                                  f"but the model expects {tuple(own[name].shape)}")
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if k != "head.word_embeddings.weight"]
    unused = unused + list(result.unexpected_keys)
    _refuse_missing_encoder(folder, [k for k in missing if k.startswith("encoder.")], unused)
    if missing:
        log.info("%s: newly initialised for the %s head: %s", folder, cfg.task, ", ".join(missing))
    if unused:
        log.info("%s: checkpoint weights left unused: %s", folder, ", ".join(unused))
    return model, {"missing": missing, "unused": unused, "source": str(folder)}


def _refuse_missing_encoder(folder: Path, missing: list[str], unused: list[str]) -> None:
    """A model whose encoder is partly random would train or run without a word of warning: refuse it."""
    if not missing:
        return
    prefixes = sorted({name.split(".", 1)[0] + "." for name in unused if "." in name})
    raise CheckpointError(
        f"{folder} lacks {len(missing)} encoder weight(s) this model needs (e.g. {', '.join(missing[:3])}); "
        f"{len(unused)} of its weights match nothing here"
        + (f" (their names start with {', '.join(prefixes[:5])})" if prefixes else "")
        + f". Only ELECTRA and BERT-family encoders load (weight names prefixed with "
        f"{', '.join(repr(p) for p in ENCODER_PREFIXES)}), with all their layers")


def save_pretrained(model: Electra, folder: str | Path, tokenizer=None) -> Path:
    """Write config.json and model.safetensors (and the tokenizer, if given), atomically."""
    from safetensors.torch import save_file
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2) + "\n")
        save_file(to_hf_state_dict(model), tmp / "model.safetensors", metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return folder
