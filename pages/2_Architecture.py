"""Architecture: the layer table read off the network, where the parameters come from, and the output-size formula."""

from __future__ import annotations

import streamlit as st
from torch import nn

from cnn_core.architecture import LayerRow, layer_table, output_size, total_parameters
from ui.charts import shape_flow
from ui.state import get_model, model_picker

st.set_page_config(page_title="Architecture · CNN Explorer", page_icon="🔢", layout="wide")


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
st.write(
    "The table is read off the loaded network itself: each layer's settings, the shape of what it outputs "
    "for one 28×28 greyscale digit (channels × height × width, or a flat vector), and how many weights "
    "and biases it learns."
)

table = [
    {"#": r.index, "name": r.name, "type": r.kind, "details": r.details,
     "output shape": shape_text(r.output_shape), "parameters": r.parameters}
    for r in rows
]
st.dataframe(table, hide_index=True, width="content", key="layer_table",
             height="content",  # every row visible: no scrolling inside the table
             column_config={"#": st.column_config.NumberColumn(width=40),
                            "name": st.column_config.TextColumn(width=80),
                            "type": st.column_config.TextColumn(width=100),
                            "details": st.column_config.TextColumn(width=280),
                            "output shape": st.column_config.TextColumn(width=120),
                            "parameters": st.column_config.NumberColumn(width=100, format="localized")})
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
st.markdown(
    "- ReLU, pooling, flatten and dropout learn nothing: they apply a fixed rule (zero the negatives, keep the "
    "largest of each window, reshape, randomly silence inputs while training), so their count is 0."
)
st.markdown(f"Together: **{' + '.join(f'{r.parameters:,}' for r in weighted)} = {total:,}** parameters.")

st.plotly_chart(shape_flow(rows), key="shape_flow", config={"displayModeBar": False})

st.header("The output-size formula")
st.write("A convolution or pooling window of size *k*, moved in steps of *s* over an input of size *in* "
         "that is padded with *p* zeros on each side, fits this many times along each side:")
st.latex(r"\text{out} = \left\lfloor \frac{\text{in} + 2p - k}{s} \right\rfloor + 1")
st.write("For the layers of this network:")
for row in rows:
    if row.size is not None:
        st.markdown(f"- **{row.name}** ({row.details}): `{row.size.formula()}` → output "
                    f"{shape_text(row.output_shape)}")
st.caption("With padding 1, a 3×3 convolution keeps the size; each 2×2 pooling with stride 2 halves it.")

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
