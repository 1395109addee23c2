"""Model files: catalogue, resolution order, sha256, download, safe loading, architecture detection.

A file is resolved, in order, from:
1. an explicit path (``model.path=``);
2. ``weights_dir=`` (or ``$TUNER_WEIGHTS_DIR``);
3. the user cache (``$TUNER_CACHE_DIR`` or ``~/.cache/tuner``)/weights;
4. a download of the official URL into the user cache, with a progress bar.

A file must match its model's pinned sha256 (the official release file's, in
``conf/model/*.yaml``), or one of the accepted alternative copies: those the model config
lists under ``alternatives`` (e.g. the converted offline copies in ``../shared/weights``),
or those the weights folder itself declares in ``tuner-weights.yaml`` (each with its
provenance; see :func:`folder_declarations`).  Anything else is refused.  Files are always
loaded with ``torch.load(weights_only=True)``, so a pickle that would run code is never
executed.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, WeightsError

log = logging.getLogger(__name__)



def user_cache_dir() -> Path:
    return Path(os.environ.get("TUNER_CACHE_DIR") or Path.home() / ".cache" / "tuner")


@dataclass(frozen=True)
class ModelSpec:
    """One model file as described by ``conf/model/*.yaml`` or ``conf/face/*.yaml``.

    ``arch`` holds the architecture type and its hyper-parameters; ``key`` the state-dict
    key (``params_ema``/``params``; None = prefer params_ema, then params, then the root).
    ``denoise`` names the interpolation partner for ``params.denoise`` and which side the
    value weights (``weight_on``: ``base`` as the upstream CLI does for general-x4v3,
    ``partner`` when the partner is the smooth model, e.g. RealESRNet for x4plus).
    """

    name: str
    arch: Mapping[str, Any]
    url: str | None = None
    filename: str | None = None
    sha256: str | None = None
    key: str | None = None
    scale: int = 1
    path: str | None = None
    denoise_partner: str | None = None
    denoise_weight_on: str = "base"
    alternatives: tuple[tuple[str, str], ...] = ()  # accepted (sha256, provenance) besides the official file
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        if self.filename:
            return self.filename
        if self.url:
            return self.url.rsplit("/", 1)[-1]
        if self.path:
            return Path(self.path).name
        return f"{self.name}.pth"

    def accepts(self, sha: str) -> str | None:
        """Why a file with this sha256 may be loaded ("official" or an alternative's provenance), or None."""
        if self.sha256 and sha == self.sha256.lower():
            return "official"
        for alt, why in self.alternatives:
            if sha == alt.lower():
                return why
        return None

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> ModelSpec:
        known = {"name", "arch", "url", "filename", "sha256", "key", "scale", "path", "denoise", "kind", "license",
                 "alternatives"}
        unknown = set(m) - known
        if unknown:
            raise ConfigError(f"model '{m.get('name')}': unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        if not m.get("name"):
            raise ConfigError("a model config needs a 'name'")
        den = m.get("denoise") or {}
        weight_on = den.get("weight_on", "base")
        if weight_on not in ("base", "partner"):
            raise ConfigError(f"model '{m['name']}': denoise.weight_on must be 'base' or 'partner', got {weight_on!r}")
        fname = m.get("filename") or (str(m["url"]).rsplit("/", 1)[-1] if m.get("url") else None)
        if fname is not None and not _plain_file_name(str(fname)):
            raise ConfigError(f"model '{m['name']}': file name {fname!r} must be a plain file name (no folders, "
                              "no '..'); use model.path=... for a file elsewhere")
        alts = []
        for a in m.get("alternatives") or []:
            if not isinstance(a, Mapping) or not _is_sha256(a.get("sha256")) or not a.get("provenance"):
                raise ConfigError(f"model '{m['name']}': each alternatives entry needs a sha256 (64 hex digits) and "
                                  f"a provenance, got {a!r}")
            alts.append((str(a["sha256"]).lower(), str(a["provenance"])))
        if m.get("sha256") and not _is_sha256(m["sha256"]):
            raise ConfigError(f"model '{m['name']}': sha256 must be 64 hex digits, got {m['sha256']!r}")
        return cls(
            name=str(m["name"]),
            arch=dict(m.get("arch") or {}),
            url=m.get("url"),
            filename=m.get("filename"),
            sha256=(m.get("sha256") or None),
            key=m.get("key"),
            scale=int(m.get("scale") or (m.get("arch") or {}).get("scale", 1) or 1),
            path=m.get("path"),
            denoise_partner=den.get("partner"),
            denoise_weight_on=weight_on,
            alternatives=tuple(alts),
        )


def _plain_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and not Path(name).is_absolute()


def _is_sha256(x: Any) -> bool:
    return isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdefABCDEF" for c in x)


DECLARATIONS = "tuner-weights.yaml"


def folder_declarations(folder: Path) -> dict[str, tuple[str, str]]:
    """Accepted copies a weights folder declares: ``tuner-weights.yaml`` maps file names to
    ``{sha256: ..., provenance: ...}``.  A declared file is accepted only with exactly that
    sha256, so the declaration pins the copy (it cannot change silently afterwards)."""
    p = folder / DECLARATIONS
    if not p.is_file():
        return {}
    st = p.stat()
    return dict(_read_declarations(str(p), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=16)
def _read_declarations(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, tuple[str, str]], ...]:
    """Parsed once per version of the file (resolve runs for every image of every trial)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise WeightsError(f"{p}: not valid YAML ({e})") from e
    files = data.get("files") if isinstance(data, Mapping) else None
    if not isinstance(files, Mapping):
        raise WeightsError(f"{p}: expected a mapping 'files: {{name.pth: {{sha256: ..., provenance: ...}}}}'")
    out = {}
    for name, d in files.items():
        if not _plain_file_name(str(name)) or not isinstance(d, Mapping) or not _is_sha256(d.get("sha256")) \
                or not d.get("provenance"):
            raise WeightsError(f"{p}: entry {name!r} needs a plain file name, a sha256 (64 hex digits) and a provenance")
        out[str(name)] = (str(d["sha256"]).lower(), str(d["provenance"]))
    return tuple(out.items())


def catalogue(group: str = "model") -> dict[str, ModelSpec]:
    """Every model described in ``conf/<group>/*.yaml`` (group = model or face), by name."""
    out: dict[str, ModelSpec] = {}
    from .paths import conf_dir

    for f in sorted((conf_dir() / group).glob("*.yaml")):
        m = yaml.safe_load(f.read_text()) or {}
        if m.get("name") in (None, "none") or m.get("path") == "???":
            continue  # face=none, and model=custom (a path given on the command line)
        spec = ModelSpec.from_mapping(m)
        out[spec.name] = spec
    return out


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


_SHA_MEMO: dict[tuple[str, int, int], str] = {}
_ANNOUNCED: set[tuple[str, str]] = set()  # accepted copies already logged in this process


def content_hash(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) within the process."""
    st = path.stat()
    k = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if k not in _SHA_MEMO:
        _SHA_MEMO[k] = sha256_file(path)
    return _SHA_MEMO[k]


@dataclass(frozen=True)
class Located:
    path: Path | None
    source: str  # explicit | weights_dir | cache | missing
    verified: bool | None  # True = an accepted sha256, False = refused, None = nothing pinned for this model
    why: str = ""  # "official", an accepted copy's provenance, or why it was refused


class WeightStore:
    """Finds, verifies and (where allowed) downloads model files."""

    def __init__(self, *, weights_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                 allow_download: bool = True) -> None:
        wd = weights_dir if weights_dir not in (None, "") else os.environ.get("TUNER_WEIGHTS_DIR")
        self.weights_dir = Path(wd).expanduser() if wd else None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else user_cache_dir() / "weights"
        self.allow_download = allow_download

    def candidates(self, spec: ModelSpec) -> list[tuple[str, Path]]:
        out: list[tuple[str, Path]] = []
        if spec.path:
            out.append(("explicit", Path(spec.path).expanduser()))
        if self.weights_dir is not None:
            out += [("weights_dir", self.weights_dir / spec.file_name),
                    ("weights_dir", self.weights_dir / "face" / spec.file_name)]
        out.append(("cache", self.cache_dir / spec.file_name))
        return out

    def locate(self, spec: ModelSpec) -> Located:
        """Where the file is now (no download), and whether its sha256 is accepted."""
        for source, p in self.candidates(spec):
            if p.is_file():
                return self._verify(spec, p)._replace_source(source)
            if source == "explicit":
                raise WeightsError(f"model '{spec.name}': model.path={p} does not exist")
        return Located(None, "missing", None)

    def _verify(self, spec: ModelSpec, p: Path) -> _Verdict:
        declared = folder_declarations(p.parent).get(p.name)
        if not spec.sha256 and not spec.alternatives and declared is None:
            return _Verdict(p, None, "")
        sha = content_hash(p)
        why = spec.accepts(sha)
        if why is None and declared is not None and sha == declared[0]:
            why = f"declared in {p.parent / DECLARATIONS}: {declared[1]}"
        if why is None:
            want = [x for x in (spec.sha256, *(a for a, _ in spec.alternatives), declared and declared[0]) if x]
            return _Verdict(p, False, f"sha256 {sha} is none of the accepted {want}")
        if why != "official" and (spec.name, str(p)) not in _ANNOUNCED:
            _ANNOUNCED.add((spec.name, str(p)))
            log.info("model '%s': using %s (accepted copy: %s)", spec.name, p, why)
        return _Verdict(p, True, why)

    def resolve(self, spec: ModelSpec) -> Path:
        """Path of a verified file for ``spec``, downloading it if needed and allowed."""
        loc = self.locate(spec)
        if loc.path is not None:
            if loc.verified is False:
                raise WeightsError(
                    f"model '{spec.name}': {loc.path}: {loc.why}. Refusing to load it: delete the file (the official "
                    f"one downloads again), or, for a trusted copy, declare it with its provenance in "
                    f"{loc.path.parent / DECLARATIONS} (files: {{{loc.path.name}: {{sha256: ..., provenance: ...}}}})."
                )
            return loc.path
        return self._download(spec)

    def _download(self, spec: ModelSpec) -> Path:
        where = f"put it in weights_dir=... ({self.weights_dir or 'unset'}) or {self.cache_dir}"
        if not spec.url:
            raise WeightsError(f"model '{spec.name}': file {spec.file_name} not found and no URL is configured; {where}")
        if not self.allow_download:
            raise WeightsError(
                f"model '{spec.name}': {spec.file_name} not found and downloads are disabled; "
                f"fetch {spec.url} and {where}"
            )
        dest = self.cache_dir / spec.file_name
        dest.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s -> %s", spec.url, dest)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=30) as resp:  # noqa: S310
                total = int(resp.headers.get("Content-Length") or 0) or None
                from tqdm import tqdm

                with tqdm(total=total, unit="B", unit_scale=True, desc=spec.file_name) as bar:
                    while chunk := resp.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
            if spec.sha256 and sha256_file(Path(tmp)) != spec.sha256.lower():
                raise WeightsError(f"model '{spec.name}': downloaded {spec.url} but its sha256 does not match {spec.sha256}")
            shutil.move(tmp, dest)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise WeightsError(
                f"model '{spec.name}': cannot download {spec.file_name} from {spec.url} ({e}). "
                f"On a machine without internet access, fetch that URL elsewhere and {where}."
            ) from e
        finally:
            Path(tmp).unlink(missing_ok=True)
        return dest


@dataclass(frozen=True)
class _Verdict:
    path: Path
    verified: bool | None
    why: str

    def _replace_source(self, source: str) -> Located:
        return Located(self.path, source, self.verified, self.why)


def load_state_dict(path: Path, key: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and return its parameter dict.

    ``key`` picks ``params_ema``/``params``; None prefers params_ema, then params, then
    the root mapping.  A ``module.`` prefix (DataParallel) is stripped.
    """
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path}: refused to load: the file is not a plain tensor checkpoint "
            f"(torch.load weights_only=True rejected it: {str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, OSError, EOFError) as e:
        raise WeightsError(f"{path}: cannot read checkpoint ({e}); the file may be truncated") from e
    if not isinstance(ckpt, Mapping):
        raise WeightsError(f"{path}: checkpoint is a {type(ckpt).__name__}, expected a state dict")
    if key is not None:
        if key not in ckpt:
            raise WeightsError(f"{path}: key '{key}' not in checkpoint (keys: {sorted(ckpt)[:8]})")
        sd = ckpt[key]
    else:
        sd = ckpt.get("params_ema", ckpt.get("params", ckpt))
    if not isinstance(sd, Mapping) or not sd:
        raise WeightsError(f"{path}: no parameters found")
    return {k.removeprefix("module."): v for k, v in sd.items()}
