"""Nets for text (plain nn.Modules; the recurrent layers come from nets.sequence.CELLS).

    CharRNN     a many-to-many character language model: embedding -> stacked rnn/gru/lstm ->
                logits over the next character at every step (Karpathy's char-rnn); `generate`
                samples from it with a temperature.
    CharCNN     the character-level ConvNet of Zhang, Zhao & LeCun (2015): one-hot characters,
                six 1-D convolutions (kernels 7, 7, 3, 3, 3, 3; max pooling 3 after the 1st, 2nd
                and 6th), two dropout-regularised fully connected layers, class logits.
    BagOfChars  the linear baseline: character (and optionally character-bigram) frequencies ->
                class logits (multinomial logistic regression).
    Seq2Seq     an RNN encoder-decoder for translation (Cho et al. 2014; Sutskever et al. 2014)
                with a bidirectional encoder and additive attention (Bahdanau, Cho & Bengio 2015),
                multiplicative "general" attention (Luong, Pham & Manning 2015) as an option, or
                none (one fixed context vector); greedy and beam-search decoding.

Character classifiers take the sequence batch (x, lengths): x (B, T, F) one-hot rows padded with
zeros after each sequence's length, lengths (B,) int64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nnlab.nets.sequence import CELLS

PAD, UNK, BOS, EOS = 0, 1, 2, 3  # the first four symbols of every word vocabulary
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


def _cell(cell: str):
    if cell not in CELLS:
        raise ValueError(f"unknown cell '{cell}'; use one of {tuple(CELLS)}")
    return CELLS[cell]


def detach_state(state):
    """Cut the graph behind a recurrent state (truncated BPTT); LSTM states are (h, c) pairs."""
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


# -- character language model ---------------------------------------------------------------------
class CharRNN(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        embed_dim: int = 64,
        hidden_size: int = 256,
        num_layers: int = 2,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.rnn = _cell(cell)(
            embed_dim,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, codes: torch.Tensor, state=None):
        """codes (B, T) int64 -> (logits (B, T, V) for the next character, the final state)."""
        out, state = self.rnn(self.drop(self.embed(codes)), state)  # out: (B, T, hidden)
        return self.head(self.drop(out)), state


@torch.no_grad()
def generate(
    net: CharRNN,
    prompt: torch.Tensor,
    n: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """n characters sampled after `prompt` (1-D codes) from softmax(logits / temperature), only
    among the `allowed` symbols (a (V,) bool mask) when given; the net runs in eval mode (no
    dropout) and comes back in the mode it was in."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    was_training = net.training
    net.eval()
    try:
        logits, state = net(prompt.view(1, -1))
        out = torch.empty(n, dtype=torch.long, device=prompt.device)
        for i in range(n):
            last = logits[0, -1].float()
            if allowed is not None:
                last = last.masked_fill(~allowed, float("-inf"))
            probs = torch.softmax(last / temperature, dim=-1)
            out[i] = torch.multinomial(probs, 1, generator=generator)
            logits, state = net(out[i].view(1, 1), state)
    finally:
        net.train(was_training)
    return out


# -- character classifiers ------------------------------------------------------------------------
def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each sequence's first `length` steps in reverse order, padding still at the end."""
    t = x.shape[1]
    steps = torch.arange(t, device=x.device)
    idx = lengths.to(x.device).view(-1, 1) - 1 - steps.view(1, -1)  # (B, T)
    out = x.gather(1, idx.clamp(min=0).unsqueeze(-1).expand(-1, -1, x.shape[2]))
    return out * (idx >= 0).unsqueeze(-1).to(x.dtype)


def fit_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T, F) -> (B, length, F): cropped, or padded with zero rows."""
    t = x.shape[1]
    return x[:, :length] if t >= length else F.pad(x, (0, 0, 0, length - t))


class CharCNN(nn.Module):
    """Zhang et al. (2015), Table 1 and 2, with the widths scaled down in the YAML (the paper:
    features 256 or 1024, fc 1024 or 2048, block 1014). Convolutions are unpadded with stride 1,
    so the frame that reaches the classifier is block_length - 96 over 27 long for the paper's
    layers (34 for 1014); `frame` says it for the YAML's."""

    def __init__(
        self,
        alphabet_size: int,
        num_classes: int,
        block_length: int = 1014,
        features: int = 256,
        kernels: Sequence[int] = (7, 7, 3, 3, 3, 3),
        pools: Sequence[int] = (3, 3, 0, 0, 0, 3),
        fc: int = 1024,
        dropout: float = 0.5,
        reverse: bool = True,
        init_std: float | None = 0.05,
    ):
        super().__init__()
        if len(kernels) != len(pools):
            raise ValueError("kernels and pools need one entry per convolution")
        self.block_length, self.reverse = int(block_length), bool(reverse)
        layers, channels, frame = [], alphabet_size, self.block_length
        for k, p in zip(kernels, pools):
            layers += [nn.Conv1d(channels, features, k), nn.ReLU()]
            frame = frame - k + 1
            if p:
                layers.append(nn.MaxPool1d(p))
                frame //= p
            channels = features
        if frame < 1:
            raise ValueError(
                f"block_length={block_length} is too short for these convolutions and poolings "
                "(nothing reaches the classifier); use a longer block"
            )
        self.frame = frame
        self.conv = nn.Sequential(*layers)  # (B, F, L) -> (B, features, frame)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features * frame, fc),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fc, fc),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fc, num_classes),
        )
        if init_std:  # the paper: Gaussian weights, std 0.05 (small model) or 0.02 (large)
            for m in self.modules():
                if isinstance(m, (nn.Conv1d, nn.Linear)):
                    nn.init.normal_(m.weight, 0.0, init_std)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, T, F) one-hot, lengths (B,) -> logits (B, classes). With `reverse` the text is
        read backwards (the paper's "backward quantization": the latest characters come first,
        and a text longer than the block keeps its last block_length characters)."""
        if self.reverse:
            x = reverse_padded(x, lengths)
        x = fit_length(x, self.block_length).transpose(1, 2)  # (B, F, L)
        return self.classifier(self.conv(x))


class BagOfChars(nn.Module):
    """Logistic regression on the character frequencies of a text (ngrams=2 adds the
    frequencies of character bigrams, F*F more features)."""

    def __init__(self, alphabet_size: int, num_classes: int, ngrams: int = 1):
        super().__init__()
        if ngrams not in (1, 2):
            raise ValueError("ngrams must be 1 (characters) or 2 (characters and bigrams)")
        self.ngrams = ngrams
        self.linear = nn.Linear(
            alphabet_size + (alphabet_size**2 if ngrams == 2 else 0), num_classes
        )

    def features(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, F) one-hot -> (B, features): counts divided by the length."""
        n = lengths.to(x.device, x.dtype).clamp(min=1).view(-1, 1)
        feats = [x.sum(1) / n]  # padding rows are zero
        if self.ngrams == 2:
            pairs = torch.einsum("btf,btg->bfg", x[:, :-1], x[:, 1:]).flatten(1)
            feats.append(pairs / (n - 1).clamp(min=1))
        return torch.cat(feats, dim=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x, lengths))


# -- translation ----------------------------------------------------------------------------------
class Encoder(nn.Module):
    """Embedding -> bidirectional rnn/gru/lstm over the padded source (packed, so padding never
    enters a state)."""

    def __init__(self, vocab_size, embed_dim, hidden_size, cell="gru", num_layers=1, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.rnn = _cell(cell)(
            embed_dim,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, lengths: torch.Tensor):
        """src (B, S) -> (annotations (B, S, 2H), summary (B, 2H): the last layer's final forward
        state beside its final backward state, which has read the whole source backwards)."""
        packed = pack_padded_sequence(
            self.drop(self.embed(src)), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, h_n = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        h_n = h_n[0] if isinstance(h_n, tuple) else h_n  # LSTM: (h, c)
        return out, torch.cat([h_n[-2], h_n[-1]], dim=1)


class AdditiveAttention(nn.Module):
    """Bahdanau et al. (2015): e_j = v^T tanh(W s + U h_j), alpha = softmax(e) over the source."""

    def __init__(self, query_dim: int, memory_dim: int, attn_dim: int):
        super().__init__()
        self.W = nn.Linear(query_dim, attn_dim, bias=False)
        self.U = nn.Linear(memory_dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.U(memory)  # (B, S, A), once per source

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return self.v(torch.tanh(keys + self.W(query).unsqueeze(1))).squeeze(-1)  # (B, S)


class DotAttention(nn.Module):
    """Luong et al. (2015), "general": e_j = s^T W h_j."""

    def __init__(self, query_dim: int, memory_dim: int, attn_dim: int = 0):
        super().__init__()
        self.W = nn.Linear(memory_dim, query_dim, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.W(memory)  # (B, S, query_dim)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)  # (B, S)


ATTENTIONS = {"additive": AdditiveAttention, "dot": DotAttention, "none": None}


class Seq2Seq(nn.Module):
    """Encoder-decoder. At target step i the decoder reads its previous state s_{i-1}, builds the
    context c_i = sum_j alpha_ij h_j over the source annotations (or, with attention=none, the
    fixed summary of the whole source, Cho et al. 2014), runs one recurrent step on [embedding of
    y_{i-1}; c_i] and predicts y_i from a deep output tanh(L [s_i; c_i; emb]) -> vocabulary."""

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        embed_dim: int = 128,
        hidden_size: int = 128,
        attention: str = "additive",
        attn_dim: int = 128,
        cell: str = "gru",
        num_layers: int = 1,
        dropout: float = 0.2,
    ):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention '{attention}'; use one of {tuple(ATTENTIONS)}")
        memory, dec = 2 * hidden_size, 2 * hidden_size
        self.encoder = Encoder(src_vocab, embed_dim, hidden_size, cell, num_layers, dropout)
        self.bridge = nn.Linear(memory, dec)  # s_0 = tanh(bridge(summary))
        self.attention = (
            None if attention == "none" else ATTENTIONS[attention](dec, memory, attn_dim)
        )
        self.embed = nn.Embedding(tgt_vocab, embed_dim, padding_idx=PAD)
        self.rnn = _cell(cell)(embed_dim + memory, dec, 1, batch_first=True)
        self.is_lstm = cell == "lstm"
        self.drop = nn.Dropout(dropout)
        self.deep = nn.Linear(dec + memory + embed_dim, embed_dim)
        self.out = nn.Linear(embed_dim, tgt_vocab)
        # the target symbols the decoder may emit (a vocabulary with unused slots masks them)
        self.register_buffer("allowed", torch.ones(tgt_vocab, dtype=torch.bool), persistent=False)

    def encode(self, src: torch.Tensor, lengths: torch.Tensor) -> dict:
        """What every decoder step reads: annotations, attention keys, source mask, summary."""
        memory, summary = self.encoder(src, lengths)
        s0 = torch.tanh(self.bridge(summary)).unsqueeze(0)  # (1, B, dec)
        return {
            "memory": memory,
            "keys": self.attention.keys(memory) if self.attention is not None else None,
            "mask": src != PAD,
            "summary": summary,
            "state": (s0, torch.zeros_like(s0)) if self.is_lstm else s0,
        }

    def step(self, y_prev: torch.Tensor, enc: dict):
        """One decoder step: y_prev (B,) -> (logits (B, V), attention weights (B, S) or None);
        enc["state"] is advanced in place."""
        state = enc["state"]
        query = (state[0] if self.is_lstm else state)[-1]  # s_{i-1}: (B, dec)
        if self.attention is None:
            context, alpha = enc["summary"], None
        else:
            scores = self.attention.scores(query, enc["keys"]).masked_fill(~enc["mask"], -1e9)
            alpha = torch.softmax(scores, dim=1)  # (B, S)
            context = torch.bmm(alpha.unsqueeze(1), enc["memory"]).squeeze(1)  # (B, 2H)
        emb = self.drop(self.embed(y_prev))  # (B, E)
        out, enc["state"] = self.rnn(torch.cat([emb, context], 1).unsqueeze(1), state)
        deep = torch.tanh(self.deep(torch.cat([out.squeeze(1), context, emb], 1)))
        logits = self.out(self.drop(deep)).masked_fill(~self.allowed, float("-inf"))
        return logits, alpha

    def forward(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        tgt_in: torch.Tensor,
        teacher_forcing: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        """Training: tgt_in (B, T) starts with <s>; each step reads the true previous token with
        probability `teacher_forcing`, else the model's own greedy guess. -> logits (B, T, V),
        attention (B, T, S) (zeros with attention=none)."""
        enc = self.encode(src, src_lengths)
        y, logits, alphas = tgt_in[:, 0], [], []
        for i in range(tgt_in.shape[1]):
            step_logits, alpha = self.step(y, enc)
            logits.append(step_logits)
            alphas.append(alpha if alpha is not None else enc["mask"].float() * 0)
            if i + 1 < tgt_in.shape[1]:
                y = tgt_in[:, i + 1]
                if teacher_forcing < 1.0:
                    own = step_logits.argmax(1)
                    use = torch.rand(y.shape, device=y.device, generator=generator)
                    y = torch.where(use < teacher_forcing, y, own)
        return torch.stack(logits, 1), torch.stack(alphas, 1)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, src_lengths: torch.Tensor, max_len: int):
        """The most likely token at each step until </s>: tokens (B, L) (PAD after </s>) and the
        attention weights (B, L, S)."""
        enc = self.encode(src, src_lengths)
        b = src.shape[0]
        y = torch.full((b,), BOS, dtype=torch.long, device=src.device)
        done = torch.zeros(b, dtype=torch.bool, device=src.device)
        tokens, alphas = [], []
        for _ in range(max_len):
            logits, alpha = self.step(y, enc)
            y = logits.argmax(1).masked_fill(done, PAD)
            tokens.append(y)
            alphas.append(alpha if alpha is not None else enc["mask"].float() * 0)
            done |= y == EOS
            if done.all():
                break
        return torch.stack(tokens, 1), torch.stack(alphas, 1)

    def _map_state(self, state, fn):
        """fn applied to the decoder state (layers, B, H), to both halves of an LSTM's."""
        return tuple(fn(s) for s in state) if self.is_lstm else fn(state)

    @torch.no_grad()
    def beam_search(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        max_len: int,
        beam: int = 4,
        length_penalty: float = 1.0,
    ) -> list[list[int]]:
        """Beam search, all sentences of the batch at once (B*K hypotheses): the best finished
        hypothesis per sentence by log-probability / length^length_penalty; without </s>."""
        enc = self.encode(src, src_lengths)
        b, k, dev = src.shape[0], beam, src.device
        for key in ("memory", "keys", "mask", "summary"):  # each sentence K times
            if enc[key] is not None:
                enc[key] = enc[key].repeat_interleave(k, 0)
        enc["state"] = self._map_state(enc["state"], lambda s: s.repeat_interleave(k, 1))
        score = torch.full((b, k), float("-inf"), device=dev)
        score[:, 0] = 0.0  # one live hypothesis per sentence at first
        y = torch.full((b * k,), BOS, dtype=torch.long, device=dev)
        history = torch.empty(b, k, 0, dtype=torch.long, device=dev)
        finished = torch.zeros(b, k, dtype=torch.bool, device=dev)
        lengths = torch.zeros(b, k, device=dev)
        for _ in range(max_len):
            logits, _ = self.step(y, enc)
            logp = torch.log_softmax(logits.float(), -1).view(b, k, -1)
            v = logp.shape[-1]
            # a finished hypothesis only continues with PAD, at no cost
            frozen = torch.full_like(logp, float("-inf"))
            frozen[..., PAD] = 0.0
            logp = torch.where(finished.unsqueeze(-1), frozen, logp)
            total = (score.unsqueeze(-1) + logp).view(b, k * v)
            score, flat = total.topk(k, dim=1)  # (B, K)
            origin, token = flat // v, flat % v
            history = torch.cat(
                [history.gather(1, origin.unsqueeze(-1).expand_as(history)), token.unsqueeze(-1)],
                dim=2,
            )
            finished = finished.gather(1, origin)
            lengths = lengths.gather(1, origin) + (~finished).float()
            finished = finished | (token == EOS)
            index = (origin + torch.arange(b, device=dev).view(-1, 1) * k).view(-1)
            enc["state"] = self._map_state(enc["state"], lambda s: s[:, index])  # noqa: B023
            y = token.view(-1)
            if finished.all():
                break
        norm = score / lengths.clamp(min=1) ** length_penalty
        norm = norm.masked_fill(~finished & (finished.any(1, keepdim=True)), float("-inf"))
        best = norm.argmax(1)
        out = []
        for seq in history[torch.arange(b, device=dev), best].tolist():
            seq = seq[: seq.index(EOS)] if EOS in seq else seq
            out.append([t for t in seq if t != PAD])
        return out
