"""An ensemble of detectors over their normalised scores, with its own cross-fitted threshold.

Detectors fail differently: a memory bank of patches (PatchCore) misses what a per-position Gaussian (PaDiM)
sees, and a trained student–teacher pair is sensitive where both are blind. The ensemble puts the members on
one scale first — each member's score through its own decision rule's normalised score,

    n_i(s) = σ((s − t_i) / w_i),   w_i = (t_i − m_i) / ln 19,

σ the logistic function, t_i the member's threshold and m_i its median normal score, so that 0.5 is "at this
member's threshold" and 0.05 "a typical normal image" for every member alike (``DecisionRule.normalized``);
its maps the same way with the member's pixel threshold and median map value — and combines them:

    s(x) = mean_i n_i(s_i(x))   or   max_i n_i(s_i(x))      (``combine``),

and the maps likewise. The combined score gets its own threshold from normal images only, out of fold:
the training images are split into ``threshold_folds`` folds; for each fold every member is fitted (with its
own threshold, hence its own normalisation) on the other folds and scores the fold; the (1 − false-alarm
rate) quantile of the combined out-of-fold scores is the ensemble's threshold. The final members are fitted
on every image. A fit therefore costs (k + 1) fits of every member.

The members share the ensemble's input (image size, decoding, device, seed): the whole ensemble is one
inference module — every member's own module, then the normalisation and the combination — exported as one
graph. Members are given by registry name (``members``), or as ``LABEL=NAME`` — two settings of one detector
are two members, ``patchcore,fine=patchcore`` — and configured by ``member_params`` keyed by those labels;
``anomalens ensemble RUN RUN ...`` builds one from fitted runs' settings and their training data.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from anomalens.decision import DecisionRule
from anomalens.detector import Detector
from anomalens.errors import ConfigError
from anomalens.params import Choice, Int, Text
from anomalens.registry import builtin_module, is_loaded, register_detector, registered_class

logger = logging.getLogger("anomalens")

#: What every member takes from the ensemble: they score the same input tensor.
SHARED_PARAMS = ("image_size", "resize", "decode", "device", "seed")
_LN19 = math.log(19.0)


def member_class(name: str) -> type[Detector]:
    """The detector class registered as ``name`` (its module imported on first use, as the catalog does)."""
    module = builtin_module(name)
    if module is not None and not is_loaded(name):
        importlib.import_module(module)
    return registered_class(name)


def normalisation(threshold: float, reference: float | None) -> tuple[float, float]:
    """(t, w) of the normalised value σ((v − t) / w): w = (t − m) / ln 19, or the degenerate fallback of
    ``DecisionRule.normalization_width`` when the reference is missing or not below the threshold."""
    if reference is not None and threshold - reference > 0 and math.isfinite((threshold - reference) / _LN19):
        return threshold, (threshold - reference) / _LN19
    return threshold, 1e-3 * max(abs(threshold), 1.0)


class EnsembleModule(nn.Module):
    """Every member's module on the same images, each output normalised by its member's rule, combined."""

    def __init__(self, members: Sequence[nn.Module], image_norms: torch.Tensor, pixel_norms: torch.Tensor,
                 combine: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("image_norms", image_norms.float())  # (K, 2): t_i, w_i of the image scores
        self.register_buffer("pixel_norms", pixel_norms.float())  # (K, 2): t_i, w_i of the maps
        self.combine = combine

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, maps = [], []
        for k, member in enumerate(self.members):
            outputs = member(images)
            scores.append(torch.sigmoid((outputs[0] - self.image_norms[k, 0]) / self.image_norms[k, 1]))
            maps.append(torch.sigmoid((outputs[1] - self.pixel_norms[k, 0]) / self.pixel_norms[k, 1]))
        stacked_scores, stacked_maps = torch.stack(scores), torch.stack(maps)
        if self.combine == "max":
            return stacked_scores.amax(dim=0), stacked_maps.amax(dim=0)
        return stacked_scores.mean(dim=0), stacked_maps.mean(dim=0)


@register_detector
class Ensemble(Detector):
    """Members' normalised scores and maps, averaged (or their maximum), with its own cross-fitted threshold."""

    name = "ensemble"
    crossfits = True  # its threshold always comes from out-of-fold combined scores (module docstring)
    hyperparameters = {
        "members": Text("padim,patchcore", "comma-separated member detectors, each a registry name or LABEL=NAME "
                        "(two or more, distinct labels: patchcore,fine=patchcore; each localizes and takes the same "
                        "image channels)"),
        "member_params": Text(None, 'the members\' hyper-parameters as a JSON object keyed by label, e.g. {"patchcore": '
                              '{"coreset_fraction": 0.01}}; image_size, resize, decode, device and seed are the ensemble\'s',
                              optional=True),
        "combine": Choice("mean", ("mean", "max"), "how the members' normalised scores and maps are combined"),
        "threshold_folds": Int(5, "k of the ensemble's cross-fitted threshold: every member is fitted k + 1 times "
                               "(k folds and the final fit)", low=2),
    }

    # -- members ----------------------------------------------------------------------------------
    @property
    def member_labels(self) -> dict[str, str]:
        """{label: registry name} in the members' order; a plain NAME is its own label."""
        labels: dict[str, str] = {}
        for entry in (e.strip() for e in str(self.params["members"]).split(",")):
            if not entry:
                continue
            label, _, name = entry.partition("=") if "=" in entry else (entry, "", entry)
            label, name = label.strip(), name.strip()
            if not label or not name:
                raise ConfigError(f"ensemble: member {entry!r} is not NAME or LABEL=NAME")
            if label in labels:
                raise ConfigError(f"ensemble: members must be two or more different members; {label!r} is given twice "
                                  f"(label a second setting of one detector: {label},{label}-2={name})")
            labels[label] = name
        return labels

    @property
    def member_names(self) -> list[str]:
        """The members' registry names, in order (a detector may appear under several labels)."""
        return list(self.member_labels.values())

    def member_settings(self) -> dict[str, dict[str, Any]]:
        """{member: its parameters}: ``member_params`` with the ensemble's shared ones on top."""
        given = self.params["member_params"]
        try:
            settings = json.loads(given) if given else {}
        except ValueError as exc:
            raise ConfigError(f"ensemble: member_params is not JSON ({exc})") from None
        if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
            raise ConfigError("ensemble: member_params must be a JSON object of objects, {member: {param: value}}")
        labels = self.member_labels
        unknown = sorted(set(settings) - set(labels))
        if unknown:
            raise ConfigError(f"ensemble: member_params names {', '.join(unknown)}, which are not members "
                              f"({', '.join(labels)})")
        shared = {key: self.params[key] for key in SHARED_PARAMS}
        for name, params in settings.items():
            clash = sorted(set(params) & set(SHARED_PARAMS))
            if clash:
                raise ConfigError(f"ensemble: {name}'s {', '.join(clash)} is the ensemble's (give it to the ensemble)")
        return {label: {**settings.get(label, {}), **shared} for label in labels}

    def _new_members(self) -> list[Detector]:
        labels = self.member_labels
        return [member_class(labels[label])(**params) for label, params in self.member_settings().items()]

    def _check_params(self) -> None:
        names = self.member_names
        if len(names) < 2:
            raise ConfigError(f"ensemble: members must be two or more different members, got {self.params['members']!r}")
        if "ensemble" in names:
            raise ConfigError("ensemble: an ensemble cannot be its own member")
        if self.params["resize"] != "squash" or self.sizing.tiling:
            raise ConfigError("ensemble: the members score one input tensor: resize=squash and no tiling")
        members = self._new_members()  # every member's own checks, before any image is read
        blind = [m.name for m in members if not m.localizes]
        if blind:
            raise ConfigError(f"ensemble: {', '.join(blind)} gives no anomaly map; every member must localize")
        if len({m.image_channels for m in members}) != 1:
            raise ConfigError("ensemble: the members decode images to different channels: "
                              + ", ".join(f"{m.name} {m.image_channels}" for m in members))
        self.min_fit_images = max(m.min_fit_images for m in members)
        self._channels = members[0].image_channels

    @property
    def image_channels(self) -> int:
        return self._channels

    # -- fit ----------------------------------------------------------------------------------------
    def _fit(self, records: Sequence, progress: bool) -> None:
        members = self._new_members()
        for member in members:
            member.fit(list(records), progress=progress)
        self.members_ = members
        self._module = None

    def _combined(self, members: Sequence[Detector], records: Sequence) -> tuple[np.ndarray, np.ndarray]:
        module = self._module_of(members).eval()
        scores, maps = [], []
        with torch.inference_mode():
            for images in self._image_batches(records, False, "score"):
                s, m = module(images)
                scores.append(s.float().cpu().numpy())
                maps.append(m.float().cpu().numpy())
        return np.concatenate(scores), np.concatenate(maps)

    def _fit_and_score_holdout(self, fit_records: list, holdout: list, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        self._fit(fit_records, progress)
        return self._combined(self.members_, holdout)

    def _fit_and_score_out_of_fold(self, parts: list[list], folds: list[np.ndarray],
                                   progress: bool) -> tuple[np.ndarray, np.ndarray]:
        records = [r for part in parts for r in part]
        scores = np.empty(len(records), dtype=np.float64)
        maps: np.ndarray | None = None
        for k, fold in enumerate(folds):
            held = set(fold.tolist())
            fold_members = self._new_members()
            for member in fold_members:
                member.fit([r for i, r in enumerate(records) if i not in held], progress=False)
            fold_scores, fold_maps = self._combined(fold_members, [records[i] for i in fold])
            if maps is None:
                maps = np.empty((len(records), *fold_maps.shape[1:]), dtype=np.float32)
            scores[fold], maps[fold] = fold_scores, fold_maps
            logger.info("ensemble: fold %d/%d scored by models fitted without it", k + 1, len(folds))
        self._fit(records, progress)
        assert maps is not None
        return scores, maps

    # -- inference ----------------------------------------------------------------------------------
    def _module_of(self, members: Sequence[Detector]) -> EnsembleModule:
        image_norms, pixel_norms = [], []
        for member in members:
            rule = member.decision_
            image_norms.append(normalisation(rule.image_threshold, rule.score_reference))
            pixel_norms.append(normalisation(rule.pixel_threshold, rule.map_reference))
        return EnsembleModule([m.inference_module() for m in members], torch.tensor(image_norms, dtype=torch.float64),
                              torch.tensor(pixel_norms, dtype=torch.float64), self.params["combine"]).to(self.device)

    def inference_module(self) -> nn.Module:
        if getattr(self, "_module", None) is None:
            self._module = self._module_of(self.members_)
        return self._module

    def export_refusal(self) -> str | None:
        refusals = [f"{m.name}: {m.export_refusal()}" for m in self.members_ if m.export_refusal()]
        return "; ".join(refusals) or None

    # -- persistence --------------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        rules = []
        for k, member in enumerate(self.members_):
            tensors.update({f"member{k}.{key}": value for key, value in member._state_tensors().items()})
            rule = member.decision_
            rules.append([rule.image_threshold, rule.score_reference, rule.pixel_threshold, rule.map_reference])
        tensors["member_rules"] = torch.tensor(rules, dtype=torch.float64)
        return tensors

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        members = self._new_members()
        rules = tensors["member_rules"].tolist()
        if len(rules) != len(members):
            raise ValueError(f"the weights hold {len(rules)} members' rules, the parameters name {len(members)}")
        for k, (member, (threshold, reference, pixel_threshold, map_reference)) in enumerate(zip(members, rules)):
            prefix = f"member{k}."
            own = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
            rule = DecisionRule(image_threshold=threshold, source="quantile", score_reference=reference,
                                description=f"member {k + 1} of an ensemble", pixel_threshold=pixel_threshold,
                                map_reference=map_reference)
            member.load_fitted_state(own, rule, {})
        self.members_ = members
        self._module = None
