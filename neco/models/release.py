"""The released NeCo checkpoints (HF ``FunAILab/NeCo``) as named weight sources.

``eval.checkpoint: neco_release:<name>`` evaluates one of the nine models of the NeCo README
(vpariza/NeCo @ ``3932160``) as the ``neco`` model; ``eval.checkpoint_key`` picks the file
(``student`` = ``*_model.ckpt``, ``teacher`` = ``*_teacher.ckpt``) and ``eval.release_revision``
the HF revision. Each release names the registry backbone it loads into; ``train.backbone`` must
be that backbone (a mismatch fails naming both).

Files are fetched with ``huggingface_hub.hf_hub_download`` (resumes, caches, locks) into the hub
cache, which honours ``HF_HUB_CACHE`` / ``HF_HOME`` (read at call time, so a test can point it at
a temporary directory). A cached file is used without touching the network. Offline
(``HF_HUB_OFFLINE=1``, or the hub host not resolving within
:data:`neco.models.fetch.DNS_TIMEOUT_S`) a file that is not cached fails at once with a
:class:`~neco.models.registry.WeightsError` naming the repository, the file, the revision, the
cache path to place it at and the ``eval.checkpoint=<local path>`` alternative.

The release table is data from the README (the file names are the README's; not checked against
the HF listing offline). ``vit-base/dino-architectures/neco_on_dino_vit16_teacher.ckpt`` also
exists on HF but is not in the README and has no student file; it is not listed. This module
imports no torch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from neco.models.fetch import DNS_TIMEOUT_S, host_resolves
from neco.models.registry import NECO_RELEASE_PREFIXES, WeightsError

_log = logging.getLogger(__name__)

RELEASE_REPO = "FunAILab/NeCo"
RELEASE_SCHEME = "neco_release:"
CHECKPOINT_PARAM = "eval.checkpoint"
REVISION_PARAM = "eval.release_revision"
_FILE_SUFFIX = {"student": "model", "teacher": "teacher"}


@dataclass(frozen=True)
class NecoRelease:
    """One released NeCo model (a student and a teacher file).

    Attributes:
        name: the name after ``neco_release:``.
        backbone: the registry backbone (``train.backbone``) the files load into.
        stem: path of the files inside the HF repository, without ``_{model,teacher}.ckpt``.
        label: the README's row (paper label).
    """

    name: str
    backbone: str
    stem: str
    label: str

    def filename(self, which: str) -> str:
        """The file inside the repository: ``student`` -> ``*_model.ckpt``, ``teacher`` ->
        ``*_teacher.ckpt``."""
        if which not in _FILE_SUFFIX:
            raise WeightsError(
                f"eval.checkpoint_key: invalid value {which!r}; "
                f"expected one of {sorted(NECO_RELEASE_PREFIXES)}"
            )
        return f"{self.stem}_{_FILE_SUFFIX[which]}.ckpt"


def _r(name: str, backbone: str, size: str, family: str, model: str, label: str) -> NecoRelease:
    arch_dir = "dinov2-architectures" if family == "v2" else "dino-architectures"
    return NecoRelease(name, backbone, f"vit-{size}/{arch_dir}/neco_on_{model}", label)


RELEASES: dict[str, NecoRelease] = {r.name: r for r in (
    _r("dinov2_vits14", "dinov2_vits14", "small", "v2", "dinov2_vit14", "DINOv2 ViT-S/14"),
    _r("dinov2r_xr_vits14", "dinov2_vits14_xr", "small", "v2", "dinov2r_xr_vit14",
       "DINOv2R-XR ViT-S/14"),
    _r("dinov2r_vits14", "dinov2_vits14_reg", "small", "v2", "dinov2r_vit14", "DINOv2R ViT-S/14"),
    _r("dinov2_vitb14", "dinov2_vitb14", "base", "v2", "dinov2_vit14", "DINOv2 ViT-B/14"),
    _r("dinov2r_xr_vitb14", "dinov2_vitb14_xr", "base", "v2", "dinov2r_xr_vit14",
       "DINOv2R-XR ViT-B/14"),
    _r("dinov2r_vitb14", "dinov2_vitb14_reg", "base", "v2", "dinov2r_vit14", "DINOv2R ViT-B/14"),
    _r("dino_vits16", "dino_vits16", "small", "v1", "dino_vit16", "DINO ViT-S/16"),
    _r("timetuning_vits16", "timetuning_vits16", "small", "v1", "timetuning_vit16",
       "TimeT ViT-S/16"),
    _r("leopart_vits16", "leopart_vits16", "small", "v1", "leopart_vit16", "Leopart ViT-S/16"),
)}  # fmt: skip


def release_name(checkpoint: str | None) -> str | None:
    """The release name of an ``eval.checkpoint`` value ``neco_release:<name>``, else ``None``."""
    if checkpoint is None or not checkpoint.startswith(RELEASE_SCHEME):
        return None
    return checkpoint[len(RELEASE_SCHEME) :]


def get_release(name: str) -> NecoRelease:
    """The release entry, or a :class:`WeightsError` listing the valid names."""
    if name not in RELEASES:
        raise WeightsError(
            f"{CHECKPOINT_PARAM}: unknown NeCo release {name!r}; expected "
            f"{RELEASE_SCHEME}<name> with <name> one of {sorted(RELEASES)}"
        )
    return RELEASES[name]


def check_release_backbone(release: NecoRelease, backbone: str) -> None:
    """Fail unless ``train.backbone`` is the architecture of ``release``."""
    if backbone != release.backbone:
        raise WeightsError(
            f"{CHECKPOINT_PARAM}={RELEASE_SCHEME}{release.name} ({release.label}) holds a "
            f"{release.backbone!r} backbone, but train.backbone is {backbone!r}; set "
            f"train.backbone={release.backbone}"
        )


def hf_cache_dir() -> Path:
    """The hub cache ``hf_hub_download`` uses, resolved now from the environment.

    ``HF_HUB_CACHE`` (or the legacy ``HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub`` (huggingface_hub's
    own rule, which it evaluates only at import time).
    """
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        home = str(Path(xdg) / "huggingface")
    return Path(home).expanduser() / "hub"


def _hf_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _not_available(filename: str, revision: str, cache: Path, why: str) -> WeightsError:
    repo_dir = cache / f"models--{RELEASE_REPO.replace('/', '--')}"
    url = f"{_endpoint()}/{RELEASE_REPO}/resolve/{revision}/{filename}"
    return WeightsError(
        f"NeCo release file not available: HF repo {RELEASE_REPO}, file {filename}, revision "
        f"{revision} ({REVISION_PARAM}): {why}. Place it by hand: on a machine with network run "
        f"`hf download {RELEASE_REPO} {filename} --revision {revision}` (or "
        f"huggingface_hub.hf_hub_download) and copy the cache folder {repo_dir} here (layout "
        f"snapshots/<commit>/{filename} plus refs/{revision} holding <commit>; cache root from "
        f"HF_HUB_CACHE / HF_HOME), or download {url} and set "
        f"{CHECKPOINT_PARAM}=<local path to the .ckpt file>."
    )


def resolve_release_file(release: NecoRelease, which: str, *, revision: str) -> Path:
    """Local path of a release file, downloading it into the hub cache if needed.

    Args:
        release: the release.
        which: ``student`` or ``teacher`` (``eval.checkpoint_key``).
        revision: HF revision (``eval.release_revision``): a branch, tag or commit hash.

    Raises:
        WeightsError: not cached and offline (within about :data:`DNS_TIMEOUT_S` seconds), or
            the download failed; the message says how to place the file by hand.
    """
    filename = release.filename(which)
    cache = hf_cache_dir()
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover - timm depends on huggingface_hub
        raise WeightsError(
            f"huggingface_hub is needed for {RELEASE_SCHEME}{release.name}: {err}"
        ) from err
    try:
        path = hf_hub_download(
            RELEASE_REPO, filename, revision=revision, cache_dir=cache, local_files_only=True
        )
        return Path(str(path))
    except LocalEntryNotFoundError:
        pass
    except (OSError, ValueError) as err:  # e.g. a malformed cache entry
        raise _not_available(filename, revision, cache, f"cache lookup failed ({err})") from err
    if _hf_offline():
        why = "not in the cache and HF_HUB_OFFLINE is set"
        raise _not_available(filename, revision, cache, why)
    host = urlparse(_endpoint()).hostname or ""
    if not (host and host_resolves(host, DNS_TIMEOUT_S)):
        raise _not_available(
            filename, revision, cache, f"not in the cache and {host or _endpoint()} does not "
            f"resolve (offline?)"
        )  # fmt: skip
    _log.info("downloading %s/%s@%s into %s", RELEASE_REPO, filename, revision, cache)
    try:
        path = hf_hub_download(RELEASE_REPO, filename, revision=revision, cache_dir=cache)
    except Exception as err:  # HTTP, connection, auth, disk errors of huggingface_hub
        raise _not_available(filename, revision, cache, f"download failed ({err})") from err
    return Path(str(path))
