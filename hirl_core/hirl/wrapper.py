"""`HIRL`: any SSL method plus level heads trained by semantic path discrimination (§1.1, §1.7).

L = L_SSL before `cluster_warmup_epoch`, L_SSL + L_SPD from then on (weight 1, as the seed). The wrapped
method sits at `self.model`, so the exported backbone keys read `model.backbone.…` — the seed's HIRL
checkpoint layout, which the seed's loaders and ours (prefix detection) both read.

    hirl:
      num_cluster: [30000, 10000, 1000]   # fine → coarse
      num_neg_path: 1000
      num_mlp_layer: 2                    # Linear layers per level head
      activation: relu
      cluster_warmup_epoch: 20
      iter_wise_assignment: false         # SwAV: re-assign the batch's leaves every iteration
      reassign_separate_forward: false    # true: the seed's extra no-grad forward of crop 2 for it
      T: 0.2                              # unused: fed only the seed's unused density; kept for config parity
      kmeans: {niter: 20, nredo: 5, max_points_per_centroid: 1000, min_points_per_centroid: 10}
      feature_batch_size: 256
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError
from ..methods.base import MethodOutput, SSLMethod
from .kmeans import PrototypeTree
from .paths import LevelHeads, lift, path_loss, sample_negative_paths


class HIRL(SSLMethod):
    uses_index = True  # the engine passes each image's dataset index (to look up its path)

    def __init__(self, model: SSLMethod, cfg):
        super().__init__()
        if cfg.get("activation", "relu") != "relu":
            raise ConfigError(f"hirl.activation {cfg.activation!r} is not supported; allowed: relu")
        self.model = model
        self.n_views, self.inst_dim = model.n_views, model.inst_dim
        self.num_cluster = [int(k) for k in cfg.num_cluster]
        if any(a < b for a, b in zip(self.num_cluster, self.num_cluster[1:])):
            raise ConfigError(f"hirl.num_cluster {self.num_cluster} must be listed fine → coarse (non-increasing)")
        self.num_neg_path = int(cfg.num_neg_path)
        self.iter_wise_assignment = bool(cfg.get("iter_wise_assignment", False))
        self.reassign_separate_forward = bool(cfg.get("reassign_separate_forward", False))
        self.heads = LevelHeads(model.inst_dim, len(self.num_cluster), int(cfg.get("num_mlp_layer", 2)))
        self.tree: PrototypeTree | None = None
        self._protos: list[torch.Tensor] = []
        self._labels: torch.Tensor | None = None     # [N, L] on the training device
        self._parents: list[torch.Tensor] = []

    @property
    def backbone(self):
        return self.model.backbone

    def set_tree(self, tree: PrototypeTree | None, device) -> None:
        """Install (or clear) the prototype tree used by the path loss; prototypes carry no gradient."""
        self.tree = tree
        if tree is None:
            self._protos, self._labels, self._parents = [], None, []
            return
        self._protos = [torch.from_numpy(c).to(device) for c in tree.centroids]
        self._labels = torch.stack([torch.from_numpy(y) for y in tree.labels], dim=1).to(device)
        self._parents = [torch.from_numpy(p).to(device) for p in tree.parents]

    @torch.no_grad()
    def _reassign(self, features: torch.Tensor, index: torch.Tensor) -> float:
        """SwAV's iteration-wise re-assignment: the batch's leaves from the second crop's features,
        upper levels through the parent maps. Returns the fraction of leaves unchanged."""
        feats = torch.nn.functional.normalize(features.float(), dim=1)
        leaves = (feats @ self._protos[0].T).argmax(dim=1)
        same = (leaves == self._labels[index, 0]).float().mean().item()
        self._labels[index] = lift(leaves, self._parents)
        return same

    def _second_crop_features(self, views: list[torch.Tensor], out: MethodOutput) -> torch.Tensor:
        """forward_feature of the second global crop. The seed runs a separate no-grad forward for it
        (~1/6 of a two-crop SwAV step); a method that returns `global_features` gives the same features
        from its training forward. Deviation: BatchNorm then normalises that crop together with the first
        (one backbone pass per resolution) rather than alone, and no extra pass moves its running stats;
        `reassign_separate_forward: true` restores the seed's pass."""
        if out.global_features is not None and not self.reassign_separate_forward:
            b = len(views[0])
            return out.global_features[b:2 * b]
        return self.model.forward_feature(views[1])

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> MethodOutput:
        out = self.model(views)
        if self.tree is None or index is None:
            return out
        index = index.to(self._labels.device)
        logs = dict(out.logs)
        if self.iter_wise_assignment:
            logs["assignment_same_ratio"] = self._reassign(self._second_crop_features(views, out), index)
        z = self.heads(out.embedding)
        neg = sample_negative_paths(len(z), self.num_neg_path, self.num_cluster[0], self._parents, device=z.device)
        l_spd, path_logs = path_loss(z.float(), self._protos, self._labels[index], neg)
        logs.update(path_logs)
        logs.update({"ssl_loss": out.loss.item(), "path_loss": l_spd.item()})
        return MethodOutput(loss=out.loss + l_spd, embedding=out.embedding, logs=logs)

    @torch.no_grad()
    def forward_feature(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_feature(images)

    # The wrapped method's schedule hooks (momentum, teacher temperature, frozen layers) still apply.
    def on_step_start(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        self.model.on_step_start(step, total_steps, steps_per_epoch)

    def before_optimizer_step(self) -> None:
        self.model.before_optimizer_step()

    def after_step(self, progress: float) -> None:
        self.model.after_step(progress)
