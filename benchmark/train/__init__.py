"""Training commands (`bench train ...`): classifiers, AToP purifiers, DDPM, ADDT."""
import benchmark.compat as _compat  # noqa: F401
