"""The code the sandbox runs after a HumanEval+/MBPP+ solution, as `str.format` templates.

`eval.benchmarks` fills them: `TEST_HARNESS` checks a candidate's outputs on a suite's inputs
against the canonical solution's (evalplus's comparison rules and special oracles), and
`REFERENCE_HARNESS` computes those canonical outputs and their CPU time. Both run inside one
function so that their names cannot collide with the solution's, and use only the standard
library. Changing what they compute needs `benchmarks._HARNESS_VERSION` bumped (cached outputs).
"""

# Outputs with more than this many leaves are compared through a SHA-256 of their items' reprs
# instead of being stored (a few MBPP+ inputs produce ~1 GB reprs).
DIGEST_LEAVES = 200_000
DIGEST_TAG = "__editseq_sha256__"
DIGEST_HELPERS = """
    import hashlib

    def _leaves(x, budget):  # budget minus x's leaves, stopping once it goes negative
        if isinstance(x, (list, tuple)):
            if len(x) > budget:
                return -1
            for item in x:
                budget = _leaves(item, budget)
                if budget < 0:
                    break
            return budget - 1
        return budget - 1 - (len(x) // 64 if isinstance(x, str) else 0)

    def _digest(x):  # item by item (each by its C-speed repr), never one giant string
        h = hashlib.sha256()
        if type(x) in (list, tuple):
            h.update(b"[" if type(x) is list else b"(")
            for item in x:
                h.update(repr(item).encode() + b",")
        else:
            h.update(repr(x).encode())
        return ({tag!r}, h.hexdigest())
""".format(tag=DIGEST_TAG)

# Runs after the solution, inside one function so that its names cannot collide with the
# solution's. `_fn` is looked up by name: a missing entry point is a NameError.
TEST_HARNESS = '''

def __editseq_run_tests(_fn):
    import base64, copy, math, pickle
{digest_helpers}
    _inputs, _expected = pickle.loads(base64.b64decode({payload!r}))
    _oracle, _atol = {oracle!r}, {atol!r}

    def _poly(xs, x):
        return sum(c * math.pow(x, i) for i, c in enumerate(xs))

    def _surface_area(base_edge, height):
        slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
        return round(base_edge ** 2 + 2 * base_edge * slant)

    def _digit_distance(a, b):
        a, b = str(a), str(b)
        width = max(len(a), len(b))
        return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(width), b.zfill(width)))

    def _is_floats(x):
        if isinstance(x, float):
            return True
        return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(i, float) for i in x)

    def _close(out, exp, atol):
        if isinstance(exp, (list, tuple)):
            return (isinstance(out, (list, tuple)) and len(out) == len(exp)
                    and all(_close(o, e, atol) for o, e in zip(out, exp)))
        number = (int, float, complex)
        if not (isinstance(out, number) and isinstance(exp, number)):
            return False
        if out == exp:
            return True
        return abs(out - exp) <= atol + {rtol!r} * abs(exp)

    for _args, _exp in zip(_inputs, _expected):
        _out = _fn(*copy.deepcopy(_args))
        if _oracle == "root":
            assert abs(_poly(*_args, _out)) <= _atol
            continue
        if type(_exp) is tuple and len(_exp) == 2 and _exp[0] == {digest_tag!r}:
            assert _leaves(_out, {digest_leaves!r}) < 0 and _digest(_out) == _exp
            continue
        _match = _out == _exp
        if _oracle == "are_equivalent":
            _match = True
        elif _oracle == "sum_div":
            _match = _match or _out == 0
        elif _oracle == "surface_Area":
            _match = _match or abs(_out - _surface_area(*_args)) <= _atol
        elif _oracle == "digit_distance_nums":
            _match = _match or _out == _digit_distance(*_args)
        elif _oracle == "set_equal":
            _match = set(_out) == set(_exp)
        elif _oracle == "not_none":
            _match = _out == _exp if isinstance(_out, bool) else _exp == (_out is not None)
        _tolerance = {float_atol!r} if _atol == 0 and _is_floats(_exp) else _atol
        if not _match and _tolerance != 0:
            assert type(_out) == type(_exp)
            assert _close(_out, _exp, _tolerance)
        else:
            assert _match


__editseq_run_tests({entry_point})
'''

REFERENCE_HARNESS = '''

def __editseq_reference_outputs(_fn):
    import base64, copy, pickle, time
{digest_helpers}
    outputs, cpu = [], 0.0
    for args in pickle.loads(base64.b64decode({payload!r})):
        start = time.process_time()
        output = _fn(*copy.deepcopy(args))
        if {not_none!r}:
            output = output is not None
        if _leaves(output, {digest_leaves!r}) < 0:
            output = _digest(output)
        cpu += time.process_time() - start
        outputs.append(output)
    return base64.b64encode(pickle.dumps((cpu, outputs), protocol=4)).decode()


{output_name} = __editseq_reference_outputs({entry_point})
'''
