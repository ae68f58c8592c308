"""HiD-VAE (arXiv 2508.04618): an RQ-VAE whose levels are supervised by a tag hierarchy.

On top of the RQ-VAE losses, for each supervised level l (levels 1..min(L, tag levels)):
- a classifier head on the cumulative quantised vector c₁ + … + c_l predicts the level-l tag,
  trained with the focal loss (Lin et al. 2017), so rare tags are not drowned by common ones;
- an InfoNCE term pulls that vector towards the projected sentence embedding of its tag's text
  and away from the other tags of the level;
- a uniqueness loss pushes apart, on the encoder outputs before quantisation, the in-batch pairs
  whose full code tuples are equal: a hinge on their cosine similarity above a margin.
The tag texts are embedded once, at fitting time, and kept in the model as buffers, so the model
file alone can be loaded without the sentence model.

`HiDVAETokenizer` is the `hidvae` kind: fitted like `rqvae`, with the tags of tags.parquet.
"""

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from semrec.settings import TokenizerSettings
from semrec.tokenizer.base import FitInputs
from semrec.tokenizer.rqvae import RQVAE, RQVAEConfig, RQVAETokenizer, TokenizerTask

OTHER = "(other)"


@dataclass
class HiDVAEConfig(RQVAEConfig):
    tag_classes: list[int] = field(default_factory=list)  # tags per supervised level
    text_dim: int = 384  # size of the tag-text embeddings
    tag_weight: float = 1.0
    focal_gamma: float = 2.0
    align_weight: float = 0.5
    align_temperature: float = 0.1
    unique_weight: float = 1.0
    unique_margin: float = 0.5

    @classmethod
    def from_settings(
        cls, settings: TokenizerSettings, input_dim: int, seed: int, *, tag_classes: list[int], text_dim: int
    ):
        """RQVAEConfig.from_settings, plus [tokenizer.hidvae] and the sizes of the tag vocabulary."""
        hid = settings.hidvae
        return dataclasses.replace(
            super().from_settings(settings, input_dim, seed),
            tag_classes=list(tag_classes),
            text_dim=text_dim,
            tag_weight=hid.tag_weight,
            focal_gamma=hid.focal_gamma,
            align_weight=hid.align_weight,
            align_temperature=hid.align_temperature,
            unique_weight=hid.unique_weight,
            unique_margin=hid.unique_margin,
        )


class HiDVAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar: every part below, weighted
    reconstruction_loss: torch.Tensor
    quantize_loss: torch.Tensor
    tag_loss: torch.Tensor  # focal loss, mean over supervised levels
    align_loss: torch.Tensor  # InfoNCE, mean over supervised levels
    unique_loss: torch.Tensor  # hinge over colliding in-batch pairs
    latent: torch.Tensor  # (B, latent_dim)
    quantized: torch.Tensor  # (B, latent_dim)
    codes: torch.Tensor  # (B, L)
    reconstruction: torch.Tensor  # (B, input_dim)
    tag_logits: list[torch.Tensor]  # per supervised level (B, tag_classes[l])


def tag_vocabulary(tags: list[list[str]], min_count: int) -> tuple[torch.Tensor, list[list[str]]]:
    """Tag strings per level (one list of N per level) -> class ids (N, levels) and the names per level.

    A tag seen fewer than `min_count` times at its level merges into "<parent> > (other)", so the
    merged classes still form a tree. Names are sorted, so the ids do not depend on item order.
    """
    labels, names, parents = [], [], None
    for level_tags in tags:
        counts = Counter(level_tags)
        merged = [
            tag if counts[tag] >= min_count else (OTHER if parents is None else f"{parents[i]} > {OTHER}")
            for i, tag in enumerate(level_tags)
        ]
        vocabulary = sorted(set(merged))
        index = {tag: i for i, tag in enumerate(vocabulary)}
        labels.append(torch.tensor([index[t] for t in merged], dtype=torch.long))
        names.append(vocabulary)
        parents = merged
    return torch.stack(labels, 1), names


def tag_text(name: str) -> str:
    """The text embedded for a tag: its path, without the "(other)" marker of merged tags."""
    parts = [p for p in name.split(" > ") if p != OTHER]
    return " > ".join(parts) or "other"


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean of -(1 - p_t)^γ log p_t over the batch."""
    log_p = F.log_softmax(logits.float(), -1).gather(1, target[:, None]).squeeze(1)  # (B,)
    return (-(1 - log_p.exp()).pow(gamma) * log_p).mean()


def uniqueness_loss(latent: torch.Tensor, codes: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over in-batch pairs with equal full code tuples of max(0, cos(z_i, z_j) - margin); 0 if none."""
    same = (codes[:, None, :] == codes[None, :, :]).all(-1)  # (B, B)
    same = torch.triu(same, diagonal=1)
    if not bool(same.any()):
        return latent.sum() * 0
    z = F.normalize(latent.float(), dim=-1)
    cosine = z @ z.T  # (B, B)
    return F.relu(cosine[same] - margin).mean()


class HiDVAE(RQVAE):
    def __init__(self, config: HiDVAEConfig):
        super().__init__(config)
        if config.levels < len(config.tag_classes) or not config.tag_classes:
            raise ValueError(f"tag_classes must give 1..{config.levels} levels, got {config.tag_classes}")
        # LayerNorm first: the latent's scale is free (tiny at the start), and a plain linear head
        # on it learns only as fast as the latent grows, which the tag loss then inflates
        self.heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(config.latent_dim), nn.Linear(config.latent_dim, n)) for n in config.tag_classes
        )
        self.tag_projections = nn.ModuleList(nn.Linear(config.text_dim, config.latent_dim) for _ in config.tag_classes)
        for level, n in enumerate(config.tag_classes):
            self.register_buffer(f"tag_text_{level}", torch.zeros(n, config.text_dim))

    def tag_texts(self, level: int) -> torch.Tensor:
        return getattr(self, f"tag_text_{level}")

    @torch.no_grad()
    def set_tag_texts(self, embeddings: list[torch.Tensor]) -> None:
        """Store the sentence embedding of every tag's text, one (n_l, text_dim) matrix per level."""
        for level, matrix in enumerate(embeddings):
            self.tag_texts(level).copy_(matrix)

    def forward(self, x: torch.Tensor, tags: torch.Tensor | None = None) -> HiDVAEOutput:
        config = self.config
        latent = self.encoder(x)
        levels = self.quantizer.forward_levels(latent)
        cumulative = torch.stack([o.quantized for o in levels]).cumsum(0)  # (L, B, latent_dim)
        quantized = cumulative[-1]
        codes = torch.stack([o.codes for o in levels], -1)  # (B, L)
        quantize_loss = torch.stack([o.loss for o in levels]).sum()
        reconstruction = self.decoder(quantized)
        reconstruction_loss = (reconstruction.float() - x.float()).pow(2).sum(-1).mean()
        tag_logits = [head(cumulative[level]) for level, head in enumerate(self.heads)]
        zero = reconstruction_loss * 0
        tag_loss = align_loss = zero
        if tags is not None:
            tag_loss = torch.stack(
                [focal_loss(logits, tags[:, level], config.focal_gamma) for level, logits in enumerate(tag_logits)]
            ).mean()
            align = []
            for level, projection in enumerate(self.tag_projections):
                tag_vectors = F.normalize(projection(self.tag_texts(level)), dim=-1)  # (n_l, latent_dim)
                similarity = F.normalize(cumulative[level], dim=-1) @ tag_vectors.T  # (B, n_l)
                align.append(F.cross_entropy(similarity.float() / config.align_temperature, tags[:, level]))
            align_loss = torch.stack(align).mean()
        unique_loss = uniqueness_loss(latent, codes, config.unique_margin) if self.training else zero
        loss = (
            reconstruction_loss + quantize_loss + config.tag_weight * tag_loss + config.align_weight * align_loss
            + config.unique_weight * unique_loss
        )
        return HiDVAEOutput(
            loss, reconstruction_loss, quantize_loss, tag_loss, align_loss, unique_loss, latent, quantized, codes,
            reconstruction, tag_logits,
        )

    @torch.no_grad()
    def predict_tags(self, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        """(N, supervised levels) predicted tag ids, in eval mode."""
        was_training = self.training
        self.eval()
        predictions = []
        for start in range(0, x.shape[0], batch_size):
            logits = self(x[start : start + batch_size]).tag_logits
            predictions.append(torch.stack([l.argmax(-1) for l in logits], -1))
        self.train(was_training)
        return torch.cat(predictions)


# -- the `hidvae` tokenizer kind ----------------------------------------------------------------
class TaggedTask(TokenizerTask):
    """TokenizerTask with the tag ids (N, supervised levels) of the items."""

    def __init__(self, model: HiDVAE, embeddings: torch.Tensor, tags: torch.Tensor, batch_size: int, seed: int):
        super().__init__(model, embeddings, batch_size, seed)
        self.tags = tags

    def loss(self, index: torch.Tensor) -> tuple[torch.Tensor, dict]:
        out = self.model(self.embeddings[index], self.tags[index])
        parts = {
            "recon": out.reconstruction_loss,
            "vq": out.quantize_loss,
            "tag": out.tag_loss,
            "align": out.align_loss,
            "unique": out.unique_loss,
        }
        return out.loss, {name: part.detach() for name, part in parts.items()}


class HiDVAETokenizer(RQVAETokenizer):
    """config.json also holds "tag_names": the tag classes of each supervised level."""

    model_class, config_class = HiDVAE, HiDVAEConfig
    model: HiDVAE

    @classmethod
    def fit(cls, inputs: FitInputs) -> tuple["HiDVAETokenizer", dict]:
        settings, seed = inputs.settings.tokenizer, inputs.seed
        torch.manual_seed(seed)
        tag_ids, names = tag_vocabulary(inputs.tags[: settings.levels], settings.hidvae.tag_min_count)
        texts = inputs.encode_tag_texts([tag_text(n) for level in names for n in level])
        sizes = [len(level) for level in names]
        model = HiDVAE(HiDVAEConfig.from_settings(
            settings, int(inputs.embeddings.shape[1]), seed, tag_classes=sizes, text_dim=int(texts.shape[1])
        ))
        model.set_tag_texts(list(torch.split(texts.float(), sizes)))  # one (n_l, text_dim) block per level
        model.to(inputs.device)
        tokenizer = cls.fitted(inputs, model, tag_names=names)
        x = inputs.embeddings.to(inputs.device).float()
        task = TaggedTask(model, x, tag_ids.to(inputs.device), settings.train.batch_size, seed)
        return tokenizer, tokenizer.train_model(task, inputs)

    def extra_metrics(self, embeddings: torch.Tensor, tags: list[list[str]]) -> dict:
        """Accuracy of the tag heads per supervised level, over every item."""
        names = self.config["tag_names"]
        predicted = self.model.predict_tags(embeddings.to(self.device).float()).cpu()
        truth, _ = tag_vocabulary(tags[: len(names)], self.config["settings"]["tokenizer.hidvae"]["tag_min_count"])
        return {"tag_accuracy": [float(a) for a in (predicted == truth).float().mean(0)]}
