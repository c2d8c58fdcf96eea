"""gdb helpers for stepping through the adapter: readable xtensor tensors at a breakpoint.

Load it once per session (docs/debugging.md):

    (gdb) source docs/gdb/qwenvl_gdb.py

Then `print t` on an xt::xtensor<float, N>, an xt::xarray<float> or a qwenvl::fast::Block (a matrix or one attention
head read in place, with a row stride) shows its shape and its values, numpy style (long axes summarised with
"..."), and two commands are available:

    (gdb) xt-shape t            the shape only, e.g. (4, 8)
    (gdb) xt-values t [COUNT]   the first COUNT values in storage order, one per line (default: all)
"""

import gdb

EDGE = 3           # values shown at each end of a summarised axis
SUMMARISE = 64     # axes longer than this are summarised


def _tag(val):
    t = val.type.strip_typedefs()
    return t.tag or "" if t.code == gdb.TYPE_CODE_STRUCT else ""


def _evaluate(expr):
    """The value of an expression, references followed (a function's `const Matrix& q` argument)."""
    val = gdb.parse_and_eval(expr)
    return val.referenced_value() if val.type.strip_typedefs().code == gdb.TYPE_CODE_REF else val


def _is_tensor(val):
    return _tag(val).startswith(("xt::xtensor_container<", "xt::xarray_container<"))


def _is_block(val):
    return _tag(val) == "qwenvl::fast::Block"


def _shape(val):
    if _is_block(val):
        return [int(val["rows"]), int(val["cols"])]
    s = val["m_shape"]
    fields = [f.name for f in s.type.strip_typedefs().fields()]
    if "_M_elems" in fields:                               # std::array<size_t, N> (xtensor)
        elems = s["_M_elems"]
        low, high = elems.type.strip_typedefs().range()
        return [int(elems[i]) for i in range(low, high + 1)]
    begin, end = s["m_begin"], s["m_end"]                  # xt::svector (xarray)
    return [int((begin + i).dereference()) for i in range(int(end - begin))]


def _element(val):
    """A function from a flat row-major index to the element's value."""
    if _is_block(val):
        data, cols, stride = val["data"], int(val["cols"]), int(val["stride"])
        return lambda i: float((data + (i // cols) * stride + i % cols).dereference())
    data = val["m_storage"]["p_begin"]
    return lambda i: float((data + i).dereference())


def _size(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _format(element, shape, offset=0):
    if not shape:
        return "%.7g" % element(offset)
    stride = _size(shape[1:])
    n = shape[0]
    indices = list(range(n)) if n <= SUMMARISE else list(range(EDGE)) + [None] + list(range(n - EDGE, n))
    parts = ["..." if i is None else _format(element, shape[1:], offset + i * stride) for i in indices]
    sep = ", " if len(shape) == 1 else ",\n" + " " * 1
    return "[" + sep.join(parts) + "]"


def _shape_text(shape):
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class TensorPrinter:
    def __init__(self, val):
        self.val = val

    def to_string(self):
        shape = _shape(self.val)
        kind = "block (row stride %d)" % int(self.val["stride"]) if _is_block(self.val) else "tensor"
        if _size(shape) == 0:
            return "%s shape %s (empty)" % (kind, _shape_text(shape))
        return "%s shape %s =\n%s" % (kind, _shape_text(shape), _format(_element(self.val), shape))


def _lookup(val):
    return TensorPrinter(val) if _is_tensor(val) or _is_block(val) else None


class ShapeCommand(gdb.Command):
    """xt-shape EXPR: the shape of an xtensor tensor or a qwenvl::Block."""

    def __init__(self):
        super().__init__("xt-shape", gdb.COMMAND_DATA)

    def invoke(self, arg, from_tty):
        print(_shape_text(_shape(_evaluate(arg))))


class ValuesCommand(gdb.Command):
    """xt-values EXPR [COUNT]: the values of a tensor or block in row-major order, one per line."""

    def __init__(self):
        super().__init__("xt-values", gdb.COMMAND_DATA)

    def invoke(self, arg, from_tty):
        words = gdb.string_to_argv(arg)
        val = _evaluate(words[0])
        shape, element = _shape(val), _element(val)
        size = _size(shape)
        count = min(size, int(words[1])) if len(words) > 1 else size
        print("xt-values %s shape %s" % (words[0], _shape_text(shape)))
        for i in range(count):
            print("%.9g" % element(i))


gdb.pretty_printers.append(_lookup)
ShapeCommand()
ValuesCommand()
