"""sparselm: word-level LSTM language models with sparse gate weights, by hand in NumPy + Numba.

Dimension letters used in every docstring: T steps, B batch, E embedding, H hidden,
G = 4H gates, V vocabulary, N = nnz of a CSR matrix, M rows of a batched product.
"""

__version__ = "0.1.0"
