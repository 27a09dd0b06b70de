"""Architecture: the network and the article it comes from, the layer table read off the network, where the
parameters come from, the fc1·fc2 lesson, and the output-size formula."""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException
from torch import nn

from cnn_core.architecture import LayerRow, layer_table, output_size, total_parameters, window_of
from cnn_core.checkpoint import LoadedModel
from cnn_core.linear_collapse import LogitComparison, compare_logits, last_linear_pair, multiply_out
from cnn_core.model import CNNConfig, ModelConfig, count_parameters
from cnn_core.preprocess import normalise
from ui.charts import shape_flow
from ui.state import (
    SHIPPED_MLP_ID,
    Digit,
    current_digit,
    get_model,
    get_model_by_id,
    get_samples,
    model_picker,
    sample_label,
    shipped_model_paths,
)
from ui.text import plain

st.set_page_config(page_title="Architecture · CNN Explorer", page_icon="🔢", layout="wide")


ARTICLE = "Back to AI Basics: CNNs"
ARTICLE_SHARE = 0.07  # the article's claim: a CNN needs about 7% of an MLP's parameters (a quote, not a measurement)
TRAIN_PAGE = "pages/9_Train_your_own.py"
HIDDEN_RELU_KEY = "own_hidden_relu"  # the Train page's "ReLU after fc1" box


def network_introduction(config: ModelConfig, rows: list[LayerRow]) -> str:
    """Where the network comes from: the article's network, a variant of it (and how it differs), or an MLP."""
    credit = f"the network of the article *{ARTICLE}*, which this app follows"
    if not isinstance(config, CNNConfig):
        return (f"This is a fully connected network (an MLP): it has no convolutions. {credit[0].upper()}{credit[1:]}, "
                f"is a CNN; pick it in the sidebar's Model box to see its layers.")
    article = CNNConfig()
    differences = [
        f"{what}: {mine} instead of {theirs}"
        for what, mine, theirs in (
            ("conv1 filters", config.conv1_channels, article.conv1_channels),
            ("conv2 filters", config.conv2_channels, article.conv2_channels),
            ("kernel", f"{config.kernel_size}×{config.kernel_size}", f"{article.kernel_size}×{article.kernel_size}"),
            ("padding", config.padding, article.padding),
            ("pooling", POOL_WORDS[config.pool], POOL_WORDS[article.pool]),
            ("dropout", config.dropout, article.dropout),
            ("fc1 units", config.hidden, article.hidden),
            ("ReLU after fc1", "yes" if config.hidden_relu else "no", "yes" if article.hidden_relu else "no"),
        ) if mine != theirs
    ]
    layers = " → ".join(r.name for r in rows[1:])
    if not differences:
        return f"This is {credit}: {layers}."
    return (f"This is a variant of {credit}: " + "; ".join(differences) + f". Its layers: {layers}.")


POOL_WORDS = {"max": "max pooling", "avg": "average pooling"}


def fixed_rules(model: nn.Module) -> str | None:
    """The layers without parameters and the fixed rule each applies, for the kinds this model has."""
    rules: dict[str, str] = {}
    for _, layer in model.named_children():
        window = window_of(layer)
        if isinstance(layer, nn.ReLU):
            rules["ReLU"] = "ReLU zeroes the negatives"
        elif isinstance(layer, nn.MaxPool2d) and window is not None:
            rules["MaxPool2d"] = f"max pooling keeps the largest value of each {window[0]}×{window[0]} window"
        elif isinstance(layer, nn.AvgPool2d) and window is not None:
            rules["AvgPool2d"] = f"average pooling takes the mean of each {window[0]}×{window[0]} window"
        elif isinstance(layer, nn.Flatten):
            rules["Flatten"] = "flatten lays the maps out as one vector"
        elif isinstance(layer, nn.Dropout):
            rules["Dropout"] = "dropout silences random inputs, only while training"
    if not rules:
        return None
    listed = list(rules.values())
    text = ", ".join(listed[:-1]) + (" and " if len(listed) > 1 else "") + listed[-1]
    return f"{text[0].upper()}{text[1:]}: fixed rules with nothing to learn, so their count is 0."


def size_change(row: LayerRow) -> str:
    """What one convolution or pooling layer does to the size, in words, from its own numbers."""
    size = row.size
    assert size is not None
    change = ("keeps the size" if size.size == size.size_in else
              f"halves it ({size.size_in} → {size.size})" if size.size * 2 == size.size_in else
              f"{'shrinks' if size.size < size.size_in else 'grows'} it from {size.size_in} to {size.size}")
    return f"{row.name} ({size.kernel}×{size.kernel}, stride {size.stride}, padding {size.padding}) {change}."


def open_page(path: str, title: str, key: str, label: str, presets: dict[str, object] | None = None) -> None:
    """A button that opens one of the app's pages, first setting some of its widgets.

    Run on its own (not through the app's navigation) a page cannot switch pages: it then says where to go.
    """
    if st.button(label, key=key):
        for name, value in (presets or {}).items():
            st.session_state[name] = value
        try:
            st.switch_page(path)
        except StreamlitAPIException:
            st.info(f"Open **{title}** in the sidebar.")


def lesson_digit() -> Digit:
    """The digit the lesson runs: the session's own, else the first sample (this page has no sample picker)."""
    digit = current_digit()
    if digit is not None:
        return digit
    sample = get_samples()[0]
    return Digit(sample.pixels, f"sample {sample_label(sample)}")


def fc_lesson(loaded: LoadedModel) -> None:
    """fc1 and fc2 with nothing nonlinear between them are one matrix: shown on the visitor's digit, with the
    counts of the model shown; or, when something nonlinear sits between them, why the lesson does not apply."""
    model = loaded.model
    pair = last_linear_pair(model)
    st.header("A truth the article leaves out: two layers, one matrix", anchor="fc-lesson")
    if pair is None:
        st.write("This network has fewer than two fully connected layers: there is no pair to multiply out.")
        return
    product = multiply_out(model, pair)
    digit = lesson_digit()
    logits = compare_logits(model, product, normalise(digit.pixels))
    first, second = pair.first, pair.second
    n_in, hidden, n_out = product.in_features, product.hidden, product.out_features
    between = ", ".join(f"{name} ({kind})" for name, kind in pair.between)
    if not pair.collapses:
        blockers = ", ".join(f"**{name}** ({dict(pair.between)[name]})" for name in pair.blockers)
        st.markdown(
            f"In the article's network nothing nonlinear sits between fc1 and fc2, so the two multiply into one "
            f"matrix. **Here that does not apply:** {blockers} sits between **{first}** ({n_in:,} → {hidden}) and "
            f"**{second}** ({hidden} → {n_out}), so they are two real layers that no single matrix can replace. "
            f"Multiplying {second}'s weights by {first}'s anyway gives scores that differ from the network's by up "
            f"to **{logits.max_abs_difference:.3g}** on {plain(digit.source)}: that difference is what the "
            f"nonlinearity does."
        )
        logit_table(logits, "the network", f"{second}·{first} multiplied out")
        return
    st.markdown(
        f"Nothing nonlinear sits between **{first}** ({n_in:,} → {hidden}) and **{second}** ({hidden} → {n_out})"
        + (f" (only {between}, which passes values on unchanged at inference)" if between else "")
        + ". So for every input *x*, the two layers compute one linear map:"
    )
    st.latex(rf"\text{{{second}}}(\text{{{first}}}(x)) = W_2(W_1x + b_1) + b_2 = "
             rf"\underbrace{{W_2W_1}}_{{{n_out}\times{n_in}}}\,x + \underbrace{{W_2b_1 + b_2}}_{{{n_out}}}")
    st.markdown(
        f"One {n_out}×{n_in:,} matrix and {n_out} biases: **{product.parameters:,}** parameters, in place of "
        f"{first}'s {product.first_parameters:,} and {second}'s {product.second_parameters:,} "
        f"(**{product.pair_parameters:,}**). Both paths on {plain(digit.source)}:"
    )
    logit_table(logits, "two layers", "one matrix")
    st.metric("Largest difference between the two paths", f"{logits.max_abs_difference:.1e}",
              help="The network computes in 32-bit floats, the product in 64-bit ones: the difference is "
                   "rounding, not a different function.")
    total = product.model_parameters
    kept = product.expressible_parameters
    if product.rank_limited:
        st.markdown(
            f"Here {first} is only {hidden} wide, narrower than the {n_out} outputs, so the product is a matrix of "
            f"rank at most {hidden}: the two layers ({product.pair_parameters:,} parameters) express less than one "
            f"full {n_out}×{n_in:,} matrix ({product.parameters:,}) would."
        )
    elif product.redundant_parameters:
        conv = sum(count_parameters(layer) for layer in model.children() if isinstance(layer, nn.Conv2d))
        st.markdown(
            f"So **{product.redundant_parameters:,} of the {total:,} parameters** "
            f"({product.redundant_parameters / total:.0%}) change nothing the network can express: the same layers "
            f"with one {n_out}×{n_in:,} matrix in place of {first} and {second} compute every function this network "
            f"can, with {kept:,} parameters. The extra ones change only how training proceeds: where it starts, the "
            f"steps gradient descent takes, what weight decay pulls towards."
        )
        st.markdown(
            f"For the article's argument that *a CNN needs about {ARTICLE_SHARE:.0%} of an MLP's parameters*: the "
            f"{ARTICLE_SHARE:.0%} counts all {total:,}, but what this network can compute needs {kept:,} "
            f"({kept / total:.1%} of them), so by that measure the share is about "
            f"{ARTICLE_SHARE * kept / total:.1%}. And the count is mostly the article's choice of a {hidden}-unit "
            f"{first}, not the convolutions: they hold {conv:,} parameters ({conv / total:.1%})."
            + mlp_remark()
        )
    st.markdown(
        "**Test it yourself:** train this network with a ReLU after fc1 (the *ReLU after fc1* box on the Train "
        "your own page). The ReLU makes fc1 and fc2 two layers no single matrix can replace; compare the two "
        "networks' test accuracy to see whether the extra expressive power helps on digits."
    )
    open_page(TRAIN_PAGE, "Train your own", "arch_train_relu", "Train it with a ReLU after fc1 →",
              {HIDDEN_RELU_KEY: True})


def mlp_remark() -> str:
    """Whether the shipped MLP's own layers collapse the same way (they do not when it has a ReLU between them)."""
    if SHIPPED_MLP_ID not in shipped_model_paths():
        return ""
    mlp_pair = last_linear_pair(get_model_by_id(SHIPPED_MLP_ID).model)
    if mlp_pair is None:
        return ""
    if not mlp_pair.collapses:
        return (f" The MLP side does not shrink this way: the shipped MLP has {', '.join(mlp_pair.blockers)} between "
                f"its {mlp_pair.first} and {mlp_pair.second}.")
    return f" The shipped MLP's {mlp_pair.first} and {mlp_pair.second} collapse the same way."


def logit_table(logits: LogitComparison, first_label: str, second_label: str) -> None:
    """The scores of the ten digits along both paths, side by side."""
    a, b = logits.two_layers.double(), logits.one_matrix
    st.dataframe([{"digit": d, first_label: float(a[d]), second_label: float(b[d]), "difference": float(b[d] - a[d])}
                  for d in range(len(a))], hide_index=True, key="fc_logits", width="content",
                 column_config={"digit": st.column_config.NumberColumn(width=50),
                                first_label: st.column_config.NumberColumn(format="%.4f", width=110),
                                second_label: st.column_config.NumberColumn(format="%.4f", width=110),
                                "difference": st.column_config.NumberColumn(format="%.1e", width=90)})


def shape_text(shape: tuple[int, ...]) -> str:
    """A shape as C × H × W (or a single length)."""
    return " × ".join(str(d) for d in shape)


def parameter_origin(row: LayerRow, layer: nn.Module) -> str | None:
    """Where a layer's parameter count comes from, worked out from the layer's own sizes (None: no parameters)."""
    bias = 1 if getattr(layer, "bias", None) is not None else 0
    if isinstance(layer, nn.Conv2d):
        out_c, in_c, kh, kw = layer.weight.shape
        per_filter = in_c * kh * kw + bias
        channels = f"all {in_c} input channels" if in_c > 1 else "the single input channel"
        return (f"**{row.name}**: {out_c} filters × ({kh}×{kw}×{in_c} weights + {bias} bias) "
                f"= {out_c} × {per_filter:,} = **{out_c * per_filter:,}**. Each filter looks at a {kh}×{kw} "
                f"window through {channels}, and the same weights slide over every position.")
    if isinstance(layer, nn.Linear):
        per_neuron = layer.in_features + bias
        return (f"**{row.name}**: {layer.out_features} neurons × ({layer.in_features:,} weights + {bias} bias) "
                f"= {layer.out_features} × {per_neuron:,} = **{layer.out_features * per_neuron:,}**. "
                f"Every neuron is connected to every one of its {layer.in_features:,} inputs.")
    return None


model_picker()
loaded = get_model()
model = loaded.model
rows = layer_table(model)
layers = dict(model.named_children())
total = total_parameters(rows)

st.title("Architecture")
st.markdown(network_introduction(loaded.config, rows))
st.write(
    "The table is read off the loaded network itself: each layer's output shape for one 28×28 greyscale digit "
    "(channels × height × width, or a flat vector), how many weights and biases it learns, its type and settings."
)

# The shape and parameter columns come right after the name, and the columns are narrow: on a phone
# (about 360 pixels for the table) they are the ones in view; type and settings scroll in from the right.
table = [
    {"#": r.index, "name": r.name, "output shape": shape_text(r.output_shape), "parameters": r.parameters,
     "type": r.kind, "details": r.details}
    for r in rows
]
st.dataframe(table, hide_index=True, width="content", key="layer_table",
             height="content",  # every row visible: no scrolling inside the table
             column_config={"#": st.column_config.NumberColumn(width=30),
                            "name": st.column_config.TextColumn(width=62),
                            "output shape": st.column_config.TextColumn("output shape", width=96),
                            "parameters": st.column_config.NumberColumn(width=86, format="localized"),
                            "type": st.column_config.TextColumn(width=90),
                            "details": st.column_config.TextColumn(width=260)})
weighted = [r for r in rows if r.parameters]
total_col, share_col = st.columns([1, 3])
total_col.metric("Total parameters", f"{total:,}", help="The sum of the table's parameter column.")
biggest = max(weighted, key=lambda r: r.parameters)
share_col.caption(f"Only {len(weighted)} of the {len(rows) - 1} layers learn anything: "
                  + ", ".join(f"{r.name} holds {r.parameters / total:.1%}" for r in weighted) + " of the parameters."
                  + (f" {biggest.name} alone holds more than all the other layers together."
                     if biggest.parameters > total / 2 else ""))

st.subheader("Where the parameters come from")
for row in rows[1:]:
    text = parameter_origin(row, layers[row.name])
    if text is not None:
        st.markdown("- " + text)
fixed = fixed_rules(model)
if fixed:
    st.markdown("- " + fixed)
st.markdown(f"Together: **{' + '.join(f'{r.parameters:,}' for r in weighted)} = {total:,}** parameters.")

fc_lesson(loaded)

st.plotly_chart(shape_flow(rows), key="shape_flow", config={"displayModeBar": False})

st.header("The output-size formula")
st.write("A convolution or pooling window of size *k*, moved in steps of *s* over an input of size *in* "
         "that is padded with *p* zeros on each side, fits this many times along each side:")
st.latex(r"\text{out} = \left\lfloor \frac{\text{in} + 2p - k}{s} \right\rfloor + 1")
windowed = [row for row in rows if row.size is not None]
if windowed:
    st.write("For the layers of this network:")
    for row in windowed:
        st.markdown(f"- **{row.name}** ({row.details}): `{row.size.formula()}` → output "
                    f"{shape_text(row.output_shape)}")
    st.caption(" ".join(size_change(row) for row in windowed))
else:
    st.write("This network has no convolution or pooling layer: the formula applies to none of its layers. Try it "
             "below on layers of your own.")

st.subheader("Try it: output-size calculator")
c1, c2, c3, c4, c5 = st.columns(5)
size_in = c1.number_input("Input size (pixels per side)", min_value=1, max_value=4096, value=28, step=1,
                          key="calc_size")
kernel = c2.number_input("Kernel size k", min_value=1, max_value=512, value=3, step=1, key="calc_kernel")
padding = c3.number_input("Padding p", min_value=0, max_value=512, value=1, step=1, key="calc_padding")
stride = c4.number_input("Stride s", min_value=1, max_value=512, value=1, step=1, key="calc_stride")
filters = c5.number_input("Filters", min_value=1, max_value=4096, value=32, step=1,
                          key="calc_filters", help="Output channels of a convolution; for a pooling layer, "
                                                  "the channels of its input.")

try:
    calc = output_size(int(size_in), int(kernel), int(padding), int(stride))
except ValueError as e:  # the inputs' bounds make this unreachable, but never show a traceback
    st.error(f"These settings are not a valid layer: {e}")
    st.stop()

padded = calc.size_in + 2 * calc.padding
steps = [f"Pad the input: {calc.size_in} + 2×{calc.padding} = **{padded}** pixels per side."]
if calc.size < 1:
    steps.append(f"Subtract the kernel: {padded} − {calc.kernel} = **{calc.numerator}**: negative, the window is "
                 f"wider than the padded input.")
else:
    rounded = "" if calc.exact else f", rounded down to **{calc.numerator // calc.stride}**"
    steps += [
        f"Subtract the kernel: {padded} − {calc.kernel} = **{calc.numerator}**: how far the window can move "
        f"after its first position.",
        f"Divide by the stride: {calc.numerator} / {calc.stride} = **{calc.numerator / calc.stride:g}** "
        f"further positions{rounded}.",
        f"Add the first position: **{calc.size}**.",
    ]
st.markdown("\n".join(f"{i}. {step}" for i, step in enumerate(steps, start=1)))

if calc.size < 1:
    st.error(f"The {calc.kernel}×{calc.kernel} window does not fit even once in the padded {padded}×{padded} "
             f"input: the output would have size {calc.size}, so PyTorch refuses this layer. Use a smaller "
             f"kernel or more padding.")
else:
    if not calc.exact:
        left_over = calc.numerator % calc.stride
        st.warning(f"{calc.numerator} / {calc.stride} is not a whole number: PyTorch rounds down, so the window "
                   f"never covers the last {left_over} pixel{'s' if left_over > 1 else ''} of the padded input "
                   f"({'they are' if left_over > 1 else 'it is'} ignored).")
    m1, m2 = st.columns(2)
    m1.metric("Output size per side", str(calc.size))
    m2.metric("Output shape (channels × height × width)", f"{int(filters)} × {calc.size} × {calc.size}")
    st.caption(f"Formula: {calc.formula()}")
