"""The text family.

    char_rnn      CharLM: a many-to-many character language model (Karpathy's char-rnn; Graves
                  2013), trained on the next-character cross-entropy with truncated BPTT (the
                  hidden state carried from chunk to chunk); val/test in bits per character beside
                  an interpolated Kneser-Ney n-gram baseline on the same positions.
    char_cnn      the character ConvNet of Zhang, Zhao & LeCun (2015) and
    bag_of_chars  its linear baseline (logistic regression on character frequencies): text
                  classifiers on the sequence batch (one-hot x, lengths, y), -log softmax(f(x))_y.
    seq2seq       Translator: an RNN encoder-decoder with a bidirectional encoder and additive
                  attention (Bahdanau, Cho & Bengio 2015), or dot or none; per-token
                  cross-entropy with teacher forcing, BLEU-4 (Papineni et al. 2002) of greedy
                  (val) and beam-search (test) translations.

A model keeps its vocabulary as a uint8 buffer (data.text.symbols_tensor), so its checkpoint alone
encodes prompts and decodes outputs, and a datamodule re-codes its text with a trained model's
vocabulary (use_vocab). Figures (samples, translations, attention maps, misclassified texts):
nnlab/figures/text.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.aggregation import MeanMetric
from torchmetrics.text import BLEUScore

from nnlab.data.text import symbols_tensor, tensor_symbols
from nnlab.data.text import words as split_words
from nnlab.errors import ConfigError
from nnlab.metrics.ngram import KneserNeyLM
from nnlab.models.base import DefaultClip, NNLabModule
from nnlab.models.classifiers import ClassifierBase
from nnlab.nets import text as nets


class _Vocabularies:
    """Vocabulary buffers (name -> (datamodule attribute, bytes per symbol)) kept in step with the
    datamodule: a fresh model takes the data's, a trained one imposes its own."""

    VOCABS: dict[str, tuple[str, int]] = {}

    def vocab(self, buffer: str) -> list[str | None]:
        return tensor_symbols(getattr(self, buffer))

    def _sync_vocabs(self, state: dict | None = None) -> None:
        dm = self.datamodule
        if dm is None or not hasattr(dm, "use_vocab"):
            return
        dm.setup()
        mine = []
        for buffer, (attr, width) in self.VOCABS.items():
            table = state.get(buffer) if state is not None else getattr(self, buffer)
            if table is None or not table.any():  # untrained: take the data's
                table = symbols_tensor(getattr(dm, attr), width)
                getattr(self, buffer).copy_(table)
            mine.append(tensor_symbols(table))
        if mine != [getattr(dm, attr) for attr, _ in self.VOCABS.values()]:
            dm.use_vocab(*mine)
        self.vocab_changed()

    def vocab_changed(self) -> None:
        """Hook: the vocabulary buffers were (re)loaded."""

    def setup(self, stage: str) -> None:
        self._sync_vocabs()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._sync_vocabs(checkpoint.get("state_dict", {}))


# -- char_rnn -------------------------------------------------------------------------------------
class CharLM(_Vocabularies, DefaultClip, NNLabModule):
    VOCABS = {"symbols": ("vocab", 4)}

    def __init__(
        self,
        name: str,
        vocab_size: int,
        cell: str = "lstm",
        embed_dim: int = 64,
        hidden_size: int = 256,
        num_layers: int = 2,
        dropout: float = 0.2,
        ngram_order: int = 5,
        prompt: str = "The ",
        sample_chars: int = 300,
        temperatures=(0.5, 1.0),
        gradient_clip_val: float | None = 1.0,
        input_shape=None,
        inputs=None,  # the config's note of what it reads
        **kwargs,
    ):
        super().__init__(name, input_shape=None, **kwargs)
        if not 1 <= int(ngram_order) <= 8:
            raise ConfigError(f"model.ngram_order={ngram_order} must be in 1..8, e.g. 5.")
        if any(float(t) <= 0 for t in temperatures):
            raise ConfigError(f"model.temperatures={list(temperatures)} must all be > 0.")
        self.net = nets.CharRNN(int(vocab_size), cell, embed_dim, hidden_size, num_layers, dropout)
        self.register_buffer("symbols", torch.zeros(int(vocab_size), 4, dtype=torch.uint8))
        self.val_bpc, self.test_bpc = MeanMetric(), MeanMetric()
        self.default_clip = gradient_clip_val
        self._carry: dict[str, object] = {}  # the hidden state carried between chunks, per stage
        self._ngram: KneserNeyLM | None = None
        self._ngram_bpc: dict[str, dict[int, float]] = {}

    def vocab_changed(self) -> None:
        self._ngram, self._ngram_bpc = None, {}

    def allowed(self) -> torch.Tensor:
        return self.symbols.bool().any(1)  # unused vocabulary slots are all zeros

    def step(self, batch, stage: str) -> dict:
        """Next-character cross-entropy (nats) and bits per character of one chunk; the state of
        the previous chunk of the same streams goes in (chunk 0 starts from zeros)."""
        x, y, chunk = batch
        state = None if chunk == 0 else self._carry.get(stage)
        logits, state = self.net(x, state)
        self._carry[stage] = nets.detach_state(state)
        logits = logits.float().masked_fill(~self.allowed(), float("-inf"))
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        bpc = loss.detach() / math.log(2)
        if stage == "train":
            return {"loss": loss, "bpc": bpc}
        metric = self.val_bpc if stage == "val" else self.test_bpc
        metric.update(bpc, weight=y.numel())  # chunks differ in length: weigh by characters
        return {"loss": loss, "bpc": metric}

    # -- the n-gram baseline, on the positions the model scores ----------------------------------
    def ngram_bpc(self, split: str) -> dict[int, float]:
        """{order: bits per character} of the Kneser-Ney n-grams fitted on the training split,
        scored on the same streams and positions as the model (data face: eval_rows)."""
        if split not in self._ngram_bpc:
            dm = self.datamodule
            if self._ngram is None:
                train = dm.codes("train").cpu().numpy()
                self._ngram = KneserNeyLM(train, len(self.symbols), self.hparams.ngram_order)
            rows = dm.eval_rows(split).cpu().numpy()
            bits: dict[int, float] = {}
            for row in rows:  # position 0 of a row has no history for the model: not scored
                for n, p in self._ngram.probs(row).items():
                    bits[n] = bits.get(n, 0.0) - float(np.log2(p[1:]).sum())
            scored = rows.shape[0] * (rows.shape[1] - 1)
            self._ngram_bpc[split] = {n: b / scored for n, b in bits.items()}
        return self._ngram_bpc[split]

    def on_validation_epoch_end(self) -> None:
        if self.datamodule is not None and not self.trainer.sanity_checking:
            self.log("val/bpc_ngram", min(self.ngram_bpc("val").values()))

    def on_test_epoch_end(self) -> None:
        if self.datamodule is None:
            return
        test, val = self.ngram_bpc("test"), self.ngram_bpc("val")
        for n, bits in test.items():
            self.log(f"test/bpc_ngram{n}", bits)
        self.log("test/bpc_ngram", test[min(val, key=val.get)])  # the order best on val

    # -- carrying the state across a checkpoint (an exact mid-epoch resume) --------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        carry = self._carry.get("train")
        if carry is not None:
            checkpoint["char_rnn_state"] = [
                t.cpu() for t in (carry if isinstance(carry, tuple) else [carry])
            ]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        carry = checkpoint.get("char_rnn_state")
        if carry:
            self._carry["train"] = (
                tuple(t.to(self.device) for t in carry)
                if len(carry) == 2
                else carry[0].to(self.device)
            )

    # -- samples -----------------------------------------------------------------------------
    def sample_text(
        self, prompt: str = "", temperature: float | None = None, n: int | None = None, seed=0
    ) -> str:
        """`prompt` (default: the model's) followed by n characters (default 500) sampled at this
        temperature (default 1), seeded."""
        prompt = prompt or str(self.hparams.prompt or "")
        temperature = 1.0 if temperature is None else temperature
        n = 500 if n is None else n
        vocab = self.vocab("symbols")
        known = {s: i for i, s in enumerate(vocab) if s is not None}
        unknown = list(dict.fromkeys(c for c in prompt if c not in known))
        if unknown:
            shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown[:10])
            raise ConfigError(
                f"The prompt has characters the model never saw in training: {shown}. Its "
                f"vocabulary holds {len(known)} characters, so these cannot be fed to it (they are "
                "not guessed or dropped silently); remove or replace them."
            )
        if not prompt:
            raise ConfigError(
                'The prompt is empty; give at least one character, e.g. prompt="The ".'
            )
        if temperature <= 0:
            raise ConfigError(
                f"temperature={temperature} must be > 0 (e.g. 0.8); 0 would divide by zero."
            )
        codes = torch.tensor([known[c] for c in prompt], device=self.device)
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        out = nets.generate(self.net, codes, int(n), float(temperature), g, self.allowed())
        return prompt + "".join(vocab[int(i)] or "" for i in out)


# -- char_cnn, bag_of_chars (and lstm on the same batches) --------------------------------------
def misclassified(model, data, n: int) -> tuple[list[list[str]], int]:
    """The first n misclassified test texts as [true class, predicted class, text], and the
    number of test texts (any classifier of a text dataset: its texts and sequences)."""
    texts, names, rows = data.texts("test"), model.class_names(data), []
    for start in range(0, len(texts), 256):
        x, lengths, y = data.sequences("test", 256, start)
        pred = model.predict(x.to(model.device), lengths)
        for i in (pred != y.to(pred.device)).nonzero().flatten().tolist():
            rows.append([names[int(y[i])], names[int(pred[i])], texts[start + i]])
        if len(rows) >= n:
            break
    return rows[:n], len(texts)


def classifier_text(model, data, prompt: str = "", n: int | None = None) -> str:
    """`nnlab sample` for a text classifier: the prompt's classes, most likely first (n of them,
    default 3), or without a prompt the first n (default 8) misclassified test texts."""
    names = model.class_names(data)
    if not prompt:
        rows, total = misclassified(model, data, 8 if n is None else n)
        lines = [f"The first {len(rows)} misclassified of {total} test texts (true -> predicted):"]
        return "\n\n".join(lines + [f"[{t} -> {p}]\n{text}" for t, p, text in rows])
    x, lengths, skipped = data.encode(prompt)
    probs = model(x.to(model.device), lengths).softmax(1)[0]
    top = probs.argsort(descending=True)[: min(3 if n is None else n, len(names))].tolist()
    lines = [f"{names[k]:<16} {float(probs[k]):.3f}" for k in top]
    if skipped:
        shown = "".join(dict.fromkeys(skipped))[:40]
        lines.append(f"(characters outside the alphabet, read as blanks: {shown!r})")
    return "\n".join(lines)


class CharClassifier(ClassifierBase):
    """A classifier of the sequence batch (one-hot x (B, T, F), lengths, y); F = input_shape[0]."""

    def __init__(self, name, input_shape=(69,), inputs=None, **kwargs):
        self.alphabet = int(list(input_shape)[-1])
        super().__init__(name, input_shape=None, **kwargs)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(x, lengths)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self(x, lengths).argmax(1)

    def step(self, batch, stage: str) -> dict:
        """The cross-entropy; on val/test also the accuracy (and on test the confusion matrix)."""
        x, lengths, y = batch
        logits = self(x, lengths)
        loss = F.cross_entropy(logits, y)
        if stage == "train":
            return {"loss": loss}
        preds = logits.argmax(1)
        acc = self.val_acc if stage == "val" else self.test_acc
        acc.update(preds, y)
        if stage == "test":
            self.test_cm.update(preds, y)
        return {"loss": loss, "acc": acc}

    def sample_grid(self, n: int = 64, label=None, interpolate: bool = False, datamodule=None):
        raise NotImplementedError(
            f"model {self.hparams.name} classifies texts: `nnlab sample RUN` prints misclassified "
            "test texts (prompt=TEXT classifies a text of yours)"
        )


class CharCNNClassifier(CharClassifier):
    """Zhang, Zhao & LeCun (2015): six 1-D convolutions over one-hot characters, two fully
    connected layers with dropout, class logits."""

    def __init__(
        self,
        name,
        block_length=1014,
        features=256,
        kernels=(7, 7, 3, 3, 3, 3),
        pools=(3, 3, 0, 0, 0, 3),
        fc=1024,
        dropout=0.5,
        reverse=True,
        init_std=0.05,
        **kwargs,
    ):
        self.cnn_args = dict(
            block_length=int(block_length),
            features=int(features),
            kernels=[int(k) for k in kernels],
            pools=[int(p) for p in pools],
            fc=int(fc),
            dropout=float(dropout),
            reverse=bool(reverse),
            init_std=init_std,
        )
        super().__init__(name, **kwargs)

    def build_net(self):
        try:
            return nets.CharCNN(self.alphabet, self.num_classes, **self.cnn_args)
        except ValueError as err:
            raise ConfigError(f"model.block_length/kernels/pools: {err}.") from None


class BagOfCharsClassifier(CharClassifier):
    """Multinomial logistic regression on character (ngrams=2: and bigram) frequencies."""

    def __init__(self, name, ngrams=1, **kwargs):
        if int(ngrams) not in (1, 2):
            raise ConfigError(f"model.ngrams={ngrams} must be 1 (characters) or 2 (and bigrams).")
        self.ngrams = int(ngrams)
        super().__init__(name, **kwargs)

    def build_net(self):
        return nets.BagOfChars(self.alphabet, self.num_classes, self.ngrams)


# -- seq2seq --------------------------------------------------------------------------------------
class BLEU(BLEUScore):
    """Corpus BLEU-4 (Papineni et al. 2002) in percent, on texts already split into words."""

    def compute(self) -> torch.Tensor:
        return super().compute() * 100


class Translator(_Vocabularies, DefaultClip, NNLabModule):
    VOCABS = {"src_symbols": ("src_vocab", 48), "tgt_symbols": ("tgt_vocab", 48)}

    def __init__(
        self,
        name: str,
        src_vocab_size: int,
        tgt_vocab_size: int,
        embed_dim: int = 128,
        hidden_size: int = 128,
        attention: str = "additive",
        attn_dim: int = 128,
        cell: str = "gru",
        num_layers: int = 1,
        dropout: float = 0.2,
        teacher_forcing: float = 1.0,
        beam_size: int = 5,
        length_penalty: float = 1.0,
        max_decode_len: int = 40,
        n_heatmaps: int = 4,
        heatmap_refs=(),
        n_translations: int = 8,
        gradient_clip_val: float | None = 1.0,
        input_shape=None,
        inputs=None,  # the config's note of what it reads
        **kwargs,
    ):
        super().__init__(name, input_shape=None, **kwargs)
        if not 0.0 <= float(teacher_forcing) <= 1.0:
            raise ConfigError(f"model.teacher_forcing={teacher_forcing} must be in [0, 1].")
        if int(beam_size) < 1 or int(max_decode_len) < 1:
            raise ConfigError("model.beam_size and model.max_decode_len must be positive.")
        try:
            self.net = nets.Seq2Seq(
                int(src_vocab_size),
                int(tgt_vocab_size),
                embed_dim,
                hidden_size,
                attention,
                attn_dim,
                cell,
                num_layers,
                dropout,
            )
        except ValueError as err:
            raise ConfigError(f"model: {err}.") from None
        for buffer, size in (("src_symbols", src_vocab_size), ("tgt_symbols", tgt_vocab_size)):
            self.register_buffer(buffer, torch.zeros(int(size), 48, dtype=torch.uint8))
        self.teacher_forcing, self.default_clip = float(teacher_forcing), gradient_clip_val
        self.val_bleu, self.test_bleu, self.test_bleu_greedy = BLEU(), BLEU(), BLEU()

    def vocab_changed(self) -> None:
        allowed = self.tgt_symbols.bool().any(1)  # used slots, but never <pad> or <s>
        allowed[[nets.PAD, nets.BOS]] = False
        self.net.allowed.copy_(allowed)

    def translate(self, src, lengths, beam: int = 1) -> list[list[str]]:
        """Source ids -> target words (greedy with beam=1, else beam search), without </s>."""
        max_len = min(int(self.hparams.max_decode_len), int(lengths.max()) * 2 + 5)
        if beam == 1:
            tokens, _ = self.net.greedy(src, lengths, max_len)
            rows = [r[: r.index(nets.EOS)] if nets.EOS in r else r for r in tokens.tolist()]
        else:
            rows = self.net.beam_search(src, lengths, max_len, beam, self.hparams.length_penalty)
        vocab = self.vocab("tgt_symbols")
        return [[vocab[t] or "<unk>" for t in row if t != nets.PAD] for row in rows]

    def step(self, batch, stage: str) -> dict:
        """Per-token cross-entropy of the target given the source (teacher forcing in training
        with probability teacher_forcing, always in val/test); val/test also BLEU."""
        src, lengths, tgt, idx = batch
        forcing = self.teacher_forcing if stage == "train" else 1.0
        logits, _ = self.net(src, lengths, tgt[:, :-1], forcing)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), tgt[:, 1:].flatten(), ignore_index=nets.PAD
        )
        if stage == "train":
            return {"loss": loss}
        refs = [[" ".join(self.datamodule.pairs(stage)[i][2])] for i in idx.tolist()]
        greedy = [" ".join(w) for w in self.translate(src, lengths)]
        terms = {"loss": loss, "ppl": loss.exp()}
        if stage == "val":
            self.val_bleu.update(greedy, refs)
            return {**terms, "bleu": self.val_bleu}
        self.test_bleu_greedy.update(greedy, refs)
        beam = [" ".join(w) for w in self.translate(src, lengths, int(self.hparams.beam_size))]
        self.test_bleu.update(beam, refs)
        return {**terms, "bleu": self.test_bleu, "bleu_greedy": self.test_bleu_greedy}

    def sample_text(
        self, prompt: str = "", temperature: float | None = None, n: int | None = None, seed=0
    ) -> str:
        """`nnlab sample`: the prompt's beam-search translation, or without a prompt those of the
        first n (default 8) validation verses beside their references."""
        if temperature is not None:
            raise ConfigError(
                "temperature= is for language models; seq2seq decodes by beam search "
                f"(model.beam_size={self.hparams.beam_size})."
            )
        dm, beam = self.datamodule, int(self.hparams.beam_size)
        if prompt:
            sentence = split_words(prompt)
            unknown = [w for w in dict.fromkeys(sentence) if w not in dm.src_vocab]
            src, lengths = dm.encode_source([sentence])
            said = " ".join(self.translate(src.to(self.device), lengths, beam)[0])
            note = f"\n(not in the source vocabulary, read as <unk>: {', '.join(unknown)})"
            return f"{' '.join(sentence)}\n-> {said}" + (note if unknown else "")
        pairs = dm.pairs("val")[: 8 if n is None else n]
        src, lengths = dm.encode_source([p[1] for p in pairs])
        said = self.translate(src.to(self.device), lengths, beam)
        return "\n\n".join(
            f"{ref}\n  source:      {' '.join(s)}\n  reference:   {' '.join(t)}\n"
            f"  translation: {' '.join(o)}"
            for (ref, s, t), o in zip(pairs, said)
        )

    # -- figure hooks ------------------------------------------------------------------------
    def figure_pairs(self, n: int, refs=()) -> list[tuple[str, list[str], list[str]]]:
        """Fixed validation pairs: those of `refs` found there, else the first n."""
        pairs = self.datamodule.pairs("val")
        chosen = [p for p in pairs if p[0] in set(refs)][:n]
        return chosen or pairs[:n]

    def attention_maps(self):
        """[(weights (target, source), source words + </s>, output words + </s>, caption)] of the
        greedy translations of the fixed validation pairs; [] without attention."""
        if self.net.attention is None:
            return []
        pairs = self.figure_pairs(self.hparams.n_heatmaps, self.hparams.heatmap_refs)
        src, lengths = self.datamodule.encode_source([p[1] for p in pairs])
        max_len = min(int(self.hparams.max_decode_len), int(lengths.max()) * 2 + 5)
        tokens, alpha = self.net.greedy(src.to(self.device), lengths, max_len)
        vocab, out = self.vocab("tgt_symbols"), []
        for i, (ref, words, target) in enumerate(pairs):
            row = tokens[i].tolist()
            n_out = row.index(nets.EOS) + 1 if nets.EOS in row else len(row)
            said = [vocab[t] or "<unk>" for t in row[:n_out]]
            caption = f"{ref} (val); reference: {' '.join(target)}"
            out.append((alpha[i, :n_out, : len(words)], words, said, caption))
        return out

    def translation_rows(self) -> list[list[str]]:
        """[ref, source, reference, greedy translation] for the fixed validation pairs."""
        pairs = self.figure_pairs(self.hparams.n_translations)
        src, lengths = self.datamodule.encode_source([p[1] for p in pairs])
        said = self.translate(src.to(self.device), lengths)
        return [[r, " ".join(s), " ".join(t), " ".join(o)] for (r, s, t), o in zip(pairs, said)]
