"""Name the parts of an exported graph: the embeddings, each encoder layer's attention and FFN, the head.

The TorchScript exporter names nodes after the module path (e.g. /encoder/layers.3/ffn_in/MatMul),
so a node's group follows from its name. Quantization decisions and error reports use these groups.
"""
from __future__ import annotations

import re

_LAYER = re.compile(r"/encoder/layers\.(\d+)/(attn|ffn|attn_norm|ffn_norm)")


def group_of(node_name: str) -> str | None:
    """'embeddings', 'layer.<i>.attention', 'layer.<i>.ffn', 'head', or None for glue (mask, shapes)."""
    if match := _LAYER.search(node_name):
        part = "attention" if match.group(2).startswith("attn") else "ffn"
        return f"layer.{match.group(1)}.{part}"
    if "/encoder/embeddings/" in node_name or "/encoder/project/" in node_name:
        return "embeddings"
    if node_name.startswith("/head/"):
        return "head"
    return None


def nodes_by_group(model_proto, op_types=None) -> dict[str, list[str]]:
    """Group → the names of its nodes (optionally only those of `op_types`), in graph order."""
    groups: dict[str, list[str]] = {}
    for node in model_proto.graph.node:
        group = group_of(node.name)
        if group and (op_types is None or node.op_type in op_types):
            groups.setdefault(group, []).append(node.name)
    return groups


def group_order(name: str) -> tuple:
    """Sort key: embeddings, then layers in depth order (attention before ffn), then the head."""
    if name == "embeddings":
        return (0,)
    if name == "head":
        return (2,)
    _, index, part = name.split(".")
    return (1, int(index), part != "attention")
