"""The exception the modules raise for a bad forward argument."""


class RNNInputError(ValueError, RuntimeError):
    """A forward argument (input, hx) of the wrong shape, dtype or device.

    A ``ValueError`` as the project's API asks, and also a ``RuntimeError`` because that is what
    torch.nn.LSTM/GRU/RNN raise for the same mistakes, so code written against torch's modules
    that catches ``RuntimeError`` keeps working after ``flashseq.convert``.
    """


class RNNInputTypeError(RNNInputError, TypeError):
    """A forward argument of the wrong type (input not a tensor, LSTM's hx not a pair, ...).

    A ``TypeError`` as Python's convention asks, and an ``RNNInputError`` like every other bad
    forward argument, so ``except RNNInputError`` (or ``ValueError``/``RuntimeError``) sees it.
    """
