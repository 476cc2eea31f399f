"""SimpleNet — Liu, Zhou, Lin & Jin, "SimpleNet: A Simple Network for Image Anomaly Detection and Localization",
CVPR 2023.

1. Feature extractor (Sec. 3.1): a frozen pretrained backbone, levels 2 and 3 (the paper: WideResNet-50), each
   position's feature averaged over its 3 × 3 neighbourhood and the levels concatenated on the level-2 grid:
   o_ij (``components.feature_discrimination``, step 1).
2. Feature adaptor (Sec. 3.2): q_ij = G_θ(o_ij), one linear layer — it moves the pretrained features towards
   the target domain (the industrial images), trained together with the discriminator.
3. Anomalous feature generator (Sec. 3.3): q⁻_ij = q_ij + ε, ε ~ N(0, σ² I), σ = 0.015 (``noise_std``). Only
   during training; it is discarded at test time.
4. Discriminator (Sec. 3.4): D_ψ, a two-layer MLP (hidden 1024), one logit per position, trained with the
   truncated L1 loss (eq. 4-5)
       l_ij = max(0, th⁺ − D_ψ(q_ij)) + max(0, −th⁻ + D_ψ(q⁻_ij)),   th⁺ = th⁻ = 0.5,
   averaged over positions and images; G_θ and D_ψ are trained together by it.
5. Inference (Sec. 3.5): s_ij = −D_ψ(q_ij); the anomaly map is s bilinearly upsampled to the input size and
   Gaussian-smoothed (σ = 4); the image score is max_ij s_ij (eq. 6-7).

Paper's training (Sec. 4.1, the authors' run script): Adam, lr 1e-4 for the adaptor and 2e-4 for the
discriminator, batch 8, 160 epochs (the script's 40 × 4), images resized to 329 and centre-cropped to 288.

Deviations, and why:
- Backbone: the bundled, offline ``efficientnet_lite0`` levels 2-3 (strides 8, 16; 40 + 112 = 152 channels)
  instead of WideResNet-50 (whose weights are not on this machine; ``backbone="wide_resnet50_2"`` with
  ``weights=FILE`` builds the paper's). The paper's 1536-d pooling is applied only where it reduces
  (``feature_discrimination.embedding_dims``), so D = 152 here.
- Feature scale: each channel is standardised with the training images' statistics before the adaptor, so
  that σ = 0.015 is small against the features' spread as it is for WideResNet-50's (measured need and
  ``standardise=False``: ``components.feature_discrimination``, step 1).
- Budget: ``epochs`` defaults to ``EPOCHS``, a CPU budget (a 120-image 256-px category in a few minutes on two
  cores: benchmarks/results/compare_simplenet); ``epochs=160`` is the paper's. The reference code also runs a
  cosine schedule on the discriminator's lr and weight decay 1e-5 on it; the paper states neither: plain Adam.
- Kept epoch: the reference code keeps the epoch with the best *test* AUROC, which uses test labels; here the
  last epoch is kept, or with ``validation_fraction`` > 0 the one with the lowest loss (eq. 5) on held-out
  normal images with a fixed noise draw (normal images only).
- Training speed: the backbone is frozen and the normal images are not augmented, so each image's local
  features are computed once per fit and reused every epoch (``FeatureDiscriminator``).
Training state, resumable checkpoints (``checkpoint``) and batching: ``components.trained``.
"""

from __future__ import annotations

import torch

from anomalens.models.components.feature_discrimination import (
    FeatureDiscriminator,
    NormalBatch,
    aggregation_param,
    gaussian_feature_noise,
    positions,
    truncated_l1_loss,
)
from anomalens.params import Float, Int
from anomalens.registry import register_detector

EPOCHS = 20  # the CPU default; the paper trains 160


@register_detector
class SimpleNet(FeatureDiscriminator):
    """Adapted pretrained features against Gaussian-noised copies; a discriminator's −logit is the anomaly score."""

    name = "simplenet"
    patch_score = "negated"  # s_ij = −D(q_ij)
    hyperparameters = {
        "aggregation": aggregation_param("mean"),  # the rows in the README were measured with it
        "epochs": Int(EPOCHS, "training epochs (the paper: 160; this CPU default trains a 120-image 256-px category "
                      "in minutes)", low=1),
        "margin_normal": Float(0.5, "th⁺ of the truncated L1 loss: normal features are pushed above it (the paper: "
                               "0.5)", low=0.0),
        "margin_anomalous": Float(0.5, "th⁻: anomalous features are pushed below −th⁻ (the paper: 0.5)", low=0.0),
    }

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adaptor": torch.optim.Adam(self.adaptor_.parameters(), lr=self.adaptor_lr),
                "discriminator": torch.optim.Adam(self.discriminator_.parameters(), lr=self.discriminator_lr)}

    def _losses(self, batch: NormalBatch, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Eq. 4-5 on every position of the batch's images."""
        adapted = self.adaptor_(positions(batch.features))  # q_ij
        anomalous = adapted + gaussian_feature_noise(adapted, self.noise_std, generator)  # q⁻_ij
        # One discriminator pass over both, as the reference code does (BatchNorm sees them together).
        logits = self.discriminator_(torch.cat([adapted, anomalous]))
        normal_logits, anomalous_logits = logits.split(len(adapted))
        loss = truncated_l1_loss(normal_logits, anomalous_logits, self.margin_normal, self.margin_anomalous)
        return {"loss": loss}
