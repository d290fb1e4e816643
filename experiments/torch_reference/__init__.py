"""PyTorch baselines for the speed benchmarks (`experiments/benchmark_torch.py`).

Our own PyTorch writing of the reference networks, with the reference implementations'
state_dict names, verified against the golden vectors of ../shared/golden by
`tests/test_torch_reference.py`, so that a JAX/PyTorch speed ratio compares the same
network measured on the same machine. Not part of the library; PyTorch is an optional extra.
"""
