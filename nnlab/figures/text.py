"""The text family's figures: samples and translations in TensorBoard's TEXT tab, attention heat
maps as images, and the misclassified test texts of a text classifier."""

from __future__ import annotations

from nnlab import lightning_compat as compat
from nnlab import viz
from nnlab.figures import FigureCallback
from nnlab.models.classifiers import ClassifierBase
from nnlab.models.text import CharLM, Translator, misclassified
from nnlab.viz import text as text_viz


class TextFigure(FigureCallback):
    """A figure that is Markdown for the TEXT tab: `draw` returns a string."""

    def write(self, trainer, model, figure) -> None:
        writers = viz.tensorboards(trainer)
        step = compat.logged_step(trainer) if writers else 0
        for writer in writers:
            writer.add_text(self.full_tag, figure, step)


class TextSamples(TextFigure):
    """`samples` (TEXT): the model's prompt continued at each of its temperatures, the same
    seed every epoch (the language model's sample_text)."""

    tag = "samples"

    def applies(self, model) -> bool:
        return isinstance(model, CharLM)

    def draw(self, model, data):
        hp = model.hparams
        parts = []
        for t in hp.temperatures:
            text = model.sample_text(hp.prompt, float(t), int(hp.sample_chars), seed=0)
            parts.append(f"**temperature {float(t):g}**\n\n" + text_viz.code_block(text))
        return "\n\n".join(parts)


class Translations(TextFigure):
    """`translations` (TEXT): fixed validation verses, their reference and the greedy output."""

    tag = "translations"

    def applies(self, model) -> bool:
        return isinstance(model, Translator)

    def draw(self, model, data):
        header = ["verse", "source", "reference", "translation (greedy)"]
        return text_viz.markdown_table(header, model.translation_rows())


class AttentionMaps(FigureCallback):
    """`attention`: where the decoder looked while translating fixed validation verses (one heat
    map per verse: output words down, source words across)."""

    tag = "attention"
    stages = ("val", "test")

    def applies(self, model) -> bool:
        return isinstance(model, Translator) and model.net.attention is not None

    def draw(self, model, data):
        maps = model.attention_maps()
        if not maps:
            return None
        return text_viz.stack([text_viz.attention_image(w, s, t, c) for w, s, t, c in maps])


class TextErrors(TextFigure):
    """`errors` (TEXT): misclassified test texts, true -> predicted, for any classifier of a text
    dataset (char_cnn, bag_of_chars, lstm): the data face's texts and sequences."""

    tag = "errors"
    stages = ("test",)

    def applies(self, model) -> bool:
        return isinstance(model, ClassifierBase) and hasattr(model.datamodule, "texts")

    def draw(self, model, data):
        rows, total = misclassified(model, data, model.n_errors)
        head = f"The first {len(rows)} misclassified of {total} test texts\n\n"
        return head + text_viz.markdown_table(["true", "predicted", "text"], rows)
