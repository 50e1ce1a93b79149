"""``backend="reference"``: the step-by-step PyTorch loop, on any device and dtype."""
from .reference import fused_rnn_reference as fused_rnn  # noqa: F401

# Serves every cell of the registry and every extra keyword argument (extras.py); fused_rnn
# then receives ``extras=`` (see backends.py).
SERVES_EXTRAS = True


def unavailable_reason(device):
    return None


def unsupported_reason(problem):
    return None


def workspace_bytes(problem):
    """A lower bound of the bytes one call allocates: each step's h and their stacked copy
    ([B, T, NH, DH] twice), the last states, and when a gradient is needed at least the G gate
    pre-activations of every step that autograd keeps ([B, T, G, NH, DH]); with
    return_all_states every step's states ([T, S, B, NH, DH])."""
    unit = problem.batch * problem.heads * problem.head_dim * problem.dtype.itemsize
    kept = problem.steps * problem.cell.num_gates if problem.needs_grad else 0
    every = problem.steps * problem.cell.num_states if "return_all_states" in problem.extras else 0
    return (2 * problem.steps + problem.cell.num_states + kept + every) * unit
