"""gdb helpers for stepping through the adapter: readable xtensor tensors at a breakpoint.

Load it once per session (docs/debugging.md):

    (gdb) source docs/gdb/qwenvl_gdb.py

Then `print t` on an xt::xtensor<float, N> or xt::xarray<float> shows its shape and its values, numpy
style (long axes summarised with "..."), and two commands are available:

    (gdb) xt-shape t            the shape only, e.g. (4, 8)
    (gdb) xt-values t [COUNT]   the first COUNT values in storage order, one per line (default: all)
"""

import gdb

EDGE = 3           # values shown at each end of a summarised axis
SUMMARISE = 64     # axes longer than this are summarised


def _is_tensor(val):
    t = val.type.strip_typedefs()
    return t.code == gdb.TYPE_CODE_STRUCT and (t.tag or "").startswith(("xt::xtensor_container<", "xt::xarray_container<"))


def _shape(val):
    s = val["m_shape"]
    fields = [f.name for f in s.type.strip_typedefs().fields()]
    if "_M_elems" in fields:                               # std::array<size_t, N> (xtensor)
        elems = s["_M_elems"]
        low, high = elems.type.strip_typedefs().range()
        return [int(elems[i]) for i in range(low, high + 1)]
    begin, end = s["m_begin"], s["m_end"]                  # xt::svector (xarray)
    return [int((begin + i).dereference()) for i in range(int(end - begin))]


def _storage(val):
    st = val["m_storage"]
    return st["p_begin"], int(st["p_end"] - st["p_begin"])


def _format(data, shape, offset=0):
    if not shape:
        return "%.7g" % float((data + offset).dereference())
    stride = 1
    for d in shape[1:]:
        stride *= d
    n = shape[0]
    indices = list(range(n)) if n <= SUMMARISE else list(range(EDGE)) + [None] + list(range(n - EDGE, n))
    parts = ["..." if i is None else _format(data, shape[1:], offset + i * stride) for i in indices]
    sep = ", " if len(shape) == 1 else ",\n" + " " * 1
    return "[" + sep.join(parts) + "]"


def _shape_text(shape):
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class TensorPrinter:
    def __init__(self, val):
        self.val = val

    def to_string(self):
        shape = _shape(self.val)
        data, size = _storage(self.val)
        if size == 0:
            return "tensor shape %s (empty)" % _shape_text(shape)
        return "tensor shape %s =\n%s" % (_shape_text(shape), _format(data, shape))


def _lookup(val):
    return TensorPrinter(val) if _is_tensor(val) else None


class ShapeCommand(gdb.Command):
    """xt-shape EXPR: the shape of an xtensor tensor."""

    def __init__(self):
        super().__init__("xt-shape", gdb.COMMAND_DATA)

    def invoke(self, arg, from_tty):
        print(_shape_text(_shape(gdb.parse_and_eval(arg))))


class ValuesCommand(gdb.Command):
    """xt-values EXPR [COUNT]: the values of an xtensor tensor in storage (row-major) order, one per line."""

    def __init__(self):
        super().__init__("xt-values", gdb.COMMAND_DATA)

    def invoke(self, arg, from_tty):
        words = gdb.string_to_argv(arg)
        val = gdb.parse_and_eval(words[0])
        data, size = _storage(val)
        count = min(size, int(words[1])) if len(words) > 1 else size
        print("xt-values %s shape %s" % (words[0], _shape_text(_shape(val))))
        for i in range(count):
            print("%.9g" % float((data + i).dereference()))


gdb.pretty_printers.append(_lookup)
ShapeCommand()
ValuesCommand()
