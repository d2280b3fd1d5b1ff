"""Lecture 10's widget: pick a method, a pattern and the layers to prune, and see the damage to MiniLM."""

from __future__ import annotations

from sparsity_lab._optional import require
from sparsity_lab.course.widgets import CallbackErrors
from sparsity_lab.transformer import plots, study
from sparsity_lab.transformer.evaluate import MEASURES, agreement, pairwise_cosines
from sparsity_lab.transformer.minilm import BertEncoder


def damage_explorer(model: BertEncoder, data: study.StudyData, config: study.StudyConfig):
    """Dropdowns for method, pattern and layer set (`study.layer_sets`): each change prunes a copy of `model`
    one-shot (Wanda and SparseGPT calibrated on `data`), then draws its pairwise similarities against the dense
    model's and tabulates the agreement. Errors are shown in the widget's own error area."""
    widgets = require("ipywidgets")
    sets = study.layer_sets(model)
    method = widgets.Dropdown(options=study.METHODS, value="sparsegpt", description="method")
    pattern = widgets.Dropdown(options=study.PATTERNS, value="2:4", description="pattern")
    layers = widgets.Dropdown(options=list(sets), value=next(iter(sets)), description="layers")
    dense_pairs = pairwise_cosines(data.dense)
    figure = require("plotly.graph_objects").FigureWidget(plots.similarity_scatter(dense_pairs, dense_pairs))
    table = widgets.HTML()
    errors = CallbackErrors({"method": method, "pattern": pattern, "layers": layers}, "prune and compare the model")
    dense_accuracy = agreement(data.dense, data.dense, data.labels)["module_accuracy"]

    @errors.guard
    def update(change: object = None) -> None:
        pruned = study.prune(model, method.value, pattern.value, data.calibration, config,
                             layers=sets[layers.value])
        embeddings = study.embed_all(pruned, data)
        scores = agreement(data.dense, embeddings, data.labels)
        fresh = plots.similarity_scatter(dense_pairs, pairwise_cosines(embeddings),
                                         title=f"{method.value}, {pattern.value}, {layers.value}: "
                                               f"Spearman ρ {scores['spearman']:.3f}")
        with figure.batch_update():
            for trace, new in zip(figure.data, fresh.data, strict=True):
                trace.x, trace.y = new.x, new.y
            figure.layout.title = fresh.layout.title
        cells = "".join(f"<tr><td>{m}</td><td>{scores[m]:.4f}</td></tr>" for m in MEASURES)
        table.value = (f"<b>{len(sets[layers.value])} linear layers pruned at 50% ({pattern.value}) by "
                       f"{method.value}</b>, one-shot; sparsity over all 36 linears "
                       f"{study.pruned_sparsity(pruned):.1%}; dense module accuracy {dense_accuracy:.4f}"
                       f"<table><tr><th>measure</th><th>pruned</th></tr>{cells}</table>")

    for control in (method, pattern, layers):
        control.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([method, pattern, layers]), errors.output, figure, table])
    box.errors = errors
    return box
