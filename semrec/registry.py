"""The registries of swappable parts: tokenizer kinds and retriever architectures.

Each entry names the class that implements it as "module:Class", so that reading the registry
(loading settings, `--help`) imports no model code. Adding a kind is one new module and one line
here (or one `register_tokenizer` / `register_architecture` call, e.g. from a plugin or a test):

- a tokenizer kind implements `semrec.tokenizer.base.TokenizerKind` (fit / assign / save / load)
  and says which sub-tables of [tokenizer] it reads besides the shared keys: those, and only those,
  are in the fingerprint of `fit-tokenizer`, so a key of another kind never makes it stale;
- an architecture subclasses `semrec.retriever.model.Retriever` and implements `forward`, `start`
  and `step_logits` (all that the beam search uses).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    target: str  # "module:Class"
    reads: tuple[str, ...] = ()  # sub-tables of the stage's settings section that this entry reads
    needs: tuple[str, ...] = ()  # stages it needs besides the usual upstream ones (hidvae: "tag")

    def load(self):
        import importlib

        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


TOKENIZERS: dict[str, Entry] = {
    "rqvae": Entry("semrec.tokenizer.rqvae:RQVAETokenizer", reads=("rqvae", "train")),
    "hidvae": Entry("semrec.tokenizer.hidvae:HiDVAETokenizer", reads=("rqvae", "hidvae", "train"), needs=("tag",)),
    "rqkmeans": Entry("semrec.tokenizer.rqkmeans:RQKMeansTokenizer", reads=("rqkmeans",)),
}

ARCHITECTURES: dict[str, Entry] = {
    "encoder-decoder": Entry("semrec.retriever.encoder_decoder:EncoderDecoder"),
    "decoder-only": Entry("semrec.retriever.decoder_only:DecoderOnly"),
    "item-level": Entry("semrec.retriever.item_level:ItemLevel"),
}

REGISTRIES = {"tokenizers": TOKENIZERS, "architectures": ARCHITECTURES}


def register_tokenizer(name: str, target: str, reads: tuple[str, ...] = (), needs: tuple[str, ...] = ()) -> None:
    TOKENIZERS[name] = Entry(target, reads, needs)


def register_architecture(name: str, target: str) -> None:
    ARCHITECTURES[name] = Entry(target)
