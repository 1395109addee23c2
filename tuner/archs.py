"""One table of network architectures, in the style of pyiqa's: name, kind, module, hyper-parameters, detector.

Every architecture tuner can run is one row here; config validation (:func:`validate`),
network construction (:func:`build`) and state-dict detection (:func:`detect`) all read
the same rows, so adding an architecture means adding one row.

- ``kind``: ``sr`` (the upscaler) or ``face`` (the face restorer);
- ``required``: hyper-parameters the constructor has no default for; ``optional``: those
  it has (upstream's defaults apply when a config leaves them out); ``ignored``: accepted
  in a config but not passed on (SRVGGNetCompact calls its scale ``upscale``; ``scale`` is
  kept for :func:`tuner.upscale.arch_scale` and for detected architectures);
- ``module``: where the upstream class (named like the row) lives; :meth:`ArchInfo.load` imports
  it only when a network is built (through :func:`tuner.compat.import_basicsr_stack`), so
  importing this module imports neither torch nor basicsr, and nothing is registered;
- ``detect``: for SR rows, the hyper-parameters read from a bare state dict (None = not
  this architecture).

``tests/test_archs.py`` checks each row's keys against its constructor's signature.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .compat import import_basicsr_stack
from .errors import ConfigError, WeightsError

__all__ = ["ArchInfo", "TABLE", "names", "get", "validate", "build", "detect"]


@dataclass(frozen=True)
class ArchInfo:
    """One row: an architecture's type name (= its upstream class), kind, keys and detector."""

    name: str
    kind: str  # "sr" | "face"
    module: str  # where the upstream class (named like the row) lives
    required: tuple[str, ...]
    optional: tuple[str, ...]
    detect: Callable[[Mapping[str, Any]], dict[str, Any] | None] | None = None
    ignored: tuple[str, ...] = ()

    @property
    def keys(self) -> frozenset[str]:
        """Every key an ``arch`` mapping of this type may hold (``type`` included)."""
        return frozenset(("type", *self.required, *self.optional, *self.ignored))

    def load(self) -> Any:
        """The upstream class, imported now (basicsr's import shim first)."""
        import_basicsr_stack()
        return getattr(importlib.import_module(self.module), self.name)


# ---------------------------------------------------------------- detection from a bare state dict
def _detect_rrdbnet(sd: Mapping[str, Any]) -> dict[str, Any] | None:
    if not ("conv_first.weight" in sd and any(k.startswith("body.") and ".rdb1." in k for k in sd)):
        return None
    num_feat = int(sd["conv_first.weight"].shape[0])
    in_ch = int(sd["conv_first.weight"].shape[1])
    num_block = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body.") and ".rdb1." in k)
    num_grow_ch = int(sd["body.0.rdb1.conv1.weight"].shape[0])
    out_ch = int(sd["conv_last.weight"].shape[0])
    # RRDBNet pixel-unshuffles RGB input for scale 2 (x4 channels) and scale 1 (x16).
    scale, unshuffle = {3: (4, 1), 12: (2, 4), 48: (1, 16)}.get(in_ch, (None, None))
    if scale is None or unshuffle is None:
        raise WeightsError(f"RRDBNet with {in_ch} input channels: cannot infer its scale")
    return {"type": "RRDBNet", "num_in_ch": in_ch // unshuffle, "num_out_ch": out_ch,
            "num_feat": num_feat, "num_block": num_block, "num_grow_ch": num_grow_ch, "scale": scale}


def _detect_srvggnet(sd: Mapping[str, Any]) -> dict[str, Any] | None:
    if "body.0.weight" not in sd:
        return None
    idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("body.")})
    last = sd[f"body.{idx[-1]}.weight"]
    first = sd["body.0.weight"]
    num_feat = int(first.shape[0])
    in_ch = int(first.shape[1])
    convs = [i for i in idx if sd[f"body.{i}.weight"].ndim == 4]
    prelu = any(sd[f"body.{i}.weight"].ndim == 1 for i in idx)
    out_ch_total = int(last.shape[0])
    num_conv = len(convs) - 2
    # the last conv emits num_out_ch * upscale^2 channels; RGB out assumed
    up2 = out_ch_total // 3
    upscale = int(round(up2**0.5))
    if upscale * upscale * 3 != out_ch_total:
        raise WeightsError(f"SRVGGNetCompact with {out_ch_total} output channels: cannot infer its scale")
    return {"type": "SRVGGNetCompact", "num_in_ch": in_ch, "num_out_ch": 3, "num_feat": num_feat,
            "num_conv": num_conv, "upscale": upscale, "act_type": "prelu" if prelu else "relu", "scale": upscale}


# ---------------------------------------------------------------- the table
_ROWS = [
    ArchInfo("RRDBNet", "sr", "basicsr.archs.rrdbnet_arch", ("num_in_ch", "num_out_ch"),
             ("scale", "num_feat", "num_block", "num_grow_ch"), _detect_rrdbnet),
    ArchInfo("SRVGGNetCompact", "sr", "realesrgan.archs.srvgg_arch", (),
             ("num_in_ch", "num_out_ch", "num_feat", "num_conv", "upscale", "act_type"), _detect_srvggnet,
             ignored=("scale",)),
    ArchInfo("GFPGANv1Clean", "face", "gfpgan.archs.gfpganv1_clean_arch", ("out_size",),
             ("num_style_feat", "channel_multiplier", "decoder_load_path", "fix_decoder", "num_mlp", "input_is_latent",
              "different_w", "narrow", "sft_half")),
    ArchInfo("RestoreFormer", "face", "gfpgan.archs.restoreformer_arch", (),
             ("n_embed", "embed_dim", "ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout",
              "in_channels", "resolution", "z_channels", "double_z", "enable_mid", "fix_decoder", "fix_codebook",
              "fix_encoder", "head_size")),
]
TABLE: dict[str, ArchInfo] = {a.name: a for a in _ROWS}
_LABEL = {"sr": "SR ", "face": "face ", None: ""}
_KIND_WORDS = {"sr": "super-resolution", "face": "face restoration"}


def names(kind: str | None = None) -> list[str]:
    """The architecture types of ``kind`` (sr, face; None = all), in table order."""
    return [a.name for a in _ROWS if kind is None or a.kind == kind]


def get(name: Any, *, kind: str | None = None) -> ArchInfo:
    """The row for ``name``; an unknown name (or one of another kind) raises ConfigError suggesting close names."""
    if kind not in _LABEL:
        raise ValueError(f"kind must be 'sr', 'face' or None, got {kind!r}")
    want = names(kind)
    row = TABLE.get(name) if isinstance(name, str) else None
    if row is not None and name in want:
        return row
    use = f"arch.type must be {' or '.join(want)}"
    if row is not None:  # a known type, but of the other kind (a face network as the SR model, say)
        raise ConfigError(f"unknown {_LABEL[kind]}architecture type {name!r} ({name} is a {_KIND_WORDS[row.kind]} "
                          f"architecture); {use}")
    if not name:
        raise ConfigError(f"arch.type is missing; {use}")
    by_lower = {n.lower(): n for n in want}
    close = [by_lower[c] for c in difflib.get_close_matches(str(name).lower(), list(by_lower), n=3)]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"unknown {_LABEL[kind]}architecture type {name!r}{hint}; {use}")


def validate(arch: Mapping[str, Any], *, kind: str | None = None, where: str | None = None) -> ArchInfo:
    """Check an ``arch`` mapping (``type`` + hyper-parameters) against its row; returns the row.

    Unknown and missing keys raise ConfigError naming them and listing the allowed ones;
    ``where`` (e.g. ``model 'x'``) prefixes every message.
    """
    pre = f"{where}: " if where else ""
    try:
        row = get(arch.get("type"), kind=kind)
    except ConfigError as e:
        raise ConfigError(f"{pre}{e}") from None
    allowed = sorted(row.keys)
    unknown = sorted(set(arch) - row.keys)
    if unknown:
        hints = {k: difflib.get_close_matches(k, allowed, n=1) for k in unknown}
        hint = "; ".join(f"'{k}'" + (f" (did you mean '{v[0]}'?)" if v else "") for k, v in hints.items())
        raise ConfigError(f"{pre}unknown key(s) in arch for {row.name}: {hint}. Allowed: {allowed}")
    missing = [k for k in row.required if k not in arch]
    if missing:
        raise ConfigError(f"{pre}arch for {row.name} is missing required key(s) {missing}. Allowed: {allowed}")
    return row


def build(arch: Mapping[str, Any], *, kind: str | None = None) -> Any:
    """Instantiate the network an ``arch`` mapping describes (random weights; the caller loads a state dict)."""
    row = validate(arch, kind=kind)
    hp = {k: v for k, v in arch.items() if k != "type" and k not in row.ignored}
    cls = row.load()
    try:
        return cls(**hp)
    except TypeError as e:
        raise ConfigError(f"bad hyper-parameters for {row.name}: {e}") from e


def detect(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture of a bare SR state dict (the first SR row whose detector recognises it), with sizes and scale."""
    for row in _ROWS:
        if row.detect is not None and (arch := row.detect(sd)) is not None:
            return arch
    raise WeightsError(
        f"cannot detect the architecture of this state dict: it is neither {' nor '.join(names('sr'))}; "
        "describe it in conf/model/<name>.yaml instead"
    )
