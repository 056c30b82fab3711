"""The clear-error type every stage raises, and argument checks."""

INT32_MAX = 2 ** 31 - 1   # Caffe's int32 fields (batch, iterations, ...)


def int_arg(low=0, high=INT32_MAX):
    """An argparse type: an integer from low to high."""
    import argparse  # noqa: PLC0415

    def integer(text):
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or not low <= v <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an integer from {low} to {high}")
        return v
    return integer


class JcdlError(Exception):
    """Bad input. The CLI prints it as one line, ``FILE[:LINE]: what``, and
    exits non-zero."""

    def __init__(self, path, what, line=None):
        super().__init__(what)
        self.path, self.what, self.line = str(path), what, line

    def __str__(self):
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.what}"
